// `npm run bench -- replication`: sustained churn through tracked disks, applied throughput and lag against raw page writes.
import { setTimeout as sleep } from "node:timers/promises";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { BlobServiceClient, type PageBlobClient } from "@azure/storage-blob";
import { Agent } from "../agent";
import { parseConnectionString } from "../shared/config/settings";
import { blobService } from "../shared/storage/clients";
import { machine, percentile, ProcessMeter, round, startBenchStack, table, writeResults, type BenchStack } from "./harness";

const MiB = 1024 * 1024;
/** The last MiB of each disk holds the lag marker; the workload writes below it. */
const MARKER_REGION = MiB;
/** Writers per disk, so that a write never waits on another's acknowledgement alone. */
const WRITERS_PER_DISK = 2;

export interface ReplicationBenchOptions {
  seconds: number;
  /** MB/s per disk for the set-rate phase. */
  ratePerDiskMBps: number;
  disks: number;
  diskSizeMiB: number;
  /** Random writes of this size (the worst case: every write its own page-write request). */
  writeKiB: number;
  /** Sequential streams of writes of this size (logs, bulk loads: contiguous extents). */
  sequentialWriteKiB: number;
  /** Max-rate phase: the writer pauses while this much is sealed but not yet in the cache. */
  maxBacklogMiB: number;
  log: (line: string) => void;
}

interface PhaseResult {
  phase: string;
  seconds: number;
  writtenMB: number;
  appliedMBps: number;
  lagP50s: number;
  lagP99s: number;
  lagSamples: number;
  agentCpuPercent: number;
  agentPeakRssMiB: number;
}

/** Writes a numbered, timestamped sector at the end of each disk and watches the replicas for it: end-to-end lag, from real bytes. */
class LagProbe {
  private counter = 0;
  private readonly ackedAt = new Map<number, number>();
  private readonly seen = new Map<string, number>();
  readonly lags: number[] = [];
  private timers: NodeJS.Timeout[] = [];
  private polling = false;

  constructor(
    private readonly agent: Agent,
    private readonly diskIds: string[],
    private readonly replicas: Map<string, PageBlobClient>,
    private readonly markerOffset: number,
  ) {}

  start(): void {
    this.timers.push(
      setInterval(() => void this.mark(), 100),
      setInterval(() => void this.poll(), 50),
    );
  }

  async mark(): Promise<number> {
    const k = ++this.counter;
    const sector = Buffer.alloc(512);
    sector.writeUInt32LE(k, 0);
    await Promise.all(this.diskIds.map((id) => this.agent.trackedDisk(id).write(this.markerOffset, sector)));
    this.ackedAt.set(k, performance.now());
    return k;
  }

  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      await Promise.all(
        this.diskIds.map(async (id) => {
          const k = (await this.replicas.get(id)!.downloadToBuffer(this.markerOffset, 512)).readUInt32LE(0);
          const prev = this.seen.get(id) ?? 0;
          if (k <= prev) return;
          this.seen.set(id, k);
          const now = performance.now();
          // Every marker between the last seen and this one is applied now.
          for (let j = prev + 1; j <= k; j++) {
            const at = this.ackedAt.get(j);
            if (at !== undefined) this.lags.push((now - at) / 1000);
          }
        }),
      );
    } catch {
      // a read racing an apply is retried at the next tick
    } finally {
      this.polling = false;
    }
  }

  /** Resolves when every disk's replica shows marker k. */
  async reached(k: number, timeoutMs: number): Promise<number> {
    const t0 = performance.now();
    while (this.diskIds.some((id) => (this.seen.get(id) ?? 0) < k)) {
      if (performance.now() - t0 > timeoutMs) throw new Error(`marker ${k} not applied after ${timeoutMs} ms`);
      await sleep(20);
    }
    return performance.now();
  }

  stop(): void {
    for (const t of this.timers) clearInterval(t);
  }
}

async function enable(stack: BenchStack, o: ReplicationBenchOptions) {
  const body = {
    vm: {
      name: "bench-vm",
      region: "eastus",
      resourceGroup: "bench-rg",
      size: "Standard_D8s_v5",
      network: { vnet: "bench-vnet", subnet: "default", privateIp: "10.1.0.4" },
      disks: Array.from({ length: o.disks }, (_, i) => ({ id: i === 0 ? "os" : `data${i - 1}`, sizeBytes: o.diskSizeMiB * MiB })),
    },
    targetRegion: "westus",
  };
  const res = await fetch(`${stack.url}/api/replicated-items`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const item = (await res.json()) as { id: string; agentRegistration: { token: string }; disks: { id: string; replicaBlob: string }[] };
  if (res.status !== 201) throw new Error(`enable failed: ${JSON.stringify(item)}`);
  return item;
}

/** One workload phase: writers per disk (paced, or as fast as the backlog allows), then wait until everything is applied. */
async function phase(
  name: string,
  agent: Agent,
  probe: LagProbe,
  diskIds: string[],
  o: ReplicationBenchOptions,
  paced: boolean,
  pattern: { writeKiB: number; sequential: boolean },
): Promise<PhaseResult> {
  const writeBytes = pattern.writeKiB * 1024;
  const usable = o.diskSizeMiB * MiB - MARKER_REGION;
  const slots = Math.floor(usable / writeBytes);
  const payload = randomBytes(writeBytes * 16);
  const lagsBefore = probe.lags.length;
  const meter = new ProcessMeter();
  const t0 = performance.now();
  const end = t0 + o.seconds * 1000;
  let written = 0;
  const writer = async (id: string, stream: number) => {
    const disk = agent.trackedDisk(id);
    let mine = 0;
    // Sequential streams start far apart and move forward, as a log or a bulk load does.
    let cursor = Math.floor((stream * slots) / 2);
    while (performance.now() < end) {
      if (paced) {
        // Two writers share a disk's rate.
        const due = t0 + (mine / ((o.ratePerDiskMBps * 1e6) / WRITERS_PER_DISK)) * 1000;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
      } else {
        while (performance.now() < end && (agent.status().disks[id]?.spoolBytes ?? 0) > o.maxBacklogMiB * MiB) await sleep(5);
      }
      const offset = (pattern.sequential ? cursor++ % slots : Math.floor(Math.random() * slots)) * writeBytes;
      const from = Math.floor(Math.random() * 15) * writeBytes;
      await disk.write(offset, payload.subarray(from, from + writeBytes));
      mine += writeBytes;
      written += writeBytes;
    }
  };
  // Two writers per disk, so a write never waits on another's acknowledgement alone.
  await Promise.all(diskIds.flatMap((id) => Array.from({ length: WRITERS_PER_DISK }, (_, i) => writer(id, i))));
  const last = await probe.mark();
  const appliedAt = await probe.reached(last, 600_000);
  const usage = meter.stop();
  const lags = probe.lags.slice(lagsBefore);
  return {
    phase: name,
    seconds: round((appliedAt - t0) / 1000, 1),
    writtenMB: round(written / 1e6, 1),
    appliedMBps: round(written / 1e6 / ((appliedAt - t0) / 1000), 1),
    lagP50s: round(percentile(lags, 50), 2),
    lagP99s: round(percentile(lags, 99), 2),
    lagSamples: lags.length,
    agentCpuPercent: usage.cpuPercent,
    agentPeakRssMiB: usage.peakRssMiB,
  };
}

/** Raw 4 MiB `uploadPages` of the same number of bytes to the same storage, one stream per disk (as apply writes). */
async function rawPageWrites(service: BlobServiceClient, disks: number, bytes: number): Promise<number> {
  const container = service.getContainerClient("bench-raw");
  await container.createIfNotExists();
  const chunk = randomBytes(4 * MiB);
  const perDisk = Math.ceil(bytes / disks / chunk.length) * chunk.length;
  const blobs = await Promise.all(
    Array.from({ length: disks }, async (_, i) => {
      const b = container.getPageBlobClient(`raw-${i}.vhd`);
      await b.create(Math.min(perDisk, 1024 * MiB));
      return b;
    }),
  );
  const t0 = performance.now();
  await Promise.all(
    blobs.map(async (b) => {
      for (let done = 0; done < perDisk; done += chunk.length) await b.uploadPages(chunk, done % (1024 * MiB), chunk.length);
    }),
  );
  const s = (performance.now() - t0) / 1000;
  await container.delete();
  return (perDisk * disks) / 1e6 / s;
}

export async function benchReplication(o: ReplicationBenchOptions) {
  o.log(`replication benchmark: ${o.disks} disks of ${o.diskSizeMiB} MiB, ${o.writeKiB} KiB writes, ${o.seconds} s per phase`);
  const stack = await startBenchStack({ AGENT_CHECKIN_SECONDS: "5" });
  const work = mkdtempSync(join(stack.dir, "vm-"));
  let agent: Agent | undefined;
  try {
    const item = await enable(stack, o);
    const diskIds = item.disks.map((d) => d.id);
    agent = await Agent.start({
      url: stack.url,
      token: item.agentRegistration.token,
      stateDir: join(work, "state"),
      disks: diskIds.map((id) => ({ id, path: join(work, `${id}.img`), kind: "tracked" as const })),
    });
    await agent.waitIdle(120_000);
    const replicaService = blobService(parseConnectionString(stack.storage.control));
    const replicas = new Map(item.disks.map((d) => [d.id, replicaService.getContainerClient("replicas").getPageBlobClient(d.replicaBlob)]));
    const probe = new LagProbe(agent, diskIds, replicas, o.diskSizeMiB * MiB - MARKER_REGION);
    probe.start();

    const random = { writeKiB: o.writeKiB, sequential: false };
    const sequential = { writeKiB: o.sequentialWriteKiB, sequential: true };
    const phases: PhaseResult[] = [];
    const plan: [string, boolean, typeof random][] = [
      [`${o.ratePerDiskMBps} MB/s per disk, random ${o.writeKiB} KiB`, true, random],
      [`maximum, random ${o.writeKiB} KiB`, false, random],
      [`${o.ratePerDiskMBps} MB/s per disk, sequential ${o.sequentialWriteKiB} KiB`, true, sequential],
      [`maximum, sequential ${o.sequentialWriteKiB} KiB`, false, sequential],
    ];
    for (const [name, paced, pattern] of plan) {
      o.log(`phase: ${name}, ${o.seconds} s…`);
      const r = await phase(name, agent, probe, diskIds, o, paced, pattern);
      o.log(`  applied ${r.appliedMBps} MB/s, lag p50 ${r.lagP50s} s, p99 ${r.lagP99s} s`);
      phases.push(r);
    }
    probe.stop();

    const best = phases.reduce((a, b) => (b.appliedMBps > a.appliedMBps ? b : a));
    const rawBytes = Math.min(best.writtenMB * 1e6, 2048 * MiB);
    o.log(`raw uploadPages of ${round(rawBytes / 1e6, 0)} MB to the same storage…`);
    const rawMBps = await rawPageWrites(replicaService, o.disks, rawBytes);
    const result = {
      benchmark: "replication",
      at: new Date().toISOString(),
      machine: machine(),
      storage: "Azurite 3.35.0, disk mode, on this machine",
      options: { ...o, log: undefined },
      phases,
      rawPageWriteMBps: round(rawMBps, 1),
      ratios: Object.fromEntries(phases.map((p) => [p.phase, round(p.appliedMBps / rawMBps, 2)])),
      targets: { perVmMBps: 54, lagP99s: 5, ratio: 0.35 },
    };
    const file = writeResults("replication", result);
    o.log(
      table(
        ["phase", "applied MB/s", "÷ raw", "lag p50 s", "lag p99 s", "agent CPU %", "agent peak RSS MiB"],
        phases.map((p) => [p.phase, p.appliedMBps, round(p.appliedMBps / rawMBps, 2), p.lagP50s, p.lagP99s, p.agentCpuPercent, p.agentPeakRssMiB]),
      ),
    );
    o.log(`raw 4 MiB uploadPages to the same Azurite: ${result.rawPageWriteMBps} MB/s`);
    o.log(`results: ${file}`);
    return result;
  } finally {
    await agent?.stop().catch(() => undefined);
    await stack.stop();
    rmSync(work, { recursive: true, force: true });
  }
}
