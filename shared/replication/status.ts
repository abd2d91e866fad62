// Live replication status of an item's disks, read from storage: watermarks, what waits in the cache, the agent's heartbeat.
import type { BlobPort, StoragePort } from "../storage/ports";
import { heartbeatSchema, HEARTBEAT_BLOB, type Heartbeat } from "../protection/agent-protocol";
import { batchBlobName, seqOfBlobName } from "./batch";
import { isNotFound } from "../contract/errors";
import { cacheContainerName, directionOf, isControlPlaneResync, type DiskRecord, type ReplicatedItem } from "../protection/items";

export interface DiskReplicationStatus {
  /** Last fully applied batch (the replica's sequence number); null when the replica is missing. */
  watermark: number | null;
  /** Batches above the watermark waiting in the cache, and their size. */
  pendingBatches: number;
  pendingBytes: number;
  /** Age of the oldest write not yet applied (0 when nothing waits). */
  lagSeconds: number;
  /**
   * The agent's first full copy (or a re-protect's differential one): 100% once its last batch is applied, else what
   * the heartbeat reports compared; `transferredBytes` is what was actually shipped (applied or superseded batches);
   * `etaSeconds` extrapolates the rate since it began (null before there is a rate, 0 when done).
   */
  initialReplication: { percent: number; doneBytes: number; totalBytes: number; transferredBytes: number; etaSeconds: number | null };
}

export interface ReplicationStatus {
  disks: Record<string, DiskReplicationStatus>;
  /** The agent's last heartbeat, or null when it never wrote a valid one; `spoolBytes`: what waits in its spool, all disks. */
  agent: { time: string; agentVersion: string; health: Heartbeat["health"]; spoolBytes: number } | null;
}

/** Batch metadata the agent sets on upload (source ms of the batch's first and last write); blob times are the fallback. */
const FIRST_WRITE_META = "firstwritems";

/** Reads each disk's replica and cache listing, and the heartbeat, all at once. */
export async function readReplicationStatus(
  storage: StoragePort,
  item: Pick<ReplicatedItem, "id" | "direction">,
  disks: DiskRecord[],
  now: Date = new Date(),
): Promise<ReplicationStatus> {
  const itemId = item.id;
  const direction = directionOf(item);
  const cache = storage.cache(direction).getContainerClient(cacheContainerName(itemId));
  const replicas = await storage.replicas(direction);
  const [heartbeat, ...perDisk] = await Promise.all([
    readHeartbeat(cache.getBlobClient(HEARTBEAT_BLOB)),
    ...disks.map(async (d) => {
      const watermark = await replicas
        .getPageBlobClient(d.replicaBlob)
        .getProperties()
        .then((p) => p.blobSequenceNumber ?? 0)
        .catch((e: unknown) => (isNotFound(e) ? null : Promise.reject(e)));
      let pendingBatches = 0;
      let pendingBytes = 0;
      let oldestWriteMs: number | undefined;
      try {
        for await (const b of cache.listBlobsFlat({ prefix: `${d.id}/`, includeMetadata: true })) {
          const seq = seqOfBlobName(b.name);
          if (seq === undefined || b.name !== batchBlobName(d.id, seq) || seq <= (watermark ?? 0)) continue;
          pendingBatches++;
          pendingBytes += b.properties.contentLength ?? 0;
          // Listed in seq order: the first pending batch holds the oldest unapplied write.
          if (oldestWriteMs === undefined) {
            const meta = Number(b.metadata?.[FIRST_WRITE_META]);
            oldestWriteMs = Number.isFinite(meta) && meta > 0 ? meta : b.properties.lastModified.getTime();
          }
        }
      } catch (e) {
        if (!isNotFound(e)) throw e;
      }
      return { disk: d, watermark, pendingBatches, pendingBytes, oldestWriteMs };
    }),
  ]);
  const status: ReplicationStatus = {
    disks: {},
    agent: heartbeat
      ? {
          time: heartbeat.time,
          agentVersion: heartbeat.agentVersion,
          health: heartbeat.health,
          spoolBytes: Object.values(heartbeat.disks).reduce((n, d) => n + d.spoolBytes, 0),
        }
      : null,
  };
  for (const p of perDisk) {
    status.disks[p.disk.id] = {
      watermark: p.watermark,
      pendingBatches: p.pendingBatches,
      pendingBytes: p.pendingBytes,
      lagSeconds: p.oldestWriteMs === undefined ? 0 : Math.max(0, Math.round((now.getTime() - p.oldestWriteMs) / 100) / 10),
      initialReplication: initialProgress(p.disk, heartbeat, now),
    };
  }
  return status;
}

function initialProgress(disk: DiskRecord, heartbeat: Heartbeat | undefined, now: Date): DiskReplicationStatus["initialReplication"] {
  const hb = heartbeat?.disks[disk.id];
  const reported = hb?.initialReplication;
  const totalBytes = reported && reported.totalBytes > 0 ? reported.totalBytes : disk.sizeBytes;
  const transferredBytes = disk.initialTransfer?.bytes ?? 0;
  if (disk.initialComplete) return { percent: 100, doneBytes: totalBytes, totalBytes, transferredBytes, etaSeconds: 0 };
  // A seeded (differential) initial replication is the agent's comparison with the replica: its resync's progress.
  const seed = isControlPlaneResync(disk.resync) && hb?.resync?.id === disk.resync.id ? hb.resync : undefined;
  const done = seed ? seed.doneBytes : (reported?.doneBytes ?? 0);
  const doneBytes = Math.min(done, totalBytes);
  const started = disk.initialStartedAt ? Date.parse(disk.initialStartedAt) : NaN;
  const elapsed = (now.getTime() - started) / 1000;
  const etaSeconds = doneBytes > 0 && elapsed > 0 ? Math.round(((totalBytes - doneBytes) * elapsed) / doneBytes) : null;
  return { percent: Math.floor((doneBytes / totalBytes) * 1000) / 10, doneBytes, totalBytes, transferredBytes, etaSeconds };
}

/** The heartbeat blob, or undefined when absent or not what the agent protocol says it is. */
async function readHeartbeat(blob: BlobPort): Promise<Heartbeat | undefined> {
  try {
    // One GET (not downloadToBuffer's size-then-range reads): the agent replaces the blob at any moment, and a range
    // read of a blob that changed size in between fails.
    const res = await blob.download();
    // The agent uploads its heartbeat; a blob that a Copy Blob made (copy properties last until the next upload) is
    // someone else's, e.g. another item's heartbeat copied in with this item's SAS.
    if (res.copyId || res.copySource) {
      res.readableStreamBody?.resume();
      return undefined;
    }
    const chunks: Buffer[] = [];
    for await (const c of res.readableStreamBody!) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString("utf8");
    const parsed = heartbeatSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch (e) {
    if (isNotFound(e) || e instanceof SyntaxError) return undefined;
    throw e;
  }
}
