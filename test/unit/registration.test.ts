// What the Functions host would register (captured through a stand-in @azure/functions-core) is the function table.
import { test } from "node:test";
import assert from "node:assert/strict";
import Module from "node:module";

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
        assert.ok(Object.values(r.metadata.bindings).some((b) => b.type === "http" && b.direction === "out"), `${f.name} returns HTTP`);
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
    }
  }
});

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
