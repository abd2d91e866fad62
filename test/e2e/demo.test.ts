// `site-recovery demo` run for real, as a user runs it: a child process, small disks, a short workload; it must pass and leave nothing behind.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const CLI = resolve(__dirname, "..", "..", "cli", "main.js");

test(
  "the demo drill (8 MiB disks, 5 s of writes) passes: test and unplanned failover disks all match their recovery points, exit code 0, temp files removed",
  { timeout: 120_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "demo-test-"));
    const reportPath = join(dir, "report.json");
    try {
      const child = spawn(process.execPath, [CLI, "demo", "--disk-mib", "8", "--seconds", "5", "--report", reportPath], { stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      child.stdout.on("data", (c: Buffer) => (out += c.toString()));
      child.stderr.on("data", (c: Buffer) => (out += c.toString()));
      const code = await new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
      assert.equal(code, 0, out);
      assert.match(out, /RESULT: PASS — all 8\/8 failed-over disks matched their recovery points block for block\./, out);
      for (const step of ["[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"]) assert.ok(out.includes(step), `prints step ${step}`);

      const report = JSON.parse(readFileSync(reportPath, "utf8"));
      assert.equal(report.ok, true);
      assert.equal(report.disks.length, 8);
      assert.ok(report.disks.every((d: { matched: boolean; blocks: number }) => d.matched && d.blocks === 128));
      assert.deepEqual(
        report.failovers.map((f: { phase: string }) => f.phase),
        ["test", "unplanned"],
      );
      assert.ok(report.workload.bytesWritten > 0 && report.replication.bytesShipped > 0);

      const stackDir = /everything under (\S+), removed at the end/.exec(out)?.[1];
      assert.ok(stackDir, "names its temp directory");
      assert.equal(existsSync(stackDir), false, `${stackDir} is removed`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
