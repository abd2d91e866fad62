// The local host under hostile requests: forged Host headers, the durable endpoints without the key, HTTP framing errors.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import { parseRaw, rawRequest } from "../support/raw-http";

const KEY = "hardening-key";
const keyed = { "x-functions-key": KEY };

describe("local host: Host header, durable endpoints, HTTP framing", () => {
  let stack: TestStack;
  let port: number;
  /** A server that must never hear from the local host. */
  let forged: Server;
  let forgedPort: number;
  const forgedHits: string[] = [];

  before(async () => {
    stack = await startTestStack({ functionKey: KEY, allowedHosts: ["dr.example.com"] });
    port = Number(new URL(stack.url).port);
    forged = createServer((req, res) => {
      forgedHits.push(`${req.method} ${req.url}`);
      res.writeHead(202, { "content-type": "application/json" }).end(JSON.stringify({ id: "forged" }));
    });
    await new Promise<void>((r) => forged.listen(0, "127.0.0.1", () => r()));
    forgedPort = (forged.address() as AddressInfo).port;
  });
  after(async () => {
    await stack?.stop();
    await new Promise<void>((r) => forged.close(() => r()));
  });

  async function protectedItem(name: string): Promise<string> {
    const r = await stack.api("POST", "replicated-items", enableBody(name), keyed);
    assert.equal(r.status, 201, JSON.stringify(r.body));
    const id = r.body.id as string;
    for (const d of await stack.services.items.listDisks(id))
      await stack.services.items.updateDisk(id, d.id, (x) => ({ ...x, initialComplete: true, state: "Protected" }));
    await stack.services.items.updateItem(id, (i) => ({ ...i, state: "Protected" }));
    return id;
  }

  /** POST /api/failovers with a given Host header, over a raw socket (fetch will not forge Host). */
  async function failoverWithHost(host: string, itemId: string): Promise<{ status: number; body: any }> {
    const body = JSON.stringify({ itemIds: [itemId], type: "test", recoveryPoint: "latest" });
    const answer = await rawRequest(
      port,
      `POST /api/failovers HTTP/1.1\r\nHost: ${host}\r\nx-functions-key: ${KEY}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
      10_000,
    );
    return parseRaw(answer);
  }

  // Item 1 -----------------------------------------------------------------------------------------
  test("a forged Host never steers the durable client: refused with 400, nothing sent elsewhere, the item not locked", async () => {
    const id = await protectedItem("host-forged");
    const before = JSON.stringify(await stack.services.items.get(id).then((f) => f?.item));
    for (const host of [`127.0.0.1:${forgedPort}`, "evil.example:9999", "evil.example", "[::1"]) {
      const r = await failoverWithHost(host, id);
      assert.equal(r.status, 400, `${host}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body?.error?.code, "InvalidHost", host);
    }
    assert.deepEqual(forgedHits, [], "the forged server heard nothing");
    assert.equal(JSON.stringify(await stack.services.items.get(id).then((f) => f?.item)), before, "the item is unchanged");
  });

  test("with a configured Host the failover runs on the host's own durable endpoint and the status URLs use that Host", async () => {
    const id = await protectedItem("host-configured");
    const r = await failoverWithHost("dr.example.com:8443", id);
    assert.equal(r.status, 202, JSON.stringify(r));
    assert.match(r.body.statusQueryGetUri, /^http:\/\/dr\.example\.com:8443\/runtime\/webhooks\/durabletask\/instances\//);
    const st = await stack.api("GET", `failovers/${r.body.id}`, undefined, keyed);
    assert.equal(st.status, 200, "the orchestration exists on this host");
    assert.deepEqual(forgedHits, []);
  });

  test("DNS rebinding: a request whose Host is not a loopback or configured name is refused, key or not", async () => {
    for (const host of ["attacker.example", "attacker.example:" + port, "127.0.0.1.nip.io:" + port, "localhost.attacker.example"]) {
      const r = parseRaw(await rawRequest(port, `GET /api/replicated-items HTTP/1.1\r\nHost: ${host}\r\nx-functions-key: ${KEY}\r\nconnection: close\r\n\r\n`));
      assert.equal(r.status, 400, host);
      assert.equal(r.body.error.code, "InvalidHost");
    }
    for (const host of [`localhost:${port}`, `127.0.0.1:${port}`, `[::1]:${port}`]) {
      const r = parseRaw(await rawRequest(port, `GET /api/replicated-items HTTP/1.1\r\nHost: ${host}\r\nx-functions-key: ${KEY}\r\nconnection: close\r\n\r\n`));
      assert.equal(r.status, 200, host);
    }
  });

  // Item 2 -----------------------------------------------------------------------------------------
  test("every durable endpoint needs the key: /durabletask/… as much as /runtime/webhooks/durabletask/…", async () => {
    for (const base of ["/durabletask", "/runtime/webhooks/durabletask"]) {
      for (const [method, path] of [
        ["GET", "/instances"],
        ["GET", "/instances/"],
        ["POST", "/instances/x/terminate"],
        ["DELETE", "/instances/x"],
        ["POST", "/orchestrators/failover"],
      ] as const) {
        const res = await fetch(`${stack.url}${base}${path}`, { method });
        assert.equal(res.status, 401, `${method} ${base}${path}`);
        const body = (await res.json()) as { error: { code: string } };
        assert.equal(body.error.code, "Unauthorized");
      }
      const listed = await fetch(`${stack.url}${base}/instances`, { headers: keyed });
      assert.equal(listed.status, 200, `${base} with the key`);
    }
  });

  test("a terminated planned failover hands its item back: unlocked, the source's shutdown lifted", async () => {
    const id = await protectedItem("terminated-planned");
    const reg = await stack.api("POST", "agents/register", { token: (await stack.services.agents.issueToken(id)).token, replace: true });
    assert.equal(reg.status, 200);
    const started = await stack.api("POST", "failovers", { itemIds: [id], type: "planned" }, keyed);
    assert.equal(started.status, 202, JSON.stringify(started.body));
    const deadline = Date.now() + 20_000;
    while (!(await stack.services.items.get(id))?.item.sourceShutdown) {
      assert.ok(Date.now() < deadline, "the failover asks the source to shut down");
      await new Promise((r) => setTimeout(r, 100));
    }
    const shut = await stack.api("POST", "agents/checkin", { itemId: id, agentKey: reg.body.agentKey });
    assert.ok(shut.body.shutdown, "the agent is told to refuse writes");
    const t = await fetch(`${stack.url}/runtime/webhooks/durabletask/instances/${started.body.id}/terminate?reason=operator`, {
      method: "POST",
      headers: keyed,
    });
    assert.equal(t.status, 202);
    const until = Date.now() + 20_000;
    for (;;) {
      const st = await stack.api("GET", `failovers/${started.body.id}`, undefined, keyed);
      if (st.body.runtimeStatus === "Terminated") break;
      assert.ok(Date.now() < until, "terminated");
      await new Promise((r) => setTimeout(r, 100));
    }
    await stack.host.runTimer("releaseAbandonedFailovers");
    const item = (await stack.services.items.get(id))!.item;
    assert.equal(item.state, "Protected");
    assert.equal(item.sourceShutdown, undefined);
    assert.equal(item.failover?.error?.code, "FailoverTerminated");
    const after = await stack.api("POST", "agents/checkin", { itemId: id, agentKey: reg.body.agentKey });
    assert.equal(after.status, 200);
    assert.equal(after.body.shutdown, undefined, "source writes resume");
  });

  // Item 8 -----------------------------------------------------------------------------------------
  const framing: { name: string; request: string; status: number }[] = [
    { name: "a malformed Host", request: "GET /api/replicated-items HTTP/1.1\r\nHost: [::1\r\nConnection: close\r\n\r\n", status: 400 },
    { name: "a negative Content-Length", request: "POST /api/replicated-items HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n", status: 400 },
    {
      name: "a Content-Length that is not a number",
      request: "POST /api/replicated-items HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n",
      status: 400,
    },
    {
      name: "two different Content-Lengths",
      request: "POST /api/replicated-items HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
      status: 400,
    },
    {
      name: "Content-Length with Transfer-Encoding",
      request: "POST /api/replicated-items HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
      status: 400,
    },
    {
      name: "a bad chunk size",
      request: `POST /api/replicated-items HTTP/1.1\r\nHost: localhost\r\nx-functions-key: ${KEY}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`,
      status: 400,
    },
    { name: "a 20 KB header", request: `GET /api/replicated-items HTTP/1.1\r\nHost: localhost\r\nX-Big: ${"a".repeat(20 * 1024)}\r\n\r\n`, status: 431 },
    { name: "an unknown method", request: "BREW /api/replicated-items HTTP/1.1\r\nHost: localhost\r\n\r\n", status: 501 },
    { name: "a request line that is not HTTP", request: "hello there\r\n\r\n", status: 400 },
  ];
  for (const c of framing) {
    test(`HTTP framing: ${c.name} is answered ${c.status} with the error envelope, not a closed socket`, async () => {
      const r = parseRaw(await rawRequest(port, c.request));
      assert.equal(r.status, c.status, JSON.stringify(r));
      assert.equal(typeof r.body?.error?.code, "string");
      assert.equal(typeof r.body?.error?.message, "string");
    });
  }

  test("Expect: 100-continue with a body over the limit is answered 413 at once, without 100 Continue", async () => {
    const answer = await rawRequest(
      port,
      `POST /api/replicated-items HTTP/1.1\r\nHost: localhost\r\nx-functions-key: ${KEY}\r\ncontent-type: application/json\r\nContent-Length: ${50 * 1024 * 1024}\r\nExpect: 100-continue\r\n\r\n`,
    );
    assert.ok(!answer.startsWith("HTTP/1.1 100"), answer.slice(0, 40));
    const r = parseRaw(answer);
    assert.equal(r.status, 413);
    assert.equal(r.body.error.code, "PayloadTooLarge");
  });

  test("Expect: 100-continue with a body within the limit gets 100 Continue and then its answer", async () => {
    const body = "{}";
    const answer = await rawRequest(
      port,
      `POST /api/replicated-items HTTP/1.1\r\nHost: localhost\r\nx-functions-key: ${KEY}\r\ncontent-type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n${body}`,
    );
    assert.ok(answer.startsWith("HTTP/1.1 100 Continue"), answer.slice(0, 40));
    assert.match(answer, /HTTP\/1\.1 400/);
  });
});
