// The agent's dirty range set, its coalescing into extents, job prefixes, the bitmap of bitmap mode, and the dirty log's records.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { alignOut, RangeSet, takePrefix } from "../../agent/ranges";
import { BlockBitmap } from "../../agent/bitmap";
import { DIRTY_RECORD_BYTES, DirtyLog, encodeDirtyRecord, parseDirtyLog } from "../../agent/dirty-log";
import { checkExtents } from "../../shared/replication/batch";
import { encodeBatchMessage } from "../../agent/shipper";
import { backoffMs } from "../../agent/retry";

const KiB = 1024;

/** A byte-per-byte model of a range set, to compare the real one with. */
function model(size: number) {
  const bits = new Uint8Array(size);
  return {
    add(s: number, e: number) {
      bits.fill(1, s, e);
    },
    ranges() {
      const out: { start: number; end: number }[] = [];
      for (let i = 0; i < size; i++) {
        if (!bits[i]) continue;
        let j = i;
        while (j < size && bits[j]) j++;
        out.push({ start: i, end: j });
        i = j;
      }
      return out;
    },
    bytes() {
      return bits.reduce((n, b) => n + b, 0);
    },
  };
}

test("an unaligned write dirties the 512-aligned range around it", () => {
  assert.deepEqual(alignOut(0, 1), { start: 0, end: 512 });
  assert.deepEqual(alignOut(511, 2), { start: 0, end: 1024 });
  assert.deepEqual(alignOut(1024, 512), { start: 1024, end: 1536 });
  assert.deepEqual(alignOut(4096 + 100, 4096), { start: 4096, end: 8704 });
});

test("the dirty set merges overlapping and adjacent ranges and counts each byte once", () => {
  const s = new RangeSet();
  assert.equal(s.add(1024, 2048), 1024);
  assert.equal(s.add(4096, 8192), 4096);
  assert.equal(s.add(2048, 4096), 2048, "adjacent on both sides: one range");
  assert.deepEqual(s.toArray(), [{ start: 1024, end: 8192 }]);
  assert.equal(s.add(0, 10_240), 1024 + 2048);
  assert.deepEqual(s.toArray(), [{ start: 0, end: 10_240 }]);
  assert.equal(s.bytes, 10_240);
  assert.equal(s.add(512, 1024), 0, "already dirty");
  assert.ok(s.covers(0, 10_240));
  assert.ok(!s.covers(0, 10_752));
});

test("the dirty set agrees with a byte model under random writes, and its extents are valid batch extents", () => {
  let seed = 42;
  const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  const size = 256 * KiB;
  for (let round = 0; round < 20; round++) {
    const s = new RangeSet();
    const m = model(size);
    let added = 0;
    for (let i = 0; i < 200; i++) {
      const { start, end } = alignOut(Math.floor(rand() * (size - 8 * KiB)), 1 + Math.floor(rand() * 8 * KiB));
      added += s.add(start, end);
      m.add(start, end);
      const probe = alignOut(Math.floor(rand() * (size - 8 * KiB)), 1 + Math.floor(rand() * 4 * KiB));
      assert.equal(
        s.covers(probe.start, probe.end),
        m.ranges().some((r) => r.start <= probe.start && r.end >= probe.end),
      );
    }
    assert.deepEqual(s.toArray(), m.ranges());
    assert.equal(s.bytes, m.bytes());
    assert.equal(added, m.bytes(), "add() reports exactly the new bytes");
    const extents = s.toExtents(16 * KiB);
    checkExtents(extents, size);
    assert.ok(extents.every((e) => e.length <= 16 * KiB));
    assert.equal(
      extents.reduce((n, e) => n + e.length, 0),
      s.bytes,
    );
  }
});

test("missing() counts the bytes of a range not yet dirty", () => {
  const s = RangeSet.of([
    { start: 0, end: 1024 },
    { start: 2048, end: 3072 },
  ]);
  assert.equal(s.missing(0, 4096), 2048);
  assert.equal(s.missing(512, 2560), 1024);
  assert.equal(s.missing(4096, 8192), 4096);
});

test("a job's prefix fits its budget, and its progress never passes a range it did not ship", () => {
  const found = RangeSet.of([
    { start: 0, end: 64 * KiB },
    { start: 128 * KiB, end: 256 * KiB },
    { start: 512 * KiB, end: 576 * KiB },
  ]);
  const all = takePrefix(found, 1024 * KiB, 1024 * KiB);
  assert.equal(all.ranges.bytes, 256 * KiB);
  assert.equal(all.progress, 1024 * KiB, "everything taken: progress to where the job has looked");
  assert.ok(all.rest.isEmpty);

  const part = takePrefix(found, 96 * KiB, 1024 * KiB);
  assert.deepEqual(part.ranges.toArray(), [
    { start: 0, end: 64 * KiB },
    { start: 128 * KiB, end: 160 * KiB },
  ]);
  assert.equal(part.progress, 160 * KiB);
  assert.deepEqual(part.rest.toArray(), [
    { start: 160 * KiB, end: 256 * KiB },
    { start: 512 * KiB, end: 576 * KiB },
  ]);

  const none = takePrefix(found, 0, 1024 * KiB);
  assert.ok(none.ranges.isEmpty);
  assert.equal(none.progress, 0, "a full batch: no progress");
  const zeros = takePrefix(new RangeSet(), 0, 64 * 1024 * KiB);
  assert.equal(zeros.progress, 64 * 1024 * KiB, "a zero region needs no budget to pass");
});

test("the bitmap marks the blocks a write touches and hands them back lowest first, within a budget", () => {
  const b = new BlockBitmap(1024 * KiB + 512, 16 * KiB);
  assert.equal(b.blocks, 65);
  b.mark(100, 200);
  b.mark(16 * KiB, 16 * KiB + 1);
  b.mark(40 * KiB, 80 * KiB);
  b.mark(1024 * KiB, 1024 * KiB + 512);
  assert.equal(b.count, 1 + 1 + 3 + 1);
  assert.equal(b.dirtyBytes, 5 * 16 * KiB + 512, "the last block is short");
  assert.ok(b.covers(0, 80 * KiB));
  assert.ok(!b.covers(0, 81 * KiB));
  assert.deepEqual(b.take(32 * KiB), [{ start: 0, end: 32 * KiB }]);
  assert.deepEqual(b.take(1024 * KiB), [
    { start: 32 * KiB, end: 80 * KiB },
    { start: 1024 * KiB, end: 1024 * KiB + 512 },
  ]);
  assert.equal(b.count, 0);
  b.mark(0, 1);
  assert.deepEqual(b.take(1), [{ start: 0, end: 16 * KiB }], "at least one block, whatever the budget");
  const restored = new BlockBitmap(
    1024 * KiB + 512,
    16 * KiB,
    (() => {
      const c = new BlockBitmap(1024 * KiB + 512, 16 * KiB);
      c.mark(48 * KiB, 49 * KiB);
      return c.snapshot();
    })(),
  );
  assert.equal(restored.count, 1);
  assert.deepEqual(restored.take(1024 * KiB), [{ start: 48 * KiB, end: 64 * KiB }]);
});

test("the dirty log replays its records and stops at a torn tail", () => {
  const recs = [
    [0, 512],
    [1024 * KiB, 4096],
    [2 ** 40, 65_536],
  ];
  const buf = Buffer.concat(recs.map(([o, l]) => encodeDirtyRecord(o!, l!)));
  assert.equal(buf.length, 3 * DIRTY_RECORD_BYTES);
  const want = recs.map(([o, l]) => ({ start: o!, end: o! + l! }));
  assert.deepEqual(parseDirtyLog(buf), want);
  assert.deepEqual(parseDirtyLog(buf.subarray(0, buf.length - 5)), want.slice(0, 2), "a record cut short is ignored");
  const garbled = Buffer.from(buf);
  garbled[DIRTY_RECORD_BYTES + 3]! ^= 0xff;
  assert.deepEqual(parseDirtyLog(garbled), want.slice(0, 1), "a damaged record ends the log");
  assert.deepEqual(parseDirtyLog(Buffer.concat([buf, Buffer.alloc(64 * KiB)])), want, "the zero-filled space ahead of the records ends the log");
});

test("a dirty log reopened after a crash yields exactly its records, past any number of zero-filled chunks", async () => {
  const dir = mkdtempSync(join(tmpdir(), "dirty-log-"));
  try {
    const { log } = DirtyLog.open(dir);
    const want: { start: number; end: number }[] = [];
    // More records than one zero-filled chunk holds: the file is extended while records are appended.
    for (let i = 0; i < 5000; i++) {
      log.append(i * 4096, 512);
      want.push({ start: i * 4096, end: i * 4096 + 512 });
    }
    const ended = log.rotate();
    log.append(7 * 512, 512);
    await log.close();
    const again = DirtyLog.open(dir);
    assert.deepEqual(again.replayed, [...want, { start: 3584, end: 4096 }]);
    assert.deepEqual(again.replayedGens, [ended, ended + 1]);
    await again.log.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a generation file made ready ahead is used by the next rotation, and one whose rename a power cut undid is replayed as the newest generation", async () => {
  const dir = mkdtempSync(join(tmpdir(), "dirty-log-"));
  try {
    const { log } = DirtyLog.open(dir);
    // The spare is created, zero-filled and synced in the background.
    for (let i = 0; i < 200 && !existsSync(join(dir, "dirty-next.log")); i++) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 1000));
    const spare = statSync(join(dir, "dirty-next.log")).ino;
    log.append(0, 512);
    const ended = log.rotate();
    log.append(4096, 512);
    assert.equal(statSync(join(dir, `dirty.${ended + 1}.log`)).ino, spare, "the rotation renamed the spare");
    assert.deepEqual(
      readdirSync(dir)
        .filter((n) => n.startsWith("dirty."))
        .sort(),
      [`dirty.${ended}.log`, `dirty.${ended + 1}.log`],
    );
    await log.close();
    // The state a power cut can leave: the spare renamed to a generation, and the rename lost, while its records were synced.
    renameSync(join(dir, `dirty.${ended + 1}.log`), join(dir, "dirty-next.log"));
    const again = DirtyLog.open(dir);
    assert.deepEqual(again.replayed, [
      { start: 0, end: 512 },
      { start: 4096, end: 4608 },
    ]);
    assert.deepEqual(again.replayedGens, [ended, ended + 1]);
    await again.log.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a batch is announced as base64 of its JSON message, as the Functions queue trigger expects", () => {
  const text = encodeBatchMessage({ v: 1, itemId: "item-1", diskId: "os", seq: 42 });
  assert.match(text, /^[A-Za-z0-9+/]+=*$/);
  assert.deepEqual(JSON.parse(Buffer.from(text, "base64").toString("utf8")), { v: 1, itemId: "item-1", diskId: "os", seq: 42 });
});

test("retries back off exponentially with jitter, never beyond the cap", () => {
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = Math.min(30_000, 500 * 2 ** attempt);
    assert.equal(
      backoffMs(attempt, 500, 30_000, () => 0),
      ceiling / 2,
    );
    assert.equal(
      backoffMs(attempt, 500, 30_000, () => 0.999999),
      Math.round(ceiling / 2 + (0.999999 * ceiling) / 2),
    );
  }
  assert.ok(backoffMs(100) <= 30_000);
});
