// The whole DR cycle with real agents and bytes compared at every step: protect → unplanned failover → writes → commit → re-protect → failback → commit → re-protect → failover.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Agent } from "../../agent";
import { vmPartition } from "../../shared/recovery-points/points";
import { startTestStack, type TestStack } from "../support/stack";
import { protectVm, runWorkload, type E2eVm } from "../support/e2e";
import { runFailover } from "../support/failover";
import { assertDiskEquals, assertReplicaEquals, changeBlocks, materialize, reprotect, startAgentOn, waitItem, waitReprotectJob } from "../support/reprotect";

const DISK_MIB = 16;
const DISKS = ["os", "data0"];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("the DR cycle: re-protect and failback, differential, bytes compared at every step", () => {
  let stack: TestStack;
  let vm: E2eVm;
  let dir: string;
  const agents: Agent[] = [];

  before(async () => {
    stack = await startTestStack({ env: { AGENT_CHECKIN_SECONDS: "1", SWEEP_STALL_SECONDS: "2" } });
    dir = mkdtempSync(join(tmpdir(), "reprotect-cycle-"));
  });

  after(async () => {
    for (const a of agents) await a.stop().catch(() => undefined);
    await vm?.cleanup();
    await stack?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const model = (images: Record<string, string>) => new Map(DISKS.map((d) => [d, readFileSync(images[d]!)]));

  test("protect → unplanned failover → writes → commit → re-protect (reverse) → planned failback → commit → re-protect (forward) → failover: every disk equals its model", async () => {
    // Forward: a seeded workload, a point, then writes the point does not have (the data-loss window).
    vm = await protectVm(stack, "cycle", DISK_MIB);
    const forward = await vm.startAgent({ tagIntervalMs: 3_600_000 });
    await runWorkload(forward, DISKS, 12, 200);
    await forward.waitIdle(60_000);
    const tag = await forward.cutTag("crash");
    assert.ok(tag);
    const sealed = Date.now() + 30_000;
    while (!(await stack.services.points.listPartition(vmPartition(vm.itemId))).some((p) => p.id === tag.id)) {
      if (Date.now() > sealed) assert.fail("the point was not sealed");
      await sleep(100);
    }
    await runWorkload(forward, DISKS, 13, 40);
    await forward.waitIdle(60_000);

    // The original region is lost: unplanned failover to the point; the source agent is gone with it.
    const fo1 = await runFailover(stack, { itemIds: [vm.itemId], type: "unplanned", recoveryPoint: tag.id });
    await forward.stop();
    const recovery = await materialize(stack, "forward", fo1, join(dir, "recovery-vm"));
    // The failed-over VM runs unprotected for a while: writes on its disks.
    for (const d of DISKS) await changeBlocks(recovery[d]!, 0.02, d === "os" ? 5 : 6);
    assert.equal((await stack.api("POST", `replicated-items/${vm.itemId}/commit`)).status, 200);

    // Re-protect: the same item, reversed; the agent on the running VM registers with the new token.
    const rp1 = await reprotect(stack, vm.itemId);
    assert.equal(rp1.body.direction, "reverse");
    const reverseAgent = await startAgentOn(stack, rp1.token, recovery, join(dir, "state-reverse"));
    agents.push(reverseAgent);
    await runWorkload(reverseAgent, DISKS, 14, 60);
    const protectedReverse = await waitItem(stack, vm.itemId, "Protected", "reverse");
    await reverseAgent.waitIdle(60_000);
    for (const d of DISKS) await assertReplicaEquals(stack, "reverse", vm.itemId, d, recovery[d]!);
    const job1 = await waitReprotectJob(stack, vm.itemId);
    assert.equal(job1.state, "Succeeded", JSON.stringify(job1));
    assert.equal(job1.output.direction, "reverse");
    for (const d of DISKS) assert.equal(job1.seeds[d].source, "other-direction-replica", `${d} seeded from the forward replica`);
    const disk = DISK_MIB * 1024 * 1024;
    for (const d of protectedReverse.disks) {
      assert.equal(d.initialReplication.percent, 100);
      assert.ok(d.initialReplication.transferredBytes > 0, `${d.id}: something was shipped`);
      // The live workload ships during the copy too; the differential proof with a measured change is its own test.
      assert.ok(d.initialReplication.transferredBytes < disk, `${d.id}: shipped ${d.initialReplication.transferredBytes} of ${disk}: differential, not whole`);
    }

    // Planned failback into the original region: the VM in the recovery region is shut down, zero data loss.
    await runWorkload(reverseAgent, DISKS, 15, 40);
    await reverseAgent.waitIdle(60_000);
    const beforeFailback = model(recovery);
    const fo2 = await runFailover(stack, { itemIds: [vm.itemId], type: "planned" }, 120_000);
    for (const d of fo2.vms[0].disks) await assertDiskEquals(stack, "reverse", d.blob, beforeFailback.get(d.diskId)!, `failback ${d.diskId}`);
    assert.equal(fo2.vms[0].targetVm.resourceGroup, "e2e-rg", "the original resource group");
    assert.equal(fo2.vms[0].targetVm.privateIp, "10.2.0.4", "the original IP");
    const vmsNamed = async (rg: string) => (await stack.services.fabric.list("virtualMachine")).filter((r) => r.name === "cycle" && r.resourceGroup === rg);
    assert.equal((await vmsNamed("e2e-rg")).length, 1, "one VM in the original resource group");
    const left = await vmsNamed("e2e-rg-asr");
    assert.equal(left.length, 1);
    assert.equal(left[0]!.powerState, "deallocated", "the VM in the recovery region is shut down by the planned failback");
    await reverseAgent.stop();
    assert.equal((await stack.api("POST", `replicated-items/${vm.itemId}/commit`)).status, 200);

    // Re-protect again: forward, differentially, from the failed-back VM.
    const original = await materialize(stack, "reverse", fo2, join(dir, "original-vm"));
    const rp2 = await reprotect(stack, vm.itemId);
    assert.equal(rp2.body.direction, "forward");
    const forward2 = await startAgentOn(stack, rp2.token, original, join(dir, "state-forward2"));
    agents.push(forward2);
    await runWorkload(forward2, DISKS, 16, 40);
    const protectedForward = await waitItem(stack, vm.itemId, "Protected", "forward");
    await forward2.waitIdle(60_000);
    for (const d of DISKS) await assertReplicaEquals(stack, "forward", vm.itemId, d, original[d]!);
    for (const d of protectedForward.disks)
      assert.ok(d.initialReplication.transferredBytes < disk, `${d.id}: forward re-protect shipped ${d.initialReplication.transferredBytes}`);
    assert.equal((await waitReprotectJob(stack, vm.itemId)).state, "Succeeded");

    // One more failover: its disks match, and the VM the first failover left in the recovery region is replaced.
    const last = model(original);
    const fo3 = await runFailover(stack, { itemIds: [vm.itemId], type: "planned" }, 120_000);
    for (const d of fo3.vms[0].disks) await assertDiskEquals(stack, "forward", d.blob, last.get(d.diskId)!, `last failover ${d.diskId}`);
    const inRecovery = await vmsNamed("e2e-rg-asr");
    assert.equal(inRecovery.length, 1, "replaced, not duplicated");
    assert.equal(inRecovery[0]!.tags?.failover, fo3.instanceId);
    assert.equal(inRecovery[0]!.powerState, "running");
    assert.equal((await vmsNamed("e2e-rg"))[0]!.powerState, "deallocated", "the failed-back VM is shut down by the planned failover");
    // Every operation of the cycle is a job (GET /api/jobs), each Succeeded; a re-protect's job is its orchestration.
    const jobs = (await stack.api("GET", `jobs?itemId=${vm.itemId}`)).body as { id: string; type: string; state: string; steps: { name: string }[] }[];
    assert.deepEqual(
      jobs.map((j) => `${j.type} ${j.state}`).reverse(),
      ["enable", "failover", "commit", "reprotect", "failover", "commit", "reprotect", "failover"].map((t) => `${t} Succeeded`),
    );
    const reprotects = jobs.filter((j) => j.type === "reprotect");
    assert.deepEqual(reprotects.map((j) => j.id).sort(), [rp1.jobId, rp2.jobId].sort());
    assert.ok(
      reprotects.every((j) => j.steps.some((st) => st.name === "seeding replicas")),
      JSON.stringify(reprotects),
    );
    await forward2.stop();
  });
});
