// The spool on its own (temp files only): shipped batches' files are kept and overwritten by later batches while the spool's files stay within its bound.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { Spool } from "../../agent/spool";
import { statePaths } from "../../agent/state";

const KiB = 1024;

/** Every file in the disk's spool directory: name → size. */
function files(stateDir: string, diskId: string): Map<string, number> {
  const dir = statePaths(stateDir).spool(diskId);
  return new Map(readdirSync(dir).map((n) => [n, statSync(join(dir, n)).size]));
}

const sum = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);

/** A spool of `maxBytes` in a state directory of its own (removed afterwards), opened for disk "os". */
async function withSpool(maxBytes: number, run: (spool: Spool, stateDir: string) => Promise<void>): Promise<void> {
  const stateDir = mkdtempSync(join(tmpdir(), "spool-"));
  try {
    const spool = new Spool(stateDir, maxBytes);
    await spool.open("os", 1);
    await run(spool, stateDir);
  } finally {
    rmSync(stateDir, { recursive: true, force: true });
  }
}

test("shipped batches' files are overwritten by later batches, and the spool's files never exceed its bound", async () => {
  const max = 64 * KiB;
  await withSpool(max, async (spool, stateDir) => {
    const put = async (seq: number, size: number) => {
      const payload = Buffer.alloc(size, seq);
      spool.reserve("os", size);
      await spool.put("os", seq, [payload.subarray(0, 100), payload.subarray(100)], size);
    };
    // Six batches of 8 KiB in the spool, then shipped: their files are kept (48 KiB ≤ 64 KiB).
    for (let seq = 1; seq <= 6; seq++) await put(seq, 8 * KiB);
    for (let seq = 1; seq <= 6; seq++) await spool.remove("os", seq);
    const kept = files(stateDir, "os");
    assert.equal(kept.size, 6);
    assert.ok(
      [...kept.keys()].every((n) => n.endsWith(".free")),
      `only kept files: ${[...kept.keys()].join(" ")}`,
    );
    assert.equal(spool.usedBytes, 0);

    // The next batches overwrite them: no new file, and each holds exactly its batch.
    for (let seq = 7; seq <= 10; seq++) await put(seq, 8 * KiB);
    let now = files(stateDir, "os");
    assert.equal(now.size, 6, `files: ${[...now.keys()].join(" ")}`);
    assert.deepEqual(readFileSync(spool.path("os", 9)), Buffer.alloc(8 * KiB, 9));
    // A smaller batch takes a kept file and cuts it to its size; a larger one grows one.
    await put(11, 5 * KiB);
    await put(12, 12 * KiB);
    assert.equal(statSync(spool.path("os", 11)).size, 5 * KiB);
    assert.deepEqual(readFileSync(spool.path("os", 12)), Buffer.alloc(12 * KiB, 12));
    assert.equal(files(stateDir, "os").size, 6);

    // Past the bound (disks check it before sealing; this test puts directly): while the spool's batches and kept files
    // would exceed it, a shipped batch's file is removed; after that they are kept again.
    for (let seq = 13; seq <= 14; seq++) await put(seq, 8 * KiB);
    assert.ok(spool.usedBytes > max);
    for (let seq = 7; seq <= 14; seq++) await spool.remove("os", seq);
    now = files(stateDir, "os");
    assert.equal(spool.usedBytes, 0);
    assert.equal(now.size, 7, `files: ${[...now.keys()].join(" ")}`);
    assert.ok(sum(now) <= max, `${sum(now)} bytes of kept files, bound ${max}`);
    assert.ok([...now.keys()].every((n) => n.endsWith(".free")));

    // A restart removes kept files (a write into one may have been interrupted) and leaves the batches.
    await put(15, 8 * KiB);
    const reopened = new Spool(stateDir, max);
    assert.deepEqual(await reopened.open("os", 16), [15]);
    assert.deepEqual([...files(stateDir, "os").keys()], [basename(spool.path("os", 15))]);
  });
});

test("a write into the spool that fails leaves no file behind, and the retry lands the batch", async () => {
  await withSpool(64 * KiB, async (spool, stateDir) => {
    // As a disk does: the bytes are reserved once at the seal, then the write is attempted until it lands.
    const reserve = (seq: number) => (spool.reserve("os", 8 * KiB), seq);
    const attempt = (seq: number) => spool.put("os", seq, [Buffer.alloc(8 * KiB, seq)], 8 * KiB);
    const put = (seq: number) => attempt(reserve(seq));
    await put(1);
    await spool.remove("os", 1);
    assert.deepEqual(
      [...files(stateDir, "os").keys()].map((n) => n.endsWith(".free")),
      [true],
    );
    // Something in the way of batch 2's file (the final rename fails), and a fresh file for it (.tmp) cannot be made either.
    mkdirSync(join(spool.path("os", 2), "in-the-way"), { recursive: true });
    mkdirSync(join(`${spool.path("os", 2)}.tmp`, "in-the-way"), { recursive: true });
    reserve(2);
    await assert.rejects(attempt(2));
    // The kept file it was written into is gone, not left uncounted; the second attempt could not create its file.
    assert.deepEqual([...files(stateDir, "os").keys()].sort(), [basename(spool.path("os", 2)), `${basename(spool.path("os", 2))}.tmp`].sort());
    await assert.rejects(attempt(2));
    rmSync(spool.path("os", 2), { recursive: true });
    rmSync(`${spool.path("os", 2)}.tmp`, { recursive: true });
    await attempt(2);
    assert.deepEqual(readFileSync(spool.path("os", 2)), Buffer.alloc(8 * KiB, 2));
    assert.equal(spool.usedBytes, 8 * KiB);
    assert.deepEqual([...files(stateDir, "os").keys()], [basename(spool.path("os", 2))]);
  });
});

test("small batches do not pile up kept files: their number is bounded too (the bound in 4 MiB batches, at least eight)", async () => {
  await withSpool(64 * KiB, async (spool, stateDir) => {
    for (let seq = 1; seq <= 20; seq++) {
      spool.reserve("os", KiB);
      await spool.put("os", seq, [Buffer.alloc(KiB, seq)], KiB);
    }
    for (let seq = 1; seq <= 20; seq++) await spool.remove("os", seq);
    const kept = files(stateDir, "os");
    assert.equal(kept.size, 8, `files: ${[...kept.keys()].join(" ")}`);
    assert.ok([...kept.keys()].every((n) => n.endsWith(".free")));
  });
});
