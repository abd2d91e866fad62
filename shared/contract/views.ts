// How a replicated item is shown over the API: the stored record plus its disks, without secrets.
import type { DiskRecord, ReplicatedItem } from "../protection/items";
import type { DiskReplicationStatus, ReplicationStatus } from "../replication/status";
import type { RecoveryPoint } from "../recovery-points/points";

/** A recovery point as the API shows it; a group point lists the item's own disks and the group's members. */
export function pointView(p: RecoveryPoint, itemId?: string) {
  return {
    id: p.id,
    kind: p.kind,
    time: p.time,
    scope: p.scope,
    ...(p.group ? { group: p.group } : {}),
    ...(p.members ? { members: p.members } : {}),
    disks: p.disks
      .filter((d) => !itemId || d.itemId === itemId)
      .map((d) => ({ ...(itemId ? {} : { itemId: d.itemId }), diskId: d.diskId, snapshot: d.snapshot, seq: d.seq })),
    sealedAt: p.sealedAt,
  };
}

/** What the item view says of its recovery points: the newest of each kind, and the RPO they give. */
export interface PointsSummary {
  latest?: RecoveryPoint;
  latestApp?: RecoveryPoint;
  nowMs: number;
}

/** A disk as the table knows it; with `live` (GET of one item) also what storage says right now. */
function diskView(d: DiskRecord, live: DiskReplicationStatus | undefined) {
  return {
    id: d.id,
    role: d.role,
    sizeBytes: d.sizeBytes,
    replicaBlob: d.replicaBlob,
    state: d.state,
    resync: d.resync ?? null,
    initialTransferredBytes: d.initialTransfer?.bytes ?? 0,
    lastAppliedSeq: d.lastAppliedSeq ?? null,
    lastAppliedAt: d.lastAppliedAt ?? null,
    ...(live
      ? {
          watermark: live.watermark,
          pendingBatches: live.pendingBatches,
          pendingBytes: live.pendingBytes,
          lagSeconds: live.lagSeconds,
          initialReplication: live.initialReplication,
        }
      : {}),
  };
}

/** The list stays light (table data only); `status` adds the per-disk storage reads of a single item's GET. */
export function itemView(item: ReplicatedItem, disks: DiskRecord[], status?: ReplicationStatus, points?: PointsSummary) {
  const views = disks.map((d) => diskView(d, status?.disks[d.id]));
  return {
    id: item.id,
    state: item.state,
    health: item.health,
    vm: item.vm,
    targetRegion: item.targetRegion,
    target: item.target ?? null,
    direction: item.direction ?? "forward",
    original: item.original ?? null,
    reprotect: item.reprotect ?? null,
    replicationGroup: item.replicationGroup ?? null,
    policy: item.policy,
    disks: views,
    agent: item.agent ?? null,
    ...(status
      ? {
          heartbeat: status.agent,
          // The item is as far behind as its slowest disk.
          lagSeconds: Math.max(0, ...Object.values(status.disks).map((s) => s.lagSeconds)),
        }
      : {}),
    ...(points
      ? {
          latestRecoveryPoint: points.latest ? pointView(points.latest, item.id) : null,
          latestAppConsistentRecoveryPoint: points.latestApp ? pointView(points.latestApp, item.id) : null,
        }
      : {}),
    // The data-loss window if the source region failed now: the age of the newest recovery point (null before the first).
    rpoSeconds: points?.latest ? Math.max(0, Math.round((points.nowMs - Date.parse(points.latest.time)) / 1000)) : null,
    failover: item.failover ?? null,
    ...(item.error ? { error: item.error } : {}),
    createdAt: item.createdAt,
    updatedAt: item.updatedAt,
  };
}

/** A recovery point as GET …/recovery-points answers it. */
export type PointView = ReturnType<typeof pointView>;
/** An item as GET /api/replicated-items[/{id}] answers it (the per-disk storage fields and RPO only on a single GET). */
export type ItemView = ReturnType<typeof itemView>;
