// The benchmarks behind `npm run bench -- <name>`: each writes JSON under bench/results and prints a table.
import { benchReplication } from "./replication";
import { benchRecoveryPoints } from "./recovery-points";
import { benchFailover } from "./failover";
import { benchNbd } from "./nbd";
import { benchReprotect } from "./reprotect";

export const BENCHMARKS = ["replication", "recovery-points", "failover", "nbd", "reprotect"] as const;
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
      return benchNbd({ diskSizeMiB: Number(process.env.BENCH_DISK_MIB ?? 1024), randomWrites: Number(process.env.BENCH_WRITES ?? 2000), log });
    case "reprotect":
      // Two 1 GiB disks (BENCH_DISK_MIB for another size), 1% of their blocks changed after the failover.
      return benchReprotect({ diskSizeMiB: Number(process.env.BENCH_DISK_MIB ?? 1024), disks: 2, changedFraction: 0.01, log });
    default:
      throw new Error(`unknown benchmark '${name}': one of ${BENCHMARKS.join(", ")}`);
  }
}
