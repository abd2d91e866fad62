// The local Functions host against real Azurite and real sockets: routing, errors, keys, body limits, queue retries to poison, timers.
import { setTimeout as sleep } from "node:timers/promises";
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QueueClient } from "@azure/storage-queue";
import type { InvocationContext, Timer } from "@azure/functions";
import { startAzurite } from "../../local/azurite";
import { LocalFunctionsHost } from "../../local/host";
import type { FunctionSpec } from "../../functions/spec";
import { startTestStorage, type LocalStorage } from "../support/storage";

const KEY = "local-test-key";

let storage: LocalStorage;
let host: LocalFunctionsHost;
let openHost: LocalFunctionsHost;
let base = "";
let openBase = "";
const logs: string[] = [];

const work: { message: unknown; meta: Record<string, unknown> | undefined }[] = [];
const failedDequeues: number[] = [];

const encode = (value: unknown) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64");

const table: FunctionSpec[] = [
  {
    kind: "http",
    name: "getItem",
    route: "items/{itemId}",
    methods: ["GET"],
    authLevel: "anonymous",
    handler: async (request, context) => ({
      jsonBody: { fn: context.functionName, params: request.params, q: request.query.get("q"), invocationId: context.invocationId },
    }),
  },
  {
    kind: "http",
    name: "createItem",
    route: "items",
    methods: ["POST"],
    authLevel: "function",
    handler: async (request) => ({ status: 201, jsonBody: { got: await request.json() }, headers: { "x-test": "yes" } }),
  },
  {
    kind: "http",
    name: "registerAgent",
    route: "agents/register",
    methods: ["POST"],
    authLevel: "anonymous",
    handler: async () => ({ jsonBody: { fn: "registerAgent" } }),
  },
  {
    kind: "http",
    name: "agentById",
    route: "agents/{agentId}",
    methods: ["POST"],
    authLevel: "anonymous",
    handler: async (request) => ({ jsonBody: { fn: "agentById", agentId: request.params.agentId } }),
  },
  {
    kind: "http",
    name: "upload",
    route: "uploads",
    methods: ["PUT"],
    authLevel: "anonymous",
    handler: async (request) => ({ body: `received ${(await request.arrayBuffer()).byteLength} bytes` }),
  },
  {
    kind: "http",
    name: "boom",
    route: "boom",
    methods: ["GET"],
    authLevel: "anonymous",
    handler: async () => {
      throw new Error("kaboom in handler");
    },
  },
  {
    kind: "queue",
    name: "applyWork",
    queueName: "work-items",
    // The second Azurite account, through its own app setting, as the cache queue would be.
    connection: "SOURCE_CACHE",
    handler: async (message: unknown, context: InvocationContext) => {
      work.push({ message, meta: context.triggerMetadata });
    },
  },
  {
    kind: "queue",
    name: "alwaysFails",
    queueName: "always-fails",
    connection: "AzureWebJobsStorage",
    handler: async (_message: unknown, context: InvocationContext) => {
      failedDequeues.push(Number(context.triggerMetadata?.dequeueCount));
      throw new Error("this handler always fails");
    },
  },
];

before(async () => {
  storage = await startTestStorage();
  const env = { AzureWebJobsStorage: storage.control, SOURCE_CACHE: storage.cache };
  // A zero visibility timeout makes the retries immediate; every other queue setting comes from host.json.
  host = new LocalFunctionsHost(table, {
    port: 0,
    env,
    functionKey: KEY,
    log: (line) => logs.push(line),
    queueOverrides: { visibilityTimeoutMs: 0, maxPollingIntervalMs: 250 },
  });
  base = `http://127.0.0.1:${(await host.start()).port}`;
  openHost = new LocalFunctionsHost(
    table.filter((f) => f.kind === "http"),
    { port: 0, env, log: () => {} },
  );
  openBase = `http://127.0.0.1:${(await openHost.start()).port}`;
});

after(async () => {
  await host?.stop();
  await openHost?.stop();
  await storage?.stop();
});

async function call(url: string, init: RequestInit = {}): Promise<{ status: number; headers: Headers; body: any }> {
  const res = await fetch(url, init);
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Plain-text responses stay strings.
  }
  return { status: res.status, headers: res.headers, body };
}

async function waitFor(what: string, predicate: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

test("queue settings default to host.json", () => {
  const plain = new LocalFunctionsHost([], { port: 0, env: {} });
  assert.deepEqual(
    { ...plain.queueSettings },
    {
      messageEncoding: "base64",
      maxDequeueCount: 5,
      visibilityTimeoutMs: 10_000,
      batchSize: 16,
      newBatchThreshold: 8,
      maxPollingIntervalMs: 2_000,
      messageLeaseMs: 600_000,
    },
  );
  assert.equal(plain.routePrefix, "api");
  assert.equal(host.queueSettings.maxDequeueCount, 5);
});

test("routes with params, case-insensitive literals, decoded values, query", async () => {
  const r = await call(`${base}/api/ITEMS/web%201?q=hello`);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("content-type"), "application/json");
  assert.equal(r.body.fn, "getItem");
  assert.deepEqual(r.body.params, { itemId: "web 1" });
  assert.equal(r.body.q, "hello");
  assert.match(r.body.invocationId, /^[0-9a-f-]{36}$/);
  assert.ok(
    logs.some((l) => /Executed 'getItem' \(Succeeded, id=[0-9a-f-]{36}, Duration=\d+ms\)/.test(l)),
    "invocation log line",
  );

  const trailing = await call(`${base}/api/items/abc/`);
  assert.deepEqual(trailing.body.params, { itemId: "abc" });
});

test("a literal route outranks a parameter route", async () => {
  const literal = await call(`${base}/api/agents/register`, { method: "POST" });
  assert.deepEqual(literal.body, { fn: "registerAgent" });
  const param = await call(`${base}/api/agents/agent-7`, { method: "POST" });
  assert.deepEqual(param.body, { fn: "agentById", agentId: "agent-7" });
});

test("unknown route is 404 NotFound, wrong method is 405 MethodNotAllowed", async () => {
  for (const path of ["/api/nothing-here", "/items/abc", "/api/items/a/b"]) {
    const r = await call(`${base}${path}`);
    assert.equal(r.status, 404, path);
    assert.equal(r.body.error.code, "NotFound");
    assert.equal(typeof r.body.error.message, "string");
  }
  const r = await call(`${base}/api/items/abc`, { method: "DELETE" });
  assert.equal(r.status, 405);
  assert.equal(r.body.error.code, "MethodNotAllowed");
  assert.equal(r.headers.get("allow"), "GET");
});

test("a throwing handler is a 500 InternalError envelope and a Failed log with the stack", async () => {
  const r = await call(`${base}/api/boom`);
  assert.equal(r.status, 500);
  assert.equal(r.body.error.code, "InternalError");
  assert.doesNotMatch(JSON.stringify(r.body), /kaboom/, "no handler internals leak to the client");
  assert.ok(
    logs.some((l) => l.includes("kaboom in handler") && l.includes("at ")),
    "stack logged",
  );
  assert.ok(logs.some((l) => /Executed 'boom' \(Failed, id=/.test(l)));
});

test("function key: 401 without or with a wrong key, accepted as header or ?code=, anonymous routes open", async () => {
  const body = JSON.stringify({ name: "vm-1" });
  const headers = { "content-type": "application/json" };
  const missing = await call(`${base}/api/items`, { method: "POST", body, headers });
  assert.equal(missing.status, 401);
  assert.equal(missing.body.error.code, "Unauthorized");
  const wrong = await call(`${base}/api/items`, { method: "POST", body, headers: { ...headers, "x-functions-key": "nope" } });
  assert.equal(wrong.status, 401);

  const viaHeader = await call(`${base}/api/items`, { method: "POST", body, headers: { ...headers, "x-functions-key": KEY } });
  assert.equal(viaHeader.status, 201);
  assert.deepEqual(viaHeader.body, { got: { name: "vm-1" } });
  assert.equal(viaHeader.headers.get("x-test"), "yes");
  const viaQuery = await call(`${base}/api/items?code=${encodeURIComponent(KEY)}`, { method: "POST", body, headers });
  assert.equal(viaQuery.status, 201);

  assert.equal((await call(`${base}/api/items/abc`)).status, 200, "anonymous route needs no key");
  const open = await call(`${openBase}/api/items`, { method: "POST", body, headers });
  assert.equal(open.status, 201, "no key configured: everything is anonymous");
});

test("bodies over maxRequestBytes are 413 PayloadTooLarge, declared or streamed; the connection survives", async () => {
  const small = await call(`${base}/api/uploads`, { method: "PUT", body: Buffer.alloc(512 * 1024, 1) });
  assert.equal(small.status, 200);
  assert.equal(small.body, `received ${512 * 1024} bytes`);

  const declared = await call(`${base}/api/uploads`, { method: "PUT", body: Buffer.alloc(2 * 1024 * 1024, 2) });
  assert.equal(declared.status, 413);
  assert.equal(declared.body.error.code, "PayloadTooLarge");

  // No content-length: the limit is enforced while reading.
  const chunk = new Uint8Array(64 * 1024).fill(3);
  let sent = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent >= 2 * 1024 * 1024) return controller.close();
      sent += chunk.length;
      controller.enqueue(chunk);
    },
  });
  const streamed = await call(`${base}/api/uploads`, { method: "PUT", body: stream, duplex: "half" } as RequestInit);
  assert.equal(streamed.status, 413);
  assert.equal(streamed.body.error.code, "PayloadTooLarge");

  assert.equal((await call(`${base}/api/items/after-413`)).status, 200);

  let left = 3;
  const smallStream = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (left-- === 0) return controller.close();
      controller.enqueue(chunk);
    },
  });
  const chunked = await call(`${base}/api/uploads`, { method: "PUT", body: smallStream, duplex: "half" } as RequestInit);
  assert.equal(chunked.status, 200);
  assert.equal(chunked.body, `received ${3 * chunk.length} bytes`);
});

test("a base64 queue message reaches the handler decoded and parsed, with trigger metadata", async () => {
  const queue = new QueueClient(storage.cache, "work-items");
  await queue.createIfNotExists();
  await queue.sendMessage(encode({ itemId: "vm-1", seq: 7 }));
  await queue.sendMessage(encode("plain text, not JSON"));
  await host.drainQueues(30_000);

  assert.equal(work.length, 2);
  const json = work.find((w) => typeof w.message === "object");
  assert.deepEqual(json?.message, { itemId: "vm-1", seq: 7 });
  assert.ok(work.some((w) => w.message === "plain text, not JSON"));
  const meta = json!.meta!;
  assert.equal(meta.dequeueCount, 1);
  assert.equal(typeof meta.id, "string");
  assert.equal(typeof meta.popReceipt, "string");
  for (const k of ["insertionTime", "expirationTime", "nextVisibleTime"]) {
    assert.ok(!Number.isNaN(Date.parse(String(meta[k]))), `${k} is a date`);
  }
  assert.equal((await queue.getProperties()).approximateMessagesCount, 0, "handled messages are deleted");
});

test("a message whose handler always throws lands in <queue>-poison after maxDequeueCount attempts, text unchanged", async () => {
  const text = encode({ doomed: true });
  const queue = new QueueClient(storage.control, "always-fails");
  await queue.createIfNotExists();
  await queue.sendMessage(text);
  await host.drainQueues(60_000);

  assert.deepEqual(failedDequeues, [1, 2, 3, 4, 5]);
  const poison = new QueueClient(storage.control, "always-fails-poison");
  const peeked = await poison.peekMessages({ numberOfMessages: 32 });
  assert.equal(peeked.peekedMessageItems.length, 1);
  assert.equal(peeked.peekedMessageItems[0].messageText, text);
  assert.equal((await queue.getProperties()).approximateMessagesCount, 0);
  assert.ok(logs.some((l) => /Executed 'alwaysFails' \(Failed, id=/.test(l)));
});

test("a handler that outlives the message lease keeps its message: the lease is renewed, no second delivery", async () => {
  const seen: number[] = [];
  const slowHost = new LocalFunctionsHost(
    [
      {
        kind: "queue",
        name: "slowWork",
        queueName: "slow-work",
        connection: "AzureWebJobsStorage",
        handler: async (_m: unknown, context: InvocationContext) => {
          seen.push(Number(context.triggerMetadata?.dequeueCount));
          await sleep(4_000);
        },
      },
    ],
    // A 2 s lease instead of the host's 10 minutes: without renewal the message would reappear mid-run.
    { port: 0, env: { AzureWebJobsStorage: storage.control }, log: () => {}, queueOverrides: { messageLeaseMs: 2_000, maxPollingIntervalMs: 250 } },
  );
  await slowHost.start();
  try {
    const queue = new QueueClient(storage.control, "slow-work");
    await queue.createIfNotExists();
    await queue.sendMessage(encode({ slow: true }));
    await slowHost.drainQueues(30_000);
    assert.deepEqual(seen, [1]);
  } finally {
    await slowHost.stop();
  }
});

test("describe() lists the functions the way func start does", () => {
  const text = host.describe("http://localhost:7071/");
  assert.match(text, /^Functions:\n\n/);
  assert.ok(text.includes("        getItem: [GET] http://localhost:7071/api/items/{itemId}\n"));
  assert.ok(text.includes("        createItem: [POST] http://localhost:7071/api/items\n"));
  assert.ok(text.includes("        applyWork: queueTrigger\n"));
});

test("timers fire on a six-field schedule, resolve %SETTING%, honour runOnStartup, never overlap, stop with the host", async () => {
  const every: Timer[] = [];
  let fromSetting = 0;
  let startup = 0;
  let slowActive = 0;
  let slowMax = 0;
  let slowRuns = 0;
  const timerLogs: string[] = [];
  const timers: FunctionSpec[] = [
    { kind: "timer", name: "everySecond", schedule: "*/1 * * * * *", handler: async (t) => void every.push(t) },
    { kind: "timer", name: "fromSetting", schedule: "%TEST_TIMER_SCHEDULE%", handler: async () => void fromSetting++ },
    // Once a year: only runOnStartup (or runTimer) can invoke it during the test.
    { kind: "timer", name: "onStartup", schedule: "0 0 0 1 1 *", runOnStartup: true, handler: async () => void startup++ },
    {
      kind: "timer",
      name: "slow",
      schedule: "*/1 * * * * *",
      handler: async () => {
        slowActive++;
        slowMax = Math.max(slowMax, slowActive);
        await sleep(2_500);
        slowActive--;
        slowRuns++;
      },
    },
  ];
  const timerHost = new LocalFunctionsHost(timers, {
    port: 0,
    env: { TEST_TIMER_SCHEDULE: "*/1 * * * * *" },
    log: (line) => timerLogs.push(line),
  });
  try {
    await timerHost.start();
    await waitFor("timer invocations", () => every.length >= 3 && fromSetting >= 2 && startup === 1 && slowRuns >= 2, 45_000);
    assert.equal(slowMax, 1, "a running timer is not overlapped");
    assert.ok(timerLogs.some((l) => l.includes("Timer 'slow' is still running")));

    const t = every[every.length - 1];
    assert.equal(t.isPastDue, false);
    assert.deepEqual(t.schedule, { adjustForDST: true });
    for (const k of ["last", "next", "lastUpdated"] as const) assert.ok(!Number.isNaN(Date.parse(t.scheduleStatus[k])), k);
    assert.ok(Date.parse(t.scheduleStatus.next) >= Date.parse(t.scheduleStatus.last));

    await timerHost.runTimer("onStartup");
    assert.equal(startup, 2);
  } finally {
    await timerHost.stop();
  }
  const frozen = every.length;
  await sleep(1_500);
  assert.equal(every.length, frozen, "no tick after stop()");
});

test("an unset %SETTING% schedule or queue connection fails start() with the setting's name", async () => {
  const noSchedule = new LocalFunctionsHost([{ kind: "timer", name: "t", schedule: "%NOT_SET_ANYWHERE%", handler: async () => {} }], {
    port: 0,
    env: {},
  });
  await assert.rejects(noSchedule.start(), /NOT_SET_ANYWHERE/);
  const badCron = new LocalFunctionsHost([{ kind: "timer", name: "t", schedule: "*/5 * * * *", handler: async () => {} }], { port: 0, env: {} });
  await assert.rejects(badCron.start(), /six-field/);
  const noConnection = new LocalFunctionsHost([{ kind: "queue", name: "q", queueName: "x-q", connection: "MISSING_CONN", handler: async () => {} }], {
    port: 0,
    env: {},
  });
  await assert.rejects(noConnection.start(), /MISSING_CONN/);
});

test("Azurite in disk mode keeps data across a graceful stop, for both accounts", async () => {
  const dir = await mkdtemp(join(tmpdir(), "azurite-disk-"));
  try {
    const first = await startAzurite({ location: dir, silent: true });
    await new QueueClient(first.control, "kept").create();
    const cache = new QueueClient(first.cache, "kept-cache");
    await cache.create();
    await cache.sendMessage("still here");
    await first.stop();

    const second = await startAzurite({ location: dir, silent: true });
    try {
      assert.equal(await new QueueClient(second.control, "kept").exists(), true);
      const peeked = await new QueueClient(second.cache, "kept-cache").peekMessages();
      assert.equal(peeked.peekedMessageItems[0]?.messageText, "still here");
    } finally {
      await second.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
