// The drill's model: its fixed shape (two VMs of two disks in one replication group, a point every 10 s, 64 KiB
// fingerprint blocks), what it reads of the API, its report and its error.
import type { Agent } from "../agent";
import type { FailoverOutput } from "../shared/contract/responses";
export type { ItemView } from "../shared/contract/views";

export const MiB = 1024 * 1024;
/** Fingerprint granularity: the CRC32C of every 64 KiB block (what a differential resync compares too). */
export const BLOCK = 64 * 1024;
export const GROUP = "demo-tier";
export const DISK_IDS = ["os", "data0"] as const;
export const VMS = [
  { name: "demo-web", privateIp: "10.2.0.4" },
  { name: "demo-db", privateIp: "10.2.0.5" },
];
/** Fingerprints of this many group tags are kept (the newest sealed point is always among them). */
export const KEEP_TAGS = 12;
/** The policy's crash-consistent cadence: the shortest it allows. */
export const TAG_SECONDS = 10;

/** A failure that ends the drill with a clear message (not a mismatch: those are reported as results). */
export class DemoError extends Error {
  override name = "DemoError";
}

export type VmOutcome = FailoverOutput["vms"][number];

export interface DiskCheck {
  phase: "test" | "unplanned";
  vm: string;
  diskId: string;
  blob: string;
  pointId: string;
  blocks: number;
  mismatchedBlocks: number;
  /** Byte offset of the first 64 KiB block that differs. */
  firstMismatchAt?: number;
  problem?: string;
  matched: boolean;
}

export interface DemoReport {
  ok: boolean;
  startedAt: string;
  settings: {
    vms: number;
    disksPerVm: number;
    diskMiB: number;
    seconds: number;
    mbps: number;
    replicationGroup: string;
    crashConsistentFrequencySeconds: number;
  };
  workload: { seconds: number; writes: number; bytesWritten: number };
  replication: { batchesShipped: number; bytesShipped: number; initialReplicationSeconds: number };
  /** Group tags cut while the drill watched, and the longest a cut held a VM's writes (fingerprinting included). */
  groupTags: { cut: number; maxWriteHoldMs: number };
  vms: { vm: string; itemId: string; rpoSecondsMax: number | null; rpoSecondsLast: number | null }[];
  failovers: {
    phase: "test" | "unplanned";
    instanceId: string;
    rtoSeconds: number;
    wallSeconds: number;
    vms: { vm: string; recoveryPoint: VmOutcome["recoveryPoint"]; dataLossWindowSeconds: number; failoverDurationSeconds: number }[];
  }[];
  disks: DiskCheck[];
  error?: string;
}

export interface DemoVm {
  name: string;
  itemId: string;
  agent?: Agent;
  disks: { id: string; path: string; sizeBytes: number }[];
  rpo: { max?: number; last?: number };
}

export interface FailoverRun {
  phase: "test" | "unplanned";
  instanceId: string;
  output: FailoverOutput;
  wallSeconds: number;
}

export const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;
export const secs = (s: number) => `${s.toFixed(1)} s`;
export const short = (id: string) => (id.length > 12 ? id.slice(0, 8) : id);
export const clock = (iso: string) => iso.slice(11, 19);
