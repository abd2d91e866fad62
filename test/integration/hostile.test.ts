// Hostile input on every route, table-driven: each case gets its status and the error envelope, and changes nothing
// (items, plans, jobs, durable instances — every table, blob and queue of both accounts is compared before and after).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import { parseRaw, rawRequest } from "../support/raw-http";

const KEY = "hostile-suite-key";
const MiB = 1024 * 1024;
const TEN_KB = "x".repeat(10 * 1024);

/** What the ids in a case refer to, filled in once the seed exists. */
interface Seed {
  itemId: string;
  agentKey: string;
  planId: string;
}

interface Case {
  name: string;
  method: string;
  /** Under /api. */
  path: (s: Seed) => string;
  /** Object → JSON; string → sent as is. */
  body?: (s: Seed) => unknown;
  /** Default: the right key. null: no key. */
  key?: string | null;
  status: number | number[];
  code?: string;
  /** Fields the 400 must name (each must appear among error.details). */
  fields?: string[];
}

// Routes that need the function key, with a body they would accept (or at least parse).
const keyed: { method: string; path: (s: Seed) => string; body?: (s: Seed) => unknown }[] = [
  { method: "POST", path: () => "replicated-items", body: () => enableBody("never-created") },
  { method: "GET", path: () => "replicated-items" },
  { method: "GET", path: (s) => `replicated-items/${s.itemId}` },
  { method: "PATCH", path: (s) => `replicated-items/${s.itemId}`, body: () => ({ replicationGroup: "g" }) },
  { method: "DELETE", path: (s) => `replicated-items/${s.itemId}` },
  { method: "GET", path: (s) => `replicated-items/${s.itemId}/recovery-points` },
  { method: "POST", path: (s) => `replicated-items/${s.itemId}/commit` },
  { method: "POST", path: (s) => `replicated-items/${s.itemId}/test-failover-cleanup` },
  { method: "POST", path: () => "recovery-plans", body: (s) => ({ name: "never-created", groups: [[s.itemId]] }) },
  { method: "GET", path: () => "recovery-plans" },
  { method: "GET", path: (s) => `recovery-plans/${s.planId}` },
  { method: "POST", path: () => "failovers", body: (s) => ({ itemIds: [s.itemId], type: "test" }) },
  { method: "GET", path: () => "failovers/some-instance" },
];

// Routes that take a JSON body: [method, path, field that takes a string].
const bodyRoutes: { method: string; path: (s: Seed) => string; valid: (s: Seed) => Record<string, unknown>; stringField: string; status?: number }[] = [
  { method: "POST", path: () => "replicated-items", valid: () => enableBody("never-created"), stringField: "targetRegion" },
  { method: "PATCH", path: (s) => `replicated-items/${s.itemId}`, valid: () => ({ replicationGroup: "g" }), stringField: "replicationGroup" },
  { method: "POST", path: () => "agents/register", valid: () => ({ token: "t" }), stringField: "token", status: 401 },
  { method: "POST", path: () => "agents/checkin", valid: (s) => ({ itemId: s.itemId, agentKey: s.agentKey }), stringField: "itemId" },
  {
    method: "POST",
    path: () => "agents/resync-manifest",
    valid: (s) => ({ itemId: s.itemId, agentKey: s.agentKey, diskId: "os", resyncId: "r", offset: 0, length: 65536 }),
    stringField: "diskId",
  },
  { method: "POST", path: () => "recovery-plans", valid: (s) => ({ name: "p", groups: [[s.itemId]] }), stringField: "name" },
  { method: "POST", path: () => "failovers", valid: (s) => ({ itemIds: [s.itemId], type: "test" }), stringField: "type" },
];

const cases: Case[] = [];

for (const r of keyed) {
  const base = { method: r.method, path: r.path, ...(r.body ? { body: r.body } : {}) };
  cases.push({
    ...base,
    name: `${r.method} ${r.path({ itemId: "{id}", agentKey: "", planId: "{id}" })} without the key`,
    key: null,
    status: 401,
    code: "Unauthorized",
  });
  cases.push({
    ...base,
    name: `${r.method} ${r.path({ itemId: "{id}", agentKey: "", planId: "{id}" })} with a wrong key`,
    key: "not-the-key",
    status: 401,
    code: "Unauthorized",
  });
}

for (const r of bodyRoutes) {
  const label = `${r.method} ${r.path({ itemId: "{id}", agentKey: "", planId: "" })}`;
  const add = (name: string, body: (s: Seed) => unknown, status: number, fields?: string[], code?: string) =>
    cases.push({ name: `${label}: ${name}`, method: r.method, path: r.path, body, status, ...(fields ? { fields } : {}), ...(code ? { code } : {}) });
  add("malformed JSON", () => '{ "a": ', 400, ["(body)"]);
  add("an empty body", () => "", 400, ["(body)"]);
  add("JSON that is a string", () => '"just a string"', 400);
  add("JSON that is an array", (s) => [r.valid(s)], 400);
  add("JSON null", () => "null", 400);
  add("deeply nested JSON", () => `${"[".repeat(5000)}${"]".repeat(5000)}`, 400);
  add(`${r.stringField} as a number`, (s) => ({ ...r.valid(s), [r.stringField]: 12345 }), 400, [r.stringField]);
  add(`${r.stringField} as an object`, (s) => ({ ...r.valid(s), [r.stringField]: { $ne: null } }), 400, [r.stringField]);
  add(`${r.stringField} of 10 KB`, (s) => ({ ...r.valid(s), [r.stringField]: TEN_KB }), r.status === 401 ? 400 : 400, [r.stringField]);
  add(`${r.stringField} with control characters`, (s) => ({ ...r.valid(s), [r.stringField]: "a\u0000b\u001bc" }), r.status ?? 400);
  add("an unknown field", (s) => ({ ...r.valid(s), __proto__x: 1 }), 400);
  add("a body over the size limit", (s) => ({ ...r.valid(s), pad: "x".repeat(2 * MiB) }), 413, undefined, "PayloadTooLarge");
}

// Ids with '/', '..', encoded separators and control characters, on every route that takes one.
const idRoutes: { method: string; path: (id: string) => string; body?: unknown }[] = [
  { method: "GET", path: (id) => `replicated-items/${id}` },
  { method: "PATCH", path: (id) => `replicated-items/${id}`, body: { replicationGroup: null } },
  { method: "DELETE", path: (id) => `replicated-items/${id}` },
  { method: "GET", path: (id) => `replicated-items/${id}/recovery-points` },
  { method: "POST", path: (id) => `replicated-items/${id}/commit` },
  { method: "POST", path: (id) => `replicated-items/${id}/test-failover-cleanup` },
  { method: "GET", path: (id) => `recovery-plans/${id}` },
  { method: "GET", path: (id) => `failovers/${id}` },
];
for (const r of idRoutes) {
  for (const [label, id] of [
    ["an encoded '/'", "a%2Fb"],
    ["an encoded '../'", "..%2F..%2Fetc"],
    ["a control character", "x%01y"],
    ["a quote", "x%27y"],
  ] as const) {
    cases.push({
      name: `${r.method} ${r.path("{id}")} with ${label} in the id`,
      method: r.method,
      path: () => r.path(id),
      ...(r.body ? { body: () => r.body } : {}),
      status: [400, 404],
    });
  }
}

// Sizes and values no VM has.
const sizes: [string, (b: ReturnType<typeof enableBody>) => void, string][] = [
  ["a disk of 2^60 bytes", (b) => (b.vm.disks[1]!.sizeBytes = 2 ** 60), "vm.disks[1].sizeBytes"],
  ["a disk size that is not an integer", (b) => (b.vm.disks[1]!.sizeBytes = 1.5 * MiB), "vm.disks[1].sizeBytes"],
  ["a disk size of zero", (b) => (b.vm.disks[0]!.sizeBytes = 0), "vm.disks[0].sizeBytes"],
  ["a disk id with '/'", (b) => (b.vm.disks[1]!.id = "data/0"), "vm.disks[1].id"],
  ["a disk id '..'", (b) => (b.vm.disks[1]!.id = ".."), "vm.disks[1].id"],
  ["a VM name with a newline", (b) => (b.vm.name = "web\n1"), "vm.name"],
  ["a VM name of 10 KB", (b) => (b.vm.name = TEN_KB), "vm.name"],
  ["a resource group with '/'", (b) => (b.vm.resourceGroup = "rg/../other"), "vm.resourceGroup"],
  ["a vnet name with '%2F'", (b) => (b.vm.network.vnet = "a%2Fb"), "vm.network.vnet"],
  ["a private IP with a port", (b) => (b.vm.network.privateIp = "10.0.0.4:80"), "vm.network.privateIp"],
  ["a retention of a million hours", (b) => (b.policy.recoveryPointRetentionHours = 1e6), "policy.recoveryPointRetentionHours"],
  [
    "a crash frequency that is NaN-like",
    (b) => ((b.policy as Record<string, unknown>).crashConsistentFrequencySeconds = "NaN"),
    "policy.crashConsistentFrequencySeconds",
  ],
];
for (const [name, change, field] of sizes) {
  cases.push({
    name: `POST replicated-items with ${name}`,
    method: "POST",
    path: () => "replicated-items",
    body: () => {
      const b = enableBody("never-created");
      change(b);
      return b;
    },
    status: 400,
    fields: [field],
  });
}

// Agent credentials and failover selections that name what is not there.
cases.push(
  {
    name: "check-in with a wrong agent key",
    method: "POST",
    path: () => "agents/checkin",
    body: (s) => ({ itemId: s.itemId, agentKey: "wrong" }),
    status: 401,
    code: "Unauthorized",
  },
  { name: "check-in for an unknown item", method: "POST", path: () => "agents/checkin", body: () => ({ itemId: "no-such-item", agentKey: "k" }), status: 401 },
  {
    name: "check-in reporting a resync of an unknown disk",
    method: "POST",
    path: () => "agents/checkin",
    body: (s) => ({ itemId: s.itemId, agentKey: s.agentKey, resyncRequired: [{ diskId: "nope", resyncId: "r", reason: "x" }] }),
    status: 400,
    fields: ["resyncRequired[0].diskId"],
  },
  {
    name: "check-in with a group port out of range",
    method: "POST",
    path: () => "agents/checkin",
    body: (s) => ({ itemId: s.itemId, agentKey: s.agentKey, groupListen: { host: "h", port: 70000 } }),
    status: 400,
    fields: ["groupListen.port"],
  },
  {
    name: "manifest for a resync that does not exist",
    method: "POST",
    path: () => "agents/resync-manifest",
    body: (s) => ({ itemId: s.itemId, agentKey: s.agentKey, diskId: "os", resyncId: "r", offset: 0, length: 65536 }),
    status: 409,
    code: "NoSuchResync",
  },
  {
    name: "manifest with an unaligned offset",
    method: "POST",
    path: () => "agents/resync-manifest",
    body: (s) => ({ itemId: s.itemId, agentKey: s.agentKey, diskId: "os", resyncId: "r", offset: 1, length: 65536 }),
    status: 400,
    fields: ["offset"],
  },
  { name: "registration with a 10 KB token", method: "POST", path: () => "agents/register", body: () => ({ token: TEN_KB }), status: 400, fields: ["token"] },
  { name: "failover of an unknown item", method: "POST", path: () => "failovers", body: () => ({ itemIds: ["no-such-item"], type: "test" }), status: 404 },
  {
    name: "failover naming an item twice",
    method: "POST",
    path: () => "failovers",
    body: (s) => ({ itemIds: [s.itemId, s.itemId], type: "test" }),
    status: 400,
    fields: ["itemIds[1]"],
  },
  {
    name: "failover of an item still copying, to latest",
    method: "POST",
    path: () => "failovers",
    body: (s) => ({ itemIds: [s.itemId], type: "test", recoveryPoint: "latest" }),
    status: 409,
    code: "IllegalState",
  },
  {
    name: "failover with a recovery point id of 10 KB",
    method: "POST",
    path: () => "failovers",
    body: (s) => ({ itemIds: [s.itemId], type: "test", recoveryPoint: TEN_KB }),
    status: 400,
    fields: ["recoveryPoint"],
  },
  {
    name: "a recovery plan naming an unknown item",
    method: "POST",
    path: () => "recovery-plans",
    body: () => ({ name: "ghost", groups: [["no-such-item"]] }),
    status: 404,
  },
  {
    name: "a recovery plan with 8 groups",
    method: "POST",
    path: () => "recovery-plans",
    body: (s) => ({ name: "big", groups: Array.from({ length: 8 }, () => [s.itemId]) }),
    status: 400,
  },
  { name: "commit of an item that is not failed over", method: "POST", path: (s) => `replicated-items/${s.itemId}/commit`, status: 409, code: "IllegalState" },
  {
    name: "cleanup of an item with no test failover",
    method: "POST",
    path: (s) => `replicated-items/${s.itemId}/test-failover-cleanup`,
    status: 409,
    code: "IllegalState",
  },
  { name: "an unknown route", method: "GET", path: () => "no/such/route", status: 404, code: "NotFound" },
  { name: "a method the route does not take", method: "PUT", path: () => "replicated-items", body: () => ({}), status: 405, code: "MethodNotAllowed" },
);

describe("hostile input on every route", () => {
  let stack: TestStack;
  const seed = {} as Seed;
  let baseline: string[];

  before(async () => {
    // The monitoring pass samples history once a minute: taken once before the baseline, then not again during the cases.
    stack = await startTestStack({ functionKey: KEY, env: { HISTORY_SAMPLE_SECONDS: "3600" } });
    const created = await stack.api("POST", "replicated-items", enableBody("hostile-seed"), { "x-functions-key": KEY });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    seed.itemId = created.body.id;
    const reg = await stack.api("POST", "agents/register", { token: created.body.agentRegistration.token });
    assert.equal(reg.status, 200);
    seed.agentKey = reg.body.agentKey;
    const plan = await stack.api("POST", "recovery-plans", { name: "hostile-plan", groups: [[seed.itemId]] }, { "x-functions-key": KEY });
    assert.equal(plan.status, 201, JSON.stringify(plan.body));
    seed.planId = plan.body.id;
    await stack.host.runTimer("sealRecoveryPoints");
    baseline = await stack.snapshot();
  });
  after(async () => {
    await stack?.stop();
  });

  /** The durable instances as the (keyed) management API lists them. */
  const instances = async () => (await fetch(`${stack.url}/runtime/webhooks/durabletask/instances`, { headers: { "x-functions-key": KEY } })).json();

  test(`the table holds at least 100 cases (${cases.length})`, () => assert.ok(cases.length >= 100));

  for (const c of cases) {
    const expected = Array.isArray(c.status) ? c.status : [c.status];
    test(`${c.name} → ${expected.join(" or ")}`, async () => {
      const headers: Record<string, string> = { "content-type": "application/json" };
      if (c.key !== null) headers["x-functions-key"] = c.key ?? KEY;
      const body = c.body?.(seed);
      const res = await fetch(`${stack.url}/api/${c.path(seed)}`, {
        method: c.method,
        headers,
        ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
      });
      const text = await res.text();
      let json: { error?: { code?: unknown; message?: unknown; details?: unknown } } | undefined;
      try {
        json = JSON.parse(text) as typeof json;
      } catch {
        assert.fail(`not JSON (${res.status}): ${text.slice(0, 200)}`);
      }
      assert.ok(expected.includes(res.status), `${res.status}: ${text.slice(0, 300)}`);
      assert.equal(typeof json?.error?.code, "string", "error envelope");
      assert.ok(typeof json?.error?.message === "string" && json.error.message.length > 0);
      if (c.code) assert.equal(json!.error!.code, c.code);
      if (c.fields) {
        const named = ((json!.error!.details ?? []) as { field: string }[]).map((d) => d.field);
        for (const f of c.fields)
          assert.ok(
            named.some((n) => n === f || n.startsWith(`${f}`)),
            `names ${f}: ${JSON.stringify(named)}`,
          );
      }
      assert.deepEqual(await stack.snapshot(), baseline, "nothing changed");
    });
  }

  // Forged Host headers and broken framing, over raw sockets (fetch sends neither).
  const raw: { name: string; request: (port: number) => string; status: number }[] = [
    {
      name: "a Host of another site",
      request: () => `GET /api/replicated-items HTTP/1.1\r\nHost: evil.example\r\nx-functions-key: ${KEY}\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    {
      name: "a loopback Host on another port",
      request: (p) => `GET /api/replicated-items HTTP/1.1\r\nHost: 127.0.0.1:${p + 1}\r\nx-functions-key: ${KEY}\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    {
      name: "a Host with a path",
      request: () => `GET /api/replicated-items HTTP/1.1\r\nHost: localhost/evil\r\nx-functions-key: ${KEY}\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    {
      name: "a Host with userinfo",
      request: () => `GET /api/replicated-items HTTP/1.1\r\nHost: a@evil.example\r\nx-functions-key: ${KEY}\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    {
      name: "a forged Host on the durable endpoint",
      request: () => `GET /runtime/webhooks/durabletask/instances HTTP/1.1\r\nHost: evil.example:1\r\nx-functions-key: ${KEY}\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    { name: "a negative Content-Length", request: () => `POST /api/replicated-items HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n`, status: 400 },
    {
      name: "Content-Length and chunked together",
      request: () => `POST /api/failovers HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
      status: 400,
    },
    { name: "a header without a colon", request: () => `GET /api/replicated-items HTTP/1.1\r\nHost: localhost\r\nbroken header\r\n\r\n`, status: 400 },
    { name: "a 32 KB header", request: () => `GET /api/replicated-items HTTP/1.1\r\nHost: localhost\r\nCookie: ${"c".repeat(32 * 1024)}\r\n\r\n`, status: 431 },
    { name: "an unknown method", request: () => `FROB /api/replicated-items HTTP/1.1\r\nHost: localhost\r\n\r\n`, status: 501 },
    { name: "HTTP/2 preface on HTTP/1.1", request: () => `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, status: 400 },
  ];
  for (const r of raw) {
    test(`raw: ${r.name} → ${r.status}`, async () => {
      const port = Number(new URL(stack.url).port);
      const answer = parseRaw(await rawRequest(port, r.request(port)));
      assert.equal(answer.status, r.status, JSON.stringify(answer));
      assert.equal(typeof answer.body?.error?.code, "string");
      assert.deepEqual(await stack.snapshot(), baseline, "nothing changed");
    });
  }

  // Races fired at once: each has exactly one winner or none, never a 500, and (here) nothing changes.
  test("20 concurrent registrations with one token: every one refused (an agent is registered), none 500", async () => {
    const rs = await Promise.all(
      Array.from({ length: 20 }, () => fetch(`${stack.url}/api/agents/register`, { method: "POST", body: JSON.stringify({ token: "x".repeat(43) }) })),
    );
    assert.deepEqual([...new Set(rs.map((r) => r.status))], [401]);
    assert.deepEqual(await stack.snapshot(), baseline);
  });

  test("concurrent failovers of an item that cannot fail over: all 409, nothing locked, no instance started", async () => {
    const before = await instances();
    const rs = await Promise.all(
      Array.from({ length: 8 }, () =>
        fetch(`${stack.url}/api/failovers`, {
          method: "POST",
          headers: { "x-functions-key": KEY },
          body: JSON.stringify({ itemIds: [seed.itemId], type: "test", recoveryPoint: "latest" }),
        }),
      ),
    );
    assert.deepEqual([...new Set(rs.map((r) => r.status))], [409]);
    assert.deepEqual(await instances(), before);
    assert.deepEqual(await stack.snapshot(), baseline);
  });

  test("concurrent commits and cleanups of an item in neither state: all 409, never 500", async () => {
    const rs = await Promise.all(
      ["commit", "test-failover-cleanup", "commit", "test-failover-cleanup"].map((a) =>
        fetch(`${stack.url}/api/replicated-items/${seed.itemId}/${a}`, { method: "POST", headers: { "x-functions-key": KEY } }),
      ),
    );
    assert.deepEqual([...new Set(rs.map((r) => r.status))], [409]);
    assert.deepEqual(await stack.snapshot(), baseline);
  });

  test("concurrent enables of a VM already protected: all 409 AlreadyProtected", async () => {
    const rs = await Promise.all(
      Array.from({ length: 6 }, () => stack.api("POST", "replicated-items", enableBody("hostile-seed"), { "x-functions-key": KEY })),
    );
    assert.deepEqual([...new Set(rs.map((r) => r.status))], [409]);
    assert.ok(rs.every((r) => r.body.error.code === "AlreadyProtected"));
    assert.deepEqual(await stack.snapshot(), baseline);
  });
});
