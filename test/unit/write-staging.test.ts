// WriteStaging alone: the payload a seal takes from staged writes is the bytes of the sealed ranges, and staging gives
// up (the seal reads the image) wherever the copies might not be what the image holds.
import { test } from "node:test";
import assert from "node:assert/strict";
import { RangeSet } from "../../agent/ranges";
import { WriteStaging } from "../../agent/write-staging";

const KiB = 1024;

function fill(seed: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}

/** A staging of `capacity` over buffers it takes and gives back (counted), and the disk those writes make. */
function harness(capacity = 256 * KiB) {
  let out = 0;
  const staging = new WriteStaging(capacity, (bytes) => {
    out++;
    return { payload: Buffer.alloc(Math.max(bytes, capacity)).subarray(0, bytes), release: () => out-- };
  });
  const disk = Buffer.alloc(1024 * KiB);
  const dirty = new RangeSet();
  const write = (offset: number, data: Buffer) => {
    const w = staging.stage(offset, data);
    data.copy(disk, offset);
    dirty.add(offset, offset + data.length);
    staging.landed(w, true);
    return w;
  };
  /** The bytes of the dirty ranges in order, as a seal that reads the disk gets them. */
  const expected = () => Buffer.concat([...dirty].map((r) => disk.subarray(r.start, r.end)));
  return { staging, disk, dirty, write, expected, buffersOut: () => out };
}

test("writes in ascending order: the staging buffer is the payload, handed over with its release", () => {
  const h = harness();
  for (let i = 0; i < 8; i++) h.write(100 * KiB + i * 4 * KiB, fill(i, 4 * KiB));
  h.write(200 * KiB, fill(9, 8 * KiB)); // a gap: still ascending
  const sealed = h.staging.seal(h.dirty);
  assert.ok(sealed);
  assert.ok(sealed.payload.equals(h.expected()));
  assert.equal(h.buffersOut(), 1, "one buffer, now the batch's");
  sealed.release();
  assert.equal(h.buffersOut(), 0);
});

test("overwrites and writes out of order: the payload is composed, later writes winning", () => {
  const h = harness();
  h.write(64 * KiB, fill(1, 16 * KiB));
  h.write(8 * KiB, fill(2, 4 * KiB));
  h.write(68 * KiB, fill(3, 4 * KiB)); // inside the first write
  h.write(60 * KiB, fill(4, 8 * KiB)); // straddles the first write's start: one range 60..80 KiB
  h.write(12 * KiB, fill(5, 4 * KiB)); // adjacent to the second: merged range
  const sealed = h.staging.seal(h.dirty);
  assert.ok(sealed);
  assert.ok(sealed.payload.equals(h.expected()));
  assert.deepEqual(
    [...h.dirty].map((r) => [r.start / KiB, r.end / KiB]),
    [
      [8, 16],
      [60, 80],
    ],
  );
});

test("staging gives up for the rest of the batch: an unaligned write, a write over one still in flight, a failed write, no room", () => {
  // Unaligned: the batch holds the image's bytes around it.
  let h = harness();
  h.write(0, fill(1, 4 * KiB));
  assert.equal(h.staging.stage(8 * KiB + 100, fill(2, 512)), undefined);
  assert.equal(h.staging.seal(h.dirty), undefined);
  // The next batch starts afresh.
  h.dirty.clear();
  h.write(0, fill(3, 4 * KiB));
  assert.ok(h.staging.seal(h.dirty)?.payload.equals(h.expected()));

  // Overlapping a write still in flight: which lands last in the image is not known.
  h = harness();
  const first = h.staging.stage(0, fill(4, 8 * KiB));
  assert.ok(first);
  assert.equal(h.staging.stage(4 * KiB, fill(5, 8 * KiB)), undefined);
  h.staging.landed(first, true);
  assert.equal(h.staging.seal(RangeSet.of([{ start: 0, end: 12 * KiB }])), undefined);
  // Not overlapping: both are staged.
  h = harness();
  const a = h.staging.stage(0, fill(4, 8 * KiB));
  const b = h.staging.stage(8 * KiB, fill(5, 8 * KiB));
  assert.ok(a && b);
  h.staging.landed(a, true);
  h.staging.landed(b, true);
  assert.ok(h.staging.seal(RangeSet.of([{ start: 0, end: 16 * KiB }])));

  // A write that failed to reach the image.
  h = harness();
  const failed = h.staging.stage(0, fill(6, 4 * KiB));
  h.staging.landed(failed, false);
  assert.equal(h.staging.seal(RangeSet.of([{ start: 0, end: 4 * KiB }])), undefined);

  // More than the capacity (overwrites of one block count every time).
  h = harness(16 * KiB);
  for (let i = 0; i < 4; i++) h.write(0, fill(i, 4 * KiB));
  assert.equal(h.staging.stage(0, fill(7, 4 * KiB)), undefined);
  assert.equal(h.staging.seal(h.dirty), undefined);

  // Given up by the disk (ranges replayed from the dirty log, a job's ranges).
  h = harness();
  h.write(0, fill(8, 4 * KiB));
  h.staging.giveUp();
  assert.equal(h.staging.seal(h.dirty), undefined);
});
