// The batch format: what is encoded decodes unchanged, any flipped bit is caught, page writes respect Azure's limits.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  batchBlobName,
  batchHeaderLength,
  batchWriteTimes,
  CorruptBatchError,
  decodeBatch,
  encodeBatch,
  MAX_PAGE_WRITE,
  mergedPageWrites,
  pageWrites,
  seqOfBlobName,
  type Batch,
} from "../../shared/replication/batch";
import { KiB, MiB, randomBytes, rng } from "../support/batches";

const header = {
  itemId: "3f2b6a38-8f7e-4d7e-9a51-5b0f0d5e2c11",
  diskId: "data0",
  seq: 42,
  firstWriteMs: 1_700_000_000_123,
  lastWriteMs: 1_700_000_004_567,
};

test("encode then decode gives back the header, flags, tag and payload", () => {
  const next = rng(1);
  const payload = randomBytes(next, 3 * 512);
  const extents = [
    { offset: 0, length: 512 },
    { offset: 4096, length: 1024 },
  ];
  const tag = { id: "tag-1", kind: "app" as const, time: "2026-01-01T00:00:00.000Z", scope: "group" as const };
  const encoded = encodeBatch({ ...header, extents, tag, initial: true, initialComplete: true, resyncId: "r-1", resyncComplete: true }, payload);
  const { header: h, payload: p } = decodeBatch(encoded);
  assert.deepEqual(p, payload);
  assert.deepEqual(h.extents, extents);
  assert.deepEqual(h.tag, tag);
  assert.equal(h.itemId, header.itemId);
  assert.equal(h.diskId, header.diskId);
  assert.equal(h.seq, 42);
  assert.equal(h.firstWriteMs, header.firstWriteMs);
  assert.equal(h.lastWriteMs, header.lastWriteMs);
  assert.equal(h.payloadLength, payload.length);
  assert.deepEqual([h.initial, h.initialComplete, h.resyncId, h.resyncComplete], [true, true, "r-1", true]);

  const plain = decodeBatch(encodeBatch({ ...header, extents: [] }, Buffer.alloc(0))).header;
  assert.deepEqual(plain.extents, [], "a batch may carry only a tag, or nothing");
  for (const flag of ["initial", "initialComplete", "resyncId", "resyncComplete", "tag"] as const) assert.equal(flag in plain, false, `${flag} absent`);
});

test("every single flipped bit, in the header or the payload, is a CorruptBatchError", () => {
  const next = rng(2);
  const payload = randomBytes(next, 2048);
  const encoded = encodeBatch(
    {
      ...header,
      extents: [
        { offset: 512, length: 1024 },
        { offset: 8192, length: 1024 },
      ],
      tag: { id: "t", kind: "crash", time: "2026-01-01T00:00:00.000Z", scope: "vm" },
      resyncId: "r",
    },
    payload,
  );
  for (let byte = 0; byte < encoded.length; byte++) {
    for (let bit = 0; bit < 8; bit++) {
      const bad = Buffer.from(encoded);
      bad[byte] ^= 1 << bit;
      assert.throws(() => decodeBatch(bad), CorruptBatchError, `flip of bit ${bit} of byte ${byte} (of ${encoded.length}) went unnoticed`);
    }
  }
});

test("a truncated or extended batch is a CorruptBatchError", () => {
  const encoded = encodeBatch({ ...header, extents: [{ offset: 0, length: 1024 }] }, Buffer.alloc(1024, 7));
  for (const n of [0, 3, 20, 60, encoded.length - 1024, encoded.length - 1]) {
    assert.throws(() => decodeBatch(encoded.subarray(0, n)), CorruptBatchError, `truncated to ${n}`);
  }
  assert.throws(() => decodeBatch(Buffer.concat([encoded, Buffer.alloc(512)])), CorruptBatchError, "extra bytes");
});

test("the encoder refuses extents that are unaligned, overlapping, out of order, or that do not cover the payload", () => {
  const p = Buffer.alloc(1024);
  assert.throws(() => encodeBatch({ ...header, extents: [{ offset: 100, length: 1024 }] }, p), CorruptBatchError);
  assert.throws(() => encodeBatch({ ...header, extents: [{ offset: 0, length: 1000 }] }, Buffer.alloc(1000)), CorruptBatchError);
  assert.throws(
    () =>
      encodeBatch(
        {
          ...header,
          extents: [
            { offset: 1024, length: 512 },
            { offset: 512, length: 512 },
          ],
        },
        p,
      ),
    CorruptBatchError,
  );
  assert.throws(
    () =>
      encodeBatch(
        {
          ...header,
          extents: [
            { offset: 0, length: 1024 },
            { offset: 512, length: 512 },
          ],
        },
        Buffer.alloc(1536),
      ),
    CorruptBatchError,
  );
  assert.throws(() => encodeBatch({ ...header, extents: [{ offset: 0, length: 512 }] }, p), RangeError);
});

/** Each sector of the payload stamped with its index: cheap, and any misplaced sector shows. */
function batchOf(extents: { offset: number; length: number }[]): Batch {
  const payload = Buffer.alloc(extents.reduce((n, e) => n + e.length, 0));
  for (let at = 0; at < payload.length; at += 512) payload.writeUInt32LE(at / 512 + 1, at);
  return decodeBatch(encodeBatch({ ...header, extents }, payload));
}

/** Every write ≤ 4 MiB and 512-aligned, in disk order, and together exactly the batch's bytes at its offsets. */
function assertWritesCover(batch: Batch): ReturnType<typeof pageWrites> {
  const writes = pageWrites(batch);
  for (const w of writes) {
    assert.ok(w.data.length <= MAX_PAGE_WRITE, `write of ${w.data.length} bytes exceeds 4 MiB`);
    assert.equal(w.offset % 512, 0);
    assert.equal(w.data.length % 512, 0);
  }
  for (let i = 1; i < writes.length; i++) assert.ok(writes[i].offset >= writes[i - 1].offset + writes[i - 1].data.length, "in order, disjoint");
  const end = Math.max(...batch.header.extents.map((e) => e.offset + e.length), 0);
  const viaWrites = Buffer.alloc(end);
  for (const w of writes) w.data.copy(viaWrites, w.offset);
  const viaExtents = Buffer.alloc(end);
  let p = 0;
  for (const e of batch.header.extents) {
    batch.payload.copy(viaExtents, e.offset, p, p + e.length);
    p += e.length;
  }
  assert.ok(viaWrites.equals(viaExtents), "the writes put the payload where the extents say");
  return writes;
}

test("page writes: a 9 MiB extent becomes 4 + 4 + 1 MiB", () => {
  const writes = assertWritesCover(batchOf([{ offset: MiB, length: 9 * MiB }]));
  assert.deepEqual(
    writes.map((w) => [w.offset, w.data.length]),
    [
      [MiB, 4 * MiB],
      [5 * MiB, 4 * MiB],
      [9 * MiB, MiB],
    ],
  );
});

test("page writes: adjacent extents merge into one write, separate ones stay apart", () => {
  const writes = assertWritesCover(
    batchOf([
      { offset: 0, length: 512 },
      { offset: 512, length: 1024 },
      { offset: 1536, length: 512 },
      { offset: 64 * KiB, length: 4096 },
    ]),
  );
  assert.deepEqual(
    writes.map((w) => [w.offset, w.data.length]),
    [
      [0, 2048],
      [64 * KiB, 4096],
    ],
  );
});

test("page writes: a merged run longer than 4 MiB is split at 4 MiB, wherever its extents met", () => {
  const writes = assertWritesCover(
    batchOf([
      { offset: 0, length: 3 * MiB },
      { offset: 3 * MiB, length: 3 * MiB },
      { offset: 6 * MiB, length: 512 },
    ]),
  );
  assert.deepEqual(
    writes.map((w) => [w.offset, w.data.length]),
    [
      [0, 4 * MiB],
      [4 * MiB, 2 * MiB + 512],
    ],
  );
  assert.deepEqual(pageWrites(batchOf([])), [], "an empty batch writes nothing");
});

test("page writes of random batches always cover them exactly within Azure's limits", () => {
  const next = rng(4);
  for (let round = 0; round < 30; round++) {
    const extents: { offset: number; length: number }[] = [];
    let at = 0;
    for (let i = 0; i < 1 + Math.floor(next() * 6); i++) {
      at += Math.floor(next() * 3) * 512 * Math.floor(next() * 2048); // sometimes adjacent
      const length = (1 + Math.floor(next() * 12 * 2048)) * 512; // up to 12 MiB
      extents.push({ offset: at, length });
      at += length;
    }
    assertWritesCover(batchOf(extents));
  }
});

test("consecutive batches written as one end as if applied one after the other: the later wins, small neighbours are joined", () => {
  const next = rng(5);
  const disk = 8 * MiB;
  for (let round = 0; round < 40; round++) {
    const batches: Batch[] = [];
    for (let b = 0; b < 1 + Math.floor(next() * 5); b++) {
      // Sorted, disjoint extents of 512 B to 256 KiB, often touching those of other batches.
      const extents: { offset: number; length: number }[] = [];
      let at = Math.floor(next() * 64) * 512;
      while (extents.length < 1 + Math.floor(next() * 40)) {
        const length = (1 + Math.floor(next() * 512)) * 512;
        if (at + length > disk) break;
        extents.push({ offset: at, length });
        at += length + Math.floor(next() * 3) * Math.floor(next() * 256) * 512;
      }
      const payload = randomBytes(
        next,
        extents.reduce((n, e) => n + e.length, 0),
      );
      batches.push(decodeBatch(encodeBatch({ ...header, seq: b + 1, extents }, payload)));
    }
    const applied = Buffer.alloc(disk);
    const written = Buffer.alloc(disk);
    for (const b of batches) for (const w of pageWrites(b)) w.data.copy(applied, w.offset);
    const writes = mergedPageWrites(batches, 256 * KiB);
    for (const w of writes) {
      assert.ok(w.data.length <= MAX_PAGE_WRITE && w.offset % 512 === 0 && w.data.length % 512 === 0);
      w.data.copy(written, w.offset);
    }
    for (let i = 1; i < writes.length; i++) assert.ok(writes[i].offset >= writes[i - 1].offset + writes[i - 1].data.length, "in order, disjoint");
    assert.ok(written.equals(applied), `round ${round}: the merged writes equal the batches applied in turn`);
    const separate = batches.reduce((n, b) => n + pageWrites(b).length, 0);
    assert.ok(writes.length <= separate, `${writes.length} merged writes, ${separate} separate`);
  }
  const one = batchOf([{ offset: 0, length: 9 * MiB }]);
  assert.deepEqual(mergedPageWrites([one]), pageWrites(one), "one batch: its own page writes");
});

test("a batch's first bytes give its header's length, even when the header is longer than they are; the write times need the whole header", () => {
  const extents = Array.from({ length: 8000 }, (_, i) => ({ offset: i * 1024, length: 512 }));
  const encoded = encodeBatch({ ...header, extents }, Buffer.alloc(8000 * 512, 7));
  const headerLength = encoded.length - 8000 * 512;
  assert.ok(headerLength > 64 * KiB, `a header of ${headerLength} bytes`);
  assert.equal(batchHeaderLength(encoded.subarray(0, 64)), headerLength);
  assert.equal(batchHeaderLength(encoded), headerLength);
  assert.equal(batchWriteTimes(encoded.subarray(0, 64 * KiB)), undefined, "the header is not all there");
  assert.deepEqual(batchWriteTimes(encoded.subarray(0, headerLength)), { firstWriteMs: header.firstWriteMs, lastWriteMs: header.lastWriteMs });
  assert.equal(batchHeaderLength(Buffer.from("not a batch at all, but long enough to hold a fixed header part")), undefined);
  assert.equal(batchHeaderLength(encoded.subarray(0, 10)), undefined, "shorter than the fixed part");
});

test("blob names sort in sequence order and give their sequence number back", () => {
  const seqs = [1, 2, 9, 10, 99, 100, 12345678901, Number.MAX_SAFE_INTEGER];
  const names = seqs.map((s) => batchBlobName("os", s));
  assert.deepEqual([...names].sort(), names);
  assert.deepEqual(names.map(seqOfBlobName), seqs);
  assert.equal(seqOfBlobName("os/1.batch"), undefined);
  assert.equal(seqOfBlobName("agent.json"), undefined);
});
