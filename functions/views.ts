// How a replicated item is shown over the API: the stored record plus its disks, without secrets.
import type { DiskRecord, ReplicatedItem } from "../shared/items";

export function itemView(item: ReplicatedItem, disks: DiskRecord[]) {
  return {
    id: item.id,
    state: item.state,
    health: item.health,
    vm: item.vm,
    targetRegion: item.targetRegion,
    target: item.target ?? null,
    replicationGroup: item.replicationGroup ?? null,
    policy: item.policy,
    disks: disks.map((d) => ({ id: d.id, role: d.role, sizeBytes: d.sizeBytes, replicaBlob: d.replicaBlob })),
    agent: item.agent ?? null,
    // No recovery point is sealed yet in this version: RPO is unknown until one is.
    rpoSeconds: null,
    ...(item.error ? { error: item.error } : {}),
    createdAt: item.createdAt,
    updatedAt: item.updatedAt,
  };
}
