// What the Functions host would register (captured through a stand-in @azure/functions-core) is the function table.
import { test } from "node:test";
import assert from "node:assert/strict";
import Module from "node:module";
import { HttpRequest, InvocationContext } from "@azure/functions";
import type { DurableClient, OrchestrationContext } from "durable-functions";
import type { FunctionSpec } from "../../functions/spec";

interface Binding {
  type: string;
  direction: string;
  route?: string;
  methods?: string[];
  authLevel?: string;
  queueName?: string;
  connection?: string;
  schedule?: string;
}
interface Registered {
  metadata: { name: string; bindings: Record<string, Binding> };
  callback: unknown;
}

const registered: Registered[] = [];
const fakeCore = {
  registerFunction(metadata: Registered["metadata"], callback: unknown) {
    registered.push({ metadata, callback });
    return { dispose() {} };
  },
  setProgrammingModel() {},
  getProgrammingModel() {},
  registerHook() {
    return { dispose() {} };
  },
  log() {},
};
// The Node worker provides @azure/functions-core; here the same module name resolves to the stand-in.
type Load = (request: string, parent: unknown, isMain: boolean) => unknown;
const moduleWithLoad = Module as unknown as { _load: Load };
const originalLoad = moduleWithLoad._load;
moduleWithLoad._load = function (request, parent, isMain) {
  if (request === "@azure/functions-core") return fakeCore;
  return originalLoad.call(this, request, parent, isMain);
};

test("every function of the table is registered with the host, with the same trigger, route, methods and auth", async () => {
  process.env.AzureWebJobsStorage = "UseDevelopmentStorage=true";
  await import("../../functions/index");
  const { functionTable } = await import("../../functions/table");
  const table = functionTable(() => {
    throw new Error("the table is only inspected here");
  });

  assert.ok(table.length >= 5, "the table lists the functions");
  assert.deepEqual(registered.map((r) => r.metadata.name).sort(), table.map((f) => f.name).sort());
  for (const f of table) {
    const r = registered.find((x) => x.metadata.name === f.name);
    assert.ok(r, `${f.name} is registered`);
    assert.equal(typeof r.callback, "function");
    const trigger = Object.values(r.metadata.bindings).find((b) => /Trigger$/.test(b.type));
    assert.ok(trigger, `${f.name} has a trigger binding`);
    switch (f.kind) {
      case "http":
        assert.equal(trigger.type, "httpTrigger");
        assert.equal(trigger.route, f.route, `${f.name} route`);
        assert.deepEqual(trigger.methods, f.methods, `${f.name} methods`);
        assert.equal(trigger.authLevel, f.authLevel, `${f.name} authLevel`);
        assert.ok(
          Object.values(r.metadata.bindings).some((b) => b.type === "http" && b.direction === "out"),
          `${f.name} returns HTTP`,
        );
        assert.equal(hasDurableClient(r), f.durableClient === true, `${f.name} durable client input`);
        break;
      case "queue":
        assert.equal(trigger.type, "queueTrigger");
        assert.equal(trigger.queueName, f.queueName);
        assert.equal(trigger.connection, f.connection);
        break;
      case "timer":
        assert.equal(trigger.type, "timerTrigger");
        assert.equal(trigger.schedule, f.schedule);
        break;
      case "orchestration":
        assert.equal(trigger.type, "orchestrationTrigger");
        break;
      case "activity":
        assert.equal(trigger.type, "activityTrigger");
        break;
    }
  }
});

function hasDurableClient(r: Registered): boolean {
  return Object.values(r.metadata.bindings).some((b) => b.type === "durableClient" && b.direction === "in");
}

test("no two HTTP functions answer the same method on the same route", async () => {
  const { functionTable } = await import("../../functions/table");
  const seen = new Set<string>();
  for (const f of functionTable(() => ({}) as never)) {
    if (f.kind !== "http") continue;
    for (const m of f.methods) {
      const key = `${m} ${f.route.toLowerCase()}`;
      assert.ok(!seen.has(key), `duplicate ${key}`);
      seen.add(key);
    }
  }
});

test("orchestrations, activities and durable-client HTTP functions register with their durable bindings, and the callbacks run the table's handlers", async () => {
  const { registerAll } = await import("../../functions/index");
  let clientSeen: DurableClient | undefined;
  const tiny: FunctionSpec[] = [
    {
      kind: "orchestration",
      name: "tinyOrchestration",
      handler: function* (context: OrchestrationContext) {
        return yield context.df.callActivity("tinyActivity", "hello");
      },
    },
    { kind: "activity", name: "tinyActivity", handler: async (input) => `got ${String(input)}` },
    {
      kind: "http",
      durableClient: true,
      name: "tinyStarter",
      route: "tiny/{name}",
      methods: ["POST"],
      authLevel: "function",
      handler: async (_request, client) => {
        clientSeen = client;
        return { status: 202 };
      },
    },
    { kind: "http", name: "tinyPlain", route: "tiny-plain", methods: ["GET"], authLevel: "anonymous", handler: async () => ({ status: 204 }) },
  ];
  const from = registered.length;
  registerAll(tiny);
  const mine = registered.slice(from);
  assert.deepEqual(
    mine.map((r) => r.metadata.name),
    tiny.map((f) => f.name),
  );
  const byName = (name: string) => mine.find((r) => r.metadata.name === name)!;
  const triggerOf = (r: Registered) => Object.values(r.metadata.bindings).find((b) => /Trigger$/.test(b.type))!;

  assert.equal(triggerOf(byName("tinyOrchestration")).type, "orchestrationTrigger");
  assert.equal(triggerOf(byName("tinyActivity")).type, "activityTrigger");
  const starter = byName("tinyStarter");
  assert.equal(triggerOf(starter).type, "httpTrigger");
  assert.equal(triggerOf(starter).route, "tiny/{name}");
  assert.equal(triggerOf(starter).authLevel, "function");
  assert.ok(hasDurableClient(starter), "the registration code adds the durableClient input binding");
  assert.ok(!hasDurableClient(byName("tinyPlain")), "a plain HTTP function gets none");

  // The orchestration callback is the SDK's replay engine around the table's generator.
  const orchestrate = byName("tinyOrchestration").callback as (
    trigger: unknown,
    context: InvocationContext,
  ) => Promise<{ actions: { functionName: string }[][] }>;
  const { DummyOrchestrationContext } = await import("durable-functions");
  const at = new Date().toISOString();
  const state = await orchestrate(
    {
      history: [
        { EventType: 12, EventId: -1, IsPlayed: false, Timestamp: at },
        { EventType: 0, EventId: -1, IsPlayed: false, Timestamp: at },
      ],
      input: null,
      instanceId: "i",
      isReplaying: false,
      parentInstanceId: null,
      upperSchemaVersion: 1,
      upperSchemaVersionNew: 2,
      longRunningTimerIntervalDuration: "3.00:00:00",
      maximumShortTimerDuration: "6.00:00:00",
      defaultHttpAsyncRequestSleepTimeMillseconds: 30000,
    },
    new DummyOrchestrationContext(),
  );
  assert.equal(state.actions[0][0].functionName, "tinyActivity");

  const activity = byName("tinyActivity").callback as (input: unknown, context: InvocationContext) => Promise<unknown>;
  assert.equal(await activity("x", new InvocationContext()), "got x");

  // The durable-client callback builds a DurableClient from the binding data the extension passes.
  const input = Object.entries(starter.metadata.bindings).find(([, b]) => b.type === "durableClient")!;
  const clientInput = { name: input[0], type: "durableClient" };
  const context = new InvocationContext({ options: { trigger: { name: "request", type: "httpTrigger" }, extraInputs: [clientInput], extraOutputs: [] } });
  context.extraInputs.set(clientInput, {
    taskHubName: "TinyHub",
    creationUrls: { createNewInstancePostUri: "http://127.0.0.1:1/x", createAndWaitOnNewInstancePostUri: "http://127.0.0.1:1/x" },
    managementUrls: { id: "INSTANCEID", statusQueryGetUri: "http://127.0.0.1:1/instances/INSTANCEID" },
    baseUrl: "http://127.0.0.1:1/runtime/webhooks/durabletask",
    requiredQueryStringParameters: "",
    rpcBaseUrl: "http://127.0.0.1:1/durabletask/",
  });
  const call = starter.callback as (request: HttpRequest, context: InvocationContext) => Promise<{ status: number }>;
  const response = await call(new HttpRequest({ method: "POST", url: "http://127.0.0.1:1/api/tiny/x" }), context);
  assert.equal(response.status, 202);
  assert.equal(clientSeen?.taskHubName, "TinyHub");
});
