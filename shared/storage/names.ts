// The names storage is laid out by, and the two directions of replication: plain values, no SDK.
import type { Config, StorageAccount } from "../config/settings";

export const REPLICATION_QUEUE = "replication-batches";
/** Where the Functions host moves a replication message after maxDequeueCount failed attempts. */
export const REPLICATION_POISON_QUEUE = `${REPLICATION_QUEUE}-poison`;
export const REPLICAS_CONTAINER = "replicas";
export const FAILOVER_CONTAINER = "failover";

export const TABLES = {
  items: "ReplicatedItems",
  disks: "Disks",
  registrations: "AgentRegistrations",
  fabric: "FabricResources",
  recoveryPoints: "RecoveryPoints",
  tagArrivals: "TagArrivals",
  replicationGroups: "ReplicationGroups",
  recoveryPlans: "RecoveryPlans",
  jobs: "Jobs",
  alerts: "Alerts",
  history: "ReplicationHistory",
} as const;
export type TableName = (typeof TABLES)[keyof typeof TABLES];

/**
 * Which way an item replicates. `forward`: from the VM's original region to the recovery (target) region; `reverse`:
 * after a failover and re-protect, from the recovery region back to the original one.
 */
export type Direction = "forward" | "reverse";

/** The other direction (what re-protect turns an item to). */
export const flipped = (d: Direction): Direction => (d === "forward" ? "reverse" : "forward");

/** Queue-trigger messages are base64 of JSON (host.json messageEncoding); Azure caps the text at 64 KiB. */
export function queueMessageText(value: unknown): string {
  const text = Buffer.from(JSON.stringify(value), "utf8").toString("base64");
  if (text.length > 65536) throw new RangeError(`queue message of ${text.length} characters exceeds 64 KiB`);
  return text;
}

/**
 * Storage is symmetric across the two regions: the original region's account (`CACHE_STORAGE`) holds the forward
 * cache and the reverse replicas, the recovery region's account (`REPLICA_STORAGE`) the forward replicas and the
 * reverse cache. The names inside them are the same in both directions (`cache-<item>`, `replicas/<item>/<disk>.vhd`,
 * `failover/...`); the account says which direction a blob belongs to.
 */
export function directionAccounts(config: Config, direction: Direction): { cache: StorageAccount; replica: StorageAccount } {
  const { cache, replica } = config.storage;
  return direction === "forward" ? { cache, replica } : { cache: replica, replica: cache };
}

/** Re-protect needs storage in both regions: one account for both would hold both directions under the same names. */
export function regionsAreDistinct(config: Config): boolean {
  const { cache, replica } = config.storage;
  return cache.blobUrl.replace(/\/+$/, "").toLowerCase() !== replica.blobUrl.replace(/\/+$/, "").toLowerCase();
}
