// The whole pipeline with real parts: the agent on image files, the cache, the queue, apply, the replicas — bytes compared.
import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startTestStack, type TestStack } from "../support/stack";
import { takeAnnouncements } from "../support/cache";
import { rng } from "../support/batches";
import { assertReplicaEqualsSource, deliver, lastSeq, protectVm, runWorkload, waitForWatermark, type E2eVm } from "../support/e2e";
import { cacheContainerName } from "../../shared/protection/items";
import { CorruptBatchError, decodeBatch, type BatchMessage } from "../../shared/replication/batch";

const DISKS = ["os", "data0"];

describe("continuous replication, delivered by the local host", () => {
  let stack: TestStack;
  let vm: E2eVm | undefined;
  before(async () => {
    stack = await startTestStack({ queueOverrides: { maxPollingIntervalMs: 100, visibilityTimeoutMs: 500 }, env: { AGENT_CHECKIN_SECONDS: "1" } });
  });
  afterEach(async () => {
    await vm?.cleanup();
    vm = undefined;
  });
  after(async () => {
    await stack?.stop();
  });

  test("two tracked 64 MiB disks under a seeded workload of overlapping unaligned writes: each replica equals its source", async () => {
    vm = await protectVm(stack, "e2e-1");
    const agent = await vm.startAgent();
    await runWorkload(agent, DISKS, 42, 400);
    await agent.waitIdle(60_000);
    for (const d of DISKS) {
      await waitForWatermark(stack, vm, d, lastSeq(agent, d));
      await assertReplicaEqualsSource(stack, vm, d);
    }
    const status = await stack.api("GET", `replicated-items/${vm.itemId}`);
    assert.equal(status.body.state, "Protected");
    for (const d of status.body.disks) {
      assert.equal(d.watermark, lastSeq(agent, d.id));
      assert.equal(d.pendingBatches, 0);
    }
  });
});

describe("continuous replication under delivery faults (messages delivered by the test)", () => {
  let stack: TestStack;
  let vm: E2eVm | undefined;
  before(async () => {
    stack = await startTestStack({ queues: false, env: { AGENT_CHECKIN_SECONDS: "1", SWEEP_STALL_SECONDS: "0" } });
  });
  afterEach(async () => {
    await vm?.cleanup();
    vm = undefined;
  });
  after(async () => {
    await stack?.stop();
  });

  /** The announcements of this VM's disks waiting on the queue (others' are dropped). */
  async function announcements(v: E2eVm): Promise<BatchMessage[]> {
    return (await takeAnnouncements(await stack.services.storage.replicationQueue())).filter((m) => m.itemId === v.itemId);
  }

  /** Runs the workload, waits until the agent shipped everything, and returns the announcements it made. */
  async function shipped(name: string, seed: number, checkinIntervalMs?: number): Promise<{ vm: E2eVm; messages: BatchMessage[] }> {
    vm = await protectVm(stack, name);
    const agent = await vm.startAgent(checkinIntervalMs ? { checkinIntervalMs } : {});
    await runWorkload(agent, DISKS, seed, 200);
    await agent.waitIdle(60_000);
    const messages = await announcements(vm);
    for (const d of DISKS) {
      const seqs = new Set(messages.filter((m) => m.diskId === d).map((m) => m.seq));
      assert.deepEqual(
        [...seqs].sort((a, b) => a - b),
        Array.from({ length: lastSeq(agent, d) }, (_, i) => i + 1),
        `every batch of ${d} announced`,
      );
    }
    return { vm, messages };
  }

  async function assertConverged(v: E2eVm): Promise<void> {
    for (const d of DISKS) {
      await waitForWatermark(stack, v, d, lastSeq(v.agent!, d), 5_000);
      await assertReplicaEqualsSource(stack, v, d);
    }
  }

  test("every message delivered twice: duplicates are no-ops", async () => {
    const { vm: v, messages } = await shipped("dup", 7);
    await deliver(
      stack,
      messages.flatMap((m) => [m, m]),
    );
    await assertConverged(v);
  });

  test("messages delivered in reverse order: gaps wait, and the first message applies everything", async () => {
    const { vm: v, messages } = await shipped("reverse", 8);
    await deliver(stack, [...messages].reverse());
    await assertConverged(v);
  });

  test("10% of messages dropped, the last ones among them: the sweep re-announces stalled disks and nothing is lost", async () => {
    vm = await protectVm(stack, "dropped");
    const v = vm;
    const agent = await v.startAgent();
    const next = rng(99);
    let dropped = 0;
    // Live delivery that loses one message in ten.
    let live = true;
    const deliverer = (async () => {
      while (live) {
        const batch = await announcements(v);
        await deliver(
          stack,
          batch.filter(() => next() >= 0.1 || (dropped++, false)),
        );
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    await runWorkload(agent, DISKS, 9, 200);
    await agent.waitIdle(60_000);
    live = false;
    await deliverer;
    // The last writes' announcements are all lost: without the sweep, nothing would ever apply them.
    await runWorkload(agent, DISKS, 10, 16);
    await agent.waitIdle(60_000);
    dropped += (await announcements(v)).length;
    assert.ok(dropped > 0);
    const replicas = await stack.services.storage.replicas();
    for (const d of DISKS) {
      const w = (await replicas.getPageBlobClient(`${v.itemId}/${d}.vhd`).getProperties()).blobSequenceNumber ?? 0;
      assert.ok(w < lastSeq(agent, d), `${d}: the tail waits (watermark ${w} of ${lastSeq(agent, d)})`);
    }
    for (let round = 0; round < 5; round++) {
      await stack.host.runTimer("sweepCache");
      await deliver(stack, await announcements(v));
    }
    await assertConverged(v);
  });

  test("a corrupt batch is never applied: the disk goes ResyncRequired, and the agent's differential resync restores equality", async () => {
    // The agent checks in only when the test says so: the resync must not start before the halt is observed.
    const { vm: v, messages } = await shipped("corrupt", 10, 3_600_000);
    const victim = messages.find((m) => m.diskId === "data0" && m.seq === 3)!;
    const cache = stack.services.storage.cacheBlobs.getContainerClient(cacheContainerName(v.itemId));
    const name = `data0/${String(victim.seq).padStart(20, "0")}.batch`;
    const bytes = await cache.getBlobClient(name).downloadToBuffer();
    bytes[bytes.length - 1] ^= 0xff;
    await cache.getBlockBlobClient(name).upload(bytes, bytes.length);
    assert.throws(() => decodeBatch(bytes), CorruptBatchError);
    await deliver(stack, messages);
    assert.equal(await cache.getBlobClient(name).exists(), false, "the corrupt batch is gone from the cache");

    const halted = await stack.api("GET", `replicated-items/${v.itemId}`);
    assert.equal(halted.body.state, "ResyncRequired");
    const data0 = halted.body.disks.find((d: { id: string }) => d.id === "data0");
    assert.equal(data0.state, "ResyncRequired");
    assert.equal(data0.watermark, 2, "halted before the corrupt batch");
    assert.match(JSON.stringify(halted.body.health.issues), /data0/);
    assert.equal(halted.body.health.status, "Critical");
    // The os disk is unaffected.
    await waitForWatermark(stack, v, "os", lastSeq(v.agent!, "os"), 5_000);
    await assertReplicaEqualsSource(stack, v, "os");

    // The agent learns of the resync at its next check-in and ships the differing blocks.
    await v.agent!.checkin();
    await v.agent!.waitIdle(60_000);
    for (let round = 0; round < 5; round++) {
      await deliver(stack, await announcements(v));
      const s = await stack.api("GET", `replicated-items/${v.itemId}`);
      if (s.body.state === "Protected") break;
      await stack.host.runTimer("sweepCache");
    }
    await assertConverged(v);
    const healed = await stack.api("GET", `replicated-items/${v.itemId}`);
    assert.equal(healed.body.state, "Protected");
    assert.equal(healed.body.health.status, "Healthy");
  });
});
