// A tracked disk on its own (temp files only, no storage: the shipper stays paused): dirty-log replay after the agent dies, and the spool bound.
import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeBatch, type Batch } from "../../shared/replication/batch";
import { BatchBuffers } from "../../agent/batch-buffers";
import { DEFAULT_TUNING, type DiskContext, type DiskTuning } from "../../agent/disk";
import { Health } from "../../agent/health";
import { Shipper } from "../../agent/shipper";
import { Spool } from "../../agent/spool";
import { statePaths } from "../../agent/state";
import { TrackedDisk } from "../../agent/tracked-disk";

const KiB = 1024;
const MiB = 1024 * KiB;

function bytes(seed: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed || 1;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

/** What a disk needs from its agent, with a shipper that never ships (paused): batches stay in the spool. */
function context(stateDir: string, spoolMaxBytes: number, tuning: Partial<DiskTuning>): DiskContext {
  const t = { ...DEFAULT_TUNING, ...tuning };
  const spool = new Spool(stateDir, spoolMaxBytes);
  const health = new Health();
  const shipper = new Shipper(
    { itemId: "item-1", spool, health, concurrency: 1, onCredentialsRefused: () => {}, log: () => {} },
    { containerUrl: "http://127.0.0.1:9/account/cache-item-1?sv=none", queueUrl: "http://127.0.0.1:9/account/replication-batches?sv=none" },
  );
  shipper.pause();
  return {
    itemId: "item-1",
    stateDir,
    spool,
    buffers: new BatchBuffers(t.maxBatchBytes, t.pipelineDepth),
    shipper,
    health,
    tuning: t,
    log: () => {},
    manifest: () => Promise.reject(new Error("no control plane here")),
    changed: () => {},
  };
}

/** Disks of "dead" agents (never closed), kept referenced so that their open files are not closed by the garbage collector. */
const dead: TrackedDisk[] = [];

async function open(stateDir: string, image: string, spoolMaxBytes: number, tuning: Partial<DiskTuning> = {}) {
  const ctx = context(stateDir, spoolMaxBytes, tuning);
  const disk = await TrackedDisk.open(ctx, { id: "os", sizeBytes: 4 * MiB, path: image, registeredNextSeq: 1 });
  await ctx.spool.open("os", disk.heartbeat().nextSeq);
  ctx.spool.onChange = () => disk.poke(); // as the agent wires it: room in the spool wakes the disk's jobs
  dead.push(disk);
  return { ctx, disk };
}

async function spooled(stateDir: string): Promise<Batch[]> {
  const dir = statePaths(stateDir).spool("os");
  const names = (await readdir(dir)).filter((n) => n.endsWith(".batch")).sort();
  return Promise.all(names.map(async (n) => decodeBatch(await readFile(join(dir, n)))));
}

function replay(batches: Batch[], size: number): Buffer {
  const image = Buffer.alloc(size);
  for (const b of [...batches].sort((x, y) => x.header.seq - y.header.seq)) {
    let at = 0;
    for (const e of b.header.extents) {
      b.payload.copy(image, e.offset, at, at + e.length);
      at += e.length;
    }
  }
  return image;
}

test("writes acknowledged before the agent died are found in the dirty log and sealed after the restart", async () => {
  const dir = mkdtempSync(join(tmpdir(), "agent-disk-"));
  try {
    const state = join(dir, "state");
    const image = join(dir, "os.img");
    // No time bound within the test: nothing is sealed before the "death".
    const first = await open(state, image, 64 * MiB, { sealIntervalMs: 3_600_000 });
    await first.disk.write(100, bytes(1, 3000));
    await first.disk.write(1 * MiB + 512, bytes(2, 64 * KiB));
    await first.disk.write(3 * MiB, bytes(3, 1));
    assert.deepEqual(await spooled(state), [], "nothing sealed yet");
    // The agent dies here: no close, no flush. A new one opens the same state.
    const second = await open(state, image, 64 * MiB, { sealIntervalMs: 3_600_000 });
    assert.equal(second.disk.dirtyBytes(), 3584 + 64 * KiB + 512, "the dirty ranges are back (512-aligned)");
    await second.disk.flush();
    const batches = await spooled(state);
    assert.equal(batches.length, 1);
    assert.equal(batches[0]!.header.seq, 1);
    assert.deepEqual(
      batches[0]!.header.extents.map((e) => [e.offset, e.length]),
      [
        [0, 3584],
        [1 * MiB + 512, 64 * KiB],
        [3 * MiB, 512],
      ],
    );
    assert.ok(replay(batches, 4 * MiB).equals(readFileSync(image)), "the batch carries the bytes the image holds");
    assert.deepEqual(
      (await readdir(statePaths(state).disk("os"))).filter((n) => n.startsWith("dirty.")),
      ["dirty.2.log"],
      "the replayed generations are gone once their batch is durable",
    );
    await second.disk.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a batch is sealed when its payload would pass the bound, and none is larger", async () => {
  const dir = mkdtempSync(join(tmpdir(), "agent-disk-"));
  try {
    const state = join(dir, "state");
    const image = join(dir, "os.img");
    const { disk } = await open(state, image, 64 * MiB, { maxBatchBytes: 64 * KiB, sealIntervalMs: 3_600_000 });
    for (let i = 0; i < 40; i++) await disk.write(i * 37 * KiB, bytes(i + 10, 10 * KiB + i));
    await disk.write(2 * MiB + 7, bytes(99, 200 * KiB)); // larger than a batch, unaligned: split so each piece fits
    await disk.flush();
    const batches = await spooled(state);
    assert.ok(batches.length >= 10);
    assert.ok(
      batches.every((b) => b.header.payloadLength <= 64 * KiB),
      batches.map((b) => b.header.payloadLength).join(","),
    );
    assert.deepEqual(
      batches.map((b) => b.header.seq),
      batches.map((_, i) => i + 1),
    );
    assert.ok(replay(batches, 4 * MiB).equals(readFileSync(image)));
    await disk.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a full spool switches the disk to bitmap mode, which survives a restart and drains under one resync id once there is room", async () => {
  const dir = mkdtempSync(join(tmpdir(), "agent-disk-"));
  try {
    const state = join(dir, "state");
    const image = join(dir, "os.img");
    const tuning = { maxBatchBytes: 64 * KiB, sealIntervalMs: 3_600_000 };
    const first = await open(state, image, 256 * KiB, tuning);
    for (let i = 0; i < 32; i++) await first.disk.write(i * 120 * KiB + 7, bytes(i + 1, 20 * KiB));
    await first.disk.flush();
    assert.equal(first.disk.mode, "bitmap");
    assert.ok(first.ctx.spool.usedBytes <= 256 * KiB, "the spool stays within its bound");
    const saved = JSON.parse(readFileSync(statePaths(state).diskState("os"), "utf8"));
    assert.equal(saved.mode, "bitmap");
    assert.match(saved.overflow.reason, /spool full/);
    assert.equal(saved.overflow.reported, false);
    assert.ok(existsSync(statePaths(state).bitmap("os")));
    const resyncId: string = saved.overflow.resyncId;
    const dirty = first.disk.dirtyBytes();
    assert.ok(dirty > 0);
    await first.disk.write(3 * MiB + 5, bytes(77, 3)); // written in bitmap mode, then the agent dies

    const second = await open(state, image, 256 * KiB, tuning);
    assert.equal(second.disk.mode, "bitmap", "still in bitmap mode after the restart");
    assert.ok(second.disk.dirtyBytes() >= dirty);
    // The cache acknowledges what was spooled (as the shipper would), and a check-in reports the overflow.
    const shipped = await spooled(state);
    assert.ok(shipped.length > 0);
    for (const b of shipped) await second.ctx.spool.remove("os", b.header.seq);
    second.disk.markOverflowReported(resyncId);
    second.disk.start();
    for (let i = 0; i < 200 && second.disk.mode === "bitmap"; i++) {
      // Keep acknowledging, as the cache would.
      for (const b of await spooled(state)) {
        shipped.push(b);
        await second.ctx.spool.remove("os", b.header.seq);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(second.disk.mode, "journal");
    await second.disk.close();
    const all = [...shipped, ...(await spooled(state))].sort((a, b) => a.header.seq - b.header.seq);
    assert.deepEqual(
      all.map((b) => b.header.seq),
      all.map((_, i) => i + 1),
      "no seq gap",
    );
    const flagged = all.filter((b) => b.header.resyncId === resyncId);
    assert.ok(flagged.length >= 1);
    assert.equal(flagged.filter((b) => b.header.resyncComplete).length, 1);
    assert.ok(flagged[flagged.length - 1]!.header.resyncComplete, "the last one completes the resync");
    assert.ok(replay(all, 4 * MiB).equals(readFileSync(image)), "every acknowledged write reached the stream");
    assert.equal(JSON.parse(readFileSync(statePaths(state).diskState("os"), "utf8")).mode, "journal");
    assert.ok(!existsSync(statePaths(state).bitmap("os")));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("every batch holds the image's bytes at its seal, whether its payload came from staged writes or from the image: ascending, random with overwrites, concurrent and overlapping, unaligned", async () => {
  const dir = mkdtempSync(join(tmpdir(), "agent-disk-"));
  try {
    const state = join(dir, "state");
    const image = join(dir, "os.img");
    const { disk } = await open(state, image, 64 * MiB, { maxBatchBytes: 256 * KiB, sealIntervalMs: 3_600_000 });
    let seed = 1;
    const rounds: [string, () => Promise<unknown>][] = [
      // One stream moving forward: each batch's staging buffer is its payload.
      [
        "ascending",
        async () => {
          for (let i = 0; i < 40; i++) await disk.write(i * 16 * KiB, bytes(seed++, 16 * KiB));
        },
      ],
      // Random 4 KiB blocks, some written several times in one batch: composed, the last write winning.
      [
        "random",
        async () => {
          for (let i = 0; i < 300; i++) await disk.write(((i * 7919) % 96) * 4 * KiB, bytes(seed++, 4 * KiB));
        },
      ],
      // Writes in flight together, disjoint and overlapping (the image decides which overlapping one wins).
      ["concurrent", () => Promise.all(Array.from({ length: 64 }, (_, i) => disk.write(((i * 13) % 40) * 8 * KiB, bytes(seed++, 12 * KiB))))],
      // Not sector-aligned: the batch also holds the image's bytes around them.
      [
        "unaligned",
        async () => {
          for (let i = 0; i < 30; i++) await disk.write(2 * MiB + i * 10_001, bytes(seed++, 3_000 + i));
        },
      ],
    ];
    for (const [name, round] of rounds) {
      await round();
      await disk.flush();
      assert.ok(replay(await spooled(state), 4 * MiB).equals(readFileSync(image)), `after the ${name} writes, the batches hold the image's bytes`);
    }
    await disk.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a batch of aligned writes carries the bytes written through the disk (staged), a batch with an unaligned write the image's: the image changed behind the agent's back before each seal tells them apart", async () => {
  const dir = mkdtempSync(join(tmpdir(), "agent-disk-"));
  try {
    const state = join(dir, "state");
    const image = join(dir, "os.img");
    const { disk } = await open(state, image, 64 * MiB, { maxBatchBytes: 256 * KiB, sealIntervalMs: 3_600_000 });
    /** Overwrites [offset, offset + length) of the image file directly, as no write through the agent would. */
    const tamper = (offset: number, length: number) => {
      const fd = openSync(image, "r+");
      writeSync(fd, Buffer.alloc(length, 0xee), 0, length, offset);
      closeSync(fd);
    };
    const lastBatch = async () => (await spooled(state)).at(-1)!;

    // Ascending: the staging buffer is the payload.
    const ascending = bytes(7, 64 * KiB);
    for (let i = 0; i < 4; i++) await disk.write(i * 16 * KiB, ascending.subarray(i * 16 * KiB, (i + 1) * 16 * KiB));
    tamper(0, 64 * KiB);
    await disk.flush();
    assert.ok((await lastBatch()).payload.equals(ascending), "ascending writes: the written bytes, not the image's");

    // Out of order, one block twice: composed from the copies, the later write winning.
    const [a, b, c] = [bytes(8, 8 * KiB), bytes(9, 8 * KiB), bytes(10, 8 * KiB)];
    await disk.write(1 * MiB + 8 * KiB, a);
    await disk.write(1 * MiB, b);
    await disk.write(1 * MiB + 8 * KiB, c);
    tamper(1 * MiB, 16 * KiB);
    await disk.flush();
    assert.ok((await lastBatch()).payload.equals(Buffer.concat([b, c])), "composed writes: the written bytes, the later one winning");

    // An unaligned write: the batch is read from the image, which is what it holds now.
    await disk.write(2 * MiB + 100, bytes(11, 1000));
    tamper(2 * MiB, 4 * KiB);
    await disk.flush();
    const unaligned = await lastBatch();
    assert.deepEqual(unaligned.header.extents, [{ offset: 2 * MiB, length: 1536 }]);
    assert.ok(unaligned.payload.equals(Buffer.alloc(1536, 0xee)), "staging gave up: the seal read the image");
    await disk.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
