// Replication history: RPO, lag, backlog and churn per item, sampled by the monitoring pass and thinned like recovery points.
import { isNotFound } from "../contract/errors";
import { TABLES } from "../storage/names";
import type { EntityTable, Tables } from "../storage/ports";

export interface HistorySample {
  time: string;
  /** Age of the newest recovery point (null before the first). */
  rpoSeconds: number | null;
  /** Age of the oldest write not yet applied, slowest disk. */
  lagSeconds: number;
  /** What waits in the cache, all disks. */
  backlogBytes: number;
  backlogBatches: number;
  /** What waits in the agent's spool, all disks, as its last heartbeat said (absent in samples older than the field). */
  spoolBytes?: number;
  /** Payload bytes applied so far, all disks (a counter). */
  appliedBytes: number;
  /** Bytes the source wrote per second since the previous sample: applied plus cache and spool growth (null for the first). */
  churnBytesPerSecond: number | null;
}

interface SampleEntity {
  partitionKey: string;
  rowKey: string;
  body: string;
}

const MIN = 60_000;
const HOUR = 60 * MIN;

/** Every sample for 2 hours, one per 5 minutes to a day, one an hour to 15 days: at most about 720 per item. */
export const HISTORY_TIERS = [
  { untilAgeMs: 2 * HOUR, bucketMs: 0 },
  { untilAgeMs: 24 * HOUR, bucketMs: 5 * MIN },
  { untilAgeMs: 15 * 24 * HOUR, bucketMs: HOUR },
] as const;

/** The sample times to keep: within each tier the newest of each bucket. */
export function samplesToKeep(timesMs: number[], nowMs: number): Set<number> {
  const keep = new Set<number>();
  const seen = new Set<string>();
  for (const t of [...timesMs].sort((a, b) => b - a)) {
    const age = nowMs - t;
    const tier = HISTORY_TIERS.findIndex((x) => age < x.untilAgeMs);
    if (tier < 0) continue;
    const { bucketMs } = HISTORY_TIERS[tier]!;
    if (bucketMs === 0) {
      keep.add(t);
      continue;
    }
    const bucket = `${tier}:${Math.floor(t / bucketMs)}`;
    if (seen.has(bucket)) continue;
    seen.add(bucket);
    keep.add(t);
  }
  return keep;
}

const rowKeyOf = (ms: number) => String(ms).padStart(15, "0");

export class ReplicationHistory {
  constructor(private readonly storage: Tables) {}

  private table(): Promise<EntityTable> {
    return this.storage.table(TABLES.history);
  }

  /** Oldest first; `sinceMs` keeps only newer samples. */
  async list(itemId: string, sinceMs = 0): Promise<HistorySample[]> {
    const t = await this.table();
    const out: HistorySample[] = [];
    const filter = `PartitionKey eq '${itemId.replace(/'/g, "''")}' and RowKey ge '${rowKeyOf(sinceMs)}'`;
    for await (const e of t.listEntities<SampleEntity>({ queryOptions: { filter } })) out.push(JSON.parse(e.body) as HistorySample);
    return out;
  }

  async latest(itemId: string): Promise<HistorySample | undefined> {
    // RowKeys ascend with time; the newest is the last (a partition holds at most ~720 rows).
    const all = await this.list(itemId);
    return all[all.length - 1];
  }

  async add(itemId: string, sample: HistorySample): Promise<void> {
    const t = await this.table();
    await t.upsertEntity<SampleEntity>({ partitionKey: itemId, rowKey: rowKeyOf(Date.parse(sample.time)), body: JSON.stringify(sample) }, "Replace");
  }

  /** Deletes the samples thinning does not keep; returns how many. */
  async thin(itemId: string, nowMs: number): Promise<number> {
    const t = await this.table();
    const keys: string[] = [];
    for await (const e of t.listEntities<{ rowKey: string }>({
      queryOptions: { filter: `PartitionKey eq '${itemId.replace(/'/g, "''")}'`, select: ["RowKey"] },
    })) {
      keys.push(e.rowKey);
    }
    const keep = samplesToKeep(keys.map(Number), nowMs);
    const drop = keys.filter((k) => !keep.has(Number(k)));
    for (let i = 0; i < drop.length; i += 100) {
      await t.submitTransaction(drop.slice(i, i + 100).map((rowKey) => ["delete", { partitionKey: itemId, rowKey }]));
    }
    return drop.length;
  }

  async deleteAll(itemId: string): Promise<void> {
    const t = await this.table();
    for await (const e of t.listEntities<{ rowKey: string }>({
      queryOptions: { filter: `PartitionKey eq '${itemId.replace(/'/g, "''")}'`, select: ["RowKey"] },
    })) {
      await t.deleteEntity(itemId, e.rowKey).catch((err: unknown) => (isNotFound(err) ? undefined : Promise.reject(err)));
    }
  }
}
