// Failover end to end: real agents on tracked disks, the local host's durable orchestration, LocalFabric; failover disks compared byte for byte with the workload's model at the chosen point, and read by qemu-img.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { startTestStack, type TestStack } from "../support/stack";
import { assertReplicaEqualsSource, deliver, lastSeq, protectVm, type E2eVm } from "../support/e2e";
import { cacheBatches } from "../support/cache";
import { cacheContainerName, replicaBlobName } from "../../shared/protection/items";
import { Workload } from "../support/workload";
import { assertFailoverDisk, runFailover, startFailover, waitFailover } from "../support/failover";
import type { Agent } from "../../agent";
import type { BatchTag } from "../../shared/replication/batch";
import { groupPartition, vmPartition, type RecoveryPoint } from "../../shared/recovery-points/points";

const MiB = 1024 * 1024;
const DISK_MIB = 8;
const DISKS = ["os", "data0"];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitSealed(stack: TestStack, partition: string, id: string, timeoutMs = 30_000): Promise<RecoveryPoint> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = (await stack.services.points.listPartition(partition)).find((x) => x.id === id);
    if (p) return p;
    if (Date.now() > deadline) assert.fail(`point ${id} not sealed in ${partition}`);
    await sleep(100);
  }
}

/** The failover disks of one VM of the output equal the models (keyed `<itemId>/<diskId>`). */
async function assertVmDisks(stack: TestStack, vm: any, models: Map<string, Buffer>, what: string): Promise<void> {
  assert.equal(vm.disks.length, DISKS.length);
  for (const d of vm.disks) {
    assert.match(d.blob, new RegExp(`^failover/${vm.vm}-${d.diskId}-\\d{8}T\\d{6}Z\\.vhd$`));
    await assertFailoverDisk(stack, d.blob, models.get(`${vm.itemId}/${d.diskId}`)!, `${what} ${vm.vm}/${d.diskId}`);
  }
}

async function failoverBlobs(stack: TestStack): Promise<string[]> {
  const out: string[] = [];
  for await (const b of (await stack.services.storage.failover()).listBlobsFlat()) out.push(b.name);
  return out;
}

async function item(stack: TestStack, id: string): Promise<any> {
  const res = await stack.api("GET", `replicated-items/${id}`);
  assert.equal(res.status, 200);
  return res.body;
}

describe("failover of one VM: test, unplanned, each recovery-point choice", () => {
  let stack: TestStack;
  let vm: E2eVm;
  let agent: Agent;
  let work: Workload;

  before(async () => {
    stack = await startTestStack({ queueOverrides: { maxPollingIntervalMs: 100, visibilityTimeoutMs: 500 }, env: { AGENT_CHECKIN_SECONDS: "1" } });
    vm = await protectVm(stack, "fo-solo", DISK_MIB);
    agent = await vm.startAgent({ tagIntervalMs: 3_600_000, appTagIntervalMs: 0, preFreeze: ["true"], postThaw: ["true"] });
    await agent.waitIdle(30_000);
    work = new Workload([{ itemId: vm.itemId, agent }], 41, { disks: DISKS, diskBytes: DISK_MIB * MiB });
  });

  after(async () => {
    await work?.stop();
    await vm?.cleanup();
    await stack?.stop();
  });

  /** Cuts a tag with the writers paused: the model is the disks at the tag. */
  async function cut(kind: "crash" | "app"): Promise<{ tag: BatchTag; model: Map<string, Buffer> }> {
    await sleep(200);
    await work.pause();
    const model = work.copy();
    const tag = kind === "app" ? await agent.cutAppTag() : await agent.cutTag("crash");
    work.go();
    assert.ok(tag, "tag cut");
    assert.equal(tag.kind, kind);
    await waitSealed(stack, vmPartition(vm.itemId), tag.id);
    return { tag, model };
  }

  let older: { tag: BatchTag; model: Map<string, Buffer> };
  let app: { tag: BatchTag; model: Map<string, Buffer> };
  let newest: { tag: BatchTag; model: Map<string, Buffer> };

  test("test failover to latest-processed: the test VM runs from the newest point in the test network, replication keeps running, cleanup removes it all", async () => {
    older = await cut("crash");
    app = await cut("app");
    newest = await cut("crash");
    const out = await runFailover(stack, { itemIds: [vm.itemId], type: "test", recoveryPoint: "latest-processed" });
    assert.equal(out.type, "test");
    assert.equal(out.vms.length, 1);
    const v = out.vms[0];
    assert.equal(v.recoveryPoint.id, newest.tag.id);
    assert.equal(v.targetVm.name, "fo-solo-test");
    assert.equal(v.targetVm.powerState, "running");
    assert.equal(v.targetVm.privateIp, "10.2.0.254", "test failover takes addresses from the end of the range");
    assert.ok(v.dataLossWindowSeconds >= 0 && v.failoverDurationSeconds > 0);
    await assertVmDisks(stack, v, newest.model, "test failover");
    const during = await item(stack, vm.itemId);
    assert.equal(during.state, "TestFailover");
    const testVm = (await stack.services.fabric.list("virtualMachine")).find((r) => r.name === "fo-solo-test")!;
    assert.equal(testVm.powerState, "running");
    assert.match(testVm.nicId!, /fo-solo-test-nic$/);
    assert.equal((await stack.services.fabric.get(testVm.nicId!))!.vnetId!.split("/").pop(), "e2e-vnet-asr-test", "the isolated test network");

    // Replication never stopped: more writes reach the replicas, which still equal their sources.
    await sleep(500);
    await work.pause();
    await agent.waitIdle(30_000);
    const deadline = Date.now() + 30_000;
    for (const d of DISKS) {
      for (;;) {
        try {
          await assertReplicaEqualsSource(stack, vm, d);
          break;
        } catch (e) {
          if (Date.now() > deadline) throw e;
          await sleep(200);
        }
      }
    }
    work.go();

    const res = await stack.api("POST", `replicated-items/${vm.itemId}/test-failover-cleanup`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.state, "Protected");
    assert.ok(res.body.removed.length >= 4, `VM, NIC, two disks, test network: ${res.body.removed}`);
    assert.equal((await stack.services.fabric.list("virtualMachine")).filter((r) => r.createdBySiteRecovery).length, 0);
    assert.equal((await stack.services.fabric.list("networkInterface")).length, 0);
    assert.deepEqual(await failoverBlobs(stack), []);
    assert.equal((await stack.api("POST", `replicated-items/${vm.itemId}/test-failover-cleanup`)).status, 409, "nothing left to clean up");
  });

  test("test failover to latest-app-consistent, to a chosen older point, and again to the point already used and cleaned up: each disk equals that point's content", async () => {
    for (const [choice, expected] of [
      ["latest-app-consistent", app],
      [older.tag.id, older],
      // The first test's failover disks were copies of these snapshots and are deleted now: the snapshots are intact.
      [newest.tag.id, newest],
    ] as const) {
      const out = await runFailover(stack, { itemIds: [vm.itemId], type: "test", recoveryPoint: choice });
      assert.equal(out.vms[0].recoveryPoint.id, expected.tag.id, choice);
      assert.equal(out.vms[0].recoveryPoint.kind, expected.tag.kind);
      await assertVmDisks(stack, out.vms[0], expected.model, choice);
      assert.equal((await stack.api("POST", `replicated-items/${vm.itemId}/test-failover-cleanup`)).status, 200);
    }
  });

  /** The CLI against this stack; rejects (with its output) on a non-zero exit. */
  const run = (args: string[]) =>
    promisify(execFile)(process.execPath, [join(__dirname, "..", "..", "cli", "main.js"), "--url", stack.url, ...args], { encoding: "utf8", timeout: 60_000 });

  test("test failover to latest through the CLI: it follows the progress, prints the VM table, and the disks hold every acknowledged write", async () => {
    await work.pause();
    await agent.waitIdle(30_000); // every acknowledged write is in the cache, maybe not yet applied
    const model = work.copy();
    try {
      // Asynchronously: the host serving it runs in this process.
      const cli = await run(["failover", vm.itemId, "--type", "test", "--point", "latest"]);
      // One line per step and per VM as they change: the failover's last is `completed`, the VM's `running`.
      assert.match(cli.stdout, /\+\s*[\d.]+s\s+failover\s+completed\n/, "the progress ends with the failover completed");
      assert.match(cli.stdout, /\+\s*[\d.]+s\s+fo-solo\s+running \(2\/2 copied\)/, "and the VM running");
      assert.match(cli.stdout, /fo-solo-test\s+10\.2\.0\.254\s+running\s+latest-/);
      assert.match(cli.stdout, /RTO \d+\.\d s/);
      const f = (await item(stack, vm.itemId)).failover;
      assert.match(f.point.id, /^latest-/);
      assert.equal(f.resources.disks.length, DISKS.length);
      const byDisk = new Map(DISKS.map((d) => [`${vm.itemId}/${d}`, model.get(`${vm.itemId}/${d}`)!]));
      for (const d of DISKS) {
        const blob = `failover/${f.resources.disks.find((n: string) => n.startsWith(`fo-solo-${d}-`))}`;
        await assertFailoverDisk(stack, blob, byDisk.get(`${vm.itemId}/${d}`)!, `CLI latest ${d}`);
      }
      const cleanup = await run(["test-failover-cleanup", vm.itemId]);
      assert.equal(JSON.parse(cleanup.stdout).state, "Protected");
    } finally {
      work.go();
    }
  });

  test("unplanned failover to latest: the cache is drained and the VM's disks hold every acknowledged write; the source IP is kept; commit deletes the points", async () => {
    await work.pause();
    await agent.waitIdle(30_000); // every acknowledged write is in the cache (maybe not yet applied)
    const model = work.copy();
    for (const d of DISKS) assert.ok(readFileSync(vm.images[d]!).equals(model.get(`${vm.itemId}/${d}`)!), "the model is the source disk");
    const out = await runFailover(stack, { itemIds: [vm.itemId], type: "unplanned", recoveryPoint: "latest" });
    const v = out.vms[0];
    assert.match(v.recoveryPoint.id, /^latest-/);
    assert.equal(v.targetVm.name, "fo-solo");
    assert.equal(v.targetVm.privateIp, "10.2.0.4", "the source address is kept");
    await assertVmDisks(stack, v, model, "unplanned latest");
    const failed = await item(stack, vm.itemId);
    assert.equal(failed.state, "FailedOver");
    assert.equal(failed.failover.point.id, v.recoveryPoint.id);

    const again = await stack.api("POST", "failovers", { itemIds: [vm.itemId], type: "unplanned" });
    assert.equal(again.status, 409, "an item already failed over");
    assert.equal(again.body.error.details.state, "FailedOver");

    const commit = await stack.api("POST", `replicated-items/${vm.itemId}/commit`);
    assert.equal(commit.status, 200, JSON.stringify(commit.body));
    assert.equal(commit.body.state, "FailoverCommitted");
    assert.deepEqual((await stack.api("GET", `replicated-items/${vm.itemId}/recovery-points`)).body, []);
    assert.equal((await stack.api("POST", `replicated-items/${vm.itemId}/commit`)).status, 409, "committed once");
    // The failed-over VM stays.
    assert.equal((await stack.services.fabric.list("virtualMachine")).find((r) => r.name === "fo-solo")?.powerState, "running");
    await work.stop();

    // Disabling the committed item removes its replicas, not what the failed-over VM runs in.
    const disabled = await stack.api("DELETE", `replicated-items/${vm.itemId}`);
    assert.equal(disabled.status, 202, JSON.stringify(disabled.body));
    const target = failed.target;
    for (const id of [target.resourceGroup.id, target.vnet.id]) {
      assert.ok(await stack.services.fabric.get(id), `${id} stays: the failed-over VM uses it`);
      assert.ok(!disabled.body.removed.some((r: string) => r.includes(id)), `${id} not removed`);
    }
    assert.ok(await stack.services.fabric.get(v.targetVm.id), "the failed-over VM stays");
  });
});

describe("failover of a replication group: group points, a recovery plan's order, planned with no data loss", () => {
  const GROUP = "fo-tier";
  let stack: TestStack;
  let members: E2eVm[] = [];
  let solo: E2eVm;
  let coordinator: Agent;
  let onCut: ((vm: E2eVm, tagId: string) => void) | undefined;

  before(async () => {
    stack = await startTestStack({ queueOverrides: { maxPollingIntervalMs: 100, visibilityTimeoutMs: 500 }, env: { AGENT_CHECKIN_SECONDS: "1" } });
    for (const name of ["fo-a", "fo-b"]) {
      const vm = await protectVm(stack, name, DISK_MIB);
      assert.equal((await stack.api("PATCH", `replicated-items/${vm.itemId}`, { replicationGroup: GROUP })).status, 200);
      members.push(vm);
    }
    members = members.sort((a, b) => (a.itemId < b.itemId ? -1 : 1));
    for (const vm of members) {
      await vm.startAgent({
        checkinIntervalMs: 300,
        tagIntervalMs: 3_600_000,
        groupPort: 0,
        groupHost: "127.0.0.1",
        groupHoldBoundMs: 1000,
        groupOnCut: (t) => onCut?.(vm, t.id),
      });
    }
    solo = await protectVm(stack, "fo-web", DISK_MIB);
    await solo.startAgent({ tagIntervalMs: 3_600_000 });
    await Promise.all([...members, solo].map((vm) => vm.agent!.waitIdle(30_000)));
    coordinator = members[0]!.agent!;
    const deadline = Date.now() + 15_000;
    while (coordinator.groupRole !== "coordinator" || coordinator.groupMembersConnected().length < 1) {
      if (Date.now() > deadline) assert.fail("no group coordinator");
      await sleep(50);
    }
  });

  after(async () => {
    for (const vm of [...members, solo]) await vm?.cleanup();
    await stack?.stop();
  });

  test("a member alone, an unknown group, an unknown point: refused, nothing started", async () => {
    // The group's members (the other VM may still be finishing its initial replication meanwhile).
    const groupItems = async () => JSON.stringify((await stack.services.items.list()).filter((i) => i.replicationGroup === GROUP));
    const before = await groupItems();
    const alone = await stack.api("POST", "failovers", { itemIds: [members[0]!.itemId], type: "test" });
    assert.equal(alone.status, 409);
    assert.equal(alone.body.error.code, "GroupMemberAlone");
    assert.deepEqual(alone.body.error.details.missing, [members[1]!.itemId]);
    assert.equal((await stack.api("POST", "failovers", { groupId: "no-such-group", type: "test" })).status, 404);
    assert.equal((await stack.api("POST", "failovers", { groupId: GROUP, type: "test", recoveryPoint: "no-such-point" })).status, 404);
    assert.equal(await groupItems(), before, "no item changed");
  });

  test("a recovery plan fails over group 1, then group 2 once every VM of group 1 runs; the group's VMs come from one group point", async () => {
    // Group point: the members' images at the cut, writes held.
    const images = new Map<string, Buffer>();
    onCut = (vm) => {
      for (const d of DISKS) images.set(`${vm.itemId}/${d}`, readFileSync(vm.images[d]!));
    };
    const work = new Workload(
      members.map((vm) => ({ itemId: vm.itemId, agent: vm.agent! })),
      43,
      { disks: DISKS, diskBytes: DISK_MIB * MiB },
    );
    let tagId: string;
    try {
      await sleep(300);
      const out = await coordinator.groupTag("crash");
      assert.ok(out?.committed, out?.reason);
      tagId = out.tagId;
    } finally {
      await work.stop();
      onCut = undefined;
    }
    await waitSealed(stack, groupPartition(GROUP), tagId);
    await solo.agent!.waitIdle(30_000);
    const soloTag = await solo.agent!.cutTag("crash");
    assert.ok(soloTag);
    for (const d of DISKS) images.set(`${solo.itemId}/${d}`, readFileSync(solo.images[d]!));
    await waitSealed(stack, vmPartition(solo.itemId), soloTag.id);

    const plan = await stack.api("POST", "recovery-plans", { name: "fo-drill", groups: [[solo.itemId], members.map((m) => m.itemId)] });
    assert.equal(plan.status, 201, JSON.stringify(plan.body));
    const id = await startFailover(stack, { planId: plan.body.id, type: "test", recoveryPoint: "latest-processed" });
    const stages = new Set<string>();
    const st = await waitFailover(stack, id, 60_000, (s) => s.customStatus?.stage && stages.add(`${s.customStatus.stage.index}/${s.customStatus.stage.count}`));
    assert.equal(st.runtimeStatus, "Completed", JSON.stringify(st.customStatus));
    assert.equal(st.output.vms.length, 3);
    for (const v of st.output.vms) await assertVmDisks(stack, v, images, "plan");
    const groupVms = st.output.vms.filter((v: any) => v.itemId !== solo.itemId);
    assert.deepEqual(
      groupVms.map((v: any) => v.recoveryPoint.id),
      [tagId!, tagId!],
      "one group point for both",
    );
    assert.ok(groupVms.every((v: any) => v.recoveryPoint.scope === "group"));
    // Order: the first group's VM ran before the second group's disks started copying.
    const timeline = async (itemId: string) => (await item(stack, itemId)).failover.timeline as { step: string; at: string }[];
    const soloRunning = (await timeline(solo.itemId)).find((t) => t.step === "VM running")!.at;
    for (const m of members) {
      const copyStart = (await timeline(m.itemId)).find((t) => t.step === "disk copies started")!.at;
      assert.ok(copyStart >= soloRunning, `group 2 started copying at ${copyStart}, before group 1 ran at ${soloRunning}`);
    }
    for (const vm of [solo, ...members]) assert.equal((await stack.api("POST", `replicated-items/${vm.itemId}/test-failover-cleanup`)).status, 200);
  });

  test("planned failover of the group under a live workload: the source VMs shut down, and the VMs hold every acknowledged write", async () => {
    // The disks hold what the earlier tests wrote.
    const initial = new Map(members.flatMap((vm) => DISKS.map((d) => [`${vm.itemId}/${d}`, readFileSync(vm.images[d]!)] as const)));
    const work = new Workload(
      members.map((vm) => ({ itemId: vm.itemId, agent: vm.agent! })),
      47,
      { disks: DISKS, diskBytes: DISK_MIB * MiB, initial },
    );
    try {
      await sleep(500);
      const out = await runFailover(stack, { groupId: GROUP, type: "planned" }, 90_000);
      await work.stop();
      assert.ok(work.refused > 0, "writes after the shutdown were refused, not acknowledged");
      assert.ok(work.acknowledged > 0);
      const models = work.copy();
      assert.equal(out.vms.length, 2);
      for (const v of out.vms) {
        assert.match(v.recoveryPoint.id, /^final-/);
        assert.equal(v.dataLossWindowSeconds, 0);
        await assertVmDisks(stack, v, models, "planned");
      }
      for (const m of members) assert.equal((await item(stack, m.itemId)).state, "FailedOver");
      // The source stays shut down after the failover: its agents keep refusing writes.
      await sleep(1000);
      await members[0]!.agent!.checkin();
      await assert.rejects(members[0]!.agent!.trackedDisk("os").write(0, Buffer.alloc(512, 1)), /shutting down/);
      const sources = (await stack.services.fabric.list("virtualMachine")).filter((r) => !r.createdBySiteRecovery);
      assert.equal(sources.length, 2);
      assert.ok(
        sources.every((r) => r.powerState === "deallocated"),
        "the source VMs are shut down",
      );
    } finally {
      await work.stop();
    }
  });
});

describe("failover to latest drains the cache itself", () => {
  let stack: TestStack;
  let vm: E2eVm;

  before(async () => {
    // No queue polling: nothing applies a batch unless a test delivers it, or the failover's drain does.
    stack = await startTestStack({ queues: false, env: { AGENT_CHECKIN_SECONDS: "1" } });
    vm = await protectVm(stack, "fo-drain", DISK_MIB);
  });

  after(async () => {
    await vm?.cleanup();
    await stack?.stop();
  });

  test("batches the queue never delivered are applied by the drain: the failover disks equal the source, the replicas were behind", async () => {
    const agent = await vm.startAgent({ tagIntervalMs: 3_600_000 });
    await agent.waitIdle(30_000);
    const cache = stack.services.storage.cacheBlobs.getContainerClient(cacheContainerName(vm.itemId));
    // Initial replication, delivered by hand.
    const initial = (
      await Promise.all(DISKS.map(async (d) => (await cacheBatches(cache, d)).map((b) => ({ v: 1 as const, itemId: vm.itemId, diskId: d, seq: b.seq }))))
    ).flat();
    await deliver(stack, initial);
    assert.equal((await item(stack, vm.itemId)).state, "Protected");
    // Writes that reach the cache and stay there.
    for (const [n, d] of DISKS.entries()) await agent.trackedDisk(d).write(1_000_000 + n * 4097, Buffer.alloc(300_000, 0x5c + n));
    await agent.waitIdle(30_000);
    const replicas = await stack.services.storage.replicas();
    for (const d of DISKS) {
      const behind = (await replicas.getPageBlobClient(replicaBlobName(vm.itemId, d)).getProperties()).blobSequenceNumber!;
      assert.ok(behind < lastSeq(agent, d), `the replica of ${d} is behind the cache (${behind} < ${lastSeq(agent, d)})`);
    }
    const out = await runFailover(stack, { itemIds: [vm.itemId], type: "test", recoveryPoint: "latest" });
    const source = new Map(DISKS.map((d) => [`${vm.itemId}/${d}`, readFileSync(vm.images[d]!)]));
    await assertVmDisks(stack, out.vms[0], source, "drained latest");
    for (const d of DISKS) {
      const w = (await replicas.getPageBlobClient(replicaBlobName(vm.itemId, d)).getProperties()).blobSequenceNumber!;
      assert.equal(w, lastSeq(agent, d), `the drain applied ${d} up to the last batch`);
    }
  });
});
