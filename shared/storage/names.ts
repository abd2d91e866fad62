// The names storage is laid out by, and the two directions of replication: plain values, no SDK.

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
