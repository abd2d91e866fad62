// How a replicated item is shown over the API: the stored record plus its disks, without secrets.
import type { DiskRecord, ReplicatedItem } from "../shared/items";
import type { DiskReplicationStatus, ReplicationStatus } from "../shared/status";

/** A disk as the table knows it; with `live` (GET of one item) also what storage says right now. */
function diskView(d: DiskRecord, live: DiskReplicationStatus | undefined) {
  return {
    id: d.id,
    role: d.role,
    sizeBytes: d.sizeBytes,
    replicaBlob: d.replicaBlob,
    state: d.state,
    resync: d.resync ?? null,
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
export function itemView(item: ReplicatedItem, disks: DiskRecord[], status?: ReplicationStatus) {
  const views = disks.map((d) => diskView(d, status?.disks[d.id]));
  return {
    id: item.id,
    state: item.state,
    health: item.health,
    vm: item.vm,
    targetRegion: item.targetRegion,
    target: item.target ?? null,
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
    // No recovery point is sealed yet in this version: RPO is unknown until one is.
    rpoSeconds: null,
    ...(item.error ? { error: item.error } : {}),
    createdAt: item.createdAt,
    updatedAt: item.updatedAt,
  };
}
