// What the soak's parts share: the API's answers as the soak reads them, the fault record, and the run's context handed to the faults and the re-protect cycle.
import type { ContainerClient, PageBlobClient } from "@azure/storage-blob";
import type { SoakVm } from "./vms";

/** The fields of the API's answers that the soak reads (each answer has some of them). */
export interface Answer {
  id: string;
  state?: string;
  direction?: "forward" | "reverse";
  rpoSeconds?: number;
  disks?: { id: string; state?: string; lagSeconds?: number; resync?: { id: string; reason: string; origin: string } | null }[];
  health?: { issues: { code: string; diskId?: string; seq?: number; message?: string }[] };
  agentRegistration: { token: string };
  error?: unknown;
}

export interface FailoverVm {
  itemId: string;
  recoveryPoint: { id: string; time: string };
  disks: { diskId: string; blob: string }[];
  targetVm?: { resourceGroup?: string; privateIp?: string };
}

export interface FailoverAnswer {
  runtimeStatus?: string;
  customStatus?: unknown;
  output?: { vms: FailoverVm[] };
}

export const FINISHED = ["Completed", "Failed", "Terminated"];

export interface ApiPoint {
  id: string;
  time: string;
  scope: "vm" | "group";
  disks: { itemId?: string; diskId: string; snapshot: string }[];
}

export interface FaultRecord {
  n: number;
  kind: string;
  at: string;
  detail: string;
  endedAt?: number;
  recoveredAt?: number;
  /** What the fault was seen to do to the product (a refused SAS renewed, a halt for resync, an aborted tag, an overflow). */
  effect?: string;
  /** The items whose bytes must be checked after the fault for it to count as verified. */
  items?: string[];
  /** When a recovery point of those items, cut after the fault ended, or a convergence check of them, matched the model. */
  verifiedAt?: number;
}

export class Divergence extends Error {}

export interface SoakContext {
  vms: SoakVm[];
  log: (line: string) => void;
  api: <T = Answer>(method: string, path: string, body?: unknown) => Promise<{ status: number; body: T }>;
  diverge: (what: string) => never;
  record: (kind: string, detail: string) => FaultRecord;
  /** The VM's replica of a disk, in the account of the direction it replicates now (clients of the current keys). */
  replica: (v: SoakVm, diskId: string) => Promise<PageBlobClient>;
  /** The VM's cache container, in the account of the region it replicates from. */
  cache: (v: SoakVm) => ContainerClient;
  /** The failover disks of a direction (forward: the recovery region; reverse, a failback: the original region). */
  failoverDisks: (direction: "forward" | "reverse") => Promise<ContainerClient>;
  diskBytes: number;
  failoverTimeoutMs: number;
  /**
   * Group tags the agents gave up: an aborted one must never be sealed as any point, one a member did not cut never as
   * a group point (the oracle checks every point it lists).
   */
  abortedTags: Map<string, "aborted" | "not cut by a member">;
  /** Workload paused (every write acknowledged or dropped), then every Protected disk must converge to its model. */
  convergence: () => Promise<void>;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
