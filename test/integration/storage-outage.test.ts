// Storage that cannot be reached: every route answers 503 with Retry-After and the envelope, quickly; start-up says which setting and exits.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import { startLocalStack } from "../../local/start";
import { DEV_KEY } from "../../shared/config/settings";

/** A port nothing listens on (taken, then released). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

describe("storage outage", () => {
  let stack: TestStack;
  let itemId: string;
  before(async () => {
    stack = await startTestStack();
    const r = await stack.api("POST", "replicated-items", enableBody("outage-1"));
    assert.equal(r.status, 201);
    itemId = r.body.id;
    await stack.azurite.stop();
  });
  after(async () => {
    await stack?.host.stop();
  });

  const routes: [string, () => string, unknown?][] = [
    ["GET", () => "replicated-items"],
    ["GET", () => `replicated-items/${itemId}`],
    ["GET", () => `replicated-items/${itemId}/recovery-points`],
    ["POST", () => "replicated-items", enableBody("outage-2")],
    ["DELETE", () => `replicated-items/${itemId}`],
    ["POST", () => "agents/register", { token: "x".repeat(43) }],
    ["POST", () => "agents/checkin", { itemId: "abc", agentKey: "k" }],
    ["POST", () => "failovers", { itemIds: ["abc"], type: "test" }],
    ["GET", () => "failovers/abc"],
    ["GET", () => "recovery-plans"],
  ];
  for (const [method, path, body] of routes) {
    test(`${method} ${path().replace(/undefined/, "{itemId}")} with storage down answers 503 with Retry-After within 3 s`, async () => {
      const started = Date.now();
      const res = await fetch(`${stack.url}/api/${path()}`, {
        method,
        headers: { "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      const elapsed = Date.now() - started;
      const json = (await res.json()) as { error: { code: string; message: string } };
      assert.equal(res.status, 503, JSON.stringify(json));
      assert.ok(Number(res.headers.get("retry-after")) > 0, "Retry-After");
      assert.equal(json.error.code, "StorageUnavailable");
      assert.ok(elapsed < 3000, `answered in ${elapsed} ms`);
    });
  }

  test("the durable endpoints with storage down answer 503 with Retry-After", async () => {
    const res = await fetch(`${stack.url}/runtime/webhooks/durabletask/instances`);
    assert.equal(res.status, 503);
    assert.ok(Number(res.headers.get("retry-after")) > 0);
  });
});

describe("start-up with storage that cannot be reached", () => {
  test("names the setting and the endpoint tried, and fails fast", async () => {
    const port = await closedPort();
    const cs = `DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=${DEV_KEY};BlobEndpoint=http://127.0.0.1:${port}/devstoreaccount1;QueueEndpoint=http://127.0.0.1:${port}/devstoreaccount1;TableEndpoint=http://127.0.0.1:${port}/devstoreaccount1`;
    const started = Date.now();
    const lines: string[] = [];
    await assert.rejects(
      startLocalStack({ AzureWebJobsStorage: cs, FUNCTIONS_HTTP_PORT: "0" }, (l) => lines.push(l)),
      (e: Error) => {
        assert.match(e.message, /AzureWebJobsStorage/);
        assert.match(e.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
        assert.match(e.message, /ECONNREFUSED|refused/i);
        return true;
      },
    );
    assert.ok(Date.now() - started < 10_000, `failed in ${Date.now() - started} ms`);
  });
});
