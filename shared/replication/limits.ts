// The bounds of one apply run: how much it reads and writes at once, how long it may run, its lease.

const MiB = 1024 * 1024;

export interface ApplyLimits {
  /** One invocation's time budget; past it the run re-announces the disk and returns, far from the function timeout. */
  maxRunMs: number;
  maxBatchesPerRun: number;
  /** Lease on the replica, renewed at a third of it while the run lasts. */
  leaseSeconds: number;
  /** Delay of a message re-announced because another processor holds the lease. */
  busyRetrySeconds: number;
  /**
   * Downloads run this far ahead of the batch being written: enough to keep writes busy (more only competes with
   * them for the storage account), and small because a Function App instance runs many disks at once.
   */
  prefetchBytes: number;
  prefetchBatches: number;
  /** Page writes of one batch in flight at once (safe: a batch's extents are disjoint). */
  writeConcurrency: number;
  /**
   * Page writes are cut to at most this (≤ 4 MiB) so that a batch of one large extent still has several writes in
   * flight: a blob takes concurrent writes far faster than one long one (Azurite: 4 MiB sequential ~130 MB/s,
   * concurrent ~225).
   */
  writeChunkBytes: number;
  /**
   * Consecutive batches already downloaded are written as one fenced step, up to this many payload bytes (and
   * `groupBatches` batches): one watermark update for all, their small neighbouring writes joined, more writes in flight.
   * A tagged batch (or one that ends initial replication or a resync) always ends its group.
   */
  groupBytes: number;
  groupBatches: number;
  /** How often a long run records its progress on the disk record (table writes cost). */
  progressEveryMs: number;
}

export const DEFAULT_APPLY_LIMITS: ApplyLimits = {
  maxRunMs: 120_000,
  maxBatchesPerRun: 50_000,
  leaseSeconds: 30,
  busyRetrySeconds: 5,
  prefetchBytes: 16 * MiB,
  prefetchBatches: 4,
  writeConcurrency: 8,
  writeChunkBytes: MiB,
  groupBytes: 8 * MiB,
  groupBatches: 16,
  progressEveryMs: 5_000,
};
