// The benchmarks behind `npm run bench -- <name>`: each writes JSON under bench/results and prints a table.
import { benchReplication } from "./replication";
import { benchRecoveryPoints } from "./recovery-points";
import { benchFailover } from "./failover";
import { benchNbd } from "./nbd";
import { benchReprotect } from "./reprotect";
import { benchInitial } from "./initial";
import { benchChurn } from "./churn";
import { benchRpo } from "./rpo";
import { benchScaleOut } from "./scale-out";
import { benchCapacity } from "./capacity";

export const BENCHMARKS = ["replication", "recovery-points", "failover", "nbd", "reprotect", "initial", "churn", "rpo", "scale-out", "capacity"] as const;
export type BenchmarkName = (typeof BENCHMARKS)[number];

export async function runBenchmark(name: string, options: { seconds?: number; log?: (line: string) => void } = {}): Promise<unknown> {
  const log = options.log ?? console.log;
  switch (name) {
    case "replication":
      return benchReplication({
        seconds: options.seconds ?? 30,
        ratePerDiskMBps: 20,
        disks: 2,
        diskSizeMiB: 1024,
        writeKiB: 64,
        sequentialWriteKiB: 1024,
        maxBacklogMiB: 64,
        log,
      });
    case "recovery-points":
      // Several tags at the crash-consistent frequency: the run is at least 5 of them.
      return benchRecoveryPoints({
        seconds: Math.max(options.seconds ?? 0, 5 * 30),
        ratePerDiskMBps: 20,
        disks: 2,
        diskSizeMiB: 512,
        writeKiB: 64,
        crashFrequencySeconds: 30,
        holdBoundMs: 50,
        log,
      });
    case "failover":
      // RTO of a group of two VMs (four 1 GiB disks; BENCH_DISK_MIB for another size) under a live workload: 5 test
      // failovers per choice (BENCH_RUNS), then one unplanned.
      return benchFailover({
        runs: Number(process.env.BENCH_RUNS ?? 5),
        disks: 2,
        diskSizeMiB: Number(process.env.BENCH_DISK_MIB ?? 1024),
        ratePerDiskMBps: 1,
        writeKiB: 64,
        crashFrequencySeconds: 10,
        warmupPoints: 3,
        pauseSeconds: 3,
        targetSeconds: 10,
        log,
      });
    case "nbd":
      // The agent's NBD front end beside nbdkit on a 1 GiB image (BENCH_DISK_MIB for another size), replication running.
      return benchNbd({
        diskSizeMiB: Number(process.env.BENCH_DISK_MIB ?? 1024),
        randomWrites: Number(process.env.BENCH_WRITES ?? 2000),
        rounds: Number(process.env.BENCH_ROUNDS ?? 3),
        pin: process.env.BENCH_PIN !== "0",
        log,
      });
    case "reprotect":
      // Two 1 GiB disks (BENCH_DISK_MIB for another size), 1% of their blocks changed after the failover.
      return benchReprotect({ diskSizeMiB: Number(process.env.BENCH_DISK_MIB ?? 1024), disks: 2, changedFraction: 0.01, log });
    case "initial":
      // A 1 GiB random image (BENCH_DISK_MIB) through the CLI agent against raw page writes; 16 GiB sparse with 256 MiB used vs 256 MiB dense.
      return benchInitial({
        diskSizeMiB: Number(process.env.BENCH_DISK_MIB ?? 1024),
        sparseSizeMiB: Number(process.env.BENCH_SPARSE_MIB ?? 16384),
        sparseUsedMiB: 256,
        log,
      });
    case "churn":
      // Two 1 GiB tracked disks, the agent in its own process: maximum sequential 1 MiB and random 64 KiB churn vs raw.
      return benchChurn({ seconds: options.seconds ?? 30, disks: 2, diskSizeMiB: Number(process.env.BENCH_DISK_MIB ?? 1024), maxBacklogMiB: 64, log });
    case "rpo":
      // A group of two VMs × two 512 MiB disks, random 64 KiB, group points every 10 s: maximum, then 70% of it, then 150%.
      return benchRpo({
        disks: 2,
        diskSizeMiB: 512,
        writeKiB: 64,
        crashFrequencySeconds: 10,
        maxSeconds: options.seconds ?? 30,
        loadSeconds: Math.max(options.seconds ?? 0, 120),
        overSeconds: 90,
        loadFraction: 0.7,
        overFraction: 1.5,
        log,
      });
    case "scale-out":
      // 4 VMs × 2 disks × 16 batches of 4 MiB (512 MiB) already cached, drained by 1, 2 and 3 host processes;
      // BENCH_APPLY_MAX_BATCHES sets APPLY_MAX_BATCHES_PER_RUN (hand-overs between hosts).
      return benchScaleOut({
        hostCounts: [1, 2, 3],
        vms: 4,
        disksPerVm: 2,
        batchesPerDisk: Number(process.env.BENCH_BATCHES ?? 16),
        batchMiB: 4,
        ...(process.env.BENCH_APPLY_MAX_BATCHES ? { maxBatchesPerRun: Number(process.env.BENCH_APPLY_MAX_BATCHES) } : {}),
        log,
      });
    case "capacity":
      // A model from the latest churn and scale-out results: 16, 100 and 1,000 VMs at 1 MB/s each (BENCH_VM_MBPS).
      return benchCapacity({ vmCounts: [16, 100, 1000], churnPerVmMBps: Number(process.env.BENCH_VM_MBPS ?? 1), disksPerVm: 2, log });
    default:
      throw new Error(`unknown benchmark '${name}': one of ${BENCHMARKS.join(", ")}`);
  }
}
