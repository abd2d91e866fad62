// `npm run bench -- capacity`: what 16, 100 and 1,000 VMs would need in Azure, from the CPU per GB that the churn and
// scale-out benchmarks measured (their latest results) and Azure Storage's published scalability targets. A model, not a
// measurement: its assumptions are in the output.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { RESULTS_DIR, round, table, writeResults } from "./harness";

export interface CapacityOptions {
  vmCounts: number[];
  /** Average churn per VM (MB/s) and disks per VM. */
  churnPerVmMBps: number;
  disksPerVm: number;
  log: (line: string) => void;
}

/**
 * Azure's published targets (learn.microsoft.com: "Scalability and performance targets for Blob storage" and "… for
 * standard storage accounts"; Flex Consumption: up to 1,000 instances per app, 2,048 or 4,096 MB each).
 */
export const AZURE = {
  pageBlobRequestsPerSecond: 500,
  pageBlobMiBps: 60,
  accountRequestsPerSecond: 20_000,
  accountRequestsPerSecondLargeRegions: 40_000,
  accountIngressGbps: 25,
  accountIngressGbpsLargeRegions: 60,
  flexMaxInstances: 1000,
};

const MiB = 1024 * 1024;
/** An instance is counted as one vCPU kept at most this busy (an assumption: Flex Consumption does not publish vCPUs per size here). */
const INSTANCE_BUSY = 0.7;
const BATCH_BYTES = 4 * MiB;
const RANDOM_WRITE = 64 * 1024;

function latest(name: string): any {
  return JSON.parse(readFileSync(join(RESULTS_DIR, `${name}-latest.json`), "utf8"));
}

export function benchCapacity(o: CapacityOptions) {
  const churn = latest("churn");
  const scale = latest("scale-out");
  const random = churn.phases.find((p: { phase: string }) => /random/.test(p.phase));
  const sequential = churn.phases.find((p: { phase: string }) => /sequential/.test(p.phase));
  const measured = {
    applyCpuPerGBRandom64KiB: random.hostCpuPerGB as number,
    applyCpuPerGBSequential: sequential.hostCpuPerGB as number,
    applyCpuPerGBCachedBatches: scale.rounds[0].hostCpuPerGB as number,
    agentCpuPerGBRandom64KiB: random.agentCpuPerGB as number,
    agentCpuPerGBSequential: sequential.agentCpuPerGB as number,
    from: [churn.at, scale.at],
  };
  const perVm = o.churnPerVmMBps;
  const perDisk = perVm / o.disksPerVm;
  const rows = o.vmCounts.map((vms) => {
    const mbps = vms * perVm;
    // Worst case, random 64 KiB writes: one page write each in the replica account; per 4 MiB batch one Put Blob, one
    // Get Blob and one Delete in the cache account, three queue operations and one sequence-number update.
    const replicaRequests = (mbps * 1e6) / RANDOM_WRITE + (mbps * 1e6) / BATCH_BYTES;
    const cacheRequests = ((mbps * 1e6) / BATCH_BYTES) * 3;
    const cores = (mbps / 1000) * measured.applyCpuPerGBRandom64KiB;
    return {
      vms,
      churnMBps: mbps,
      replicaAccountRequestsPerSecond: Math.round(replicaRequests),
      replicaAccountShareOfDefault: round(replicaRequests / AZURE.accountRequestsPerSecond, 2),
      cacheAccountRequestsPerSecond: Math.round(cacheRequests),
      ingressGbps: round((mbps * 8) / 1000, 2),
      applyCores: round(cores, 2),
      instances: Math.max(1, Math.ceil(cores / INSTANCE_BUSY)),
    };
  });
  const result = {
    benchmark: "capacity",
    at: new Date().toISOString(),
    assumptions: {
      churnPerVmMBps: perVm,
      disksPerVm: o.disksPerVm,
      pattern: "random 64 KiB writes (the most requests per byte)",
      instance: `one vCPU per Function App instance, at most ${INSTANCE_BUSY * 100}% busy`,
    },
    azure: AZURE,
    measured,
    perVm: {
      agentCorePercent: round(perVm * measured.agentCpuPerGBRandom64KiB * 0.1, 2),
      perDiskPageWritesPerSecond: round((perDisk * 1e6) / RANDOM_WRITE, 1),
      /** One disk's churn at which its replica page blob reaches a target: 500 requests/s of 64 KiB, or 60 MiB/s. */
      perDiskCeilingRandom64KiBMBps: round((AZURE.pageBlobRequestsPerSecond * RANDOM_WRITE) / 1e6, 1),
      perDiskCeilingSequentialMBps: round((AZURE.pageBlobMiBps * MiB) / 1e6, 1),
    },
    perApp: rows,
  };
  const file = writeResults("capacity", result);
  o.log(
    `measured apply CPU per GB: ${measured.applyCpuPerGBRandom64KiB} s (random 64 KiB churn), ${measured.applyCpuPerGBSequential} s (sequential), ` +
      `${measured.applyCpuPerGBCachedBatches} s (cached 4 MiB batches); agent ${measured.agentCpuPerGBRandom64KiB} s (random), ${measured.agentCpuPerGBSequential} s (sequential)`,
  );
  o.log(
    `per VM at ${perVm} MB/s (${o.disksPerVm} disks): agent ${result.perVm.agentCorePercent}% of a core; ${result.perVm.perDiskPageWritesPerSecond} page writes/s per replica blob ` +
      `(target 500); a disk's random 64 KiB churn reaches its page blob's 500 requests/s at ${result.perVm.perDiskCeilingRandom64KiBMBps} MB/s, sequential churn its 60 MiB/s at ${result.perVm.perDiskCeilingSequentialMBps} MB/s`,
  );
  o.log(
    table(
      [
        "VMs",
        "churn MB/s",
        "replica account requests/s",
        "÷ 20,000/s",
        "cache account requests/s",
        "ingress Gbps (of 25)",
        "apply vCPU",
        "instances (of 1,000)",
      ],
      rows.map((r) => [
        r.vms,
        r.churnMBps,
        r.replicaAccountRequestsPerSecond,
        r.replicaAccountShareOfDefault,
        r.cacheAccountRequestsPerSecond,
        r.ingressGbps,
        r.applyCores,
        r.instances,
      ]),
    ),
  );
  o.log(`results: ${file}`);
  return result;
}
