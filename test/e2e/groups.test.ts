// Replication groups end to end: real agents on tracked disks coordinate over TCP, the host applies and seals; the
// recovery points' snapshots are compared byte for byte with the workload's model at each tag.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { startTestStack, type TestStack } from "../support/stack";
import { Workload as BaseWorkload } from "../support/workload";
import { protectVm, type E2eVm } from "../support/e2e";
import type { Agent } from "../../agent";
import { replicaBlobName } from "../../shared/protection/items";
import { groupPartition, vmPartition, type RecoveryPoint } from "../../shared/recovery-points/points";

const MiB = 1024 * 1024;
const DISK_MIB = 8;
const DISKS = ["os", "data0"];
const GROUP = "e2e-tier";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The group tests' workload: both disks of each VM, 8 MiB each. */
class Workload extends BaseWorkload {
  constructor(vms: { itemId: string; agent: Agent }[], seed: number) {
    super(vms, seed, { disks: DISKS, diskBytes: DISK_MIB * MiB });
  }
}

describe("replication groups: agents coordinate group tags over TCP", () => {
  let stack: TestStack;
  const vms: E2eVm[] = [];
  let members: E2eVm[] = [];
  let coordinator: Agent;
  let stallC = false;
  /** Runs inside each member's cut, writes held: what the disks are at the tag. */
  let onCut: ((vm: E2eVm, tagId: string) => void) | undefined;

  before(async () => {
    stack = await startTestStack({ queueOverrides: { maxPollingIntervalMs: 100, visibilityTimeoutMs: 500 }, env: { AGENT_CHECKIN_SECONDS: "1" } });
    for (let i = 0; i < 3; i++) {
      const vm = await protectVm(stack, `grp-${i}`, DISK_MIB);
      vms.push(vm);
      // Joining after enable: the agents learn of it at registration or at a check-in.
      const res = await stack.api("PATCH", `replicated-items/${vm.itemId}`, { replicationGroup: GROUP });
      assert.equal(res.status, 200, JSON.stringify(res.body));
    }
    members = [...vms].sort((a, b) => (a.itemId < b.itemId ? -1 : 1));
    for (const vm of members) {
      await vm.startAgent({
        checkinIntervalMs: 300,
        tagIntervalMs: 3_600_000, // the tests cut tags themselves
        groupPort: 0,
        groupHost: "127.0.0.1",
        groupHoldBoundMs: 1000,
        groupOnCut: (t) => onCut?.(vm, t.id),
        ...(vm === members[2] ? { groupBeforeHold: async () => void (stallC ? await sleep(1500) : undefined) } : {}),
      });
    }
    await Promise.all(members.map((vm) => vm.agent!.waitIdle(30_000)));
    // The smallest item id among the members that reported an address coordinates.
    coordinator = members[0]!.agent!;
    const deadline = Date.now() + 15_000;
    while (coordinator.groupRole !== "coordinator" || coordinator.groupMembersConnected().length < 2) {
      if (Date.now() > deadline) assert.fail(`no group: role ${coordinator.groupRole}, connected ${coordinator.groupMembersConnected().join(",")}`);
      await sleep(50);
    }
    for (const vm of members.slice(1)) assert.equal(vm.agent!.groupRole, "member");
  });

  after(async () => {
    for (const vm of vms) await vm.cleanup();
    await stack?.stop();
  });

  async function points(partition: string): Promise<RecoveryPoint[]> {
    return stack.services.points.listPartition(partition);
  }

  async function waitSealed(partition: string, ids: string[], timeoutMs = 20_000): Promise<RecoveryPoint[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const ps = (await points(partition)).filter((p) => ids.includes(p.id));
      if (ps.length === ids.length) return ps;
      if (Date.now() > deadline) assert.fail(`sealed ${ps.length} of ${ids.length} points in ${partition}`);
      await sleep(100);
    }
  }

  async function snapshotBytes(itemId: string, diskId: string, snapshot: string): Promise<Buffer> {
    const replicas = await stack.services.storage.replicas();
    return replicas
      .getPageBlobClient(replicaBlobName(itemId, diskId))
      .withSnapshot(snapshot)
      .downloadToBuffer(0, DISK_MIB * MiB);
  }

  async function assertPointEquals(p: RecoveryPoint, model: Map<string, Buffer>): Promise<void> {
    for (const d of p.disks) {
      const want = model.get(`${d.itemId}/${d.diskId}`)!;
      const got = await snapshotBytes(d.itemId, d.diskId, d.snapshot);
      if (!got.equals(want)) {
        let at = 0;
        while (got[at] === want[at]) at++;
        assert.fail(`point ${p.id}: ${d.itemId}/${d.diskId} differs from the model at the tag, first at byte ${at}`);
      }
    }
  }

  test("exactness: each group point's snapshots equal every disk of every member at the tag, byte for byte", async () => {
    const work = new Workload(
      members.map((vm) => ({ itemId: vm.itemId, agent: vm.agent! })),
      11,
    );
    const at = new Map<string, Map<string, Buffer>>();
    try {
      for (let i = 0; i < 3; i++) {
        await sleep(300);
        await work.pause();
        const model = work.copy();
        const out = await coordinator.groupTag("crash");
        work.go();
        assert.ok(out?.committed, out?.reason);
        assert.deepEqual(
          out.members,
          members.map((m) => m.itemId),
        );
        at.set(out.tagId, model);
      }
    } finally {
      await work.stop();
    }
    const sealed = await waitSealed(groupPartition(GROUP), [...at.keys()]);
    for (const p of sealed) {
      assert.equal(p.scope, "group");
      assert.deepEqual(
        p.members,
        members.map((m) => m.itemId),
      );
      assert.equal(p.disks.length, 6, "every disk of every member");
      await assertPointEquals(p, at.get(p.id)!);
    }
  });

  test("exactness under concurrent writes: each group point equals the members' images as they were, writes held, at the cut", async () => {
    const images = new Map<string, Map<string, Buffer>>();
    onCut = (vm, tagId) => {
      const m = images.get(tagId) ?? new Map<string, Buffer>();
      for (const d of DISKS) m.set(`${vm.itemId}/${d}`, readFileSync(vm.images[d]!));
      images.set(tagId, m);
    };
    const work = new Workload(
      members.map((vm) => ({ itemId: vm.itemId, agent: vm.agent! })),
      13,
    );
    const tags: string[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        await sleep(250);
        const out = await coordinator.groupTag("crash");
        assert.ok(out?.committed, out?.reason);
        tags.push(out.tagId);
      }
    } finally {
      await work.stop();
      onCut = undefined;
    }
    for (const p of await waitSealed(groupPartition(GROUP), tags)) {
      assert.equal(p.disks.length, 6);
      assert.equal(images.get(p.id)?.size, 6, "every member cut the tag");
      await assertPointEquals(p, images.get(p.id)!);
    }
  });

  test("causality: B writes only after reading A's write; no group point holds B's effect without A's cause", async () => {
    const [a, b] = [members[1]!.agent!, members[2]!.agent!];
    const OFF = 7 * MiB;
    let running = true;
    const chain = (async () => {
      for (let k = 1; running; k++) {
        const v = Buffer.alloc(512);
        v.writeUInt32LE(k, 0);
        await a.trackedDisk("data0").write(OFF, v);
        const seen = (await a.trackedDisk("data0").read(OFF, 4)).readUInt32LE(0);
        const w = Buffer.alloc(512);
        w.writeUInt32LE(seen, 0);
        await b.trackedDisk("os").write(OFF, w);
      }
    })();
    const tags: string[] = [];
    try {
      for (let i = 0; i < 8; i++) {
        await sleep(40 + (i % 3) * 15);
        const out = await coordinator.groupTag("crash");
        if (out?.committed) tags.push(out.tagId);
      }
    } finally {
      running = false;
      await chain;
    }
    assert.ok(tags.length >= 4, `${tags.length} of 8 tags committed`);
    const sealed = await waitSealed(groupPartition(GROUP), tags);
    let effects = 0;
    for (const p of sealed) {
      const da = p.disks.find((d) => d.itemId === members[1]!.itemId && d.diskId === "data0")!;
      const db = p.disks.find((d) => d.itemId === members[2]!.itemId && d.diskId === "os")!;
      const ka = (await snapshotBytes(da.itemId, da.diskId, da.snapshot)).readUInt32LE(OFF);
      const kb = (await snapshotBytes(db.itemId, db.diskId, db.snapshot)).readUInt32LE(OFF);
      assert.ok(kb <= ka, `point ${p.id}: B saw ${kb}, but A's write is only ${ka}`);
      if (kb > 0) effects++;
    }
    assert.ok(effects > 0, "some point holds B's effects");
  });

  test("a member that stalls in prepare aborts the tag: nothing is sealed for it, and the next tag succeeds", async () => {
    stallC = true;
    const aborted = await coordinator.groupTag("crash");
    stallC = false;
    assert.equal(aborted?.committed, false);
    assert.match(aborted.reason ?? "", new RegExp(members[2]!.itemId));
    await sleep(2600); // the stalled member acks late and lets go at its own bound
    const next = await coordinator.groupTag("crash");
    assert.ok(next?.committed, next?.reason);
    await waitSealed(groupPartition(GROUP), [next.tagId]);
    assert.ok(!(await points(groupPartition(GROUP))).some((p) => p.id === aborted.tagId), "no group point of the aborted tag");
    for (const vm of members) assert.ok(!(await points(vmPartition(vm.itemId))).some((p) => p.id === aborted.tagId), "no VM point of it");
  });

  test("the coordinator's agent stops: the next member coordinates the others; back, it coordinates again", async () => {
    const [first, second, third] = members as [E2eVm, E2eVm, E2eVm];
    await first.agent!.stop();
    const waitFor = async (what: string, ok: () => boolean, timeoutMs = 15_000) => {
      const deadline = Date.now() + timeoutMs;
      while (!ok()) {
        if (Date.now() > deadline) assert.fail(`waited for ${what}`);
        await sleep(50);
      }
    };
    await waitFor("the second member to coordinate", () => second.agent!.groupRole === "coordinator" && second.agent!.groupMembersConnected().length === 1);
    assert.equal(third.agent!.groupRole, "member");
    const out = await second.agent!.groupTag("crash");
    assert.ok(out?.committed, out?.reason);
    assert.deepEqual(out.members, [second.itemId, third.itemId]);
    await waitSealed(groupPartition(GROUP), [out.tagId]);

    coordinator = await first.startAgent({ checkinIntervalMs: 300, tagIntervalMs: 3_600_000, groupPort: 0, groupHost: "127.0.0.1", groupHoldBoundMs: 1000 });
    await waitFor("the first to coordinate again", () => coordinator.groupRole === "coordinator" && coordinator.groupMembersConnected().length === 2);
    const back = await coordinator.groupTag("crash");
    assert.ok(back?.committed, back?.reason);
    assert.deepEqual(
      back.members,
      members.map((m) => m.itemId),
    );
  });

  test("a VM outside any group: its VM points equal both disks at the tag, byte for byte", async () => {
    const vm = await protectVm(stack, "solo", DISK_MIB);
    vms.push(vm);
    const agent = await vm.startAgent({ tagIntervalMs: 3_600_000 });
    await agent.waitIdle(30_000);
    assert.equal(agent.groupRole, "none");
    const work = new Workload([{ itemId: vm.itemId, agent }], 12);
    const at = new Map<string, Map<string, Buffer>>();
    try {
      for (let i = 0; i < 2; i++) {
        await sleep(300);
        await work.pause();
        const model = work.copy();
        const tag = await agent.cutTag("crash");
        work.go();
        assert.ok(tag);
        at.set(tag.id, model);
      }
    } finally {
      await work.stop();
    }
    for (const p of await waitSealed(vmPartition(vm.itemId), [...at.keys()])) {
      assert.equal(p.disks.length, 2);
      await assertPointEquals(p, at.get(p.id)!);
    }
  });
});
