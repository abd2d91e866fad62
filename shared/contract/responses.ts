// What the long-running operations show over the API: a failover's and a re-protect's custom status and output
// (GET /api/failovers/{id}, GET /api/replicated-items/{id}/reprotect). Written by the orchestrations, read by the CLI,
// the drill, the benchmarks and the tests through the one client (client.ts).
import type { FailoverInput } from "../failover/start";
import type { VmOutcome } from "../failover/steps";
import type { DiskSeed } from "../protection/items";
import type { ReprotectProgress } from "../protection/reprotect";

/** Per VM, what the custom status shows. */
export interface VmProgress {
  vm: string;
  step: string;
  recoveryPoint?: { id: string; kind: string; time: string; scope: string };
  disks?: string;
  privateIp?: string;
  powerState?: string;
  note?: string;
}

export interface FailoverStatus {
  step: string;
  /** Recovery plans: the group being failed over (1-based) and how many there are. */
  stage?: { index: number; count: number };
  vms: Record<string, VmProgress>;
  error?: string;
}

export interface FailoverOutput {
  instanceId: string;
  type: FailoverInput["type"];
  recoveryPoint: string;
  startedAt: string;
  completedAt: string;
  /** Start of the failover to the last VM running (orchestration time). */
  rtoSeconds: number;
  vms: VmOutcome[];
}

export interface ReprotectStatus {
  step: string;
  from: string;
  to: string;
  seeds: Record<string, DiskSeed>;
  progress?: Omit<ReprotectProgress, "state">;
  error?: string;
}

export interface ReprotectOutput {
  instanceId: string;
  itemId: string;
  direction: string;
  startedAt: string;
  seededAt: string;
  completedAt: string;
  durationSeconds: number;
  transferredBytes: number;
  totalBytes: number;
  disks: ReprotectProgress["disks"];
}

/** What `GET /api/failovers/{id}` answers (the fields the CLI reads). */
export interface FailoverStatusBody {
  instanceId: string;
  runtimeStatus: string;
  customStatus: FailoverStatus | null;
  /** The output once completed; the orchestrator's error text once failed. */
  output: FailoverOutput | string | null;
}

/** What `GET /api/replicated-items/{id}/reprotect` answers (the fields the CLI reads). */
export interface ReprotectJob {
  id: string;
  state: "InProgress" | "Succeeded" | "Failed";
  runtimeStatus: string;
  from: string;
  to: string;
  seeds: Record<string, { source: string; note?: string }>;
  customStatus: ReprotectStatus | null;
  output:
    | {
        transferredBytes: number;
        totalBytes: number;
        durationSeconds: number;
        disks: { diskId: string; transferredBytes: number; totalBytes: number; seed: string }[];
      }
    | string
    | null;
  error: { code: string; message: string } | null;
}
