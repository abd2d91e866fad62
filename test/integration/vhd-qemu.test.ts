// Integration test for shared/replication/vhd.ts: qemu-img must read our fixed VHDs at their exact size and with the right contents.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { VHD_FOOTER_BYTES, vhdFooter } from "../../shared/replication/vhd";

const MIB = 1024 * 1024;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "site-recovery-vhd-"));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs qemu-img; fails (never skips) with an install hint when it is missing. */
function qemuImg(args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync("qemu-img", args, { encoding: "utf8" });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      assert.fail("qemu-img is not installed; this test needs it: apt-get install -y qemu-utils");
    }
    throw r.error;
  }
  assert.notEqual(r.status, null, `qemu-img ${args.join(" ")} was killed by ${r.signal}`);
  return { status: r.status!, stdout: r.stdout, stderr: r.stderr };
}

/** Known bytes at known offsets: first sector, an unaligned spot, a MiB boundary, the middle, the last sector. */
function samples(size: number): Array<{ offset: number; bytes: Buffer }> {
  return [
    { offset: 0, bytes: Buffer.from("site-recovery first sector\n") },
    { offset: 12345, bytes: Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03]) },
    { offset: MIB - 3, bytes: Buffer.from("straddles a MiB boundary") },
    { offset: Math.floor(size / 2) + 7, bytes: Buffer.alloc(4096, 0x5a) },
    { offset: size - 512, bytes: Buffer.alloc(512, 0xa5) },
  ];
}

/** Writes a sparse file of `length` bytes carrying the sample bytes (and, if given, a footer at `size`). */
function writeImage(file: string, size: number, footer?: Buffer): void {
  const fd = fs.openSync(file, "w");
  try {
    fs.ftruncateSync(fd, size + (footer ? footer.length : 0));
    for (const { offset, bytes } of samples(size)) fs.writeSync(fd, bytes, 0, bytes.length, offset);
    if (footer) fs.writeSync(fd, footer, 0, footer.length, size);
  } finally {
    fs.closeSync(fd);
  }
}

function flipByte(file: string, offset: number): void {
  const fd = fs.openSync(file, "r+");
  try {
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, offset);
    b[0] = b[0]! ^ 0xff;
    fs.writeSync(fd, b, 0, 1, offset);
  } finally {
    fs.closeSync(fd);
  }
}

for (const mib of [16, 1000]) {
  const size = mib * MIB;

  test(`qemu-img reads a ${mib} MiB fixed VHD at its exact size and with the same contents as the raw image`, () => {
    const vhd = path.join(tmp, `disk-${mib}.vhd`);
    const raw = path.join(tmp, `disk-${mib}.img`);
    try {
      writeImage(vhd, size, vhdFooter(size));
      writeImage(raw, size);
      assert.equal(fs.statSync(vhd).size, size + VHD_FOOTER_BYTES);
      assert.equal(fs.statSync(raw).size, size);

      const info = qemuImg(["info", "-f", "vpc", "--output=json", vhd]);
      assert.equal(info.status, 0, `qemu-img info failed: ${info.stderr}`);
      const parsed = JSON.parse(info.stdout) as { format: string; "virtual-size": number };
      assert.equal(parsed.format, "vpc");
      assert.equal(parsed["virtual-size"], size, `qemu-img info: ${info.stdout}`);

      const same = qemuImg(["compare", "-f", "vpc", vhd, "-F", "raw", raw]);
      assert.equal(same.status, 0, `qemu-img compare should find the images identical: ${same.stdout}${same.stderr}`);

      // Change one byte of disk data (inside a hole of the sparse file, away from the samples): now they differ.
      // Exit status 1 means "images differ"; 2 would be an error, which must not pass for a difference.
      flipByte(vhd, Math.floor(size / 4) + 3);
      const differ = qemuImg(["compare", "-f", "vpc", vhd, "-F", "raw", raw]);
      assert.equal(differ.status, 1, `qemu-img compare should report a difference: ${differ.stdout}${differ.stderr}`);

      // Restore it, then change one byte of a written sample in the raw image instead.
      flipByte(vhd, Math.floor(size / 4) + 3);
      assert.equal(qemuImg(["compare", "-f", "vpc", vhd, "-F", "raw", raw]).status, 0);
      flipByte(raw, size - 1);
      const differLast = qemuImg(["compare", "-f", "vpc", vhd, "-F", "raw", raw]);
      assert.equal(differLast.status, 1, `difference in the last byte: ${differLast.stdout}${differLast.stderr}`);
    } finally {
      fs.rmSync(vhd, { force: true });
      fs.rmSync(raw, { force: true });
    }
  });
}
