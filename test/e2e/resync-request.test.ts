// Resync on request with real parts: a disk halted ResyncRequired by a corrupt batch, the operator runs `site-recovery resync <item>` (the CLI, as a process), the agent's differential resync ends Protected with each replica equal to its source.
import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { startTestStack, type TestStack } from "../support/stack";
import { takeAnnouncements } from "../support/cache";
import { assertReplicaEqualsSource, deliver, lastSeq, protectVm, runWorkload, waitForWatermark, type E2eVm } from "../support/e2e";
import { CLI } from "../support/children";
import { cacheContainerName } from "../../shared/protection/items";
import type { BatchMessage } from "../../shared/replication/batch";

const DISKS = ["os", "data0"];

function cli(stack: TestStack, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, "--url", stack.url, ...args]);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

describe("resync on request", () => {
  let stack: TestStack;
  let vm: E2eVm | undefined;
  before(async () => {
    // The test delivers the queue's messages itself: the corrupt batch must be in place before anything applies it.
    stack = await startTestStack({ queues: false, env: { AGENT_CHECKIN_SECONDS: "1", SWEEP_STALL_SECONDS: "0" } });
  });
  afterEach(async () => {
    await vm?.cleanup();
    vm = undefined;
  });
  after(async () => {
    await stack?.stop();
  });

  const announcements = async (v: E2eVm): Promise<BatchMessage[]> =>
    (await takeAnnouncements(await stack.services.storage.replicationQueue())).filter((m) => m.itemId === v.itemId);

  test("a ResyncRequired item resynced with `site-recovery resync <item>`: the request's differential resync ends Protected, replicas equal to the sources", async () => {
    vm = await protectVm(stack, "resync-request");
    const v = vm;
    // The agent checks in only when the test says so: the halt and the request happen while it does not know.
    const agent = await v.startAgent({ checkinIntervalMs: 3_600_000 });
    await runWorkload(agent, DISKS, 23, 200);
    await agent.waitIdle(60_000);
    const messages = await announcements(v);
    const victim = messages.find((m) => m.diskId === "data0" && m.seq === 3);
    assert.ok(victim, "data0 shipped a third batch");
    const cache = stack.services.storage.cacheBlobs.getContainerClient(cacheContainerName(v.itemId));
    const name = `data0/${String(victim.seq).padStart(20, "0")}.batch`;
    const bytes = await cache.getBlobClient(name).downloadToBuffer();
    bytes[bytes.length - 1] ^= 0xff;
    await cache.getBlockBlobClient(name).upload(bytes, bytes.length);
    await deliver(stack, messages);
    const halted = await stack.api("GET", `replicated-items/${v.itemId}`);
    assert.equal(halted.body.state, "ResyncRequired", JSON.stringify(halted.body.state));

    const run = await cli(stack, ["resync", v.itemId]);
    assert.equal(run.code, 0, run.stderr);
    const answered = JSON.parse(run.stdout);
    assert.equal(answered.id, v.itemId);
    const disk = (await stack.services.items.getDisk(v.itemId, "data0"))!.disk;
    assert.equal(disk.state, "ResyncRequired");
    assert.equal(disk.resync?.origin, "request", "the operator's resync replaced the automatic one");
    assert.equal(disk.resync?.baseSeq, 2, "from the replica's watermark, before the corrupt batch");
    const requestId = disk.resync!.id;
    const os = (await stack.services.items.getDisk(v.itemId, "os"))!.disk;
    assert.equal(os.resync, undefined, "a disk that was not waiting is left alone");
    const jobs = await cli(stack, ["jobs", "--json"]);
    const job = (JSON.parse(jobs.stdout) as { type: string; itemIds: string[]; state: string }[]).find(
      (j) => j.type === "resync" && j.itemIds.includes(v.itemId),
    );
    assert.equal(job?.state, "Succeeded", JSON.stringify(job));

    // The agent learns of the request's resync at its next check-in and ships the blocks that differ.
    await agent.checkin();
    await agent.waitIdle(60_000);
    for (let round = 0; round < 10; round++) {
      await deliver(stack, await announcements(v));
      const s = await stack.api("GET", `replicated-items/${v.itemId}`);
      if (s.body.state === "Protected") break;
      await stack.host.runTimer("sweepCache");
      await agent.checkin();
      await agent.waitIdle(60_000);
    }
    const healed = await stack.api("GET", `replicated-items/${v.itemId}`);
    assert.equal(healed.body.state, "Protected", JSON.stringify(healed.body.disks));
    assert.equal(healed.body.health.status, "Healthy");
    assert.equal((await stack.services.items.getDisk(v.itemId, "data0"))!.disk.resync, undefined, `the request's resync ${requestId} is done`);
    for (const d of DISKS) {
      await waitForWatermark(stack, v, d, lastSeq(agent, d), 5_000);
      await assertReplicaEqualsSource(stack, v, d);
    }
  });
});
