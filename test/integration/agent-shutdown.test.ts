// A planned failover shuts the source VM down through its agent: writes are refused, one final tag is cut, and the
import { setTimeout as sleep } from "node:timers/promises";
// recovery point of that tag holds every write acknowledged before, byte for byte (real agent, local host, Azurite).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { startTestStack, type TestStack } from "../support/stack";
import { rng } from "../support/batches";
import { protectVm, type E2eVm } from "../support/e2e";
import type { Agent } from "../../agent";
import { replicaBlobName } from "../../shared/protection/items";
import { vmPartition, type RecoveryPoint } from "../../shared/recovery-points/points";
import type { ItemStore } from "../../shared/storage/item-store";

const MiB = 1024 * 1024;
const DISK_MIB = 8;
const DISKS = ["os", "data0"];
const FINAL = "final-1";
const REFUSED = /shutting down for a planned failover: writes are refused/;

/** What the failover does to ask for (on) or roll back (off) the source's shutdown. */
function setShutdown(items: ItemStore, itemId: string, tagId: string | undefined): Promise<unknown> {
  return items.updateItem(itemId, (i) => {
    if (tagId) i.sourceShutdown = { tagId, instanceId: "x", requestedAt: new Date().toISOString() };
    else delete i.sourceShutdown;
    return i;
  });
}

/**
 * A check-in that starts after the item was changed: Agent.checkin joins one already in flight (which may have read the
 * item before), so the second call is the one that surely sees the change.
 */
async function freshCheckin(agent: Agent): Promise<void> {
  await agent.checkin();
  await agent.checkin();
}

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

describe("planned failover: the agent shuts the source VM down", () => {
  let stack: TestStack;
  let vm: E2eVm;
  let agent: Agent;

  /** Crash tags every second: the test sees that they stop during the shutdown and resume after a rollback. */
  const agentOptions = { checkinIntervalMs: 300, tagIntervalMs: 1000 };

  before(async () => {
    stack = await startTestStack({ queueOverrides: { maxPollingIntervalMs: 100, visibilityTimeoutMs: 500 }, env: { AGENT_CHECKIN_SECONDS: "1" } });
    vm = await protectVm(stack, "shut-1", DISK_MIB);
    agent = await vm.startAgent(agentOptions);
    await agent.waitIdle(20_000);
  });

  after(async () => {
    await vm?.cleanup();
    await stack?.stop();
  });

  async function points(): Promise<RecoveryPoint[]> {
    return stack.services.points.listPartition(vmPartition(vm.itemId));
  }

  async function waitForPoint(what: string, match: (p: RecoveryPoint) => boolean, timeoutMs = 15_000): Promise<RecoveryPoint> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const p = (await points()).find(match);
      if (p) return p;
      if (Date.now() > deadline) assert.fail(`no sealed point ${what} within ${timeoutMs} ms`);
      await sleep(100);
    }
  }

  async function snapshotBytes(diskId: string, snapshot: string): Promise<Buffer> {
    const replicas = await stack.services.storage.replicas();
    return replicas
      .getPageBlobClient(replicaBlobName(vm.itemId, diskId))
      .withSnapshot(snapshot)
      .downloadToBuffer(0, DISK_MIB * MiB);
  }

  const setShutdownOf = (on: boolean) => setShutdown(stack.services.items, vm.itemId, on ? FINAL : undefined);

  const nextSeqs = (a: Agent) => DISKS.map((id) => a.status().disks[id]!.nextSeq);

  test("writes are refused after the check-in; the final point holds every acknowledged write; no other tag is cut", async () => {
    // Writers on every disk, several in flight each, until the agent refuses: the shutdown lands mid-workload.
    const next = rng(21);
    let acknowledged = 0;
    const refusals: Error[] = [];
    const writers = DISKS.flatMap((id) =>
      Array.from({ length: 4 }, async () => {
        const disk = agent.trackedDisk(id);
        for (;;) {
          const len = 1 + Math.floor(next() * 48 * 1024);
          const offset = Math.floor(next() * (DISK_MIB * MiB - len));
          try {
            await disk.write(offset, Buffer.alloc(len, 1 + Math.floor(next() * 255)));
            acknowledged++;
          } catch (e) {
            refusals.push(e as Error);
            return;
          }
        }
      }),
    );
    await sleep(400);
    await setShutdownOf(true);
    await freshCheckin(agent);
    // The check-in resolved: a write that starts now is not acknowledged.
    await assert.rejects(agent.trackedDisk("os").write(0, Buffer.alloc(512, 7)), REFUSED);
    await assert.rejects(agent.trackedDisk("data0").write(4096, Buffer.alloc(10, 7)), REFUSED);
    await Promise.all(writers);
    assert.ok(acknowledged > 20, `the workload ran (${acknowledged} writes acknowledged)`);
    for (const e of refusals) assert.match(e.message, REFUSED);
    assert.equal(agent.shuttingDown?.tagId, FINAL);

    // Every acknowledged write is in the image (the source disk): the final point must equal it.
    const point = await waitForPoint(`'${FINAL}'`, (p) => p.id === FINAL);
    assert.deepEqual(agent.shuttingDown, { tagId: FINAL, tagCut: true });
    assert.equal(point.kind, "crash");
    assert.equal(point.scope, "vm");
    assert.deepEqual(point.disks.map((d) => d.diskId).sort(), [...DISKS].sort());
    for (const d of point.disks) {
      const source = await readFile(vm.images[d.diskId]!);
      const got = await snapshotBytes(d.diskId, d.snapshot);
      if (!got.equals(source)) {
        let at = 0;
        while (got[at] === source[at]) at++;
        assert.fail(`disk ${d.diskId}: the final point differs from the source disk, first at byte ${at}`);
      }
    }

    // Check-ins keep carrying the shutdown and the tag loop keeps running: nothing more is cut (no new batch at all).
    const seqs = nextSeqs(agent);
    await sleep(2_500);
    assert.deepEqual(nextSeqs(agent), seqs, "no batch (so no tag) after the final tag");
    assert.equal((await points()).filter((p) => p.id === FINAL).length, 1);
    assert.equal((await points()).filter((p) => Date.parse(p.time) > Date.parse(point.time)).length, 0, "no point after the final one");
  });

  test("a restarted agent keeps refusing writes from its first instant and does not cut the final tag again", async () => {
    const seqs = nextSeqs(agent);
    await agent.stop();
    agent = await vm.startAgent(agentOptions);
    assert.deepEqual(agent.shuttingDown, { tagId: FINAL, tagCut: true });
    await assert.rejects(agent.trackedDisk("os").write(0, Buffer.alloc(512, 9)), REFUSED);
    await freshCheckin(agent);
    await sleep(1_500);
    assert.deepEqual(nextSeqs(agent), seqs, "no batch after the restart");
    assert.equal(agent.status().shutdown?.tagId, FINAL, "the heartbeat shows the shutdown");
    assert.equal((await points()).filter((p) => p.id === FINAL).length, 1);
  });

  test("a rolled-back failover (no shutdown at the next check-in): writes are accepted again and tags resume", async () => {
    const final = (await points()).find((p) => p.id === FINAL)!;
    await setShutdownOf(false);
    await freshCheckin(agent);
    assert.equal(agent.shuttingDown, undefined);
    const data = Buffer.alloc(3000, 0x5a);
    const offset = 5 * MiB + 123;
    await agent.trackedDisk("data0").write(offset, data);
    const wroteAt = Date.now();
    // The crash-tag loop cuts again: a point after the write holds it.
    const p = await waitForPoint("after the rollback", (x) => x.id !== FINAL && Date.parse(x.time) > wroteAt && Date.parse(x.time) > Date.parse(final.time));
    const disk = p.disks.find((d) => d.diskId === "data0")!;
    const got = await snapshotBytes("data0", disk.snapshot);
    assert.ok(got.subarray(offset, offset + data.length).equals(data), "the write after the rollback is in the next point");
  });
});

describe("planned failover in a replication group: the shutting-down agent leaves the barrier", () => {
  let stack: TestStack;
  const vms: E2eVm[] = [];
  let coordinator: Agent;
  let member: Agent;
  let memberVm: E2eVm;

  before(async () => {
    stack = await startTestStack({ queueOverrides: { maxPollingIntervalMs: 100, visibilityTimeoutMs: 500 }, env: { AGENT_CHECKIN_SECONDS: "1" } });
    for (let i = 0; i < 2; i++) {
      const vm = await protectVm(stack, `shut-grp-${i}`, DISK_MIB);
      const res = await stack.api("PATCH", `replicated-items/${vm.itemId}`, { replicationGroup: "shut-tier" });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      vms.push(vm);
    }
    vms.sort((a, b) => (a.itemId < b.itemId ? -1 : 1));
    for (const vm of vms) {
      // The test cuts group tags itself.
      await vm.startAgent({ checkinIntervalMs: 300, tagIntervalMs: 3_600_000, groupPort: 0, groupHost: "127.0.0.1", groupHoldBoundMs: 1000 });
    }
    await Promise.all(vms.map((vm) => vm.agent!.waitIdle(20_000)));
    coordinator = vms[0]!.agent!;
    memberVm = vms[1]!;
    member = memberVm.agent!;
    await until(
      "the group to form",
      () => coordinator.groupRole === "coordinator" && coordinator.groupMembersConnected().length === 1 && member.groupRole === "member",
      15_000,
    );
  });

  after(async () => {
    for (const vm of vms) await vm.cleanup();
    await stack?.stop();
  });

  test("a member shutting down leaves the barrier (group tags go on without it) and rejoins after a rollback", async () => {
    await setShutdown(stack.services.items, memberVm.itemId, "final-m");
    await freshCheckin(member);
    assert.equal(member.groupRole, "none");
    await until("the coordinator to see the member leave", () => coordinator.groupMembersConnected().length === 0);
    const out = await coordinator.groupTag("crash");
    assert.ok(out?.committed, out?.reason);
    assert.deepEqual(out.members, [vms[0]!.itemId], "the group tag is cut without the shutting-down member");
    await until(
      "the member's final point",
      async () => (await stack.services.points.listPartition(vmPartition(memberVm.itemId))).some((p) => p.id === "final-m"),
      15_000,
    );
    assert.deepEqual(member.shuttingDown, { tagId: "final-m", tagCut: true });

    await setShutdown(stack.services.items, memberVm.itemId, undefined);
    await freshCheckin(member);
    await member.trackedDisk("os").write(0, Buffer.alloc(512, 3));
    await until("the member to rejoin", () => member.groupRole === "member" && coordinator.groupMembersConnected().length === 1, 15_000);
  });

  test("a coordinator shutting down stops coordinating: its member falls back to VM tags", async () => {
    await setShutdown(stack.services.items, vms[0]!.itemId, "final-c");
    await freshCheckin(coordinator);
    assert.equal(coordinator.groupRole, "none");
    assert.equal(await coordinator.groupTag("crash"), undefined, "no group tag from a shutting-down coordinator");
    await until("the member to lose its coordinator", () => member.groupRole === "none");
    const tag = await member.cutTag("crash");
    assert.equal(tag?.scope, "vm", "the member still cuts its own points");
    await until(
      "the coordinator's final point",
      async () => (await stack.services.points.listPartition(vmPartition(vms[0]!.itemId))).some((p) => p.id === "final-c"),
      15_000,
    );
  });
});
