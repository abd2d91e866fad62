// Proving a scan pass quiet from outside: real image files (size, times, change notifications) and a real loop device (the kernel's write counters).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { changedBetween, QuietProbe, type Look } from "../../agent/quiet";

const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** An image file last modified an hour ago (older than any in-flight margin). */
function oldImage(dir: string, name: string): string {
  const path = join(dir, name);
  writeFileSync(path, Buffer.alloc(1024 * 1024, 7));
  const anHourAgo = new Date(Date.now() - 3600_000);
  utimesSync(path, anHourAgo, anHourAgo);
  return path;
}
const dd = (args: string[]) => execFileSync("dd", [...args, "status=none"], { stdio: "ignore" });

describe("changedBetween (the verdict on two looks)", () => {
  const file = (over: Partial<Extract<Look, { kind: "file" }>> = {}): Look => ({
    kind: "file",
    at: 10_000_000,
    size: 4096,
    mtimeNs: 1_000_000_000_123n,
    events: 3,
    ...over,
  });
  const device = (over: Partial<Extract<Look, { kind: "device" }>> = {}): Look => ({
    kind: "device",
    at: 0,
    writes: 5,
    sectors: 80,
    discards: 0,
    inFlight: 0,
    ...over,
  });

  test("identical looks at a file modified long before are quiet", () => {
    assert.equal(changedBetween(file(), file({ at: 10_000_500 })), undefined);
  });
  test("a change notification, a new size or a new modification time is a change", () => {
    assert.match(changedBetween(file(), file({ events: 4 }))!, /notification/);
    assert.match(changedBetween(file(), file({ size: 8192 }))!, /size/);
    assert.match(changedBetween(file(), file({ mtimeNs: 1_000_000_000_999n }))!, /modification time/);
  });
  test("a file modified just before the first look may have had a write in flight: not quiet", () => {
    const recent = BigInt(10_000_000 - 500) * 1_000_000n;
    assert.match(changedBetween(file({ mtimeNs: recent }), file({ mtimeNs: recent }))!, /in flight/);
  });
  test("whole-second modification times (a coarse filesystem) get a wider margin", () => {
    const secondsAgo = (s: number) => BigInt(Math.floor((10_000_000 - s * 1000) / 1000)) * 1_000_000_000n;
    assert.match(changedBetween(file({ mtimeNs: secondsAgo(2) }), file({ mtimeNs: secondsAgo(2) }))!, /in flight/);
    assert.equal(changedBetween(file({ mtimeNs: secondsAgo(4) }), file({ mtimeNs: secondsAgo(4) })), undefined);
  });
  test("a device with a write in flight, or completed writes or discards between the looks, is not quiet", () => {
    assert.equal(changedBetween(device(), device()), undefined);
    assert.match(changedBetween(device({ inFlight: 1 }), device())!, /in flight/);
    assert.match(changedBetween(device(), device({ writes: 6, sectors: 88 }))!, /completed/);
    assert.match(changedBetween(device(), device({ discards: 1 }))!, /discard/);
  });
  test("a look that failed is never quiet", () => {
    assert.match(changedBetween({ kind: "unknown", at: 0, why: "gone" }, file())!, /gone/);
  });
});

describe("QuietProbe on real disks", () => {
  test("an image file: no write → quiet; a dd write → changed, even one that puts the old times back", async () => {
    const dir = mkdtempSync(join(tmpdir(), "quiet-"));
    const path = oldImage(dir, "os.img");
    const probe = await QuietProbe.open(path);
    try {
      const a = await probe.look();
      await settle(100);
      assert.equal(changedBetween(a, await probe.look()), undefined, "nobody wrote");

      const b = await probe.look();
      dd(["if=/dev/urandom", `of=${path}`, "bs=4k", "seek=3", "count=1", "conv=notrunc"]);
      await settle(100);
      assert.ok(changedBetween(b, await probe.look()), "a dd write is seen");

      // A write whose time stamp says nothing (stamped before the first look, or set back): the notification tells.
      const anHourAgo = new Date(Date.now() - 3600_000);
      utimesSync(path, anHourAgo, anHourAgo);
      await settle(100);
      const c = await probe.look();
      dd(["if=/dev/urandom", `of=${path}`, "bs=4k", "seek=9", "count=1", "conv=notrunc"]);
      utimesSync(path, anHourAgo, anHourAgo);
      await settle(100);
      const d = await probe.look();
      assert.equal(d.kind === "file" && c.kind === "file" && d.mtimeNs === c.mtimeNs, true, "the times were put back");
      assert.match(changedBetween(c, d)!, /notification/);
    } finally {
      await probe.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  const loopUsable = existsSync("/dev/loop-control") && spawnSync("losetup", ["--version"]).status === 0;
  test(
    `a block device (a loop device): direct and buffered dd writes are counted, no write is quiet${loopUsable ? "" : " — skipped: no loop devices here"}`,
    { skip: !loopUsable },
    async () => {
      const dir = mkdtempSync(join(tmpdir(), "quiet-dev-"));
      const backing = oldImage(dir, "dev.img");
      const dev = execFileSync("losetup", ["-f", "--show", backing], { encoding: "utf8" }).trim();
      const probe = await QuietProbe.open(dev);
      try {
        const a = await probe.look();
        assert.equal(a.kind, "device");
        assert.equal(changedBetween(a, await probe.look()), undefined, "nobody wrote");

        const b = await probe.look();
        dd(["if=/dev/urandom", `of=${dev}`, "bs=4k", "seek=2", "count=1", "oflag=direct"]);
        assert.match(changedBetween(b, await probe.look())!, /completed/);

        // Buffered: only in the device's page cache until written back — the probe's flush makes it count.
        const c = await probe.look();
        dd(["if=/dev/urandom", `of=${dev}`, "bs=4k", "seek=5", "count=1"]);
        assert.match(changedBetween(c, await probe.look())!, /completed/);
      } finally {
        await probe.close();
        execFileSync("losetup", ["-d", dev]);
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
