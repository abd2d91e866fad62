// A replicated item: its states, health issues, disks and the rules that move between them (stored by storage/item-store.ts).
import type { ReplicationPolicy } from "../contract/api";
import type { Direction } from "../storage/names";

export type ItemState =
  | "Enabling"
  | "EnableFailed"
  | "InitialReplication"
  | "Protected"
  | "ResyncRequired"
  | "FailingOver"
  | "FailedOver"
  | "FailoverCommitted"
  | "TestFailover"
  | "Reprotecting"
  | "Disabling";

export type HealthStatus = "Healthy" | "Warning" | "Critical";

export interface HealthIssue {
  code: string;
  severity: "Warning" | "Critical";
  message: string;
  since: string;
  /** The disk the issue is about, so that it can be cleared when that disk recovers. */
  diskId?: string;
  /** The batch the issue is about, where there is one. */
  seq?: number;
}

/** The item's health follows its worst open issue. */
export function healthStatusOf(issues: HealthIssue[]): HealthStatus {
  if (issues.some((i) => i.severity === "Critical")) return "Critical";
  return issues.length > 0 ? "Warning" : "Healthy";
}

/** Adds or replaces the issue with the same code and disk (one open issue per cause), keeping when it began. */
export function raiseIssue(item: ReplicatedItem, issue: HealthIssue): void {
  const issues = item.health.issues;
  const i = issues.findIndex((x) => x.code === issue.code && x.diskId === issue.diskId);
  if (i >= 0) issues[i] = { ...issue, since: issues[i].since };
  else issues.push(issue);
  item.health.status = healthStatusOf(issues);
}

/** Removes the issues that match; true when any was removed. */
export function clearIssues(item: ReplicatedItem, match: (issue: HealthIssue) => boolean): boolean {
  const kept = item.health.issues.filter((x) => !match(x));
  const removed = kept.length !== item.health.issues.length;
  item.health = { status: healthStatusOf(kept), issues: kept };
  return removed;
}

export interface TargetResources {
  resourceGroup: { id: string; name: string };
  vnet: { id: string; name: string };
  subnet: string;
  availabilitySet?: { id: string; name: string };
  networkMappings: string[];
}

export interface ReplicatedItem {
  id: string;
  state: ItemState;
  vm: {
    name: string;
    region: string;
    resourceGroup: string;
    size: string;
    network: { vnet: string; subnet: string; privateIp?: string };
    availabilitySet?: string;
  };
  targetRegion: string;
  target?: TargetResources;
  /**
   * Which way the item replicates now (absent: `forward`, as every item before re-protect existed). Re-protect turns
   * it around; the item keeps its id.
   */
  direction?: Direction;
  /** The VM's original placement as a failback target: recorded by the first re-protect (the user's own resources). */
  original?: OriginalResources;
  /** The re-protect the item is in, or the last one it went through. */
  reprotect?: ReprotectRecord;
  replicationGroup?: string;
  policy: ReplicationPolicy;
  health: { status: HealthStatus; issues: HealthIssue[] };
  agent?: { registeredAt: string; registrations: number };
  error?: { code: string; message: string };
  /** The failover the item is in, or the last one it went through (set when a failover locks the item). */
  failover?: FailoverRecord;
  /**
   * Planned failover: the source VM is being shut down. Its agent learns it at check-in, refuses new writes, cuts
   * this final tag on every disk and ships everything before it; the failover waits for the tag's point.
   */
  sourceShutdown?: { tagId: string; instanceId: string; requestedAt: string };
  /** The last completed drill: a test failover and its cleanup (the drill reminder counts from it, else from createdAt). */
  lastDrillAt?: string;
  createdAt: string;
  updatedAt: string;
}

export type FailoverType = "test" | "planned" | "unplanned";

/** The original region's resources a failback lands in: found (or recorded) there, never created or deleted by disable. */
export interface OriginalResources {
  resourceGroup: { id: string; name: string };
  vnet: { id: string; name: string };
  subnet: string;
  availabilitySet?: { id: string; name: string };
}

/** Where the reverse (or forward again) replicas start from, per disk. */
export type SeedSource =
  /** The other direction's replica, copied server-side into this direction's replica account (the newest state known). */
  | "other-direction-replica"
  /** This direction's replica left from an earlier cycle, reused in place. */
  | "previous-replica"
  /** Nothing usable: an empty replica, so the agent ships every block that is not zero. */
  | "none";

export interface DiskSeed {
  source: SeedSource;
  /** Server-side copy started (other-direction-replica), and done. */
  copyStarted?: boolean;
  note?: string;
}

export interface ReprotectRecord {
  /** The durable orchestration running (or that ran) the re-protect. */
  instanceId: string;
  from: Direction;
  to: Direction;
  startedAt: string;
  /** Seeds chosen per disk (recorded before any copy starts, so a resumed step keeps its choice). */
  seeds?: Record<string, DiskSeed>;
  /** The replicas are seeded and the agent may register: the differential initial replication runs from here. */
  seededAt?: string;
  /** Every disk finished its differential initial replication (the item is Protected in the new direction). */
  completedAt?: string;
  /** What was shipped (the differential) and the disks' size, when completed. */
  transferredBytes?: number;
  totalBytes?: number;
  error?: { code: string; message: string };
  /** The token's expiry, for the job view (the token itself is shown once, in the 202). */
  tokenExpiresAt?: string;
}

export interface FailoverRecord {
  /** The durable orchestration running (or that ran) the failover. */
  instanceId: string;
  type: FailoverType;
  /** The recovery point as requested: latest, latest-processed, latest-app-consistent or an id. */
  requestedPoint: string;
  startedAt: string;
  /** The state to return to when the failover is rolled back (or, for a test failover, cleaned up). */
  previousState: ItemState;
  /** The point the failover disks were copied from. */
  point?: { id: string; kind: "crash" | "app"; time: string; scope: "vm" | "group" };
  /** The direction the item replicated in when it failed over (which account its failover disks are in). */
  direction?: Direction;
  /** A VM that this failover replaced (left in its target resource group by an earlier failover, or the original VM). */
  replaced?: { vmId: string; nicId?: string; disks: string[] };
  /** What the failover created in the target region, recorded as it is made (cleanup and rollback remove it). */
  resources: { disks: string[]; nicId?: string; privateIp?: string; vmId?: string; testNetworkId?: string };
  completedAt?: string;
  durationSeconds?: number;
  committedAt?: string;
  /** When each step finished for this item (a recovery plan's order shows in it). */
  timeline?: { step: string; at: string }[];
  /** Test failover: when its VM, NIC and disks were removed (a drill counts from then). */
  cleanedUpAt?: string;
  /** Something the operator should know, e.g. `latest` fell back to the latest processed point. */
  note?: string;
  error?: { code: string; message: string };
  /** While a failover is being started: the record it replaced, put back if the orchestration cannot be started. */
  displaced?: Omit<FailoverRecord, "displaced">;
}

export interface DiskRecord {
  itemId: string;
  id: string;
  role: "os" | "data";
  /** Position in the VM's disk list: 0 is the OS disk, data disk n is LUN n-1. */
  index: number;
  sizeBytes: number;
  /** Blob name in the `replicas` container: `<itemId>/<diskId>.vhd`. */
  replicaBlob: string;
  /** Replication state of this disk; the watermark itself lives on the replica blob (its sequence number). */
  state: DiskState;
  /** Set once the batch that ends initial replication is applied. */
  initialComplete?: boolean;
  /** Why and from where this disk needs a resync; cleared when the resync's last batch is applied. */
  resync?: DiskResync;
  lastAppliedSeq?: number;
  /** Payload bytes applied to the replica so far (churn, history and telemetry read it). */
  appliedBytes?: number;
  /** When the processor last applied a batch (control-plane time). */
  lastAppliedAt?: string;
  /** Source time (ms) of the newest write applied. */
  lastAppliedWriteMs?: number;
  /** When the sweep last re-announced this disk's pending batches. */
  lastKickAt?: string;
  /** When this disk's current initial replication began (enable, or a re-protect's seed). */
  initialStartedAt?: string;
  /**
   * Bytes the agent shipped (batch blobs applied or superseded) while this disk was in initial replication, counted
   * once per batch (`throughSeq`): the differential proof of a re-protect.
   */
  initialTransfer?: { bytes: number; throughSeq: number };
}

export type DiskState = "InitialReplication" | "Protected" | "ResyncRequired";

export interface DiskResync {
  id: string;
  reason: string;
  /**
   * `apply`: the processor halted at `baseSeq` (e.g. a corrupt batch); `agent`: the agent lost write order (spool
   * overflow); `seed`: a re-protect seeded the replica and the agent ships only the blocks that differ from it;
   * `request`: an operator asked for a resync. All but `agent` are the control plane's: the disk is halted at
   * `baseSeq` until the resync's first batch, and the agent fetches the replica's checksums first.
   */
  origin: "apply" | "agent" | "seed" | "request";
  baseSeq: number;
  since: string;
  /**
   * `apply` resyncs: batches baseSeq+1 … supersededThrough were dropped unapplied (the resync rewrites what
   * they held); the resync's first batch must be supersededThrough+1, so a gap never passes for a start.
   */
  supersededThrough?: number;
}

/** A resync the control plane started (the agent compares against the replica's manifest); `agent` ones are the agent's own. */
export const isControlPlaneResync = (r: DiskResync | undefined): r is DiskResync => r !== undefined && r.origin !== "agent";

export const directionOf = (item: Pick<ReplicatedItem, "direction">): Direction => item.direction ?? "forward";

/** Where a failover of the item lands in its current direction: the recovery region forward, the original one reverse. */
export interface FailoverPlacement {
  region: string;
  resourceGroup: string;
  vnetId: string;
  vnetName: string;
  subnet: string;
  availabilitySetId?: string;
  preferredIp?: string;
}

export function failoverPlacement(item: ReplicatedItem): FailoverPlacement | undefined {
  const ip = item.vm.network.privateIp ? { preferredIp: item.vm.network.privateIp } : {};
  if (directionOf(item) === "forward") {
    const t = item.target;
    if (!t) return undefined;
    return {
      region: item.targetRegion,
      resourceGroup: t.resourceGroup.name,
      vnetId: t.vnet.id,
      vnetName: t.vnet.name,
      subnet: t.subnet,
      ...(t.availabilitySet ? { availabilitySetId: t.availabilitySet.id } : {}),
      ...ip,
    };
  }
  const o = item.original;
  if (!o) return undefined;
  return {
    region: item.vm.region,
    resourceGroup: o.resourceGroup.name,
    vnetId: o.vnet.id,
    vnetName: o.vnet.name,
    subnet: o.subnet,
    ...(o.availabilitySet ? { availabilitySetId: o.availabilitySet.id } : {}),
    ...ip,
  };
}

/** The VM that replicates now (a planned failover shuts it down): the original VM forward, the failed-over one reverse. */
export function replicationSource(item: ReplicatedItem): { region: string; resourceGroup: string; name: string } {
  if (directionOf(item) === "forward" || !item.target) return { region: item.vm.region, resourceGroup: item.vm.resourceGroup, name: item.vm.name };
  return { region: item.targetRegion, resourceGroup: item.target.resourceGroup.name, name: item.vm.name };
}

/** Replication states the apply side moves an item between; other states (failover, disabling) it leaves alone. */
const REPLICATING: ReadonlySet<ItemState> = new Set(["InitialReplication", "Protected", "ResyncRequired"]);

/** The item's replication state as its disks say: any disk to resync wins, then any disk still copying. */
export function replicationStateOf(item: ReplicatedItem, disks: DiskRecord[]): ItemState {
  if (!REPLICATING.has(item.state) || disks.length === 0) return item.state;
  if (disks.some((d) => d.state === "ResyncRequired")) return "ResyncRequired";
  return disks.every((d) => d.initialComplete && d.state === "Protected") ? "Protected" : "InitialReplication";
}

/** The key that makes a VM protectable once: its region, resource group and name, case-insensitive. */
export function vmKey(vm: { region: string; resourceGroup: string; name: string }): string {
  return `${vm.region}|${vm.resourceGroup}|${vm.name}`.toLowerCase();
}

export const replicaBlobName = (itemId: string, diskId: string) => `${itemId}/${diskId}.vhd`;
export const cacheContainerName = (itemId: string) => `cache-${itemId}`;
