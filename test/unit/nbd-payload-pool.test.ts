// The NBD server's pool of WRITE payload buffers: reuse within its retention, and a change of request size does not leave the retention full of the old size.
import { test } from "node:test";
import assert from "node:assert/strict";
import { PayloadPool } from "../../agent/nbd/payload-pool";

const KiB = 1024;
const MiB = 1024 * KiB;

test("a payload buffer given back is taken again by the next request of its size; small payloads are not pooled", () => {
  const pool = new PayloadPool(16 * MiB);
  assert.equal(pool.take(4 * KiB), undefined);
  const a = pool.take(1 * MiB)!;
  assert.equal(a.length, 1 * MiB);
  pool.give(a);
  assert.equal(pool.take(1 * MiB), a);
  // Sizes are rounded up to a power of two: a 768 KiB payload gets a 1 MiB buffer, the same one.
  pool.give(a);
  assert.equal(pool.take(768 * KiB), a);
});

test("when the request size changes, buffers of the old size make room for the new one (256 KiB requests, then 1 MiB)", () => {
  const pool = new PayloadPool(16 * MiB);
  // nbdcopy: 64 requests of 256 KiB in flight fill the retention.
  const small = Array.from({ length: 64 }, () => pool.take(256 * KiB)!);
  for (const b of small) pool.give(b);
  // qemu-img bench: 8 requests of 1 MiB in flight. Given back, they are kept (old-size buffers are dropped for them)…
  const big = Array.from({ length: 8 }, () => pool.take(1 * MiB)!);
  for (const b of big) pool.give(b);
  // …so the next 8 requests reuse them instead of allocating.
  const again = Array.from({ length: 8 }, () => pool.take(1 * MiB)!);
  assert.deepEqual(new Set(again), new Set(big));
  // The 256 KiB buffers left are still reused, within the retention.
  const left = pool.take(256 * KiB)!;
  assert.ok(small.includes(left));
});

test("a buffer larger than the whole retention is not kept, and nothing else is dropped for it", () => {
  const pool = new PayloadPool(2 * MiB);
  const a = pool.take(1 * MiB)!;
  pool.give(a);
  const huge = pool.take(4 * MiB)!;
  pool.give(huge);
  assert.notEqual(pool.take(4 * MiB), huge);
  assert.equal(pool.take(1 * MiB), a);
});
