// End-to-end helpers: a real agent on image files, a seeded workload of overlapping unaligned writes, byte comparison.
import { mkdtempSync, rmSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import { InvocationContext } from "@azure/functions";
import { Agent, type AgentOptions } from "../../agent";
import { ApiClient } from "../../shared/contract/client";
import type { BatchMessage } from "../../shared/replication/batch";
import { replicaBlobName } from "../../shared/protection/items";
import { functionTable } from "../../functions/table";
import type { QueueFunctionSpec } from "../../functions/spec";
import { rng } from "./batches";
import type { TestStack } from "./stack";

const MiB = 1024 * 1024;

/** What the helpers need of a stack: its API and its storage (an in-process stack or a host in another process). */
export type StackLike = Pick<TestStack, "url" | "services" | "api">;

/** The HTTP API of whichever host process runs now (tests that kill and restart the host): `url()` is read per call. */
export function hostProcessApi(url: () => string): StackLike["api"] {
  return (method, path, body, headers) => new ApiClient(url()).request(method, path, body, headers);
}

export function e2eEnableBody(name: string, diskMiB = 64) {
  return {
    vm: {
      name,
      region: "eastus",
      resourceGroup: "e2e-rg",
      size: "Standard_D2s_v5",
      network: { vnet: "e2e-vnet", subnet: "app", privateIp: "10.2.0.4" },
      disks: [
        { id: "os", sizeBytes: diskMiB * MiB },
        { id: "data0", sizeBytes: diskMiB * MiB },
      ],
    },
    targetRegion: "westus",
  };
}

export interface E2eVm {
  itemId: string;
  token: string;
  dir: string;
  images: Record<string, string>;
  stateDir: string;
  agent?: Agent;
  /** Options beyond the defaults below (check-in interval, tag intervals, freeze commands, ...). */
  startAgent(opts?: Partial<Omit<AgentOptions, "url" | "token" | "stateDir" | "disks">>): Promise<Agent>;
  cleanup(): Promise<void>;
}

/** Enables a VM through the API and prepares its image files; the agent is started on demand. */
export async function protectVm(stack: StackLike, name: string, diskMiB = 64): Promise<E2eVm> {
  const res = await stack.api("POST", "replicated-items", e2eEnableBody(name, diskMiB));
  assert.equal(res.status, 201, JSON.stringify(res.body));
  const dir = mkdtempSync(join(tmpdir(), `e2e-${name}-`));
  const vm: E2eVm = {
    itemId: res.body.id,
    token: res.body.agentRegistration.token,
    dir,
    images: { os: join(dir, "os.img"), data0: join(dir, "data0.img") },
    stateDir: join(dir, "state"),
    async startAgent(opts = {}) {
      vm.agent = await Agent.start({
        url: stack.url,
        token: vm.token,
        stateDir: vm.stateDir,
        disks: Object.entries(vm.images).map(([id, path]) => ({ id, path, kind: "tracked" as const })),
        sealIntervalMs: 100,
        maxBatchBytes: 1 * MiB,
        heartbeatIntervalMs: 500,
        ...opts,
        checkinIntervalMs: opts.checkinIntervalMs ?? 500,
      });
      return vm.agent;
    },
    async cleanup() {
      await vm.agent?.stop().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return vm;
}

/** A seeded workload: `count` writes per disk of 1 B – 64 KiB at unaligned offsets, overlapping, 8 in flight. */
export async function runWorkload(agent: Agent, diskIds: string[], seed: number, count: number): Promise<void> {
  const next = rng(seed);
  await Promise.all(
    diskIds.map(async (id) => {
      const disk = agent.trackedDisk(id);
      // Writes cluster in the first 8 MiB so that they overlap, plus a few anywhere.
      for (let i = 0; i < count; i += 8) {
        await Promise.all(
          Array.from({ length: Math.min(8, count - i) }, () => {
            const len = 1 + Math.floor(next() * 64 * 1024);
            const span = next() < 0.8 ? Math.min(8 * MiB, disk.sizeBytes) : disk.sizeBytes;
            const offset = Math.floor(next() * (span - len));
            const data = Buffer.alloc(len);
            for (let b = 0; b < len; b += 4096) data.fill(Math.floor(next() * 256), b, Math.min(len, b + 4096));
            return disk.write(offset, data);
          }),
        );
      }
    }),
  );
}

/** Asserts that the replica's disk bytes (the VHD footer aside) equal the source image file. */
export async function assertReplicaEqualsSource(stack: StackLike, vm: E2eVm, diskId: string): Promise<void> {
  const source = await readFile(vm.images[diskId]!);
  const replicas = await stack.services.storage.replicas();
  const replica = await replicas.getPageBlobClient(replicaBlobName(vm.itemId, diskId)).downloadToBuffer(0, source.length);
  if (!replica.equals(source)) {
    let first = 0;
    while (first < source.length && replica[first] === source[first]) first++;
    assert.fail(`replica of ${diskId} differs from its source, first at byte ${first}`);
  }
}

/** Waits until a disk's replica watermark reaches `seq`. */
export async function waitForWatermark(stack: StackLike, vm: E2eVm, diskId: string, seq: number, timeoutMs = 60_000): Promise<void> {
  const replicas = await stack.services.storage.replicas();
  const blob = replicas.getPageBlobClient(replicaBlobName(vm.itemId, diskId));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const w = (await blob.getProperties()).blobSequenceNumber ?? 0;
    if (w >= seq) return;
    if (Date.now() > deadline) throw new Error(`replica of ${diskId} at batch ${w}, waited for ${seq}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The last sequence number the agent used for a disk. */
export function lastSeq(agent: Agent, diskId: string): number {
  return agent.status().disks[diskId]!.nextSeq - 1;
}

/** Delivers messages to the applyBatches function as the host would: one at a time, in the order given. */
export async function deliver(stack: StackLike, messages: BatchMessage[]): Promise<void> {
  const apply = functionTable(() => stack.services).find((f): f is QueueFunctionSpec => f.kind === "queue" && f.name === "applyBatches");
  assert.ok(apply, "applyBatches is in the table");
  for (const m of messages) {
    await apply.handler(m, new InvocationContext({ functionName: apply.name, invocationId: `test-${m.diskId}-${m.seq}`, logHandler: () => {} }));
  }
}
