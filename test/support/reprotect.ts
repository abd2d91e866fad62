// Re-protect helpers for tests: turn an item around over the API, wait for its states, run an agent on "the failed-over VM's disks" (files), compare bytes in either region.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Agent, type AgentOptions } from "../../agent";
import { replicaBlobName } from "../../shared/protection/items";
import type { Direction } from "../../shared/storage/names";
import type { StackLike } from "./e2e";

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** POST …/reprotect, asserting the 202 shape; returns the token and the job id. */
export async function reprotect(stack: StackLike, itemId: string): Promise<{ token: string; jobId: string; body: any }> {
  const res = await stack.api("POST", `replicated-items/${itemId}/reprotect`, {});
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(res.body.id, itemId, "the same item");
  assert.ok(["Reprotecting", "InitialReplication"].includes(res.body.state), res.body.state);
  assert.ok(res.body.agentRegistration?.token, "a registration token for the agent on the VM that now runs");
  assert.ok(res.body.job?.id, "the re-protect job");
  return { token: res.body.agentRegistration.token, jobId: res.body.job.id, body: res.body };
}

/** Polls the item until `state` (and, when given, `direction`); the failure names the last state seen. */
export async function waitItem(stack: StackLike, itemId: string, state: string, direction?: Direction, timeoutMs = 120_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  let last: any;
  for (;;) {
    const res = await stack.api("GET", `replicated-items/${itemId}`);
    last = res.body;
    if (res.status === 200 && res.body.state === state && (!direction || res.body.direction === direction)) return res.body;
    if (Date.now() > deadline) assert.fail(`item ${itemId} not ${state}${direction ? ` (${direction})` : ""}: ${last?.state} ${last?.direction}`);
    await sleep(150);
  }
}

/** Polls the re-protect job until it ended; returns it. */
export async function waitReprotectJob(stack: StackLike, itemId: string, timeoutMs = 120_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await stack.api("GET", `replicated-items/${itemId}/reprotect`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    if (res.body.state !== "InProgress") return res.body;
    if (Date.now() > deadline) assert.fail(`re-protect of ${itemId} still ${res.body.runtimeStatus} at ${res.body.customStatus?.step}`);
    await sleep(150);
  }
}

/** A failover disk's bytes in the region its failover landed in (a failback's are in the original region's account). */
export async function failoverDisk(stack: StackLike, direction: Direction, blobPath: string): Promise<Buffer> {
  const container = await stack.services.storage.failover(direction);
  return container.getPageBlobClient(blobPath.replace(/^failover\//, "")).downloadToBuffer();
}

/** Asserts a failover disk (footer aside) equals the model, naming the first differing byte. */
export async function assertDiskEquals(stack: StackLike, direction: Direction, blobPath: string, model: Buffer, what: string): Promise<void> {
  const bytes = await failoverDisk(stack, direction, blobPath);
  assert.equal(bytes.length, model.length + 512, `${what}: disk + footer`);
  const data = bytes.subarray(0, model.length);
  if (!data.equals(model)) {
    let at = 0;
    while (data[at] === model[at]) at++;
    assert.fail(`${what}: ${blobPath} differs from the model, first at byte ${at}`);
  }
}

/** Asserts the item's replica in `direction` equals the file (the VHD footer aside). */
export async function assertReplicaEquals(stack: StackLike, direction: Direction, itemId: string, diskId: string, file: string): Promise<void> {
  const source = await readFile(file);
  const replica = await (
    await stack.services.storage.replicas(direction)
  )
    .getPageBlobClient(replicaBlobName(itemId, diskId))
    .downloadToBuffer(0, source.length);
  if (!replica.equals(source)) {
    let at = 0;
    while (replica[at] === source[at]) at++;
    assert.fail(`${direction} replica of ${diskId} differs from ${file}, first at byte ${at}`);
  }
}

/** "The VM that now runs": its disks are files holding the failover disks' bytes (footer stripped). */
export async function materialize(stack: StackLike, direction: Direction, output: any, dir: string): Promise<Record<string, string>> {
  mkdirSync(dir, { recursive: true });
  const images: Record<string, string> = {};
  for (const d of output.vms[0].disks as { diskId: string; blob: string }[]) {
    const bytes = await failoverDisk(stack, direction, d.blob);
    images[d.diskId] = join(dir, `${d.diskId}.img`);
    writeFileSync(images[d.diskId]!, bytes.subarray(0, bytes.length - 512));
  }
  return images;
}

/** A tracked-disk agent on image files, with the e2e defaults (fast seals, check-ins, heartbeats). */
export function startAgentOn(
  stack: StackLike,
  token: string,
  images: Record<string, string>,
  stateDir: string,
  opts: Partial<AgentOptions> = {},
): Promise<Agent> {
  return Agent.start({
    url: stack.url,
    token,
    stateDir,
    disks: Object.entries(images).map(([id, path]) => ({ id, path, kind: "tracked" as const })),
    sealIntervalMs: 100,
    maxBatchBytes: 1 * MiB,
    heartbeatIntervalMs: 500,
    checkinIntervalMs: 500,
    tagIntervalMs: 3_600_000,
    ...opts,
  });
}

/** Changes `fraction` of the 64 KiB blocks of a file in place (seeded, distinct blocks): writes made while nothing replicated. */
export async function changeBlocks(file: string, fraction: number, seed: number): Promise<number> {
  const { open } = await import("node:fs/promises");
  const fh = await open(file, "r+");
  try {
    const size = (await fh.stat()).size;
    const blocks = size / (64 * 1024);
    const n = Math.max(1, Math.round(blocks * fraction));
    let x = seed >>> 0 || 1;
    const next = () => ((x = (x * 1664525 + 1013904223) >>> 0), x);
    const chosen = new Set<number>();
    while (chosen.size < n) chosen.add(next() % blocks);
    for (const b of chosen) {
      const data = Buffer.alloc(4096, (b * 31 + seed) & 0xff || 1);
      await fh.write(data, 0, data.length, b * 64 * 1024 + (next() % 60) * 1024);
    }
    return n;
  } finally {
    await fh.close();
  }
}
