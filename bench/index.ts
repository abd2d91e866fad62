// The benchmarks behind `npm run bench -- <name>`: each writes JSON under bench/results and prints a table.
import { benchReplication } from "./replication";

export const BENCHMARKS = ["replication"] as const;
export type BenchmarkName = (typeof BENCHMARKS)[number];

export async function runBenchmark(name: string, options: { seconds?: number; log?: (line: string) => void } = {}): Promise<unknown> {
  const log = options.log ?? console.log;
  switch (name) {
    case "replication":
      return benchReplication({ seconds: options.seconds ?? 30, ratePerDiskMBps: 20, disks: 2, diskSizeMiB: 1024, writeKiB: 64, maxBacklogMiB: 256, log });
    default:
      throw new Error(`unknown benchmark '${name}': one of ${BENCHMARKS.join(", ")}`);
  }
}
