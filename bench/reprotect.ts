// Re-protect, differential vs whole: 1 GiB disks, 1% of the blocks changed after a failover; the same disks re-protected with nothing left to seed from (a whole copy), in the same run.
import { mkdirSync, openSync, writeSync, closeSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { Agent } from "../agent";
import { loadConfig } from "../shared/config/settings";
import { Storage } from "../shared/storage/clients";
import { replicaBlobName } from "../shared/protection/items";
import { api, machine, round, startBenchStack, table, writeResults, type BenchStack } from "./harness";

export interface ReprotectBenchOptions {
  diskSizeMiB: number;
  disks: number;
  changedFraction: number;
  log: (line: string) => void;
}

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every 64 KiB block holds bytes of its own: a whole copy ships all of it. */
function denseImage(path: string, sizeBytes: number, seed: number): void {
  const fd = openSync(path, "w");
  const chunk = Buffer.alloc(4 * MiB);
  for (let at = 0; at < sizeBytes; at += chunk.length) {
    for (let b = 0; b < chunk.length; b += 4096) chunk.fill(((at + b) / 4096 + seed) % 251 || 1, b, b + 4096);
    writeSync(fd, chunk, 0, chunk.length, at);
  }
  closeSync(fd);
}

async function changeBlocks(path: string, sizeBytes: number, fraction: number, seed: number): Promise<number> {
  const fh = await open(path, "r+");
  const blocks = sizeBytes / BLOCK;
  const n = Math.round(blocks * fraction);
  let x = seed;
  const chosen = new Set<number>();
  while (chosen.size < n) chosen.add((x = (x * 1664525 + 1013904223) >>> 0) % blocks);
  for (const b of chosen) await fh.write(Buffer.alloc(4096, (b % 250) + 3), 0, 4096, b * BLOCK + 8192);
  await fh.close();
  return n;
}

async function waitState(stack: BenchStack, itemId: string, state: string, direction?: string, timeoutMs = 3_600_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await api(stack, "GET", `replicated-items/${itemId}`);
    if (r.body?.state === state && (!direction || r.body.direction === direction)) return r.body;
    if (Date.now() > deadline) throw new Error(`item not ${state}: ${r.body?.state}`);
    await sleep(250);
  }
}

async function failover(stack: BenchStack, itemId: string, recoveryPoint: string): Promise<any> {
  const started = await api(stack, "POST", "failovers", { itemIds: [itemId], type: "unplanned", recoveryPoint });
  if (started.status !== 202) throw new Error(`failover: ${JSON.stringify(started.body)}`);
  for (;;) {
    const st = await api(stack, "GET", `failovers/${started.body.id}`);
    if (st.body.runtimeStatus === "Completed") return st.body.output;
    if (["Failed", "Terminated"].includes(st.body.runtimeStatus)) throw new Error(`failover ${st.body.runtimeStatus}: ${JSON.stringify(st.body.customStatus)}`);
    await sleep(250);
  }
}

/** The failed-over VM's disks as files (the failover disks' bytes, footer stripped). */
async function materialize(storage: Storage, direction: "forward" | "reverse", output: any, dir: string): Promise<Record<string, string>> {
  mkdirSync(dir, { recursive: true });
  const container = await storage.failover(direction);
  const out: Record<string, string> = {};
  for (const d of output.vms[0].disks as { diskId: string; blob: string }[]) {
    const blob = container.getPageBlobClient(d.blob.replace(/^failover\//, ""));
    const size = (await blob.getProperties()).contentLength! - 512;
    out[d.diskId] = join(dir, `${d.diskId}.img`);
    const fd = openSync(out[d.diskId]!, "w");
    for (let at = 0; at < size; at += 32 * MiB) writeSync(fd, await blob.downloadToBuffer(at, Math.min(32 * MiB, size - at)), 0, undefined, at);
    closeSync(fd);
  }
  return out;
}

/** POST reprotect, start the agent with its token at once, wait for Protected: the time an operator waits. */
async function timedReprotect(stack: BenchStack, itemId: string, images: Record<string, string>, stateDir: string, direction: string, agents: Agent[]) {
  const t0 = performance.now();
  const rp = await api(stack, "POST", `replicated-items/${itemId}/reprotect`, {});
  if (rp.status !== 202) throw new Error(`reprotect: ${JSON.stringify(rp.body)}`);
  const agent = await Agent.start({
    url: stack.url,
    token: rp.body.agentRegistration.token,
    stateDir,
    disks: Object.entries(images).map(([id, path]) => ({ id, path, kind: "tracked" as const })),
    tagIntervalMs: 3_600_000,
  });
  agents.push(agent);
  const item = await waitState(stack, itemId, "Protected", direction);
  const seconds = (performance.now() - t0) / 1000;
  await agent.stop();
  const transferred = item.disks.reduce((n: number, d: any) => n + d.initialReplication.transferredBytes, 0);
  const total = item.disks.reduce((n: number, d: any) => n + d.sizeBytes, 0);
  const r = item.reprotect;
  const phases = {
    seedSeconds: round((Date.parse(r.seededAt) - Date.parse(r.startedAt)) / 1000, 2),
    agentRegisteredAfterSeconds: round((Date.parse(item.agent?.registeredAt ?? r.seededAt) - Date.parse(r.startedAt)) / 1000, 2),
  };
  return {
    seconds: round(seconds, 1),
    ...phases,
    transferredBytes: transferred,
    totalBytes: total,
    sharePercent: round((100 * transferred) / total, 2),
    seeds: item.reprotect.seeds,
  };
}

export async function benchReprotect(o: ReprotectBenchOptions): Promise<unknown> {
  const stack = await startBenchStack({ AGENT_CHECKIN_SECONDS: "1" });
  const storage = new Storage(loadConfig({ AzureWebJobsStorage: stack.storage.control, CACHE_STORAGE: stack.storage.cache }));
  const agents: Agent[] = [];
  const size = o.diskSizeMiB * MiB;
  try {
    const diskIds = Array.from({ length: o.disks }, (_, i) => (i === 0 ? "os" : `data${i - 1}`));
    const res = await api(stack, "POST", "replicated-items", {
      vm: {
        name: "bench-rp",
        region: "eastus",
        resourceGroup: "bench-rg",
        size: "Standard_D8s_v5",
        network: { vnet: "bench-vnet", subnet: "default", privateIp: "10.1.0.4" },
        disks: diskIds.map((id) => ({ id, sizeBytes: size })),
      },
      targetRegion: "westus",
      policy: { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 10, appConsistentFrequencyMinutes: 240 },
    });
    if (res.status !== 201) throw new Error(`enable: ${JSON.stringify(res.body)}`);
    const itemId = res.body.id as string;
    const src = join(stack.dir, "source");
    mkdirSync(src, { recursive: true });
    diskIds.forEach((d, i) => denseImage(join(src, `${d}.img`), size, i + 1));
    o.log(`enable: ${o.disks} × ${o.diskSizeMiB} MiB dense disks, initial replication…`);
    const tEnable = performance.now();
    const source = await Agent.start({
      url: stack.url,
      token: res.body.agentRegistration.token,
      stateDir: join(stack.dir, "state-source"),
      disks: diskIds.map((id) => ({ id, path: join(src, `${id}.img`), kind: "tracked" as const })),
      tagIntervalMs: 3_600_000,
    });
    agents.push(source);
    await waitState(stack, itemId, "Protected");
    const enableSeconds = round((performance.now() - tEnable) / 1000, 1);
    const tag = await source.cutTag("crash");
    for (;;) {
      const pts = await api(stack, "GET", `replicated-items/${itemId}/recovery-points`);
      if ((pts.body as { id: string }[]).some((p) => p.id === tag!.id)) break;
      await sleep(200);
    }
    const fo1 = await failover(stack, itemId, tag!.id);
    await source.stop();
    const recovery = await materialize(storage, "forward", fo1, join(stack.dir, "recovery"));
    let changed = 0;
    for (const [i, d] of diskIds.entries()) changed += await changeBlocks(recovery[d]!, size, o.changedFraction, 7 + i);
    await api(stack, "POST", `replicated-items/${itemId}/commit`);
    o.log(`re-protect (differential): ${changed} blocks of ${(o.disks * size) / BLOCK} changed…`);
    const differential = await timedReprotect(stack, itemId, recovery, join(stack.dir, "state-reverse"), "reverse", agents);

    // The same disks once more, with nothing left to seed from: the whole copy re-protect falls back to.
    const fo2 = await failover(stack, itemId, "latest");
    const back = await materialize(storage, "reverse", fo2, join(stack.dir, "back"));
    await api(stack, "POST", `replicated-items/${itemId}/commit`);
    for (const direction of ["forward", "reverse"] as const) {
      const replicas = await storage.replicas(direction);
      for (const d of diskIds) await replicas.getPageBlobClient(replicaBlobName(itemId, d)).deleteIfExists({ deleteSnapshots: "include" });
    }
    o.log("re-protect (nothing left: whole copy)…");
    const whole = await timedReprotect(stack, itemId, back, join(stack.dir, "state-forward"), "forward", agents);

    const ratio = round(differential.seconds / whole.seconds, 3);
    const result = {
      name: "reprotect",
      at: new Date().toISOString(),
      machine: machine(),
      disks: o.disks,
      diskSizeMiB: o.diskSizeMiB,
      changedFraction: o.changedFraction,
      changedBlocks: changed,
      enableInitialReplicationSeconds: enableSeconds,
      differential,
      wholeCopy: whole,
      timeRatio: ratio,
      target: { transferredPercentAtMost: 3, timeRatioAtMost: 0.1 },
      met: { transferred: differential.sharePercent <= 3, time: ratio <= 0.1 },
    };
    const file = writeResults("reprotect", result);
    o.log(
      table(
        ["re-protect", "seed", "time (s)", "shipped (MiB)", "shipped (% of disks)"],
        [
          ["differential (1% changed)", "forward replica", differential.seconds, round(differential.transferredBytes / MiB, 1), differential.sharePercent],
          ["whole copy (nothing left)", "none", whole.seconds, round(whole.transferredBytes / MiB, 1), whole.sharePercent],
        ],
      ),
    );
    o.log(`time ratio ${ratio} (target ≤ 0.1); enable's initial replication of the same disks: ${enableSeconds} s; results: ${file}`);
    return result;
  } finally {
    for (const a of agents) await a.stop().catch(() => undefined);
    await stack.stop();
  }
}
