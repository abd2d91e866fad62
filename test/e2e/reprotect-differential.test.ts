// Differential re-protect, measured: after a failover, 1% of the blocks changed → the reverse initial replication ships ≤ 3% of the disk; with nothing left to seed from it says so and copies whole.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { open } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Agent } from "../../agent";
import { replicaBlobName } from "../../shared/protection/items";
import { vmPartition } from "../../shared/recovery-points/points";
import { startTestStack, type TestStack } from "../support/stack";
import { protectVm, type E2eVm } from "../support/e2e";
import { runFailover } from "../support/failover";
import { assertReplicaEquals, changeBlocks, materialize, reprotect, startAgentOn, waitItem, waitReprotectJob } from "../support/reprotect";

const DISK_MIB = 64;
const DISK = DISK_MIB * 1024 * 1024;
const DISKS = ["os", "data0"];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Fills every 64 KiB block with bytes of its own (a dense disk: a whole copy ships all of it). */
async function fillDense(agent: Agent, diskId: string, seed: number): Promise<void> {
  const disk = agent.trackedDisk(diskId);
  const chunk = 1024 * 1024;
  for (let at = 0; at < DISK; at += chunk) {
    const data = Buffer.alloc(chunk);
    for (let b = 0; b < chunk; b += 4096) data.fill(((at + b) / 4096 + seed) % 251 || 1, b, b + 4096);
    await disk.write(at, data);
  }
}

/** Protect, fill, point, unplanned failover, commit: the VM now runs in the recovery region (its disks as files). */
async function failedOver(stack: TestStack, name: string, dir: string): Promise<{ vm: E2eVm; images: Record<string, string> }> {
  const vm = await protectVm(stack, name, DISK_MIB);
  const agent = await vm.startAgent({ tagIntervalMs: 3_600_000, maxBatchBytes: 4 * 1024 * 1024 });
  for (const [n, d] of DISKS.entries()) await fillDense(agent, d, n + 1);
  await agent.waitIdle(120_000);
  const tag = await agent.cutTag("crash");
  assert.ok(tag);
  const deadline = Date.now() + 60_000;
  while (!(await stack.services.points.listPartition(vmPartition(vm.itemId))).some((p) => p.id === tag.id)) {
    if (Date.now() > deadline) assert.fail("the point was not sealed");
    await sleep(100);
  }
  const fo = await runFailover(stack, { itemIds: [vm.itemId], type: "unplanned", recoveryPoint: tag.id }, 120_000);
  await agent.stop();
  const images = await materialize(stack, "forward", fo, join(dir, name));
  assert.equal((await stack.api("POST", `replicated-items/${vm.itemId}/commit`)).status, 200);
  return { vm, images };
}

describe("differential re-protect", () => {
  let stack: TestStack;
  let dir: string;
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    stack = await startTestStack({ env: { AGENT_CHECKIN_SECONDS: "1" } });
    dir = mkdtempSync(join(tmpdir(), "reprotect-diff-"));
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    await stack?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("1% of the blocks changed after failover: the reverse initial replication ships at most 3% of each disk, and the replicas equal the disks", async () => {
    const { vm, images } = await failedOver(stack, "diff", dir);
    cleanups.push(() => vm.cleanup());
    for (const [n, d] of DISKS.entries()) await changeBlocks(images[d]!, 0.01, 40 + n);
    const rp = await reprotect(stack, vm.itemId);
    const agent = await startAgentOn(stack, rp.token, images, join(dir, "state-diff"), { maxBatchBytes: 4 * 1024 * 1024 });
    cleanups.push(() => agent.stop());
    const item = await waitItem(stack, vm.itemId, "Protected", "reverse");
    for (const d of DISKS) await assertReplicaEquals(stack, "reverse", vm.itemId, d, images[d]!);
    for (const d of item.disks) {
      const t = d.initialReplication.transferredBytes;
      assert.ok(t > 0, `${d.id}: the changed blocks were shipped`);
      assert.ok(t <= 0.03 * DISK, `${d.id}: shipped ${t} bytes, more than 3% of ${DISK}`);
      assert.equal(d.initialReplication.doneBytes, DISK, "compared whole");
      assert.equal(d.initialReplication.etaSeconds, 0);
    }
    const job = await waitReprotectJob(stack, vm.itemId);
    assert.equal(job.state, "Succeeded");
    assert.equal(
      job.output.transferredBytes,
      item.disks.reduce((n: number, d: any) => n + d.initialReplication.transferredBytes, 0),
      "the job reports what the disks shipped",
    );
    assert.equal(job.output.totalBytes, 2 * DISK);
    await agent.stop();
  });

  test("nothing left to seed from: the re-protect says so per disk and the agent copies the disks whole (every block that is not zero)", async () => {
    const { vm, images } = await failedOver(stack, "whole", dir);
    cleanups.push(() => vm.cleanup());
    // The recovery region lost the forward replicas, and there never was a reverse one.
    const replicas = await stack.services.storage.replicas("forward");
    for (const d of DISKS) await replicas.getPageBlobClient(replicaBlobName(vm.itemId, d)).delete({ deleteSnapshots: "include" });
    // Half of one disk is zeros: a whole copy skips nothing but zeros.
    const fh = await open(images.data0!, "r+");
    await fh.write(Buffer.alloc(DISK / 2), 0, DISK / 2, DISK / 2);
    await fh.close();
    const rp = await reprotect(stack, vm.itemId);
    const agent = await startAgentOn(stack, rp.token, images, join(dir, "state-whole"), { maxBatchBytes: 4 * 1024 * 1024 });
    cleanups.push(() => agent.stop());
    const item = await waitItem(stack, vm.itemId, "Protected", "reverse");
    for (const d of DISKS) {
      assert.equal(item.reprotect.seeds[d].source, "none");
      assert.match(item.reprotect.seeds[d].note, /nothing usable is left/);
      await assertReplicaEquals(stack, "reverse", vm.itemId, d, images[d]!);
    }
    const shipped = Object.fromEntries(item.disks.map((d: any) => [d.id, d.initialReplication.transferredBytes]));
    assert.ok(shipped.os >= DISK, `os: a whole copy (${shipped.os})`);
    assert.ok(shipped.data0 >= DISK / 2 && shipped.data0 < DISK * 0.6, `data0: its non-zero half (${shipped.data0})`);
    await agent.stop();
  });
});
