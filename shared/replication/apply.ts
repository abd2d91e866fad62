// Applies a disk's cached batches to its replica in sequence order, under a lease (lease.ts) and fenced by the replica's
// sequence number, the watermark (replica.ts), within the bounds of limits.ts. Over 500 lines because one run (ApplyRun)
// is one state machine — list, prefetch, verify, write, fence, record, re-announce — whose steps share its fields.
import type { ContainerPort, PageBlobPort, StoragePort } from "../storage/ports";
import { randomUUID } from "node:crypto";
import { z } from "zod";
import {
  batchBlobName,
  checkExtents,
  CorruptBatchError,
  decodeBatch,
  seqOfBlobName,
  type Batch,
  type BatchHeader,
  type BatchMessage,
  type BatchTag,
} from "./batch";
import { isFenced, isLeaseHeld, isNotFound } from "../contract/errors";
import {
  cacheContainerName,
  clearIssues,
  directionOf,
  isControlPlaneResync,
  raiseIssue,
  replicaBlobName,
  replicationStateOf,
  type DiskRecord,
  type HealthIssue,
  type ReplicatedItem,
} from "../protection/items";
import { type ItemStore } from "../storage/item-store";
import type { Config } from "../config/settings";
import { type Direction } from "../storage/names";
import { queueMessageText } from "../storage/names";
import { downloadBlob, readWatermark, writeBatches } from "./replica";
import { LeaseKeeper } from "./lease";
import { ApplyLimits, DEFAULT_APPLY_LIMITS } from "./limits";

/** Download buffers are at least a default batch (4 MiB) and its header, so that one fits every later batch. */
const SPARE_BYTES = 4 * 1024 * 1024 + 64 * 1024;

/** Health issue the cache sweep raises when a disk's cached batches wait too long; a run that moves the disk clears it. */
export const STALLED = "ReplicationStalled";

/** The announcement of a batch on the replication queue; ids are checked because they become blob names. */
export const batchMessageSchema = z.object({
  v: z.literal(1),
  itemId: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9-]{0,63}$/, "an item id (letters, digits, '-')"),
  // The enable request's rule for disk ids.
  diskId: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, "a disk id (lowercase letters, digits, '_', '-')"),
  seq: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
}) satisfies z.ZodType<BatchMessage>;

/** What the recovery-point recorder (snapshotAtTag in recovery-points/points.ts: snapshot + arrival) receives when a tagged batch has been applied. */
export interface TagApplied {
  item: ReplicatedItem;
  disk: DiskRecord;
  seq: number;
  tag: BatchTag;
  header: BatchHeader;
  /** The replica at exactly the state after `seq`; nothing later is written until the hook returns. */
  replica: PageBlobPort;
  leaseId: string;
}

export interface ApplyDeps {
  storage: StoragePort;
  items: ItemStore;
  config: Config;
  now?: () => Date;
  log?: (line: string) => void;
  limits?: Partial<ApplyLimits>;
  /**
   * The recovery-point hook (snapshotAtTag: snapshot the replica, record the tag's arrival): called under the lease after
   * a tagged batch is applied and before its cache blob is deleted. It must be idempotent: after a crash it runs again for the same batch
   * (the batch is then still cached at the watermark). Tags of superseded batches (resync) never reach it.
   */
  onTagApplied?: (applied: TagApplied) => Promise<void>;
}

/** Why a leased run ended. */
export type ApplyStop =
  | "caughtUp" // nothing left in the cache
  | "gap" // the next batch is not in the cache yet: it waits
  | "bound" // run budget used up; the disk was re-announced
  | "corrupt" // a batch failed verification; the disk is halted for a resync
  | "awaitingResync" // halted, and the resync's first batch has not arrived
  | "fenced" // our lease or watermark went stale: another processor owns the disk
  | "disabled" // the item is being disabled
  | "gone"; // the item, disk, replica or cache no longer exists

export interface ApplyOutcome {
  /**
   * `noop`: nothing to do for this message; `busy`: another processor holds the lease, message re-announced;
   * `ran`: this call held the lease; `joined`: a run for the disk was already going in this process, which will look again.
   */
  result: "noop" | "busy" | "ran" | "joined";
  /** The watermark when the call ended (undefined when the replica does not exist). */
  watermark?: number;
  /** Batches written by this call. */
  applied: number;
  /** The first seq a leased run wrote (it wrote every seq from there to `watermark`, but those a resync superseded). */
  appliedFrom?: number;
  stop?: ApplyStop;
}

/** Announces a batch (or re-kicks a disk) on the replication queue, base64 JSON like every producer. */
export async function announceBatch(storage: StoragePort, message: BatchMessage, delaySeconds = 0): Promise<void> {
  const queue = await storage.replicationQueue();
  await queue.sendMessage(queueMessageText(message), delaySeconds > 0 ? { visibilityTimeout: delaySeconds } : {});
}

/** Runs in progress in this process, per disk: a message for a disk already being applied asks that run to look again. */
const running = new Map<string, { again: boolean; seq: number }>();
/** Stops after which looking again at once is pointless (or wrong). */
const FINAL_STOPS: ReadonlySet<ApplyStop | undefined> = new Set(["corrupt", "fenced", "disabled", "gone", "bound"]);

/**
 * Applies every contiguous batch above the replica's watermark for the message's disk. Never throws for a lost
 * race (another processor holds the lease, or fenced us out) or a corrupt batch; rethrows storage failures so the
 * host retries the message.
 *
 * Messages for one disk arrive in bursts (one per batch) and the host runs them concurrently: within a process they
 * join the run already going instead of contending for the lease, which would only re-announce them and wait.
 */
export async function applyBatches(deps: ApplyDeps, message: BatchMessage): Promise<ApplyOutcome> {
  const key = `${message.itemId}/${message.diskId}`;
  const current = running.get(key);
  if (current) {
    current.again = true;
    current.seq = Math.max(current.seq, message.seq);
    return { result: "joined", applied: 0 };
  }
  const slot = { again: false, seq: message.seq };
  running.set(key, slot);
  let applied = 0;
  let outcome: ApplyOutcome;
  try {
    for (;;) {
      slot.again = false;
      // The highest batch announced so far: a run for it applies everything contiguous below it too.
      outcome = await applyOnce(deps, { ...message, seq: slot.seq }, () => slot.seq);
      applied += outcome.applied;
      if (!slot.again || outcome.result === "busy" || FINAL_STOPS.has(outcome.stop)) break;
    }
  } finally {
    // Left in the same synchronous step as the check above: a message arriving later starts a run of its own.
    running.delete(key);
  }
  if (slot.again && outcome.stop !== "gone" && outcome.stop !== "disabled") {
    // A message joined a run that then stopped without looking again (lease lost, budget used up, a halt):
    // hand it back to the queue rather than swallow it. A duplicate announcement is a no-op.
    await announceBatch(deps.storage, { ...message, seq: slot.seq });
  }
  return { ...outcome, applied };
}

/** `announced()`: the highest seq announced for the disk so far (messages that joined the run raise it). */
async function applyOnce(deps: ApplyDeps, message: BatchMessage, announced: () => number): Promise<ApplyOutcome> {
  const limits = { ...DEFAULT_APPLY_LIMITS, maxBatchesPerRun: deps.config.apply?.maxBatchesPerRun ?? DEFAULT_APPLY_LIMITS.maxBatchesPerRun, ...deps.limits };
  const log = deps.log ?? (() => undefined);
  const { itemId, diskId } = message;
  // The item says which way it replicates, so which accounts hold its cache and replica (one table read).
  const found = await deps.items.get(itemId);
  if (!found) {
    log(`${itemId}/${diskId}: no such item (disabled or unknown); batch ${message.seq} ignored`);
    return { result: "noop", applied: 0, stop: "gone" };
  }
  const direction = directionOf(found.item);
  const replica = (await deps.storage.replicas(direction)).getPageBlobClient(replicaBlobName(itemId, diskId));
  const cache = deps.storage.cache(direction).getContainerClient(cacheContainerName(itemId));

  // Cheap no-op first: late and duplicate messages end here with two HEAD requests and no table read.
  const watermark = await readWatermark(replica);
  if (watermark === undefined) {
    log(`${itemId}/${diskId}: no replica (item disabled or unknown); batch ${message.seq} ignored`);
    return { result: "noop", applied: 0, stop: "gone" };
  }
  if (message.seq <= watermark && !(await cache.getBlobClient(batchBlobName(diskId, message.seq)).exists())) {
    return { result: "noop", watermark, applied: 0 };
  }
  // Past here: work above the watermark, or a batch still cached at or below it (a crash between advancing the
  // watermark and deleting the batch, or an agent re-upload), which the leased run finishes and removes.

  const lease = replica.getBlobLeaseClient(randomUUID());
  try {
    await lease.acquireLease(limits.leaseSeconds);
  } catch (e) {
    if (isLeaseHeld(e)) {
      // Throwing would walk the message toward the poison queue; a fresh, delayed copy is a no-op if the holder applies it.
      await announceBatch(deps.storage, message, limits.busyRetrySeconds);
      log(`${itemId}/${diskId}: replica leased by another processor; batch ${message.seq} re-announced in ${limits.busyRetrySeconds}s`);
      return { result: "busy", watermark, applied: 0 };
    }
    if (isNotFound(e)) return { result: "noop", applied: 0, stop: "gone" };
    throw e;
  }
  const keeper = new LeaseKeeper(lease, limits.leaseSeconds);
  const run = new ApplyRun(deps, limits, log, message, direction, replica, cache, lease.leaseId, keeper, announced);
  try {
    const outcome = await run.run();
    // One line per leased run that wrote: which batches this holder applied (the one writer of the replica meanwhile).
    if (outcome.appliedFrom !== undefined)
      log(`${itemId}/${diskId}: applied batches ${outcome.appliedFrom}-${outcome.watermark} under lease, stopped: ${outcome.stop}`);
    return outcome;
  } finally {
    keeper.stop();
    await lease.releaseLease().catch(() => undefined);
    // A run that used up its budget hands the disk on only now that the lease is free: announced while it was still
    // held, the next taker found it leased and waited out the busy delay.
    if (run.handOffAt !== undefined) await announceBatch(deps.storage, { v: 1, itemId, diskId, seq: run.handOffAt });
  }
}

interface ListedBatch {
  name: string;
  bytes: number;
  /** Made by a Copy Blob (its copy source), not uploaded by the item's agent: never applied. */
  copiedFrom?: string;
}

/** One leased pass over a disk: finish leftovers, skip superseded batches of a halted disk, apply what is contiguous. */
class ApplyRun {
  private readonly itemId: string;
  private readonly diskId: string;
  private readonly now: () => Date;
  private readonly startedAt = Date.now();
  private item!: ReplicatedItem;
  private disk!: DiskRecord;
  private watermark = 0;
  /** Budget used up: the seq to announce once the lease is released (see applyOnce). */
  handOffAt: number | undefined;
  /** The first seq this run wrote. */
  private firstApplied: number | undefined;
  private listing = new Map<number, ListedBatch>();
  /** Downloads started ahead of the batch being written, with the bytes each counts against the prefetch budget. */
  private readonly prefetched = new Map<number, { bytes: Promise<Buffer>; budget: number; done: boolean }>();
  /** Download buffers of batches already written, for the next downloads; and the buffer each download went into. */
  private readonly spare: Buffer[] = [];
  private readonly downloaded = new Map<number, Buffer>();
  /** The highest seq handed to the write loop: downloads run ahead from past it, never again for it. */
  private taken = 0;
  private prefetchedBytes = 0;
  private readonly deletes: Promise<void>[] = [];
  private applied = 0;
  /** Payload bytes applied in this run, and how many of them the disk record's `appliedBytes` already counts. */
  private appliedBytes = 0;
  private recordedBytes = 0;
  private maxWriteMs: number | undefined;
  private recordedAt = Date.now();
  private recordedWatermark = -1;
  /** Batch blob sizes applied or superseded during initial replication, by seq (recorded once per seq). */
  private readonly shipped = new Map<number, number>();

  constructor(
    private readonly deps: ApplyDeps,
    private readonly limits: ApplyLimits,
    private readonly log: (line: string) => void,
    message: BatchMessage,
    private readonly direction: Direction,
    private readonly replica: PageBlobPort,
    private readonly cache: ContainerPort,
    private readonly leaseId: string,
    private readonly keeper: LeaseKeeper,
    private readonly announced: () => number = () => message.seq,
  ) {
    this.itemId = message.itemId;
    this.diskId = message.diskId;
    this.now = deps.now ?? (() => new Date());
  }

  async run(): Promise<ApplyOutcome> {
    const watermark = await readWatermark(this.replica, this.leaseId);
    if (watermark === undefined) return this.end("gone");
    this.watermark = watermark;
    this.recordedWatermark = watermark;
    const [item, disk] = await Promise.all([this.deps.items.get(this.itemId), this.deps.items.getDisk(this.itemId, this.diskId)]);
    if (!item || !disk) {
      this.log(`${this.itemId}/${this.diskId}: replica without an item or disk record; nothing applied`);
      return this.end("gone");
    }
    if (item.item.state === "Disabling") {
      this.log(`${this.itemId}/${this.diskId}: item is being disabled; nothing applied`);
      return this.end("disabled");
    }
    if (directionOf(item.item) !== this.direction) {
      // A re-protect turned the item around since this run looked: these are the other direction's blobs.
      this.log(`${this.itemId}/${this.diskId}: the item now replicates ${directionOf(item.item)}; nothing applied`);
      return this.end("gone");
    }
    this.item = item.item;
    this.disk = disk.disk;

    if (!(await this.relist())) return this.end("gone");
    await this.finishLeftovers();
    let first: Batch | undefined;
    if (this.halted()) {
      const resumed = await this.skipSuperseded();
      if (!("batch" in resumed)) return this.end(resumed.stop);
      first = resumed.batch;
    }
    return this.end(await this.applyContiguous(first));
  }

  /**
   * Waiting for a control-plane resync (a corrupt batch, a re-protect's seed, an operator's request): the watermark
   * still sits at the resync's base, nothing of the resync applied yet.
   */
  private halted(): boolean {
    const r = this.disk.resync;
    return this.disk.state !== "Protected" && isControlPlaneResync(r) && this.watermark === r.baseSeq;
  }

  /** Batches at or below this were applied (or superseded by the resync) and only need deleting. */
  private floor(): number {
    const r = this.disk.resync;
    return this.halted() && r?.supersededThrough !== undefined ? Math.max(this.watermark, r.supersededThrough) : this.watermark;
  }

  // ---------------------------------------------------------------------------------------------
  // The cache listing and downloads

  /** Lists the disk's batches; false when the cache container is gone (the item is being disabled). */
  private async relist(): Promise<boolean> {
    const listing = new Map<number, ListedBatch>();
    try {
      for await (const b of this.cache.listBlobsFlat({ prefix: `${this.diskId}/`, includeCopy: true })) {
        const seq = seqOfBlobName(b.name);
        if (seq === undefined || b.name !== batchBlobName(this.diskId, seq)) continue;
        const copied = b.properties.copyId || b.properties.copySource ? { copiedFrom: b.properties.copySource ?? "another blob" } : {};
        listing.set(seq, { name: b.name, bytes: b.properties.contentLength ?? 0, ...copied });
      }
    } catch (e) {
      if (isNotFound(e)) return false;
      throw e;
    }
    this.listing = listing;
    return true;
  }

  /** Whether batch `seq` is cached, re-listing once when the listing does not have it (it may have arrived since). */
  private async has(seq: number): Promise<boolean> {
    if (this.listing.has(seq)) return true;
    if (!(await this.relist())) return false;
    return this.listing.has(seq);
  }

  private download(seq: number): Promise<Buffer> {
    const listed = this.listing.get(seq)?.bytes;
    // A listed batch lands in a buffer of an applied one (see release); an announced one not yet listed, in its own.
    let into: Buffer | undefined;
    if (listed !== undefined) {
      into = this.spare.pop();
      if (!into || into.length < listed) into = Buffer.allocUnsafe(Math.max(listed, SPARE_BYTES));
    }
    if (into) this.downloaded.set(seq, into);
    const p = downloadBlob(this.cache, batchBlobName(this.diskId, seq), into);
    // Held for later: a failure is seen by whoever awaits it, never as an unhandled rejection.
    p.catch(() => undefined);
    return p;
  }

  /**
   * Starts downloads of the batches after the watermark, within the prefetch budget: those listed, and those announced
   * since the listing (an agent announces a batch only once it is in the cache), so that downloads run ahead of an
   * agent still uploading without a listing per batch. Nothing is applied without being listed first (see has).
   */
  private prefetchAhead(): void {
    const announced = this.announced();
    // Not from the watermark: a batch taken (being verified or written) is no longer in `prefetched`, and must not be
    // downloaded again (a second copy would also hold a prefetch slot for good).
    for (let seq = Math.max(this.watermark, this.taken) + 1; ; seq++) {
      if (this.prefetched.size >= this.limits.prefetchBatches || this.prefetchedBytes >= this.limits.prefetchBytes) return;
      const listed = this.listing.get(seq);
      if (!listed && seq > announced) return;
      if (this.prefetched.has(seq)) continue;
      // An announced batch not listed yet counts as a full one.
      const budget = listed?.bytes ?? this.limits.prefetchBytes / this.limits.prefetchBatches;
      const entry = { bytes: this.download(seq), budget, done: false };
      entry.bytes.then(
        () => (entry.done = true),
        () => undefined,
      );
      this.prefetched.set(seq, entry);
      this.prefetchedBytes += budget;
    }
  }

  private async fetch(seq: number): Promise<Buffer> {
    this.taken = Math.max(this.taken, seq);
    const p = this.prefetched.get(seq);
    if (!p) return this.download(seq);
    this.prefetched.delete(seq);
    this.prefetchedBytes -= p.budget;
    try {
      return await p.bytes;
    } catch (e) {
      // Started before the batch was listed: a 404 then says nothing about it now.
      if (!isNotFound(e)) throw e;
      return this.download(seq);
    }
  }

  /**
   * The batch, verified. A copy damaged on its way here must not cost the disk a resync: a batch that fails
   * verification is downloaded once more, and only a second failure is corruption.
   */
  private async fetchBatch(seq: number): Promise<Batch> {
    // The agent writes its batches with Put Blob / Put Block List; a copy is not its write whatever its header says.
    const copiedFrom = this.listing.get(seq)?.copiedFrom;
    if (copiedFrom) throw new CorruptBatchError(`it was not written by this item's agent (a Copy Blob of ${copiedFrom.split("?")[0]})`);
    try {
      return this.decode(seq, await this.fetch(seq));
    } catch (e) {
      if (!(e instanceof CorruptBatchError)) throw e;
      return this.decode(seq, await this.download(seq));
    }
  }

  /** Decodes and checks a batch against its name and the disk; any mismatch is corruption. */
  private decode(seq: number, bytes: Buffer): Batch {
    const batch = decodeBatch(bytes);
    const h = batch.header;
    if (h.itemId !== this.itemId || h.diskId !== this.diskId || h.seq !== seq) {
      throw new CorruptBatchError(
        `it was not written by this item's agent: its header names ${h.itemId}/${h.diskId} batch ${h.seq}, but the blob is ${this.itemId}/${this.diskId} batch ${seq}`,
      );
    }
    checkExtents(h.extents, this.disk.sizeBytes);
    return batch;
  }

  /** Deletes in the background: a batch left behind is finished and removed by the next run. */
  private deleteLater(seq: number): void {
    this.listing.delete(seq);
    this.deletes.push(
      this.cache
        .getBlobClient(batchBlobName(this.diskId, seq))
        .deleteIfExists()
        .then(
          () => undefined,
          (e: unknown) => this.log(`${this.itemId}/${this.diskId}: could not delete batch ${seq} (left for the next run): ${(e as Error).message}`),
        ),
    );
  }

  // ---------------------------------------------------------------------------------------------
  // Leftovers, superseded batches, corruption

  /**
   * Batches at or below the floor. The one at the watermark may be a crash between advancing the watermark and
   * recording its flags or tag, so it is finished again (idempotently) before it goes; lower ones were finished.
   */
  private async finishLeftovers(): Promise<void> {
    const floor = this.floor();
    for (const seq of [...this.listing.keys()].filter((s) => s <= floor).sort((a, b) => a - b)) {
      if (seq === this.watermark && seq > 0) {
        try {
          const batch = this.decode(seq, await downloadBlob(this.cache, this.listing.get(seq)!.name));
          await this.finishBatch(batch.header);
        } catch (e) {
          if (!(e instanceof CorruptBatchError) && !isNotFound(e)) throw e;
          // Already applied once: a copy that no longer verifies (or vanished) has nothing left to record.
        }
      }
      this.deleteLater(seq);
    }
  }

  /**
   * A halted disk waits for its resync's first batch. Batches in between carry no `resyncId` of this resync and
   * are superseded (the resync rewrites what they held), skipped in order from the last one skipped: the first
   * batch of the resync is only recognised right after a skipped one, so an upload still in flight (a gap) is
   * never mistaken for the start of the resync.
   */
  private async skipSuperseded(): Promise<{ batch: Batch } | { stop: ApplyStop }> {
    const resync = this.disk.resync!;
    const skipped: number[] = [];
    let through = this.floor();
    let initialComplete = false;
    /** False when the resync changed under us: then nothing skipped is deleted, the next run decides afresh. */
    const settle = async (): Promise<boolean> => {
      if (skipped.length === 0) return true;
      let same = false;
      // Recorded before the blobs go, so a crash in between leaves them below the floor, not as a gap.
      await this.deps.items.updateDisk(this.itemId, this.diskId, (d) => {
        same = d.resync?.id === resync.id;
        if (!d.resync || !same) return undefined;
        d.resync.supersededThrough = Math.max(d.resync.supersededThrough ?? 0, through);
        // The agent had finished its first copy; the resync makes the replica whole, so the copy counts as done.
        if (initialComplete) d.initialComplete = true;
        return d;
      });
      if (!same) {
        this.log(`${this.itemId}/${this.diskId}: resync ${resync.id} was replaced while batches were skipped; leaving them for the next run`);
        return false;
      }
      for (const seq of skipped) this.deleteLater(seq);
      return true;
    };
    for (;;) {
      const seq = through + 1;
      if (this.overBudget()) {
        await settle();
        this.handOffAt = seq;
        return { stop: "bound" };
      }
      if (!(await this.has(seq))) {
        await settle();
        return { stop: "awaitingResync" };
      }
      let batch: Batch;
      try {
        batch = await this.fetchBatch(seq);
      } catch (e) {
        if (isNotFound(e)) {
          await settle();
          return { stop: "awaitingResync" };
        }
        if (!(e instanceof CorruptBatchError)) throw e;
        // It might have been the resync's first batch: only a new resync is safe.
        await this.halt(seq, e.message, skipped);
        return { stop: "corrupt" };
      }
      if (batch.header.resyncId === resync.id) {
        if (!(await settle())) return { stop: "awaitingResync" };
        if (seq - 1 !== this.watermark) {
          await this.replica.updateSequenceNumber("update", seq - 1, { conditions: { leaseId: this.leaseId } });
          this.log(`${this.itemId}/${this.diskId}: resync ${resync.id} starts at batch ${seq}; batches ${this.watermark + 1}-${seq - 1} superseded`);
          this.watermark = seq - 1;
        }
        return { batch };
      }
      if (batch.header.initialComplete) initialComplete = true;
      // Shipped all the same: a superseded batch counts toward what the initial replication transferred.
      if (!this.disk.initialComplete) this.shipped.set(seq, this.listing.get(seq)?.bytes ?? 0);
      skipped.push(seq);
      through = seq;
    }
  }

  /** Never writes the batch: halts the disk at the watermark for a resync, records why, and removes the batch. */
  private async halt(seq: number, reason: string, alsoSuperseded: number[]): Promise<void> {
    const at = this.now().toISOString();
    const baseSeq = this.watermark;
    const resync = { id: randomUUID(), reason: `batch ${seq} is corrupt: ${reason}`, origin: "apply" as const, baseSeq, since: at, supersededThrough: seq };
    await this.deps.items.updateDisk(this.itemId, this.diskId, (d) => {
      d.state = "ResyncRequired";
      d.resync = resync;
      return d;
    });
    await this.deps.items.updateItemWithDisks(this.itemId, (item, disks) => {
      raiseIssue(item, {
        code: "CorruptBatch",
        severity: "Critical",
        diskId: this.diskId,
        seq,
        since: at,
        message: `disk '${this.diskId}': batch ${seq} is corrupt (${reason}) and was not applied; replication of this disk is halted at batch ${baseSeq} until the agent resyncs it (resync ${resync.id})`,
      });
      item.state = replicationStateOf(item, disks);
      item.updatedAt = at;
      return item;
    });
    this.log(`${this.itemId}/${this.diskId}: batch ${seq} is corrupt (${reason}); disk halted at ${baseSeq} for resync ${resync.id}`);
    for (const s of [...alsoSuperseded, seq]) this.deleteLater(s);
  }

  // ---------------------------------------------------------------------------------------------
  // Applying

  /** The run's budget is used up (counting `pending` batches about to be applied). */
  private overBudget(pending = 0): boolean {
    return this.applied + pending >= this.limits.maxBatchesPerRun || Date.now() - this.startedAt >= this.limits.maxRunMs;
  }

  private async applyContiguous(first: Batch | undefined): Promise<ApplyStop> {
    for (;;) {
      const seq = this.watermark + 1;
      if (this.keeper.lost) return this.fencedOut(seq, "the lease could not be renewed");
      if (this.overBudget()) {
        // The rest is for a fresh invocation, announced once the lease is released rather than left to the sweep.
        this.handOffAt = seq;
        return "bound";
      }
      let batch = first?.header.seq === seq ? first : undefined;
      if (!batch) {
        if (!(await this.has(seq))) return [...this.listing.keys()].some((s) => s > seq) ? "gap" : "caughtUp";
        this.prefetchAhead();
        try {
          batch = await this.fetchBatch(seq);
        } catch (e) {
          if (isNotFound(e)) return "gap";
          if (!(e instanceof CorruptBatchError)) throw e;
          await this.halt(seq, e.message, []);
          return "corrupt";
        }
      }
      const group = await this.groupAfter(batch);
      this.prefetchAhead();
      const last = group[group.length - 1]!.header.seq;
      try {
        await writeBatches(this.replica, group, { leaseId: this.leaseId, watermark: this.watermark }, this.limits);
        // Only now, with every page of the group written, does the watermark move (crash safety).
        await this.replica.updateSequenceNumber("update", last, { conditions: { leaseId: this.leaseId } });
      } catch (e) {
        if (isFenced(e)) return this.fencedOut(seq, (e as Error).message);
        throw e;
      }
      for (const b of group) {
        const h = b.header;
        if (!this.disk.initialComplete) this.shipped.set(h.seq, this.listing.get(h.seq)?.bytes ?? b.payload.length);
        this.firstApplied ??= h.seq;
        this.applied++;
        this.appliedBytes += h.payloadLength;
        this.maxWriteMs = Math.max(this.maxWriteMs ?? 0, h.lastWriteMs);
      }
      this.watermark = last;
      // Only the group's last batch can carry a tag or end initial replication or a resync.
      await this.finishBatch(group[group.length - 1]!.header);
      for (const b of group) this.deleteLater(b.header.seq);
      this.release(group);
      if (Date.now() - this.recordedAt >= this.limits.progressEveryMs) {
        await this.recordProgress();
        if (await this.disabling()) return "disabled";
      }
    }
  }

  /**
   * `first` and the batches after it that are listed and already downloaded, while each one before is plain (no tag,
   * not the end of initial replication or of a resync) and within the group bounds: written as one step. A batch that
   * fails to fetch here just ends the group; the loop meets it again on its own.
   */
  private async groupAfter(first: Batch): Promise<Batch[]> {
    const group = [first];
    let bytes = first.payload.length;
    const plain = (h: BatchHeader) => !h.tag && !h.initialComplete && !h.resyncComplete;
    for (;;) {
      const prev = group[group.length - 1]!.header;
      const seq = prev.seq + 1;
      if (!plain(prev) || group.length >= this.limits.groupBatches || this.overBudget(group.length)) break;
      const listed = this.listing.get(seq);
      if (!listed || !this.prefetched.get(seq)?.done || bytes + listed.bytes > this.limits.groupBytes) break;
      let next: Batch;
      try {
        next = await this.fetchBatch(seq);
      } catch {
        break;
      }
      // Another resync's batch starts a group of its own (the loop downloads it again).
      if ((next.header.resyncId ?? "") !== (first.header.resyncId ?? "")) break;
      group.push(next);
      bytes += next.payload.length;
    }
    return group;
  }

  /** The group is written (every page write has finished): its download buffers serve the next downloads. */
  private release(group: Batch[]): void {
    for (const b of group) {
      const whole = this.downloaded.get(b.header.seq);
      this.downloaded.delete(b.header.seq);
      if (whole && this.spare.length < this.limits.prefetchBatches + this.limits.groupBatches) this.spare.push(whole);
    }
  }

  /** Another processor owns the disk now (or nobody, if our lease lapsed): re-announce so the work is picked up either way. */
  private async fencedOut(seq: number, why: string): Promise<ApplyStop> {
    this.log(`${this.itemId}/${this.diskId}: fenced out before batch ${seq} (${why}); stopping`);
    await announceBatch(this.deps.storage, { v: 1, itemId: this.itemId, diskId: this.diskId, seq }, this.limits.busyRetrySeconds);
    return "fenced";
  }

  private async disabling(): Promise<boolean> {
    const found = await this.deps.items.get(this.itemId);
    return !found || found.item.state === "Disabling";
  }

  /**
   * What an applied batch changes beyond the replica: its tag (a recovery point), the end of initial replication, the end of
   * a resync. Runs before the batch's blob is deleted and is idempotent, so a crash in between only repeats it.
   */
  private async finishBatch(h: BatchHeader): Promise<void> {
    if (h.tag && this.deps.onTagApplied) {
      await this.deps.onTagApplied({ item: this.item, disk: this.disk, seq: h.seq, tag: h.tag, header: h, replica: this.replica, leaseId: this.leaseId });
    }
    const endsResync = Boolean(h.resyncComplete && h.resyncId);
    if (!h.initialComplete && !endsResync) return;
    const at = this.now().toISOString();
    let added = 0;
    const disk = await this.deps.items.updateDisk(this.itemId, this.diskId, (d) => {
      let changed = false;
      added = 0;
      if (h.initialComplete && !d.initialComplete) {
        d.initialComplete = true;
        if (d.state === "InitialReplication") d.state = "Protected";
        changed = true;
      }
      if (endsResync && d.resync?.id === h.resyncId) {
        // A control-plane resync compared the whole disk: the replica now equals the source, so initial
        // replication is complete even if the batch that said so was the one lost.
        if (isControlPlaneResync(d.resync)) d.initialComplete = true;
        delete d.resync;
        d.state = d.initialComplete ? "Protected" : "InitialReplication";
        changed = true;
      }
      if (!changed) return undefined;
      added = this.progressFields(d, at);
      return d;
    });
    this.recordedBytes += added;
    if (disk) this.disk = disk;
    await this.deps.items.updateItemWithDisks(this.itemId, (item, disks) => {
      let changed = false;
      const mine = disks.find((d) => d.id === this.diskId);
      if (endsResync && mine && !mine.resync) {
        // The agent's own resync report may predate `diskId` on issues: it names the resync in its message.
        changed = clearIssues(item, (i) => i.diskId === this.diskId || (h.resyncId !== undefined && i.message.includes(h.resyncId)));
      }
      const state = replicationStateOf(item, disks);
      if (state !== item.state) {
        this.log(`${this.itemId}: ${item.state} → ${state} (disk ${this.diskId}, batch ${h.seq})`);
        item.state = state;
        changed = true;
      }
      if (!changed) return undefined;
      item.updatedAt = at;
      return item;
    });
  }

  /** Moves the record's progress to this run's; returns the bytes added to its `appliedBytes` (counted once the write lands). */
  private progressFields(d: DiskRecord, at: string): number {
    if (this.shipped.size > 0) {
      const t = d.initialTransfer ?? { bytes: 0, throughSeq: 0 };
      for (const [seq, bytes] of [...this.shipped].sort((a, b) => a[0] - b[0])) {
        if (seq <= t.throughSeq) continue;
        t.bytes += bytes;
        t.throughSeq = seq;
      }
      d.initialTransfer = t;
      this.shipped.clear();
    }
    if (this.applied === 0) return 0;
    const added = this.appliedBytes - this.recordedBytes;
    d.appliedBytes = (d.appliedBytes ?? 0) + added;
    d.lastAppliedSeq = Math.max(d.lastAppliedSeq ?? 0, this.watermark);
    d.lastAppliedAt = at;
    if (this.maxWriteMs !== undefined) d.lastAppliedWriteMs = Math.max(d.lastAppliedWriteMs ?? 0, this.maxWriteMs);
    return added;
  }

  /** Progress on the disk record: once per run, or every few seconds of a long one. */
  private async recordProgress(): Promise<void> {
    this.recordedAt = Date.now();
    if ((this.applied === 0 || this.recordedWatermark === this.watermark) && this.shipped.size === 0) return;
    const at = this.now().toISOString();
    let added = 0;
    await this.deps.items.updateDisk(this.itemId, this.diskId, (d) => {
      added = this.progressFields(d, at);
      return d;
    });
    this.recordedBytes += added;
    this.recordedWatermark = this.watermark;
  }

  private async end(stop: ApplyStop): Promise<ApplyOutcome> {
    await Promise.all(this.deletes);
    if (this.item) {
      await this.recordProgress();
      const moving = this.applied > 0 || stop === "caughtUp";
      // A poison message is resolved once the watermark has passed its batch; a stall, once the disk moves again.
      const resolved = (i: HealthIssue) =>
        i.diskId === this.diskId && ((i.code === "PoisonMessage" && (i.seq ?? 0) <= this.watermark) || (i.code === STALLED && moving));
      if (this.item.health.issues.some(resolved)) {
        await this.deps.items.updateItem(this.itemId, (item) => (clearIssues(item, resolved) ? { ...item, updatedAt: this.now().toISOString() } : undefined));
      }
    }
    return {
      result: "ran",
      watermark: this.watermark,
      applied: this.applied,
      stop,
      ...(this.firstApplied !== undefined ? { appliedFrom: this.firstApplied } : {}),
    };
  }
}
