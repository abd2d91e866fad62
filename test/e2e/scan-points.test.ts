// Recovery points from scanned disks: the CLI agent scanning image files cuts a crash-consistent point after each quiet scan round, never during writes, and says so when it cannot.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent } from "../../agent";
import { randomBytes, rng } from "../support/batches";
import { CLI, killChildren, runChild, stopChild, until } from "../support/children";
import { enableBody } from "../support/requests";
import { startTestStack, type TestStack } from "../support/stack";
import { replicaBlobName } from "../../shared/protection/items";
import { assertFailoverDisk, startFailover, waitFailover } from "../support/failover";

const MiB = 1024 * 1024;
const SCAN_INTERVAL_S = 2;
const CRASH_FREQUENCY_S = 10;

interface Point {
  id: string;
  kind: string;
  time: string;
  scope: string;
  disks: { diskId: string; snapshot: string }[];
}

describe("recovery points from scanned disks", () => {
  let stack: TestStack;
  let dir: string;
  before(async () => {
    stack = await startTestStack();
    dir = mkdtempSync(join(tmpdir(), "scan-points-"));
  });
  after(async () => {
    await killChildren();
    await stack?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function protect(name: string): Promise<{ id: string; token: string; images: Record<string, string> }> {
    const policy = { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: CRASH_FREQUENCY_S, appConsistentFrequencyMinutes: 0 };
    const res = await stack.api("POST", "replicated-items", enableBody(name, { policy }));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const next = rng(name.length);
    const images: Record<string, string> = {};
    for (const [disk, mib] of [
      ["os", 16],
      ["data0", 8],
    ] as const) {
      const path = join(dir, `${name}-${disk}.img`);
      const bytes = Buffer.alloc(mib * MiB);
      randomBytes(next, 2 * MiB).copy(bytes, MiB);
      writeFileSync(path, bytes);
      // Written long ago, as a VM's disk at rest would be.
      const old = new Date(Date.now() - 3600_000);
      utimesSync(path, old, old);
      images[disk] = path;
    }
    return { id: res.body.id, token: res.body.agentRegistration.token, images };
  }

  async function points(itemId: string): Promise<Point[]> {
    const r = await stack.api("GET", `replicated-items/${itemId}/recovery-points`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body;
  }

  async function snapshotBytes(itemId: string, diskId: string, snapshot: string, length: number): Promise<Buffer> {
    const replicas = await stack.services.storage.replicas();
    return replicas.getPageBlobClient(replicaBlobName(itemId, diskId)).withSnapshot(snapshot).downloadToBuffer(0, length);
  }

  function startCliAgent(vm: { token: string; images: Record<string, string> }, name: string) {
    return runChild([
      CLI,
      "--url",
      stack.url,
      "agent",
      "--token",
      vm.token,
      ...Object.entries(vm.images).flatMap(([disk, path]) => ["--disk", `${disk}=${path}`]),
      "--state-dir",
      join(dir, `${name}-state`),
      "--scan-interval",
      String(SCAN_INTERVAL_S),
      "--progress-interval",
      "1",
    ]);
  }

  test("dd writes, then quiet: the CLI agent seals a point newer than the last write, equal to both images byte for byte", async () => {
    const vm = await protect("scan-quiet");
    const agent = startCliAgent(vm, "scan-quiet");
    try {
      await until("a first point (initial replication, then a quiet round)", async () => (await points(vm.id)).length > 0, 90_000, agent.output);

      execFileSync("dd", ["if=/dev/urandom", `of=${vm.images.os}`, "bs=4k", "seek=700", "count=32", "conv=notrunc", "status=none"]);
      execFileSync("dd", ["if=/dev/urandom", `of=${vm.images.data0}`, "bs=64k", "seek=30", "count=4", "conv=notrunc", "status=none"]);
      const lastWrite = Date.now();

      let point: Point | undefined;
      await until(
        "a point newer than the last write",
        async () => (point = (await points(vm.id)).find((p) => Date.parse(p.time) > lastWrite)) !== undefined,
        60_000,
        agent.output,
      );
      assert.equal(point!.kind, "crash");
      assert.equal(point!.scope, "vm");
      // A quiet round is at most a scan interval away, a tag at most the policy's frequency after the previous one.
      const lagS = (Date.parse(point!.time) - lastWrite) / 1000;
      assert.ok(lagS <= CRASH_FREQUENCY_S + 3 * SCAN_INTERVAL_S, `point ${lagS} s after the last write`);
      for (const [disk, path] of Object.entries(vm.images)) {
        const image = readFileSync(path);
        const snap = await snapshotBytes(vm.id, disk, point!.disks.find((d) => d.diskId === disk)!.snapshot, image.length);
        assert.ok(snap.equals(image), `the point's ${disk} equals the image`);
      }
      const item = await stack.api("GET", `replicated-items/${vm.id}`);
      assert.equal(typeof item.body.rpoSeconds, "number");
      assert.equal(
        item.body.health.issues.some((i: { code: string }) => i.code === "NoConsistentScan"),
        false,
      );
    } finally {
      assert.equal(await stopChild(agent.child), 0, agent.output());
    }
  });

  test("writes that never stop: no point is sealed and the item's health says NoConsistentScan with the --nbd hint; once they stop, a point comes and the warning clears", async () => {
    const vm = await protect("scan-busy");
    const agent = startCliAgent(vm, "scan-busy");
    // The workload: a 4 KiB write somewhere in data0 every 20 ms, from another process (as a VM's application would).
    const writer = runChild([
      "-e",
      `const fs=require("fs");const fd=fs.openSync(${JSON.stringify(vm.images.data0)},"r+");let i=0;setInterval(()=>{fs.writeSync(fd,require("crypto").randomBytes(4096),0,4096,((i++*7919)%2000)*4096)},20);`,
    ]);
    try {
      const issue = async () =>
        (await stack.api("GET", `replicated-items/${vm.id}`)).body.health.issues.find((i: { code: string }) => i.code === "NoConsistentScan");
      await until("the NoConsistentScan issue on the item", async () => (await issue()) !== undefined, 90_000, agent.output);
      const shown = await issue();
      assert.equal(shown.severity, "Warning");
      assert.match(shown.message, /--nbd/);
      assert.match(shown.message, /data0/);
      assert.deepEqual(await points(vm.id), [], "no point while the disk is always being written");

      await stopChild(writer.child);
      await until("a point once the writes stop", async () => (await points(vm.id)).length > 0, 60_000, agent.output);
      await until("the issue cleared", async () => (await issue()) === undefined, 60_000, agent.output);
    } finally {
      await stopChild(writer.child);
      assert.equal(await stopChild(agent.child), 0, agent.output());
    }
  });

  test("planned failover of a scanned VM: the final tag waits until the workload stops writing; the failover disks equal the images", async () => {
    const vm = await protect("scan-planned");
    const agent = startCliAgent(vm, "scan-planned");
    const writer = runChild([
      "-e",
      `const fs=require("fs");const fd=fs.openSync(${JSON.stringify(vm.images.os)},"r+");let i=0;setInterval(()=>{fs.writeSync(fd,require("crypto").randomBytes(4096),0,4096,((i++*31)%3000)*4096)},20);`,
    ]);
    try {
      await until("initial replication", async () => (await stack.api("GET", `replicated-items/${vm.id}`)).body.state === "Protected", 90_000, agent.output);
      const id = await startFailover(stack, { itemIds: [vm.id], type: "planned" });
      await until(
        "the agent waiting for the workload to stop",
        () => /final tag .* yet \(scanned disks are still being written/.test(agent.output()),
        60_000,
        agent.output,
      );
      // The operator stops the application: the next quiet round is the final instant.
      await stopChild(writer.child);
      const st = await waitFailover(stack, id, 120_000);
      assert.equal(st.runtimeStatus, "Completed", JSON.stringify(st.output ?? st.customStatus));
      const out = st.output.vms[0];
      assert.match(out.recoveryPoint.id, /^final-/);
      assert.equal(out.dataLossWindowSeconds, 0);
      for (const d of out.disks) await assertFailoverDisk(stack, d.blob, readFileSync(vm.images[d.diskId]!), `planned ${d.diskId}`);
    } finally {
      await stopChild(writer.child);
      assert.equal(await stopChild(agent.child), 0, agent.output());
    }
  });

  test("a write during a scan pass is seen: no tag comes of that round, and the next quiet round cuts one", async () => {
    const vm = await protect("scan-during");
    let writeDuringPass = false;
    let writes = 0;
    const agent = await Agent.start({
      url: stack.url,
      token: vm.token,
      stateDir: join(dir, "scan-during-state"),
      disks: Object.entries(vm.images).map(([id, path]) => ({ id, path, kind: "scanned" as const })),
      scanIntervalSeconds: 1,
      tagIntervalMs: 1,
      checkinIntervalMs: 500,
      duringScanRound: async () => {
        if (!writeDuringPass) return;
        execFileSync("dd", ["if=/dev/urandom", `of=${vm.images.os}`, "bs=4k", `seek=${100 + writes++}`, "count=1", "conv=notrunc", "status=none"]);
      },
    });
    try {
      const lastTag = () => agent.latestTag?.id;
      await until("a first tag after initial replication", () => lastTag() !== undefined, 60_000);
      writeDuringPass = true;
      const before = writes;
      const tagBefore = lastTag();
      await until("three rounds with a write during the pass", () => writes >= before + 3 && agent.health.has("NoConsistentScan"), 60_000);
      assert.equal(lastTag(), tagBefore, "no round with a write during its pass cut a tag");
      writeDuringPass = false;
      await until("a tag after a quiet round", () => lastTag() !== tagBefore, 60_000);
      assert.equal(agent.health.has("NoConsistentScan"), false);
    } finally {
      await agent.stop();
    }
  });
});
