// The control plane's side of replication groups: the per-group secret, where agents listen, the coordinator, membership.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";

describe("replication groups in registration and check-in", () => {
  let stack: TestStack;
  before(async () => {
    stack = await startTestStack();
  });
  after(async () => {
    await stack?.stop();
  });

  async function registered(name: string, group?: string) {
    const item = await stack.api("POST", "replicated-items", enableBody(name, group ? { replicationGroup: group } : {}));
    assert.equal(item.status, 201, JSON.stringify(item.body));
    const reg = await stack.api("POST", "agents/register", { token: item.body.agentRegistration.token });
    assert.equal(reg.status, 200);
    return { id: item.body.id as string, key: reg.body.agentKey as string, reg: reg.body };
  }

  const checkin = (a: { id: string; key: string }, groupListen?: { host: string; port: number }) =>
    stack.api("POST", "agents/checkin", { itemId: a.id, agentKey: a.key, ...(groupListen ? { groupListen } : {}) });

  test("one secret per group, the coordinator is the smallest item id that reported an address, membership changes at the next check-in", async () => {
    const a = await registered("gc-1", "gc");
    assert.equal(a.reg.group.name, "gc");
    assert.match(a.reg.group.secret, /^[A-Za-z0-9_-]{43}$/, "256 random bits");
    assert.equal(a.reg.group.coordinator, null, "nobody listens yet");
    const b = await registered("gc-2", "gc");
    assert.equal(b.reg.group.secret, a.reg.group.secret, "the same secret for the whole group");
    const solo = await registered("gc-solo");
    assert.equal(solo.reg.group, undefined);
    assert.equal((await checkin(solo, { host: "10.0.0.9", port: 20004 })).body.group, undefined, "no group, no address kept");

    const [lo, hi] = a.id < b.id ? [a, b] : [b, a];
    const first = await checkin(hi, { host: "10.0.0.2", port: 20004 });
    assert.deepEqual(first.body.group.coordinator, { itemId: hi.id, host: "10.0.0.2", port: 20004 }, "the only one that reported");
    assert.deepEqual(first.body.group.members, [a.id, b.id].sort());
    await checkin(lo, { host: "10.0.0.1", port: 20005 });
    const now = await checkin(hi);
    assert.deepEqual(now.body.group.coordinator, { itemId: lo.id, host: "10.0.0.1", port: 20005 }, "the smallest item id");

    // The coordinator's agent stops checking in: after three intervals the next one coordinates, until it is back.
    stack.clock.offsetMs += 4 * stack.services.config.agent.checkinSeconds * 1000;
    assert.equal((await checkin(hi, { host: "10.0.0.2", port: 20004 })).body.group.coordinator.itemId, hi.id);
    assert.equal((await checkin(lo, { host: "10.0.0.1", port: 20005 })).body.group.coordinator.itemId, lo.id);

    // The coordinator leaves the group: the other one coordinates at its next check-in; the leaver has no group.
    const left = await stack.api("PATCH", `replicated-items/${lo.id}`, { replicationGroup: null });
    assert.equal(left.status, 200, JSON.stringify(left.body));
    assert.equal((await checkin(lo)).body.group, undefined);
    const after = await checkin(hi);
    assert.deepEqual(after.body.group.members, [hi.id]);
    assert.equal(after.body.group.coordinator.itemId, hi.id);

    const bad = await checkin(hi, { host: "", port: 70000 });
    assert.equal(bad.status, 400);
  });
});
