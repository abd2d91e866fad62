// The local durable runtime against real Azurite: orchestrations replayed by durable-functions' own engine, state in Table Storage, the Durable HTTP API and DurableClient.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as df from "durable-functions";
import type { OrchestrationContext } from "durable-functions";
import { TableClient } from "@azure/data-tables";
import { LocalFunctionsHost } from "../../local/host";
import type { FunctionSpec } from "../../functions/spec";
import { startTestStorage, type LocalStorage } from "../support/storage";

const HUB = "durabletests";
const WEBHOOKS = "/runtime/webhooks/durabletask";

let storage: LocalStorage;
let host: LocalFunctionsHost;
let base = "";
const logs: string[] = [];

// What the activities saw, by key: attempts, concurrency.
const attempts = new Map<string, number>();
let active = 0;
let maxActive = 0;
/** How many gates a fan-out opens at once (0: a lone gate, open for 200 ms). */
let gatesExpected = 0;
// Flipped by the first run of the non-deterministic orchestrator, so its replay schedules something else.
let replayed = false;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const table: FunctionSpec[] = [
  { kind: "activity", name: "double", handler: async (input) => Number(input) * 2 },
  { kind: "activity", name: "echo", handler: async (input) => input },
  {
    kind: "activity",
    name: "gate",
    handler: async (input) => {
      active++;
      maxActive = Math.max(maxActive, active);
      // A fan-out's gates wait for each other (up to 5 s): run at once, all are open together however loaded the
      // machine; run one after another, each waits out its 5 s alone.
      for (const until = Date.now() + (gatesExpected ? 5000 : 200); Date.now() < until && !(gatesExpected && maxActive >= gatesExpected);) await sleep(20);
      active--;
      return `gate ${String(input)}`;
    },
  },
  {
    kind: "activity",
    name: "flaky",
    handler: async (input) => {
      const { key, failures } = input as { key: string; failures: number };
      const n = (attempts.get(key) ?? 0) + 1;
      attempts.set(key, n);
      if (n <= failures) throw new Error(`flaky failure #${n}`);
      return `succeeded on attempt ${n}`;
    },
  },
  {
    kind: "activity",
    name: "big",
    handler: async (input) => "x".repeat(Number(input)),
  },
  {
    kind: "orchestration",
    name: "sequence",
    handler: function* (context: OrchestrationContext) {
      let x = Number(context.df.getInput());
      const seen: number[] = [];
      for (let i = 0; i < 10; i++) {
        x = yield context.df.callActivity("double", x);
        seen.push(x);
        context.df.setCustomStatus({ step: i + 1 });
      }
      return seen;
    },
  },
  {
    kind: "orchestration",
    name: "fanOut",
    handler: function* (context: OrchestrationContext) {
      const n = Number(context.df.getInput());
      const tasks = Array.from({ length: n }, (_, i) => context.df.callActivity("gate", i));
      const results: string[] = yield context.df.Task.all(tasks);
      const tail: string = yield context.df.callActivity("echo", "after fan-in");
      return [...results, tail];
    },
  },
  {
    kind: "orchestration",
    name: "retrying",
    handler: function* (context: OrchestrationContext) {
      const input = context.df.getInput() as { key: string; failures: number; attempts: number };
      const options = new df.RetryOptions(100, input.attempts);
      return yield context.df.callActivityWithRetry("flaky", options, { key: input.key, failures: input.failures });
    },
  },
  {
    kind: "orchestration",
    name: "retriesInFanOut",
    handler: function* (context: OrchestrationContext) {
      // Retry timers and re-runs take task ids as the failures arrive, interleaved with the other tasks': they must stay in step with the SDK's.
      const options = new df.RetryOptions(50, 4);
      options.backoffCoefficient = 2;
      const results: unknown[] = yield context.df.Task.all([
        context.df.callActivityWithRetry("flaky", options, { key: "fan-a", failures: 1 }),
        context.df.callActivityWithRetry("flaky", options, { key: "fan-b", failures: 3 }),
        context.df.callActivity("gate", "c"),
        context.df.callActivityWithRetry("flaky", options, { key: "fan-d", failures: 0 }),
      ]);
      const after: string = yield context.df.callActivity("echo", "after");
      return [...results, after];
    },
  },
  {
    kind: "orchestration",
    name: "napper",
    handler: function* (context: OrchestrationContext) {
      const ms = Number(context.df.getInput());
      const fireAt = new Date(context.df.currentUtcDateTime.getTime() + ms);
      yield context.df.createTimer(fireAt);
      return fireAt.toISOString();
    },
  },
  {
    kind: "orchestration",
    name: "approvals",
    handler: function* (context: OrchestrationContext) {
      context.df.setCustomStatus("warming up");
      // Long enough for the test to raise "early" before anyone waits for it.
      yield context.df.createTimer(new Date(context.df.currentUtcDateTime.getTime() + 600));
      const early: unknown = yield context.df.waitForExternalEvent("early");
      context.df.setCustomStatus("waiting for late");
      const late: unknown = yield context.df.waitForExternalEvent("late");
      context.df.setCustomStatus("done");
      return { early, late };
    },
  },
  {
    kind: "orchestration",
    name: "deadline",
    handler: function* (context: OrchestrationContext) {
      const timeout = context.df.createTimer(new Date(context.df.currentUtcDateTime.getTime() + 60_000));
      const answer = context.df.waitForExternalEvent("answer");
      const winner: unknown = yield context.df.Task.any([answer, timeout]);
      if (winner === answer) {
        timeout.cancel();
        return `answered ${String(answer.result)}`;
      }
      return "timed out";
    },
  },
  {
    kind: "orchestration",
    name: "fickle",
    handler: function* (context: OrchestrationContext) {
      // Deliberately non-deterministic: the replay asks for another activity than the first run did.
      const name = replayed ? "echo" : "double";
      replayed = true;
      yield context.df.callActivity(name, 1);
      yield context.df.callActivity("double", 2);
      return "unreachable";
    },
  },
  {
    kind: "orchestration",
    name: "wallClock",
    handler: function* (context: OrchestrationContext) {
      // Deliberately non-deterministic time: the strict replay check catches it.
      yield context.df.createTimer(new Date(Date.now() + 50));
      yield context.df.callActivity("echo", 1);
      return "unreachable";
    },
  },
  {
    kind: "orchestration",
    name: "parent",
    handler: function* (context: OrchestrationContext) {
      const a: number[] = yield context.df.callSubOrchestrator("counter", { n: 0, until: 3 });
      const b: unknown = yield context.df.callSubOrchestrator("counter", { n: 5, until: 6 }, `${context.df.instanceId}-named-child`);
      return { a, b };
    },
  },
  {
    kind: "orchestration",
    name: "retryChild",
    handler: function* (context: OrchestrationContext) {
      return yield context.df.callSubOrchestratorWithRetry("flakyChild", new df.RetryOptions(50, 3), { key: `child-${context.df.instanceId}`, failures: 1 });
    },
  },
  {
    kind: "orchestration",
    name: "flakyChild",
    handler: function* (context: OrchestrationContext) {
      // No retry here: the first child fails, and the parent's retry starts a second one.
      return yield context.df.callActivity("flaky", context.df.getInput());
    },
  },
  {
    kind: "orchestration",
    name: "counter",
    handler: function* (context: OrchestrationContext) {
      const { n, until } = context.df.getInput() as { n: number; until: number };
      const doubled: number = yield context.df.callActivity("double", n);
      if (n + 1 < until) {
        context.df.continueAsNew({ n: n + 1, until });
        return undefined;
      }
      return { n, doubled };
    },
  },
  {
    kind: "orchestration",
    name: "bigPayloads",
    handler: function* (context: OrchestrationContext) {
      const input = context.df.getInput() as { blob: string; size: number };
      const made: string = yield context.df.callActivity("big", input.size);
      const echoed: string = yield context.df.callActivity("echo", input.blob);
      return { inputLength: echoed.length, madeLength: made.length, made };
    },
  },
  {
    kind: "orchestration",
    name: "throws",
    handler: function* (context: OrchestrationContext) {
      yield context.df.callActivity("echo", "first");
      throw new Error("the orchestrator gave up");
    },
  },
  {
    kind: "http",
    durableClient: true,
    name: "startOrchestration",
    route: "orchestrations/{name}",
    methods: ["POST"],
    authLevel: "anonymous",
    handler: async (request, client, context) => {
      const input = (await request.json()) as unknown;
      const id = await client.startNew(request.params.name, { input });
      const status = await client.getStatus(id);
      // The client the app builds itself from the context is the same client.
      const again = df.getClient(context);
      context.log(`started ${id} (${status.runtimeStatus}) on ${again.taskHubName}`);
      return client.createCheckStatusResponse(request, id);
    },
  },
  {
    kind: "http",
    durableClient: true,
    name: "clientOperations",
    route: "client/{op}/{id}",
    methods: ["POST"],
    authLevel: "anonymous",
    // The app-side DurableClient API, each call going to the host's rpc base.
    handler: async (request, client) => {
      const id = request.params.id;
      switch (request.params.op) {
        case "raise":
          await client.raiseEvent(id, "late", await request.json());
          return { status: 202 };
        case "terminate":
          await client.terminate(id, "by the client");
          return { status: 202 };
        case "running": {
          const list = await client.getStatusBy({ runtimeStatus: [df.OrchestrationRuntimeStatus.Running] });
          return { jsonBody: list.map((s) => s.instanceId) };
        }
        case "purge":
          return { jsonBody: await client.purgeInstanceHistory(id) };
        case "wait":
          return client.waitForCompletionOrCreateCheckStatusResponse(request, id, { timeoutInMilliseconds: 5000, retryIntervalInMilliseconds: 50 });
        default:
          return { status: 400 };
      }
    },
  },
  {
    kind: "http",
    durableClient: true,
    name: "managementPayload",
    route: "payload/{id}",
    methods: ["GET"],
    authLevel: "anonymous",
    handler: async (request, client) => ({ jsonBody: client.createHttpManagementPayload(request.params.id) }),
  },
];

before(async () => {
  storage = await startTestStorage();
  host = new LocalFunctionsHost(table, { port: 0, env: { AzureWebJobsStorage: storage.control }, log: (line) => logs.push(line), durable: { taskHub: HUB } });
  base = `http://127.0.0.1:${(await host.start()).port}`;
});

after(async () => {
  await host?.stop();
  await storage?.stop();
});

interface Status {
  name: string;
  instanceId: string;
  runtimeStatus: string;
  input: unknown;
  customStatus: unknown;
  output: unknown;
  createdTime: string;
  lastUpdatedTime: string;
}

async function call(method: string, path: string, body?: unknown): Promise<{ status: number; headers: Headers; body: any }> {
  const res = await fetch(path.startsWith("http") ? path : `${base}${path}`, {
    method,
    headers: { "content-type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
}

async function start(name: string, input?: unknown, instanceId?: string): Promise<string> {
  const r = await call("POST", `${WEBHOOKS}/orchestrators/${name}${instanceId ? `/${instanceId}` : ""}`, input);
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return r.body.id as string;
}

async function status(id: string): Promise<Status> {
  const r = await call("GET", `${WEBHOOKS}/instances/${encodeURIComponent(id)}`);
  assert.ok(r.status === 200 || r.status === 202, `status ${r.status}`);
  return r.body as Status;
}

async function waitFor(id: string, predicate: (s: Status) => boolean, timeoutMs = 15_000): Promise<Status> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await status(id);
    if (predicate(s)) return s;
    if (Date.now() > deadline)
      throw new Error(`instance ${id} did not get there in ${timeoutMs} ms; last status ${JSON.stringify(s)}\n${logs.slice(-20).join("\n")}`);
    await sleep(25);
  }
}

const finished = (s: Status) => ["Completed", "Failed", "Terminated"].includes(s.runtimeStatus);

test("sequential activities run in order, each result feeding the next", async (t) => {
  // A first run pays for creating the tables and warming the code paths; the second one's time is reported (a benchmark
  // would judge it: a timed assertion only measures how loaded the machine is).
  await waitFor(await start("sequence", 0), finished);
  const t0 = performance.now();
  const id = await start("sequence", 1);
  const s = await waitFor(id, finished);
  const elapsed = performance.now() - t0;
  t.diagnostic(`10 sequential activities: ${Math.round(elapsed)} ms`);
  assert.equal(s.runtimeStatus, "Completed", JSON.stringify(s));
  assert.deepEqual(s.output, [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]);
  assert.deepEqual(s.customStatus, { step: 10 });
  assert.equal(s.input, 1);
  assert.equal(s.name, "sequence");
  assert.match(s.createdTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
});

test("fan-out runs the activities of one episode concurrently and fan-in gets every result in order", async () => {
  maxActive = 0;
  gatesExpected = 6;
  const id = await start("fanOut", 6);
  const s = await waitFor(id, finished).finally(() => (gatesExpected = 0));
  assert.equal(s.runtimeStatus, "Completed", JSON.stringify(s));
  assert.deepEqual(s.output, ["gate 0", "gate 1", "gate 2", "gate 3", "gate 4", "gate 5", "after fan-in"]);
  assert.equal(maxActive, 6, "all six gates were open at once");
});

test("a retried activity that fails twice then succeeds completes on the third attempt, after the retry delays", async () => {
  const t0 = performance.now();
  const id = await start("retrying", { key: "twice", failures: 2, attempts: 3 });
  const s = await waitFor(id, finished);
  assert.equal(s.runtimeStatus, "Completed", JSON.stringify(s));
  assert.equal(s.output, "succeeded on attempt 3");
  assert.equal(attempts.get("twice"), 3);
  assert.ok(performance.now() - t0 >= 200, "two retry timers of 100 ms each");
});

test("retried activities inside a fan-out, failing at different times, keep their task ids in step with the SDK", async () => {
  const t0 = performance.now();
  const id = await start("retriesInFanOut");
  const s = await waitFor(id, finished);
  assert.equal(s.runtimeStatus, "Completed", JSON.stringify(s));
  assert.deepEqual(s.output, ["succeeded on attempt 2", "succeeded on attempt 4", "gate c", "succeeded on attempt 1", "after"]);
  assert.deepEqual([attempts.get("fan-a"), attempts.get("fan-b"), attempts.get("fan-d")], [2, 4, 1]);
  // Backoff 2: the retries of fan-b wait 50, 100 and 200 ms.
  assert.ok(performance.now() - t0 >= 350, "the backoff was honoured");
});

test("an activity that always fails fails the orchestration with the activity's message once the attempts are used up", async () => {
  const id = await start("retrying", { key: "always", failures: 99, attempts: 2 });
  const s = await waitFor(id, finished);
  assert.equal(s.runtimeStatus, "Failed");
  assert.equal(attempts.get("always"), 2);
  assert.equal(typeof s.output, "string");
  assert.ok((s.output as string).startsWith("Orchestrator function 'retrying' failed: Activity function 'flaky' failed: flaky failure #2"), String(s.output));
});

test("an orchestrator that throws is Failed with the host's message", async () => {
  const id = await start("throws");
  const s = await waitFor(id, finished);
  assert.equal(s.runtimeStatus, "Failed");
  assert.equal(s.output, "Orchestrator function 'throws' failed: the orchestrator gave up");
});

test("a durable timer fires on the wall clock: not before its time, and soon after", async () => {
  const id = await start("napper", 1500);
  const t0 = Date.now();
  await sleep(1000);
  const early = await status(id);
  assert.equal(early.runtimeStatus, "Running", "not complete after 1 s of a 1.5 s timer");
  const s = await waitFor(id, finished);
  assert.equal(s.runtimeStatus, "Completed");
  const fireAt = Date.parse(String(s.output));
  assert.ok(Date.now() >= fireAt, "completed at or after its fire time");
  // Armed, not found by a later sweep: well within 10 s even on a loaded machine.
  assert.ok(Date.now() - t0 < 10_000, "and not much later");
});

test("external events: one raised before it is awaited is buffered, one raised while awaited resumes it; custom status shows progress", async () => {
  const id = await start("approvals");
  const warming = await waitFor(id, (s) => s.customStatus !== null);
  assert.equal(warming.customStatus, "warming up");
  assert.equal(warming.runtimeStatus, "Running");
  let r = await call("POST", `${WEBHOOKS}/instances/${id}/raiseEvent/early`, { ok: 1 });
  assert.equal(r.status, 202);
  const waiting = await waitFor(id, (s) => s.customStatus === "waiting for late");
  assert.equal(waiting.runtimeStatus, "Running");
  r = await call("POST", `${WEBHOOKS}/instances/${id}/raiseEvent/late`, "yes");
  assert.equal(r.status, 202);
  const s = await waitFor(id, finished);
  assert.equal(s.runtimeStatus, "Completed");
  assert.deepEqual(s.output, { early: { ok: 1 }, late: "yes" });
  assert.equal(s.customStatus, "done");
  r = await call("POST", `${WEBHOOKS}/instances/${id}/raiseEvent/late`, "again");
  assert.equal(r.status, 410, "a finished instance takes no more events");
});

test("Task.any of an event and a timeout: the event wins, the timer is cancelled", async () => {
  const id = await start("deadline");
  await waitFor(id, (s) => s.runtimeStatus === "Running");
  await call("POST", `${WEBHOOKS}/instances/${id}/raiseEvent/answer`, 42);
  const s = await waitFor(id, finished);
  assert.equal(s.output, "answered 42");
});

test("a durable-client HTTP function starts an instance and returns the check-status response, whose URLs lead to this host", async () => {
  const r = await call("POST", "/api/orchestrations/sequence", 3);
  assert.equal(r.status, 202, JSON.stringify(r.body));
  const payload = r.body as Record<string, string>;
  assert.equal(r.headers.get("location"), payload.statusQueryGetUri);
  for (const key of ["id", "statusQueryGetUri", "sendEventPostUri", "terminatePostUri", "purgeHistoryDeleteUri"]) assert.ok(payload[key], key);
  assert.ok(payload.statusQueryGetUri.startsWith(`${base}${WEBHOOKS}/instances/${payload.id}`), payload.statusQueryGetUri);
  assert.ok(logs.some((l) => l.includes(`started ${payload.id}`) && l.includes(`on ${HUB}`)));
  let s: { status: number; headers: Headers; body: Status };
  const deadline = Date.now() + 10_000;
  do {
    s = await call("GET", payload.statusQueryGetUri);
    if (s.status === 202) {
      assert.equal(s.headers.get("retry-after"), "5");
      assert.ok(s.headers.get("location"));
      await sleep(25);
    }
  } while (s.status === 202 && Date.now() < deadline);
  assert.equal(s.status, 200);
  assert.equal(s.body.runtimeStatus, "Completed");
  assert.deepEqual(s.body.output, [6, 12, 24, 48, 96, 192, 384, 768, 1536, 3072]);

  // createHttpManagementPayload does not re-base on the request: it relies on WEBSITE_HOSTNAME (set by the host).
  const p = await call("GET", "/api/payload/abc");
  assert.ok(String(p.body.statusQueryGetUri).startsWith(`${base}${WEBHOOKS}/instances/abc`), p.body.statusQueryGetUri);
});

test("the DurableClient API (raiseEvent, getStatusBy, waitForCompletion…, terminate, purge) works against this host", async () => {
  const a = await start("approvals");
  await waitFor(a, (s) => s.customStatus === "warming up");
  await call("POST", `${WEBHOOKS}/instances/${a}/raiseEvent/early`, 1);
  const running = await call("POST", `/api/client/running/-`);
  assert.ok((running.body as string[]).includes(a));
  await waitFor(a, (s) => s.customStatus === "waiting for late");
  assert.equal((await call("POST", `/api/client/raise/${a}`, "from the client")).status, 202);
  const waited = await call("POST", `/api/client/wait/${a}`);
  assert.equal(waited.status, 200);
  assert.deepEqual(waited.body, { early: 1, late: "from the client" });
  assert.deepEqual((await call("POST", `/api/client/purge/${a}`)).body, { instancesDeleted: 1 });
  assert.deepEqual((await call("POST", `/api/client/purge/${a}`)).body, { instancesDeleted: 0 });

  const b = await start("approvals");
  assert.equal((await call("POST", `/api/client/terminate/${b}`)).status, 202);
  const s = await waitFor(b, finished);
  assert.equal(s.runtimeStatus, "Terminated");
  assert.equal(s.output, "by the client");
});

test("the management API: 404 unknown, 409 for a running id, terminate, list, purge only when finished", async () => {
  assert.equal((await call("GET", `${WEBHOOKS}/instances/nope`)).status, 404);
  assert.equal((await call("POST", `${WEBHOOKS}/instances/nope/raiseEvent/x`, 1)).status, 404);
  assert.equal((await call("POST", `${WEBHOOKS}/orchestrators/noSuchFunction`)).status, 400);
  assert.equal((await call("POST", `${WEBHOOKS}/orchestrators/double`)).status, 400, "an activity is not an orchestrator");

  const id = await start("approvals", undefined, "fixed-id-1");
  assert.equal(id, "fixed-id-1");
  assert.equal((await call("POST", `${WEBHOOKS}/orchestrators/approvals/fixed-id-1`)).status, 409);
  assert.equal((await call("DELETE", `${WEBHOOKS}/instances/fixed-id-1`)).status, 412, "a running instance cannot be purged");

  const listed = await call("GET", `${WEBHOOKS}/instances/?runtimeStatus=Running,Pending`);
  assert.equal(listed.status, 200);
  assert.ok((listed.body as Status[]).some((s) => s.instanceId === "fixed-id-1"));

  // The rpc base the JS client uses answers the same.
  const t = await call("POST", `/durabletask/instances/fixed-id-1/terminate?reason=operator%20said%20so`);
  assert.equal(t.status, 202);
  const s = await waitFor(id, finished);
  assert.equal(s.runtimeStatus, "Terminated");
  assert.equal(s.output, "operator said so");
  assert.equal((await call("POST", `${WEBHOOKS}/instances/fixed-id-1/terminate`)).status, 410);

  const purged = await call("DELETE", `${WEBHOOKS}/instances/fixed-id-1`);
  assert.equal(purged.status, 200);
  assert.deepEqual(purged.body, { instancesDeleted: 1 });
  assert.equal((await call("GET", `${WEBHOOKS}/instances/fixed-id-1`)).status, 404);

  // A finished id can be used again.
  const again = await start("napper", 10, "fixed-id-1");
  assert.equal((await waitFor(again, finished)).runtimeStatus, "Completed");
});

test("a replay that schedules a different activity fails the instance with a NonDeterminismError instead of replaying silently", async () => {
  const id = await start("fickle");
  const s = await waitFor(id, finished);
  assert.equal(s.runtimeStatus, "Failed");
  assert.match(
    String(s.output),
    /^Orchestrator function 'fickle' failed: NonDeterminismError: Non-deterministic orchestrator: action #0: the history has CallActivity 'double' but the replay scheduled CallActivity 'echo'/,
  );
});

test("a timer computed from the wall clock instead of currentUtcDateTime is caught by the strict replay check", async () => {
  const id = await start("wallClock");
  const s = await waitFor(id, finished);
  assert.equal(s.runtimeStatus, "Failed");
  assert.match(String(s.output), /NonDeterminismError: .*timer firing at .* but the replay asked for/);
});

test("sub-orchestrations (generated and named ids) and continueAsNew", async () => {
  const id = await start("parent");
  const s = await waitFor(id, finished);
  assert.equal(s.runtimeStatus, "Completed", JSON.stringify(s));
  assert.deepEqual(s.output, { a: { n: 2, doubled: 4 }, b: { n: 5, doubled: 10 } });
  const named = await status(`${id}-named-child`);
  assert.equal(named.runtimeStatus, "Completed");
  assert.deepEqual(named.input, { n: 5, until: 6 });
  const generated = await status(`${id}:0000`);
  assert.equal(generated.runtimeStatus, "Completed");
  assert.deepEqual(generated.input, { n: 2, until: 3 }, "the last execution's input after two continueAsNew");
});

test("a sub-orchestration called with retry is started again after it fails", async () => {
  const id = await start("retryChild");
  const s = await waitFor(id, finished);
  assert.equal(s.runtimeStatus, "Completed", JSON.stringify(s));
  assert.equal(s.output, "succeeded on attempt 2");
  const firstChild = await status(`${id}:0000`);
  assert.equal(firstChild.runtimeStatus, "Failed");
  assert.match(String(firstChild.output), /Activity function 'flaky' failed: flaky failure #1/);
  // The retry timer took id 1, so the second child is task 2.
  assert.equal((await status(`${id}:0002`)).runtimeStatus, "Completed");
});

test("inputs, results and outputs beyond a table property's 64 KiB go to blobs and come back intact", async () => {
  const blob = "y".repeat(150_000);
  const id = await start("bigPayloads", { blob, size: 300_000 });
  const s = await waitFor(id, finished);
  assert.equal(s.runtimeStatus, "Completed", JSON.stringify(s).slice(0, 500));
  const out = s.output as { inputLength: number; madeLength: number; made: string };
  assert.equal(out.inputLength, 150_000);
  assert.equal(out.madeLength, 300_000);
  assert.equal(out.made, "x".repeat(300_000));
  assert.equal((s.input as { blob: string }).blob, blob);
  // No table property holds more than Azure allows.
  const history = TableClient.fromConnectionString(storage.control, `${HUB}History`, { allowInsecureConnection: true });
  for await (const e of history.listEntities<Record<string, unknown>>({ queryOptions: { filter: `PartitionKey eq '${id}'` } })) {
    for (const [k, v] of Object.entries(e)) if (typeof v === "string") assert.ok(v.length <= 32 * 1024, `${String(e.rowKey)}.${k} is ${v.length} chars`);
  }
});

test("nothing above needed the runtime's error path: no step was retried", () => {
  const retried = logs.filter((l) => /Durable: instance .*retrying in/.test(l));
  assert.deepEqual(retried, []);
});
