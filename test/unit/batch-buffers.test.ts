// BatchBuffers: the agent-wide bound on batches on their way to the spool, and payload buffers reused across disks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { BatchBuffers } from "../../agent/batch-buffers";

const MiB = 1024 * 1024;

/** A promise and the calls that settle it. */
function pending(): { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void } {
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Whether `p` settles before the pending callbacks run out. */
async function settlesNow(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 10; i++) await Promise.resolve();
  await new Promise((r) => setImmediate(r));
  return done;
}

test("a released buffer is the next one taken, by any disk; a second release of the same buffer keeps it once", () => {
  const b = new BatchBuffers(4 * MiB, 2);
  const first = b.take(4 * MiB);
  const second = b.take(MiB);
  assert.notEqual(first.payload.buffer, second.payload.buffer);
  assert.equal(second.payload.length, MiB);
  first.release();
  first.release();
  assert.equal(b.idle, 1);
  const again = b.take(3 * MiB);
  assert.equal(again.payload.buffer, first.payload.buffer, "the released buffer is reused");
  assert.equal(again.payload.length, 3 * MiB);
  const fresh = b.take(4 * MiB);
  assert.notEqual(fresh.payload.buffer, first.payload.buffer, "a buffer released twice was kept once");
});

test("a payload larger than the buffers gets one of its own, which is not kept", () => {
  const b = new BatchBuffers(MiB, 2);
  const big = b.take(MiB + 512);
  assert.equal(big.payload.length, MiB + 512);
  big.release();
  assert.equal(b.idle, 0);
});

test("room waits while `depth` spool writes of any disk are in flight; a failed write frees its place without failing the wait", async () => {
  const b = new BatchBuffers(MiB, 2);
  assert.equal(await settlesNow(b.room()), true, "nothing in flight: room at once");
  const diskA = pending();
  const diskB = pending();
  b.track(diskA.promise);
  assert.equal(await settlesNow(b.room()), true, "one of two places taken");
  b.track(diskB.promise);
  const waiting = b.room();
  assert.equal(await settlesNow(waiting), false, "two writes, of two disks, fill the agent's pipeline");
  diskA.promise.catch(() => undefined);
  diskA.reject(new Error("disk full"));
  await waiting;
  b.track(pending().promise);
  assert.equal(await settlesNow(b.room()), false);
  diskB.resolve();
  assert.equal(await settlesNow(b.room()), true);
});
