// `npm run bench -- churn`: sustained churn through the agent (in a process of its own) at the pipeline's maximum,
// sequential and random, each against raw page writes of the same pattern to the same Azurite in the same run; the
// agent's peak RSS, and CPU seconds per applied GB for the agent, the host (apply) and Azurite.
import { fork, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { BlobServiceClient } from "@azure/storage-blob";
import { parseConnectionString } from "../shared/config/settings";
import { blobService } from "../shared/storage/clients";
import type { ChurnWorkerCommand, ChurnWorkerPhase, ChurnWorkerReply, MemoryPeaks } from "./churn-worker";
import {
  enableBenchVm,
  machine,
  nodeArgsFrom,
  PidMeter,
  describeThreePass,
  rawPageWrites,
  threePassCeiling,
  type ThreePass,
  rssMiBOf,
  round,
  startBenchStack,
  table,
  writeResults,
  type BenchStack,
  type RawPattern,
} from "./harness";

const MiB = 1024 * 1024;

export interface ChurnBenchOptions {
  seconds: number;
  disks: number;
  diskSizeMiB: number;
  maxBacklogMiB: number;
  log: (line: string) => void;
}

export interface Pattern {
  name: string;
  writeKiB: number;
  sequential: boolean;
  /** The same pattern straight to page blobs: what the storage takes without the pipeline. */
  raw: RawPattern;
  rawBytes: number;
}

/** The agent's process, driven by messages. */
export class ChurnWorker {
  private readonly replies: ChurnWorkerReply[] = [];
  private waiting: (() => void) | undefined;

  private constructor(readonly child: ChildProcess) {
    child.on("message", (m: ChurnWorkerReply) => {
      this.replies.push(m);
      this.waiting?.();
    });
  }

  static start(): ChurnWorker {
    return new ChurnWorker(
      fork(join(__dirname, "churn-worker.js"), [], { execArgv: nodeArgsFrom("BENCH_AGENT_NODE_ARGS"), stdio: ["ignore", "inherit", "inherit", "ipc"] }),
    );
  }

  get pid(): number {
    return this.child.pid!;
  }

  async ask(command: ChurnWorkerCommand): Promise<ChurnWorkerReply> {
    this.child.send(command);
    for (;;) {
      const r = this.replies.shift();
      if (r) {
        if (r.type === "failed") throw new Error(`agent process: ${r.message}`);
        return r;
      }
      if (this.child.exitCode !== null) throw new Error(`agent process exited (${this.child.exitCode})`);
      await new Promise<void>((resolve) => (this.waiting = resolve));
    }
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once("exit", r));
    await this.ask({ type: "stop" }).catch(() => this.child.kill("SIGKILL"));
    await exited;
  }
}

/** Resolves when every replica's watermark (its blob sequence number) reaches the agent's last batch. */
export async function waitApplied(
  service: BlobServiceClient,
  blobs: Record<string, string>,
  lastSeq: Record<string, number>,
  timeoutMs: number,
): Promise<number> {
  const replicas = service.getContainerClient("replicas");
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const marks = await Promise.all(
      Object.entries(blobs).map(async ([id, blob]) => ((await replicas.getPageBlobClient(blob).getProperties()).blobSequenceNumber ?? 0) >= (lastSeq[id] ?? 0)),
    );
    if (marks.every(Boolean)) return performance.now();
    if (Date.now() > deadline) throw new Error(`not applied after ${timeoutMs} ms`);
    await sleep(50);
  }
}

export interface ChurnPhaseResult {
  phase: string;
  seconds: number;
  writtenMB: number;
  appliedMBps: number;
  agentCpuPerGB: number;
  hostCpuPerGB: number;
  azuriteCpuPerGB: number;
  agentPeakRssMiB: number;
  /** The agent's own view of its memory at its peaks (heap, Buffers outside it). */
  agentMemoryPeaksMiB: MemoryPeaks;
}

/** One phase: the writers for `seconds`, then until the replicas hold the last batch. */
export async function churnPhase(
  stack: BenchStack,
  worker: ChurnWorker,
  replicaService: BlobServiceClient,
  blobs: Record<string, string>,
  name: string,
  p: Omit<ChurnWorkerPhase, "type">,
): Promise<ChurnPhaseResult> {
  const meter = new PidMeter([worker.pid, stack.host.child.pid!, stack.storage.pid]);
  const t0 = performance.now();
  const reply = await worker.ask({ type: "phase", ...p });
  if (reply.type !== "written") throw new Error(`unexpected reply ${reply.type}`);
  const appliedAt = await waitApplied(replicaService, blobs, reply.lastSeq, 900_000);
  const m = meter.stop();
  const gb = reply.bytes / 1e9;
  const seconds = (appliedAt - t0) / 1000;
  return {
    phase: name,
    seconds: round(seconds, 1),
    writtenMB: round(reply.bytes / 1e6, 1),
    appliedMBps: round(reply.bytes / 1e6 / seconds, 1),
    agentCpuPerGB: round(m.cpuSeconds[0]! / gb, 1),
    hostCpuPerGB: round(m.cpuSeconds[1]! / gb, 1),
    azuriteCpuPerGB: round(m.cpuSeconds[2]! / gb, 1),
    agentPeakRssMiB: round(Math.max(m.peakRssMiB[0]!, rssMiBOf(worker.pid).now), 1),
    agentMemoryPeaksMiB: reply.memory,
  };
}

export async function benchChurn(o: ChurnBenchOptions) {
  o.log(`churn benchmark: ${o.disks} tracked disks of ${o.diskSizeMiB} MiB, the agent in its own process, ${o.seconds} s per phase`);
  const stack = await startBenchStack({ AGENT_CHECKIN_SECONDS: "5" });
  const work = mkdtempSync(join(stack.dir, "vm-"));
  const worker = ChurnWorker.start();
  try {
    const item = await enableBenchVm(stack, { disks: o.disks, diskSizeMiB: o.diskSizeMiB, crashFrequencySeconds: 300 }, "churn-vm", "10.1.0.4", "churn-group");
    const ids = item.disks.map((d) => d.id);
    const blobs = Object.fromEntries(ids.map((id) => [id, `${item.id}/${id}.vhd`]));
    await worker.ask({
      type: "start",
      url: stack.url,
      token: item.agentRegistration.token,
      stateDir: join(work, "state"),
      images: Object.fromEntries(ids.map((id) => [id, join(work, `${id}.img`)])),
      diskSizeMiB: o.diskSizeMiB,
    });
    const replicaService = blobService(parseConnectionString(stack.storage.control));
    const patterns: Pattern[] = [
      {
        name: "sequential 1 MiB",
        writeKiB: 1024,
        sequential: true,
        // As apply writes one disk: 4 MiB pages, one disk after the other in flight… one stream per disk.
        raw: { writeBytes: 4 * MiB, random: false, concurrency: 1, blobs: o.disks },
        rawBytes: 1024 * MiB,
      },
      {
        name: "random 64 KiB",
        writeKiB: 64,
        sequential: false,
        // The same random 64 KiB page writes, as many in flight per disk as apply has (writeConcurrency).
        raw: { writeBytes: 64 * 1024, random: true, concurrency: 8, blobs: o.disks },
        rawBytes: 128 * MiB,
      },
    ];
    const rawOf = async (p: Pattern, label: string) => {
      const v = await rawPageWrites(replicaService, p.rawBytes, o.diskSizeMiB * MiB, p.raw);
      o.log(`  raw ${p.name} page writes (${label}): ${round(v, 1)} MB/s`);
      return v;
    };
    // Sequential churn is bulk: it is also set against the three passes its bytes make through storage (threePassCeiling).
    const cacheService = blobService(parseConnectionString(stack.storage.cache));
    const rows: (ChurnPhaseResult & {
      rawMBps: number;
      rawBeforeMBps: number;
      rawAfterMBps: number;
      ratio: number;
      threePass?: ThreePass;
      ratioToThreePassCeiling?: number;
    })[] = [];
    for (const p of patterns) {
      const before = await rawOf(p, "before");
      o.log(`phase: maximum, ${p.name}, ${o.seconds} s…`);
      const r = await churnPhase(stack, worker, replicaService, blobs, `maximum, ${p.name}`, {
        writeKiB: p.writeKiB,
        sequential: p.sequential,
        ratePerDiskMBps: 0,
        seconds: o.seconds,
        maxBacklogMiB: o.maxBacklogMiB,
        writersPerDisk: 2,
      });
      const after = await rawOf(p, "after");
      const raw = (before + after) / 2;
      rows.push({
        ...r,
        rawMBps: round(raw, 1),
        rawBeforeMBps: round(before, 1),
        rawAfterMBps: round(after, 1),
        ratio: round(r.appliedMBps / raw, 2),
      });
      o.log(
        `  applied ${r.appliedMBps} MB/s = ${round(r.appliedMBps / raw, 2)}× raw; agent peak RSS ${r.agentPeakRssMiB} MiB (${JSON.stringify(r.agentMemoryPeaksMiB)})`,
      );
    }
    // Last, so that every raw measurement and phase runs as it always did (3 GiB more written beforehand slows the
    // writes that follow).
    const threePass = await threePassCeiling(cacheService, replicaService, 1024 * MiB, 8);
    o.log(`  three passes, 8 in flight (after the phases): ${describeThreePass(threePass)}`);
    for (const r of rows) {
      if (!patterns.find((p) => r.phase.endsWith(p.name))?.sequential) continue;
      r.threePass = threePass;
      r.ratioToThreePassCeiling = round(r.appliedMBps / threePass.ceilingMBps, 2);
      o.log(`  ${r.phase}: ${r.appliedMBps} MB/s = ${r.ratioToThreePassCeiling}× the three-pass ceiling`);
    }
    const agentPeakRssMiB = Math.max(...rows.map((r) => r.agentPeakRssMiB), rssMiBOf(worker.pid).peak);
    const result = {
      benchmark: "churn",
      at: new Date().toISOString(),
      machine: machine(),
      storage: "Azurite 3.35.0, disk mode, on this machine",
      options: { ...o, log: undefined },
      phases: rows,
      agentPeakRssMiB,
      targets: { sequentialRatioAtLeast: 0.28, random64KiBRatioAtLeast: 0.6, agentRssMiBAtMost: 128 },
    };
    const file = writeResults("churn", result);
    o.log(
      table(
        [
          "phase",
          "applied MB/s",
          "raw same pattern MB/s",
          "÷ raw",
          "÷ three-pass ceiling",
          "agent CPU s/GB",
          "apply (host) CPU s/GB",
          "Azurite CPU s/GB",
          "agent peak RSS MiB",
        ],
        rows.map((r) => [
          r.phase,
          r.appliedMBps,
          r.rawMBps,
          r.ratio,
          r.ratioToThreePassCeiling ?? "",
          r.agentCpuPerGB,
          r.hostCpuPerGB,
          r.azuriteCpuPerGB,
          r.agentPeakRssMiB,
        ]),
      ),
    );
    o.log(`agent peak RSS over the run (VmHWM): ${agentPeakRssMiB} MiB (target ≤ 128)`);
    o.log(`results: ${file}`);
    return result;
  } finally {
    await worker.stop().catch(() => undefined);
    await stack.stop();
  }
}
