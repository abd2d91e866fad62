// The real CLI agent serving its disks over NBD, with the real stack applying and sealing: qemu-io writes through the exports,
// crash-consistent points come at the policy's cadence and equal the images at their tags; --pre-freeze/--post-thaw give app points.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { replicaBlobName } from "../../shared/protection/items";
import { e2eEnableBody } from "../support/e2e";
import { nbdUnixUrl, qemuIo } from "../support/nbd-client";
import { startTestStack, type TestStack } from "../support/stack";

const MiB = 1024 * 1024;
const DISK_MIB = 8;

interface PointView {
  id: string;
  kind: "crash" | "app";
  time: string;
  scope: string;
  disks: { diskId: string; snapshot: string; seq: number }[];
}

async function until<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs: number,
  seen: () => string = () => "",
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${seen() ? `:\n${seen()}` : ""}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe("the CLI agent with --nbd", () => {
  let stack: TestStack;
  let dir: string;
  let itemId: string;
  let agent: ChildProcess | undefined;
  let output = "";
  const images = { os: "", data0: "" };
  let sock = "";

  before(async () => {
    stack = await startTestStack({ queueOverrides: { maxPollingIntervalMs: 100, visibilityTimeoutMs: 500 }, env: { AGENT_CHECKIN_SECONDS: "1" } });
    dir = mkdtempSync(join(tmpdir(), "nbd-cli-"));
    const res = await stack.api("POST", "replicated-items", {
      ...e2eEnableBody("nbd-cli", DISK_MIB),
      policy: { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 10, appConsistentFrequencyMinutes: 1 },
    });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    itemId = res.body.id;
    images.os = join(dir, "os.img");
    images.data0 = join(dir, "data0.img");
    sock = join(dir, "nbd.sock");
    // The freeze scripts journal what they did; the freeze itself is the scripts' business (here: nothing to freeze).
    writeFileSync(join(dir, "pre.sh"), `#!/bin/sh\necho pre >> "$1/journal"\n`);
    writeFileSync(join(dir, "post.sh"), `#!/bin/sh\necho post >> "$1/journal"\n`);
    const cli = join(__dirname, "..", "..", "cli", "main.js");
    agent = spawn(
      process.execPath,
      [
        cli,
        "--url",
        stack.url,
        "agent",
        "--token",
        res.body.agentRegistration.token,
        "--disk",
        `os=${images.os}`,
        "--disk",
        `data0=${images.data0}`,
        "--state-dir",
        join(dir, "state"),
        "--nbd",
        sock,
        "--pre-freeze",
        `/bin/sh ${join(dir, "pre.sh")} ${dir}`,
        "--post-thaw",
        `/bin/sh ${join(dir, "post.sh")} ${dir}`,
        "--progress-interval",
        "1",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    agent.stdout!.on("data", (d: Buffer) => (output += d.toString()));
    agent.stderr!.on("data", (d: Buffer) => (output += d.toString()));
    await until(
      "the agent serving",
      () => /serving NBD exports os, data0 on /.test(output),
      60_000,
      () => output,
    );
  });

  after(async () => {
    if (agent && agent.exitCode === null) {
      agent.kill("SIGKILL");
      await once(agent, "exit");
    }
    await stack?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function points(): Promise<PointView[]> {
    const r = await stack.api("GET", `replicated-items/${itemId}/recovery-points`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body;
  }

  async function snapshotBytes(diskId: string, snapshot: string): Promise<Buffer> {
    const replicas = await stack.services.storage.replicas();
    return replicas
      .getPageBlobClient(replicaBlobName(itemId, diskId))
      .withSnapshot(snapshot)
      .downloadToBuffer(0, DISK_MIB * MiB);
  }

  async function replicaEqualsImage(diskId: "os" | "data0"): Promise<boolean> {
    const replicas = await stack.services.storage.replicas();
    const replica = await replicas.getPageBlobClient(replicaBlobName(itemId, diskId)).downloadToBuffer(0, DISK_MIB * MiB);
    return replica.equals(readFileSync(images[diskId]));
  }

  test("prints where it serves with copyable client lines, on a 0600 socket", () => {
    assert.match(output, new RegExp(`qemu-io -f raw 'nbd\\+unix:///data0\\?socket=${sock}'`));
    assert.match(output, new RegExp(`nbd-client -unix ${sock} -N data0 /dev/nbd0`));
    assert.doesNotMatch(output, /--pre-freeze acts on app-consistent tags, which need tracked disks/);
    assert.equal(statSync(sock).mode & 0o777, 0o600);
  });

  test("writes by qemu-io into both exports: the replicas equal the images, and a crash point newer than the writes equals them at its tag", async () => {
    await qemuIo(nbdUnixUrl(sock, "os"), ["write -P 0x11 0 1m", "write -P 0x12 3m 64k", "write -z 128k 64k", "flush"]);
    await qemuIo(nbdUnixUrl(sock, "data0"), ["write -P 0x21 1m 1m", "write -f -P 0x22 7m 4k", "flush"]);
    // Acknowledged: everything written is in the images now, and nothing is written after this until the comparison.
    const written = Date.now();
    const osImage = readFileSync(images.os);
    const dataImage = readFileSync(images.data0);
    assert.ok(osImage.subarray(0, 128 * 1024).equals(Buffer.alloc(128 * 1024, 0x11)));
    assert.ok(dataImage.subarray(7 * MiB, 7 * MiB + 4096).equals(Buffer.alloc(4096, 0x22)));

    await until(
      "the replicas to equal the images",
      async () => (await replicaEqualsImage("os")) && (await replicaEqualsImage("data0")),
      90_000,
      () => output,
    );

    const point = await until(
      "a sealed crash point newer than the writes",
      async () => (await points()).find((p) => p.kind === "crash" && Date.parse(p.time) > written),
      90_000,
      () => output,
    );
    assert.equal(point.scope, "vm");
    assert.deepEqual(point.disks.map((d) => d.diskId).sort(), ["data0", "os"]);
    for (const d of point.disks) {
      const at = await snapshotBytes(d.diskId, d.snapshot);
      assert.ok(at.equals(d.diskId === "os" ? osImage : dataImage), `point ${point.id}: disk ${d.diskId} equals its image at the tag`);
    }
    const all = await points();
    assert.ok(
      all.every((p, i) => i === 0 || Date.parse(all[i - 1]!.time) >= Date.parse(p.time)),
      "newest first",
    );

    const item = await stack.api("GET", `replicated-items/${itemId}`);
    assert.equal(item.status, 200);
    assert.equal(typeof item.body.rpoSeconds, "number", JSON.stringify(item.body.rpoSeconds));
  });

  test("--pre-freeze/--post-thaw through the CLI: an app point, with the freeze run and thawed", async () => {
    const app = await until(
      "an app-consistent point",
      async () => (await points()).find((p) => p.kind === "app"),
      150_000,
      () => output,
    );
    assert.deepEqual(app.disks.map((d) => d.diskId).sort(), ["data0", "os"]);
    const journal = readFileSync(join(dir, "journal"), "utf8").trim().split("\n");
    assert.deepEqual(journal.slice(0, 2), ["pre", "post"]);
  });

  test("SIGTERM stops the agent: exit 0, the socket removed, the image lock released", async () => {
    const child = agent!;
    const exited = once(child, "exit");
    child.kill("SIGTERM");
    const [code] = await exited;
    assert.equal(code, 0, output);
    assert.equal(existsSync(sock), false, output);
    assert.equal(existsSync(join(dir, ".os.img.site-recovery.lock")), false, output);
    assert.match(output, /stopped; \d+ batch\(es\) left in the spool/);
  });
});
