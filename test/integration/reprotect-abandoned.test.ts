// A re-protect whose orchestration is gone (terminated by an operator, or never started because the host died) is released by the timer: the item is FailoverCommitted again, its new cache and token are gone, its job failed, and it can be re-protected again.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import type { Fabric } from "../../shared/fabric/port";
import { cacheContainerName } from "../../shared/protection/items";
import { startTestStack, type TestStack } from "../support/stack";
import { e2eEnableBody } from "../support/e2e";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The fabric with a gate on the original region's resource group: the re-protect's first step waits there until opened. */
function gatedFabric(inner: Fabric, gate: { entered: boolean; open: () => void; opened: Promise<void> }): Fabric {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === "ensureResourceGroup") {
        return async (region: string, name: string) => {
          // Only the original region's group (the enable creates the recovery region's `<name>-asr` through here too).
          if (name.startsWith("abandoned-") && !name.endsWith("-asr")) {
            gate.entered = true;
            await gate.opened;
          }
          return target.ensureResourceGroup(region, name);
        };
      }
      const v = Reflect.get(target, prop, receiver);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

describe("abandoned re-protects are released", () => {
  let stack: TestStack;
  let open = () => {};
  const gate = { entered: false, open: () => open(), opened: new Promise<void>((r) => (open = r)) };

  before(async () => {
    stack = await startTestStack({ fabric: (inner) => gatedFabric(inner, gate) });
  });

  after(async () => {
    gate.open();
    await stack?.stop();
  });

  /** An item at FailoverCommitted (set directly: the fixture, not the behaviour under test). */
  async function committedItem(name: string): Promise<string> {
    const body = e2eEnableBody(name, 8) as { vm: { resourceGroup: string } };
    body.vm.resourceGroup = `abandoned-${name}`;
    const res = await stack.api("POST", "replicated-items", body);
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const id = res.body.id as string;
    await stack.services.items.updateItem(id, (i) => ({ ...i, state: "FailoverCommitted" }));
    return id;
  }

  const cacheExists = (direction: "forward" | "reverse", id: string) =>
    stack.services.storage.cache(direction).getContainerClient(cacheContainerName(id)).exists();

  test("a terminated re-protect hands its item back: FailoverCommitted, direction unchanged, new cache and token gone, job failed", async () => {
    const id = await committedItem("terminated");
    const started = await stack.api("POST", `replicated-items/${id}/reprotect`, {});
    assert.equal(started.status, 202, JSON.stringify(started.body));
    const instanceId = started.body.job.id as string;
    const deadline = Date.now() + 20_000;
    while (!gate.entered) {
      assert.ok(Date.now() < deadline, "the re-protect reaches its first step");
      await sleep(50);
    }
    const t = await fetch(`${stack.url}/runtime/webhooks/durabletask/instances/${instanceId}/terminate?reason=operator`, { method: "POST" });
    assert.equal(t.status, 202);
    for (const until = Date.now() + 20_000; ;) {
      const st = await stack.api("GET", `replicated-items/${id}/reprotect`);
      if (st.body.runtimeStatus === "Terminated") break;
      assert.ok(Date.now() < until, `terminated: ${JSON.stringify(st.body.runtimeStatus)}`);
      await sleep(100);
    }
    assert.equal((await stack.services.items.get(id))!.item.state, "Reprotecting", "nothing else releases it");

    await stack.host.runTimer("releaseAbandonedReprotects");

    const item = (await stack.services.items.get(id))!.item;
    assert.equal(item.state, "FailoverCommitted");
    assert.equal(item.direction ?? "forward", "forward");
    assert.equal(item.reprotect?.error?.code, "ReprotectTerminated");
    assert.match(item.reprotect!.error!.message, new RegExp(instanceId));
    assert.equal(await cacheExists("reverse", id), false, "the new direction's cache is gone");
    const reg = await stack.api("POST", "agents/register", { token: started.body.agentRegistration.token });
    assert.equal(reg.status, 401, `the re-protect's token is revoked: ${JSON.stringify(reg.body)}`);
    const jobs = await stack.api("GET", "jobs");
    const job = (jobs.body as { id: string; state: string; error?: { code: string } }[]).find((j) => j.id === instanceId);
    assert.equal(job?.state, "Failed", JSON.stringify(job));
    assert.equal(job?.error?.code, "ReprotectTerminated");
    const again = await stack.api("POST", `replicated-items/${id}/reprotect`, {});
    assert.equal(again.status, 202, `it can be re-protected again: ${JSON.stringify(again.body)}`);
  });

  test("a re-protect whose orchestration never started is released only once its lock is old", async () => {
    const id = await committedItem("lost");
    // The lock and the token as the HTTP function takes them, then the host died before starting the orchestration.
    const accepted = await stack.services.reprotection.accept(id, {}, "never-started-instance");
    assert.equal(accepted.item.state, "Reprotecting");

    await stack.host.runTimer("releaseAbandonedReprotects");
    assert.equal((await stack.services.items.get(id))!.item.state, "Reprotecting", "a lock this young may be one being started");

    stack.clock.offsetMs += 6 * 60_000;
    try {
      await stack.host.runTimer("releaseAbandonedReprotects");
    } finally {
      stack.clock.offsetMs -= 6 * 60_000;
    }
    const item = (await stack.services.items.get(id))!.item;
    assert.equal(item.state, "FailoverCommitted");
    assert.equal(item.reprotect?.error?.code, "ReprotectLost");
    const refused = await stack.api("GET", `replicated-items/${id}`);
    assert.equal(refused.body.state, "FailoverCommitted");
  });
});
