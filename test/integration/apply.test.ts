// Applying cached batches to replicas against real Azurite: order, gaps, duplicates, fencing, crash safety, corruption, resync, sweep, poison.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import type { LeasePort } from "../../shared/storage/ports";
import { QueueClient } from "@azure/storage-queue";
import { startTestStack, type TestStack } from "../support/stack";
import { DiskModel, encodeWrites, KiB, MiB, randomBytes, randomWrites, rng, type BatchSpec, type Write } from "../support/batches";
import { applyBatches, type ApplyDeps, type ApplyOutcome } from "../../shared/replication/apply";
import { readWatermark, writeBatch } from "../../shared/replication/replica";
import { batchBlobName, decodeBatch, pageWrites, type BatchMessage } from "../../shared/replication/batch";
import { cacheContainerName, replicaBlobName } from "../../shared/protection/items";
import { queueMessageText } from "../../shared/storage/names";
import { REPLICATION_POISON_QUEUE } from "../../shared/storage/names";
import { REPLICATION_QUEUE } from "../../shared/storage/names";
import { sweepCache } from "../../shared/replication/sweep";
import { HEARTBEAT_BLOB, RESYNC_BLOCK_BYTES } from "../../shared/protection/agent-protocol";
import { crc32c } from "@node-rs/crc32";

const DISK = 16 * MiB;

function enableBody(name: string, disks: { id: string; sizeBytes: number }[]) {
  return {
    vm: {
      name,
      region: "eastus",
      resourceGroup: "apply-rg",
      size: "Standard_D2s_v5",
      network: { vnet: "apply-vnet", subnet: "default" },
      disks,
    },
    targetRegion: "westus",
    policy: { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 300, appConsistentFrequencyMinutes: 240 },
  };
}

/** One protected VM under test: its disks' source models, and helpers to ship and apply batches. */
class Vm {
  readonly sources = new Map<string, DiskModel>();
  constructor(
    readonly stack: TestStack,
    readonly itemId: string,
    disks: { id: string; sizeBytes: number }[],
  ) {
    for (const d of disks) this.sources.set(d.id, new DiskModel(d.sizeBytes));
  }

  static async enable(stack: TestStack, name: string, disks = [{ id: "os", sizeBytes: DISK }]): Promise<Vm> {
    const res = await stack.api("POST", "replicated-items", enableBody(name, disks));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    return new Vm(stack, res.body.id, disks);
  }

  get deps(): ApplyDeps {
    const s = this.stack.services;
    return { storage: s.storage, items: s.items, config: s.config };
  }

  cache() {
    return this.stack.services.storage.cacheBlobs.getContainerClient(cacheContainerName(this.itemId));
  }

  async replica(diskId = "os") {
    return (await this.stack.services.storage.replicas()).getPageBlobClient(replicaBlobName(this.itemId, diskId));
  }

  /** Encodes a batch, uploads it to the cache (as the agent does, with its write-time metadata); returns the encoded bytes. */
  async ship(
    seq: number,
    writes: Write[],
    extra: Partial<BatchSpec> = {},
    opts: { diskId?: string; corrupt?: boolean; model?: boolean } = {},
  ): Promise<Buffer> {
    const diskId = opts.diskId ?? "os";
    const spec: BatchSpec = { itemId: this.itemId, diskId, seq, writes, ...extra };
    const encoded = encodeWrites(spec);
    if (opts.model !== false) this.sources.get(diskId)!.apply(writes);
    const upload = Buffer.from(encoded);
    // The last payload byte: past the header, inside the checksummed payload.
    if (opts.corrupt) upload[upload.length - 1] ^= 0x5a;
    const h = decodeBatch(encoded).header;
    await this.cache()
      .getBlockBlobClient(batchBlobName(diskId, seq))
      .uploadData(upload, { metadata: { firstwritems: String(h.firstWriteMs), lastwritems: String(h.lastWriteMs) } });
    return encoded;
  }

  /** Ships `count` batches of random writes starting at `seq`. */
  async shipRandom(next: () => number, seq: number, count: number, diskId = "os", writes = 12): Promise<void> {
    for (let i = 0; i < count; i++) await this.ship(seq + i, randomWrites(next, this.sources.get(diskId)!.sizeBytes, writes), {}, { diskId });
  }

  apply(seq: number, diskId = "os", deps: Partial<ApplyDeps> = {}): Promise<ApplyOutcome> {
    return applyBatches({ ...this.deps, ...deps }, { v: 1, itemId: this.itemId, diskId, seq });
  }

  async send(seq: number, diskId = "os"): Promise<void> {
    const q = await this.stack.services.storage.replicationQueue();
    await q.sendMessage(queueMessageText({ v: 1, itemId: this.itemId, diskId, seq } satisfies BatchMessage));
  }

  async watermark(diskId = "os"): Promise<number | undefined> {
    return readWatermark(await this.replica(diskId));
  }

  async replicaBytes(diskId = "os"): Promise<Buffer> {
    return (await this.replica(diskId)).downloadToBuffer(0, this.sources.get(diskId)!.sizeBytes);
  }

  async assertReplicaEqualsSource(diskId = "os", message = "replica equals the source"): Promise<void> {
    const replica = await this.replicaBytes(diskId);
    const source = this.sources.get(diskId)!.bytes;
    if (!replica.equals(source)) {
      let at = 0;
      while (replica[at] === source[at]) at++;
      assert.fail(`${message}: first difference at byte ${at}`);
    }
  }

  async cachedSeqs(diskId = "os"): Promise<number[]> {
    const out: number[] = [];
    for await (const b of this.cache().listBlobsFlat({ prefix: `${diskId}/` })) out.push(Number(b.name.split("/")[1].split(".")[0]));
    return out;
  }

  async disk(diskId = "os") {
    return (await this.stack.services.items.getDisk(this.itemId, diskId))!.disk;
  }

  async item() {
    return (await this.stack.services.items.get(this.itemId))!.item;
  }

  async status() {
    const res = await this.stack.api("GET", `replicated-items/${this.itemId}`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    return res.body;
  }

  async disable(): Promise<void> {
    assert.equal((await this.stack.api("DELETE", `replicated-items/${this.itemId}`)).status, 202);
  }
}

async function queueDepth(stack: TestStack, name: string): Promise<number> {
  const q = new QueueClient(stack.env.AzureWebJobsStorage!, name);
  await q.createIfNotExists();
  return (await q.getProperties()).approximateMessagesCount ?? 0;
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("applying batches", () => {
  let stack: TestStack;
  const logs: string[] = [];
  before(async () => {
    stack = await startTestStack({
      // The sweep runs only when a test fires it; any disk with a cached batch counts as stalled.
      env: { SWEEP_SCHEDULE: "0 0 0 1 1 *", SWEEP_STALL_SECONDS: "0" },
      queueOverrides: { visibilityTimeoutMs: 200, maxPollingIntervalMs: 200 },
      log: (line) => logs.push(line),
    });
  });
  after(async () => {
    await stack?.stop();
  });

  test("contiguous batches apply in order and the replica equals the source byte for byte", async () => {
    const vm = await Vm.enable(stack, "order-1");
    const next = rng(11);
    await vm.shipRandom(next, 1, 20);
    const out = await vm.apply(1);
    assert.deepEqual([out.result, out.applied, out.watermark, out.stop], ["ran", 20, 20, "caughtUp"]);
    assert.equal(await vm.watermark(), 20);
    await vm.assertReplicaEqualsSource();
    assert.deepEqual(await vm.cachedSeqs(), [], "applied batches leave the cache");
    const disk = await vm.disk();
    assert.equal(disk.lastAppliedSeq, 20);
    assert.ok(disk.lastAppliedAt && Date.now() - Date.parse(disk.lastAppliedAt) < 60_000);
    assert.ok(disk.lastAppliedWriteMs && disk.lastAppliedWriteMs > Date.now() - 60_000);
    await vm.disable();
  });

  test("a gap waits; once the missing batch arrives everything after it applies", async () => {
    const vm = await Vm.enable(stack, "gap-1");
    const next = rng(12);
    const writes = [1, 2, 3, 4, 5].map(() => randomWrites(next, DISK, 10));
    for (const seq of [1, 2, 4, 5]) await vm.ship(seq, writes[seq - 1], {}, { model: false });
    const first = await vm.apply(1);
    assert.deepEqual([first.applied, first.watermark, first.stop], [2, 2, "gap"]);
    assert.deepEqual(await vm.cachedSeqs(), [4, 5], "batches after the gap wait in the cache");
    const again = await vm.apply(4);
    assert.deepEqual([again.applied, again.watermark, again.stop], [0, 2, "gap"], "a message for a later batch does not jump the gap");

    await vm.ship(3, writes[2], {}, { model: false });
    for (const w of writes) vm.sources.get("os")!.apply(w);
    const filled = await vm.apply(3);
    assert.deepEqual([filled.applied, filled.watermark, filled.stop], [3, 5, "caughtUp"]);
    await vm.assertReplicaEqualsSource();
    await vm.disable();
  });

  test("duplicate and late messages are no-ops, and a re-uploaded applied batch is removed without being written", async () => {
    const vm = await Vm.enable(stack, "dup-1");
    const next = rng(13);
    await vm.shipRandom(next, 1, 3);
    assert.equal((await vm.apply(1)).watermark, 3);
    for (const seq of [1, 2, 3]) {
      const out = await vm.apply(seq);
      assert.deepEqual([out.result, out.applied, out.watermark], ["noop", 0, 3], `message for ${seq} again`);
    }
    // An agent that lost its acknowledgement uploads batch 2 again — with other bytes, to prove it is never applied.
    await vm.ship(2, randomWrites(next, DISK, 10), {}, { model: false });
    const late = await vm.apply(2);
    assert.deepEqual([late.result, late.applied, late.watermark], ["ran", 0, 3]);
    assert.deepEqual(await vm.cachedSeqs(), []);
    await vm.assertReplicaEqualsSource();
    await vm.disable();
  });

  test("messages delivered in reverse order, through the queue, converge to the source", async () => {
    const vm = await Vm.enable(stack, "reverse-1");
    await vm.shipRandom(rng(14), 1, 10);
    for (let seq = 10; seq >= 1; seq--) await vm.send(seq);
    await stack.host.drainQueues(60_000);
    assert.equal(await vm.watermark(), 10);
    await vm.assertReplicaEqualsSource();
    assert.deepEqual(await vm.cachedSeqs(), []);
    assert.equal(await queueDepth(stack, REPLICATION_POISON_QUEUE), 0, "nothing failed");
    assert.equal((await vm.disk()).lastAppliedSeq, 10);
    await vm.disable();
  });

  test("overlapping writes across batches end byte-exact: the last writer of every sector wins", async () => {
    const vm = await Vm.enable(stack, "overlap-1");
    const next = rng(15);
    for (let seq = 1; seq <= 16; seq++) {
      // Every batch rewrites a shifted window of the same 1 MiB region, plus scattered sectors in it.
      const shift = (seq % 7) * 3 * KiB;
      const writes: Write[] = [{ offset: 2 * MiB + shift, data: randomBytes(next, 512 * KiB) }];
      writes.push({ offset: 2 * MiB + 768 * KiB + seq * 512, data: randomBytes(next, 512) });
      await vm.ship(seq, writes);
    }
    assert.equal((await vm.apply(1)).watermark, 16);
    await vm.assertReplicaEqualsSource();
    await vm.disable();
  });

  test("a 9 MiB batch (written as page writes of at most 4 MiB) applies exactly", async () => {
    const vm = await Vm.enable(stack, "big-1");
    const next = rng(16);
    const big: Write[] = [
      { offset: 512, data: randomBytes(next, 9 * MiB) },
      { offset: 12 * MiB, data: randomBytes(next, 4 * MiB) },
    ];
    const encoded = await vm.ship(1, big);
    assert.ok(pageWrites(decodeBatch(encoded)).every((w) => w.data.length <= 4 * MiB));
    const out = await vm.apply(1);
    assert.deepEqual([out.applied, out.watermark], [1, 1]);
    await vm.assertReplicaEqualsSource();
    await vm.disable();
  });

  test("a stale processor cannot write: its lease was taken, or the watermark it read has moved (412)", async () => {
    const vm = await Vm.enable(stack, "stale-1");
    const next = rng(17);
    const batch = decodeBatch(await vm.ship(1, randomWrites(next, DISK, 6), {}, { model: false }));
    const replica = await vm.replica();
    const before = await vm.replicaBytes();

    const stale = replica.getBlobLeaseClient();
    await stale.acquireLease(60);
    await replica.getBlobLeaseClient().breakLease(0);
    const thief = replica.getBlobLeaseClient();
    await thief.acquireLease(60);
    await assert.rejects(writeBatch(replica, batch, { leaseId: stale.leaseId, watermark: 0 }), (e: { statusCode?: number }) => e.statusCode === 412);

    await replica.updateSequenceNumber("update", 5, { conditions: { leaseId: thief.leaseId } });
    await assert.rejects(
      writeBatch(replica, batch, { leaseId: thief.leaseId, watermark: 0 }),
      (e: { statusCode?: number }) => e.statusCode === 412,
      "lease right, watermark stale",
    );
    assert.ok((await vm.replicaBytes()).equals(before), "nothing was written");
    await thief.releaseLease();
    await vm.disable();
  });

  test("a processor fenced out mid-run stops before writing the next batch; the work resumes with the new owner", async () => {
    const vm = await Vm.enable(stack, "stale-2");
    const next = rng(18);
    const tag = { id: "tag-1", kind: "crash" as const, time: new Date().toISOString(), scope: "vm" as const };
    await vm.ship(1, randomWrites(next, DISK, 6), { tag });
    const afterOne = vm.sources.get("os")!.clone();
    await vm.ship(2, randomWrites(next, DISK, 6));
    let thief: LeasePort | undefined;
    let tagged: number | undefined;
    // Another processor breaks the lease and takes it just after batch 1 (the recovery-point hook is the seam).
    const out = await vm.apply(1, "os", {
      onTagApplied: async (a) => {
        tagged = a.seq;
        assert.equal(await readWatermark(a.replica), 1, "the hook sees the replica exactly after the tagged batch");
        await a.replica.getBlobLeaseClient().breakLease(0);
        thief = a.replica.getBlobLeaseClient();
        await thief.acquireLease(60);
      },
    });
    assert.equal(tagged, 1);
    assert.deepEqual([out.applied, out.watermark, out.stop], [1, 1, "fenced"]);
    assert.ok((await vm.replicaBytes()).equals(afterOne.bytes), "batch 2 was not written");
    await thief!.releaseLease();
    // The fenced processor re-announced the disk: whoever holds it next finishes.
    await stack.host.drainQueues(30_000);
    assert.equal(await vm.watermark(), 2);
    await vm.assertReplicaEqualsSource();
    await vm.disable();
  });

  test("crash safety: a processor that died half-way through batch N leaves N-1; applying N again gives exactly the state after N", async () => {
    const vm = await Vm.enable(stack, "crash-1");
    const next = rng(19);
    await vm.shipRandom(next, 1, 3, "os", 20);
    assert.equal((await vm.apply(1)).watermark, 3);
    // Batch 4 overwrites much of what 1-3 wrote, in many separate page writes.
    const writes = randomWrites(next, DISK, 40, 128 * KiB);
    const batch = decodeBatch(await vm.ship(4, writes));
    const replica = await vm.replica();
    const lease = replica.getBlobLeaseClient();
    await lease.acquireLease(60);
    const pages = pageWrites(batch);
    assert.ok(pages.length >= 10, `${pages.length} page writes`);
    for (const w of pages.slice(0, Math.floor(pages.length / 2))) {
      await replica.uploadPages(w.data, w.offset, w.data.length, { conditions: { leaseId: lease.leaseId, ifSequenceNumberEqualTo: 3 } });
    }
    await lease.breakLease(0); // the processor is gone; its lease with it
    assert.equal(await vm.watermark(), 3, "the watermark did not move");
    assert.ok(!(await vm.replicaBytes()).equals(vm.sources.get("os")!.bytes), "half of batch 4 is on the replica");

    const out = await vm.apply(4);
    assert.deepEqual([out.applied, out.watermark], [1, 4]);
    await vm.assertReplicaEqualsSource();
    await vm.disable();
  });

  test("a crash between advancing the watermark and recording the batch is finished by the next message", async () => {
    const vm = await Vm.enable(stack, "crash-2");
    const batch = decodeBatch(await vm.ship(1, randomWrites(rng(20), DISK, 4), { initialComplete: true }));
    const replica = await vm.replica();
    const lease = replica.getBlobLeaseClient();
    await lease.acquireLease(60);
    await writeBatch(replica, batch, { leaseId: lease.leaseId, watermark: 0 });
    await replica.updateSequenceNumber("update", 1, { conditions: { leaseId: lease.leaseId } });
    await lease.breakLease(0);
    assert.equal((await vm.disk()).initialComplete, undefined, "died before recording");

    const out = await vm.apply(1);
    assert.deepEqual([out.result, out.applied, out.watermark], ["ran", 0, 1]);
    assert.equal((await vm.disk()).initialComplete, true);
    assert.equal((await vm.item()).state, "Protected");
    assert.deepEqual(await vm.cachedSeqs(), []);
    await vm.disable();
  });

  test("a corrupt batch is never written: the disk and item go ResyncRequired, and GET shows why", async () => {
    const vm = await Vm.enable(stack, "corrupt-1");
    const next = rng(21);
    await vm.ship(1, randomWrites(next, DISK, 8), { initialComplete: true });
    assert.equal((await vm.apply(1)).watermark, 1);
    assert.equal((await vm.item()).state, "Protected");
    const afterOne = vm.sources.get("os")!.clone();
    await vm.ship(2, [{ offset: 4 * MiB, data: randomBytes(next, 256 * KiB) }], {}, { corrupt: true });
    await vm.ship(3, randomWrites(next, DISK, 8));

    const out = await vm.apply(2);
    assert.deepEqual([out.applied, out.watermark, out.stop], [0, 1, "corrupt"]);
    assert.ok((await vm.replicaBytes()).equals(afterOne.bytes), "nothing of batch 2 (or after it) reached the replica");
    assert.deepEqual(await vm.cachedSeqs(), [3], "the corrupt batch is removed; later ones wait");

    const status = await vm.status();
    assert.equal(status.state, "ResyncRequired");
    assert.equal(status.health.status, "Critical");
    const issue = status.health.issues.find((i: { code: string }) => i.code === "CorruptBatch");
    assert.ok(issue, JSON.stringify(status.health));
    assert.equal(issue.severity, "Critical");
    assert.equal(issue.diskId, "os");
    assert.equal(issue.seq, 2);
    assert.match(issue.message, /disk 'os': batch 2 is corrupt \(payload checksum mismatch\)/);
    const disk = status.disks[0];
    assert.equal(disk.state, "ResyncRequired");
    assert.equal(disk.watermark, 1);
    assert.equal(disk.resync.origin, "apply");
    assert.equal(disk.resync.baseSeq, 1);
    assert.match(disk.resync.reason, /batch 2 is corrupt: payload checksum mismatch/);

    // The same batch cannot halt the disk twice: its next message finds it gone and waits for the resync.
    const again = await vm.apply(2);
    assert.equal(again.stop, "awaitingResync");
    assert.equal((await vm.disk()).resync!.id, disk.resync.id);
    await vm.disable();
  });

  test("a halted disk skips superseded batches, waits through a gap for the resync's first batch, and returns to Protected", async () => {
    const vm = await Vm.enable(stack, "resync-1");
    const next = rng(22);
    const source = vm.sources.get("os")!;
    await vm.ship(1, randomWrites(next, DISK, 8), { initialComplete: true });
    assert.equal((await vm.apply(1)).watermark, 1);
    await vm.ship(2, randomWrites(next, DISK, 8), {}, { corrupt: true });
    await vm.ship(3, randomWrites(next, DISK, 8));
    assert.equal((await vm.apply(2)).stop, "corrupt");
    const resync = (await vm.disk()).resync!;
    assert.equal(resync.baseSeq, 1);
    await vm.ship(4, randomWrites(next, DISK, 8), { initialComplete: true }); // shipped before the agent heard of the resync

    const waiting = await vm.apply(4);
    assert.deepEqual([waiting.applied, waiting.watermark, waiting.stop], [0, 1, "awaitingResync"]);
    assert.deepEqual(await vm.cachedSeqs(), [], "superseded batches 3 and 4 are dropped");
    assert.equal((await vm.disk()).resync!.supersededThrough, 4);

    // The agent's differential resync: every 64 KiB block where the source and the replica (at batch 1) differ.
    const replica = await vm.replicaBytes();
    const blocks: Write[] = [];
    for (let at = 0; at < DISK; at += RESYNC_BLOCK_BYTES) {
      const s = source.bytes.subarray(at, at + RESYNC_BLOCK_BYTES);
      if (crc32c(s) !== crc32c(replica.subarray(at, at + RESYNC_BLOCK_BYTES))) blocks.push({ offset: at, data: Buffer.from(s) });
    }
    assert.ok(blocks.length >= 4, `${blocks.length} blocks differ`);
    const half = Math.floor(blocks.length / 2);
    const r = { resyncId: resync.id };
    // Batch 5 (the resync's first) is still uploading when 6 and 7 are in the cache.
    await vm.ship(6, blocks.slice(half), r, { model: false });
    await vm.ship(7, randomWrites(next, DISK, 4), { ...r, resyncComplete: true });
    const gap = await vm.apply(6);
    assert.deepEqual([gap.applied, gap.watermark, gap.stop], [0, 1, "awaitingResync"], "6 is not taken for the start");
    assert.deepEqual(await vm.cachedSeqs(), [6, 7]);
    // The source already holds these bytes (they were read from it before batch 7's writes).
    await vm.ship(5, blocks.slice(0, half), r, { model: false });

    const done = await vm.apply(5);
    assert.deepEqual([done.applied, done.watermark, done.stop], [3, 7, "caughtUp"]);
    await vm.assertReplicaEqualsSource();
    const disk = await vm.disk();
    assert.equal(disk.state, "Protected");
    assert.equal(disk.resync, undefined);
    assert.equal(disk.initialComplete, true);
    const item = await vm.item();
    assert.equal(item.state, "Protected");
    assert.deepEqual(item.health, { status: "Healthy", issues: [] });
    await vm.disable();
  });

  test("a corrupt batch while waiting for a resync starts a new resync from the same base", async () => {
    const vm = await Vm.enable(stack, "resync-2");
    const next = rng(23);
    await vm.ship(1, randomWrites(next, DISK, 4), { initialComplete: true });
    await vm.ship(2, randomWrites(next, DISK, 4), {}, { corrupt: true });
    assert.equal((await vm.apply(1)).stop, "corrupt");
    const first = (await vm.disk()).resync!;
    await vm.ship(3, randomWrites(next, DISK, 4), { resyncId: first.id }, { corrupt: true });
    assert.equal((await vm.apply(3)).stop, "corrupt");
    const second = (await vm.disk()).resync!;
    assert.notEqual(second.id, first.id, "the corrupt batch might have been the resync's first: a new resync is the only safe answer");
    assert.equal(second.baseSeq, 1);
    assert.equal(second.supersededThrough, 3);
    const issues = (await vm.item()).health.issues.filter((i) => i.code === "CorruptBatch");
    assert.equal(issues.length, 1, "one open issue per disk and cause");
    assert.equal(issues[0].seq, 3);
    await vm.disable();
  });

  test("initial replication: progress from the heartbeat, the disk's last initial batch, then the item is Protected", async () => {
    const vm = await Vm.enable(stack, "initial-1", [
      { id: "os", sizeBytes: DISK },
      { id: "data0", sizeBytes: 8 * MiB },
    ]);
    let status = await vm.status();
    assert.deepEqual(
      status.disks[0].initialReplication,
      { percent: 0, doneBytes: 0, totalBytes: DISK, transferredBytes: 0, etaSeconds: null },
      "no heartbeat yet",
    );
    const heartbeat = {
      agentVersion: "test",
      time: new Date().toISOString(),
      disks: {
        os: {
          nextSeq: 2,
          spoolBatches: 0,
          spoolBytes: 0,
          mode: "journal",
          dirtyBytes: 0,
          initialReplication: { doneBytes: 4 * MiB, totalBytes: DISK, complete: false },
        },
      },
      health: { status: "Healthy", issues: [] },
    };
    const text = JSON.stringify(heartbeat);
    await vm.cache().getBlockBlobClient(HEARTBEAT_BLOB).upload(text, Buffer.byteLength(text));
    status = await vm.status();
    const { etaSeconds, ...progress } = status.disks[0].initialReplication;
    assert.deepEqual(progress, { percent: 25, doneBytes: 4 * MiB, totalBytes: DISK, transferredBytes: 0 });
    assert.ok(typeof etaSeconds === "number" && etaSeconds >= 0, "an ETA once there is a rate");
    assert.equal(status.disks[1].initialReplication.percent, 0);
    assert.equal(status.heartbeat.agentVersion, "test");

    const next = rng(24);
    await vm.ship(1, randomWrites(next, DISK, 4), { initial: true, initialComplete: true });
    await vm.apply(1);
    assert.equal((await vm.disk("os")).state, "Protected");
    assert.equal((await vm.item()).state, "InitialReplication", "data0 is still copying");
    status = await vm.status();
    assert.equal(status.disks[0].initialReplication.percent, 100);
    assert.ok(status.disks[0].initialReplication.transferredBytes > 0, "what the initial copy shipped is counted");
    assert.equal(status.disks[0].initialReplication.etaSeconds, 0);

    await vm.ship(1, randomWrites(next, 8 * MiB, 4), { initial: true }, { diskId: "data0" });
    await vm.ship(2, randomWrites(next, 8 * MiB, 4), { initial: true, initialComplete: true }, { diskId: "data0" });
    await vm.apply(1, "data0");
    assert.equal((await vm.item()).state, "Protected");
    await vm.assertReplicaEqualsSource("os");
    await vm.assertReplicaEqualsSource("data0");
    await vm.disable();
  });

  test("GET shows each disk's watermark, what waits in the cache, and the age of the oldest unapplied write", async () => {
    const vm = await Vm.enable(stack, "status-1");
    const next = rng(25);
    await vm.ship(1, randomWrites(next, DISK, 4));
    await vm.apply(1);
    const minuteAgo = Date.now() - 60_000;
    const a = await vm.ship(3, randomWrites(next, DISK, 4), { firstWriteMs: minuteAgo, lastWriteMs: minuteAgo + 500 });
    const b = await vm.ship(4, randomWrites(next, DISK, 4));
    const status = await vm.status();
    const d = status.disks[0];
    assert.equal(d.watermark, 1);
    assert.equal(d.lastAppliedSeq, 1);
    assert.equal(d.pendingBatches, 2);
    assert.equal(d.pendingBytes, a.length + b.length);
    assert.ok(d.lagSeconds >= 59 && d.lagSeconds < 120, `lag ${d.lagSeconds}`);
    assert.equal(status.lagSeconds, d.lagSeconds);
    const list = await stack.api("GET", "replicated-items");
    const listed = list.body.find((i: { id: string }) => i.id === vm.itemId);
    assert.equal(listed.disks[0].lastAppliedSeq, 1, "the list shows the table's view");
    assert.equal(listed.disks[0].pendingBatches, undefined, "and stays light: no storage reads per disk");
    await vm.disable();
  });

  test("lease contention re-announces the message instead of failing it", async () => {
    const vm = await Vm.enable(stack, "lease-1");
    await vm.shipRandom(rng(26), 1, 2);
    const replica = await vm.replica();
    const other = replica.getBlobLeaseClient();
    await other.acquireLease(60);
    const depth = await queueDepth(stack, REPLICATION_QUEUE);
    const out = await vm.apply(1);
    assert.deepEqual([out.result, out.applied], ["busy", 0]);
    assert.equal(await queueDepth(stack, REPLICATION_QUEUE), depth + 1, "a fresh, delayed copy is on the queue");

    // Through the host as well: the delivery succeeds (no failed attempt) while the lease is held.
    logs.length = 0;
    await vm.send(2);
    await waitFor("the host to handle the message", () => logs.some((l) => l.includes(`${vm.itemId}/os batch 2: busy`)));
    assert.ok(!logs.some((l) => /Executed 'applyBatches' \(Failed/.test(l)), "no failed invocation");
    await other.releaseLease();
    await stack.host.drainQueues(30_000);
    assert.equal(await vm.watermark(), 2);
    await vm.assertReplicaEqualsSource();
    assert.equal(await queueDepth(stack, REPLICATION_POISON_QUEUE), 0);
    await vm.disable();
  });

  test("a run past its budget re-announces the disk and the rest follows through the queue", async () => {
    const vm = await Vm.enable(stack, "bound-1");
    await vm.shipRandom(rng(27), 1, 5);
    const out = await vm.apply(1, "os", { limits: { maxBatchesPerRun: 2 } });
    assert.deepEqual([out.applied, out.watermark, out.stop], [2, 2, "bound"]);
    await stack.host.drainQueues(30_000);
    assert.equal(await vm.watermark(), 5);
    await vm.assertReplicaEqualsSource();
    await vm.disable();
  });

  test("the sweep re-kicks a disk whose messages were lost, and leaves progressing disks alone", async () => {
    const vm = await Vm.enable(stack, "sweep-1");
    await vm.shipRandom(rng(28), 1, 3); // no message sent: all three were "lost"
    await stack.host.runTimer("sweepCache");
    await stack.host.drainQueues(30_000);
    assert.equal(await vm.watermark(), 3);
    await vm.assertReplicaEqualsSource();
    const disk = await vm.disk();
    assert.ok(disk.lastKickAt, "the kick is recorded");

    // With a 30 s stall threshold, a disk that just made progress or was just kicked is not re-announced.
    await vm.shipRandom(rng(29), 4, 1);
    const s = stack.services;
    const config = { ...s.config, sweep: { ...s.config.sweep, stallSeconds: 30 } };
    const quiet = await sweepCache({ storage: s.storage, items: s.items, config });
    assert.ok(!quiet.kicked.some((k) => k.itemId === vm.itemId), "recent progress: not stalled");
    const later = await sweepCache({ storage: s.storage, items: s.items, config, now: () => new Date(Date.now() + 31_000) });
    assert.deepEqual(
      later.kicked.filter((k) => k.itemId === vm.itemId),
      [{ itemId: vm.itemId, diskId: "os", seq: 4 }],
    );
    await stack.host.drainQueues(30_000);
    assert.equal(await vm.watermark(), 4);
    await vm.disable();
  });

  test("a disk whose batches wait for minutes without moving is shown as stalled, until it moves again", async () => {
    const vm = await Vm.enable(stack, "stalled-1");
    const next = rng(32);
    const first = randomWrites(next, DISK, 4);
    await vm.ship(2, randomWrites(next, DISK, 4), {}, { model: false }); // batch 1 is missing: a gap
    const s = stack.services;
    const inSixMinutes = () => new Date(Date.now() + 6 * 60_000);
    const report = await sweepCache({ storage: s.storage, items: s.items, config: s.config, now: inSixMinutes });
    assert.ok(report.kicked.some((k) => k.itemId === vm.itemId && k.seq === 2));
    let status = await vm.status();
    assert.equal(status.health.status, "Warning");
    const issue = status.health.issues.find((i: { code: string }) => i.code === "ReplicationStalled");
    assert.ok(issue, JSON.stringify(status.health));
    assert.deepEqual([issue.diskId, issue.seq], ["os", 2]);
    assert.match(issue.message, /batch 2 has waited 6 min/);
    await stack.host.drainQueues(30_000);
    assert.equal(await vm.watermark(), 0, "the kick cannot jump the gap");

    await vm.ship(1, first, {}, { model: false });
    assert.equal((await vm.apply(1)).watermark, 2);
    status = await vm.status();
    assert.deepEqual(status.health, { status: "Healthy", issues: [] });
    await vm.disable();
  });

  test("a poison message is recorded on the item's health, and cleared once the disk applies past it", async () => {
    const vm = await Vm.enable(stack, "poison-1");
    const poison = new QueueClient(stack.env.AzureWebJobsStorage!, REPLICATION_POISON_QUEUE);
    await poison.createIfNotExists();
    await poison.sendMessage(queueMessageText({ v: 1, itemId: vm.itemId, diskId: "os", seq: 2 }));
    await stack.host.drainQueues(30_000);
    let status = await vm.status();
    assert.equal(status.health.status, "Warning");
    const issue = status.health.issues.find((i: { code: string }) => i.code === "PoisonMessage");
    assert.ok(issue, JSON.stringify(status.health));
    assert.deepEqual([issue.severity, issue.diskId, issue.seq], ["Warning", "os", 2]);
    assert.match(issue.message, /batch 2/);
    assert.match(issue.message, /replication-batches-poison/);

    await vm.shipRandom(rng(30), 1, 2);
    await vm.apply(1);
    status = await vm.status();
    assert.deepEqual(status.health, { status: "Healthy", issues: [] });
    await vm.disable();
  });

  test("a malformed message is completed and logged, not retried into the poison queue", async () => {
    logs.length = 0;
    const q = await stack.services.storage.replicationQueue();
    await q.sendMessage(queueMessageText({ v: 1, itemId: "../other", diskId: "os", seq: 1 }));
    await q.sendMessage(queueMessageText("not even an object"));
    await stack.host.drainQueues(30_000);
    assert.equal(logs.filter((l) => l.includes("dropped a malformed replication message")).length, 2, logs.join("\n"));
    assert.ok(!logs.some((l) => /Executed 'applyBatches' \(Failed/.test(l)));
    assert.equal(await queueDepth(stack, REPLICATION_POISON_QUEUE), 0);
  });

  test("messages for a disabled item are no-ops", async () => {
    const vm = await Vm.enable(stack, "gone-1");
    await vm.shipRandom(rng(31), 1, 1);
    await vm.disable();
    const out = await vm.apply(1);
    assert.deepEqual([out.result, out.stop], ["noop", "gone"]);
  });
});
