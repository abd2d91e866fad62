// A disk whose writes go through the agent (the stand-in for ASR's filter driver): each write lands in the image file and in the replication stream, in order.
// Over 500 lines: writing, sealing, tag cuts and group holds all take the same write gate and seal mutex, and their
// ordering is the invariant (a write acknowledged is in the image and in the stream, in order); they stay together.
import { readSync } from "node:fs";
import { open, readFile, stat, type FileHandle } from "node:fs/promises";
import { randomUUID } from "node:crypto";
import { BlockBitmap } from "./bitmap";
import { DirtyLog } from "./dirty-log";
import { ReplicatedDisk, loadDiskState, type DiskContext, type DiskSpec, type ExtraRequest, type SealedBatch, type SealResult } from "./disk";
import { removeIfExists, writeFileAtomic } from "./files";
import { WriteGate } from "./gate";
import { WriteStaging, type StagedWrite } from "./write-staging";
import { alignOut, RangeSet } from "./ranges";
import { statePaths, type DiskState } from "./state";
import { SECTOR, type BatchTag } from "../shared/replication/batch";

/** In bitmap mode the dirty log is folded into the bitmap file after this many records (or the seal interval). */
const FOLD_RECORDS = 64 * 1024;

type Plan =
  | { kind: "none" }
  | { kind: "fold"; gen: number; overflow?: NonNullable<DiskState["overflow"]> }
  | { kind: "batch"; batch: SealedBatch; gen: number; taken: boolean; onCommit?: (s: DiskState) => void; bitmap?: "persist" | "remove" };

/** Every disk's writes held at once (TrackedDisk.hold). */
export interface DiskHold {
  canTag(): boolean;
  /** Seals every disk carrying the tag; the tag if every disk carries it, otherwise undefined (no point comes of it). */
  cut(tag: BatchTag): BatchTag | undefined;
  release(): void;
  /** The tagged batches are durable in the spool. */
  done: Promise<void>;
}

/** A write refused because the VM is shutting down for a planned failover: it was not acknowledged, nothing of it is on the disk. */
export class WritesRefusedError extends Error {
  override readonly name = "WritesRefusedError";
}

export class TrackedDisk extends ReplicatedDisk {
  private readonly gate = new WriteGate();
  /** Why new writes are refused (a planned failover shuts the VM down); undefined while they are accepted. */
  private refusal: string | undefined;
  /** Writes accepted and not yet acknowledged, each counted once (a write split into pieces too). */
  private writesInFlight = 0;
  private writesSettledWaiters: (() => void)[] = [];
  /** Journal mode: the open batch's dirty ranges, in the dirty log's current generation. */
  private dirty = new RangeSet();
  /** Bitmap mode: every dirty block since the spool overflowed (the dirty set is then unused). */
  private bitmap: BlockBitmap | undefined;
  private bitmapUnpersisted = false;
  private overflowPeak = 0;
  private firstWriteMs = 0;
  private lastWriteMs = 0;
  private sealTimer: NodeJS.Timeout | undefined;
  private sizeSeal: Promise<SealResult> | undefined;
  /** syncWrites: the sync in progress, and the one queued behind it (shared by every caller meanwhile). */
  private runningSync: Promise<void> | undefined;
  private queuedSync: Promise<void> | undefined;
  /** Journal mode: the open batch's writes, from which its seal takes the payload (see WriteStaging). */
  private readonly staging: WriteStaging;

  private constructor(
    ctx: DiskContext,
    state: DiskState,
    private readonly fh: FileHandle,
    private readonly log: DirtyLog,
  ) {
    super(ctx, state);
    this.staging = new WriteStaging(ctx.tuning.maxBatchBytes, (bytes) => this.payloadBuffer(bytes));
  }

  /** Opens the image (created sparse at the disk's size if missing) and recovers what a previous run left: dirty log, bitmap, spool. */
  static async open(ctx: DiskContext, spec: DiskSpec): Promise<TrackedDisk> {
    const { state } = await loadDiskState(ctx.stateDir, spec, "tracked");
    if (state.source.kind !== "tracked") {
      throw new Error(
        `disk ${spec.id} was replicated by scanning ${state.source.path} from this state directory; write tracking needs a fresh state directory (and a new registration)`,
      );
    }
    if (state.source.path !== spec.path) ctx.log(`disk ${spec.id}: image is now ${spec.path} (was ${state.source.path})`);
    state.source.path = spec.path;
    const st = await stat(spec.path).catch(() => undefined);
    const device = st?.isBlockDevice() ?? false;
    const size = st ? st.size : -1;
    if (!device && size > spec.sizeBytes) throw new Error(`image ${spec.path} is ${size} bytes, larger than disk ${spec.id} (${spec.sizeBytes} bytes)`);
    const fh = await open(spec.path, size < 0 ? "w+" : "r+");
    // An image shorter than the disk is extended (sparse); a block device is taken at the registered size.
    if (!device && size < spec.sizeBytes) await fh.truncate(spec.sizeBytes);

    const paths = statePaths(ctx.stateDir);
    const { log, replayed } = DirtyLog.open(paths.disk(spec.id));
    const disk = new TrackedDisk(ctx, state, fh, log);
    if (state.mode === "bitmap") {
      const bits = await readFile(paths.bitmap(spec.id)).catch(() => undefined);
      disk.bitmap = new BlockBitmap(spec.sizeBytes, undefined, bits);
      // A bitmap lost from under the agent: every block is suspect.
      if (!bits) disk.bitmap.mark(0, spec.sizeBytes);
      for (const r of replayed) disk.bitmap.mark(r.start, r.end);
      disk.bitmapUnpersisted = !bits || replayed.length > 0;
      disk.overflowPeak = disk.bitmap.dirtyBytes;
    } else {
      // Left over from a drain that finished (its last batch is committed): nothing in it is unshipped.
      await removeIfExists(paths.bitmap(spec.id));
      for (const r of replayed) disk.dirty.add(r.start, r.end);
      // Replayed ranges were never staged: the first seal reads them from the image.
      if (replayed.length > 0) disk.staging.giveUp();
      if (replayed.length > 0) disk.firstWriteMs = disk.lastWriteMs = Date.now();
    }
    if (replayed.length > 0) ctx.log(`disk ${spec.id}: ${replayed.length} dirty range(s) recovered from the write-ahead log`);
    return disk;
  }

  get mode(): "journal" | "bitmap" {
    return this.bitmap ? "bitmap" : "journal";
  }

  dirtyBytes(): number {
    return this.bitmap ? this.bitmap.dirtyBytes : this.dirty.bytes;
  }

  /**
   * Writes `data` at `offset`; resolves once it is in the image and tracked (durable against the agent's death).
   * Rejects with WritesRefusedError while the VM shuts down for a planned failover (see refuseWrites).
   */
  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.closed) throw new Error(`disk ${this.id} is closed`);
    if (this.refusal !== undefined) throw new WritesRefusedError(`${this.refusal} (disk ${this.id})`);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + data.length > this.sizeBytes) {
      throw new RangeError(`write of ${data.length} bytes at ${offset} is outside disk ${this.id} (${this.sizeBytes} bytes)`);
    }
    if (data.length === 0) return;
    // Counted from here to the acknowledgement: a final tag waits for exactly the writes accepted before the refusal.
    this.writesInFlight++;
    try {
      await this.writeAccepted(offset, data);
    } finally {
      if (--this.writesInFlight === 0) for (const w of this.writesSettledWaiters.splice(0)) w();
    }
  }

  /**
   * From now on a write that starts is rejected (the workload sees it was not acknowledged); writes already accepted
   * complete normally (writesSettled waits for them). For a planned failover's final tag: nothing written after it can
   * be lost with the source VM.
   */
  refuseWrites(reason: string): void {
    this.refusal = reason;
  }

  /** Writes are accepted again (a planned failover was rolled back). */
  acceptWrites(): void {
    this.refusal = undefined;
  }

  get refusingWrites(): boolean {
    return this.refusal !== undefined;
  }

  /** Resolves when no accepted write is in flight (at once if none is). */
  writesSettled(): Promise<void> {
    if (this.writesInFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.writesSettledWaiters.push(resolve));
  }

  /** A write already admitted (range checked, counted); a write larger than a batch lands as pieces. */
  private async writeAccepted(offset: number, data: Uint8Array): Promise<void> {
    const max = this.ctx.tuning.maxBatchBytes;
    const { start, end } = alignOut(offset, data.length);
    if (end - start > max) {
      // A write larger than a batch lands as consecutive pieces, like a disk splitting a large I/O; each piece's
      // enclosing sectors fit in a batch.
      for (let at = 0; at < data.length;) {
        const n = Math.min(data.length - at, max - ((offset + at) % SECTOR));
        await this.writeAccepted(offset + at, data.subarray(at, at + n));
        at += n;
      }
      return;
    }
    for (;;) {
      const entering = this.gate.enterShared();
      if (entering) await entering;
      if (this.bitmap || this.dirty.bytes === 0 || this.dirty.bytes + (end - start) <= max || this.dirty.covers(start, end)) break;
      // The open batch is full: seal it first, so that no batch exceeds the bound.
      this.gate.leaveShared();
      await this.sealForSize();
    }
    let staged: StagedWrite | undefined;
    let landed = false;
    try {
      this.track(start, end);
      if (!this.bitmap) staged = this.staging.stage(offset, data);
      let done = 0;
      while (done < data.length) done += (await this.fh.write(data, done, data.length - done, offset + done)).bytesWritten;
      landed = true;
    } finally {
      this.staging.landed(staged, landed);
      this.gate.leaveShared();
    }
    if (this.bitmap ? this.log.length >= FOLD_RECORDS : this.dirty.bytes >= max) void this.sealForSize();
    else this.armSealTimer();
  }

  /** Reads the image (what the workload would read back); into `into` when given and large enough. */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done < length ? buf.fill(0, done) : buf;
  }

  /** Write-ahead: the range is in the dirty log (appended synchronously) before the image is written. A range already tracked is not logged again. */
  private track(start: number, end: number): void {
    const now = Date.now();
    this.lastWriteMs = now;
    if (this.bitmap) {
      if (this.bitmap.covers(start, end)) return;
      this.log.append(start, end - start);
      this.bitmap.mark(start, end);
      return;
    }
    if (this.dirty.covers(start, end)) return;
    this.log.append(start, end - start);
    if (this.dirty.isEmpty) this.firstWriteMs = now;
    this.dirty.add(start, end);
  }

  private armSealTimer(): void {
    if (this.sealTimer || this.closed) return;
    this.sealTimer = setTimeout(() => {
      this.sealTimer = undefined;
      this.sealAttempt().catch((e) => this.ctx.log(`disk ${this.id}: seal failed: ${(e as Error).message}`));
    }, this.ctx.tuning.sealIntervalMs);
    // The agent does not hold its process open by itself: an unsealed batch is in the dirty log for the next start.
    this.sealTimer.unref();
  }

  private sealForSize(): Promise<SealResult> {
    this.sizeSeal ??= this.sealAttempt().finally(() => (this.sizeSeal = undefined));
    return this.sizeSeal;
  }

  /**
   * Every write acknowledged before the call survives a power cut, in the image and in the replication stream: the
   * image is fdatasynced and the write-ahead log fsynced (after a crash the agent replays the log's ranges from the
   * image; ranges whose log generation is gone are in batches already durable in the spool). Cheaper than `flush`: no
   * batch is sealed, so an NBD client's FLUSH or FUA write costs two syncs, not a batch. Concurrent calls share syncs.
   */
  syncWrites(): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`disk ${this.id} is closed`));
    // A sync already running may have started before the caller's write was acknowledged: queue for the next one.
    this.queuedSync ??= (this.runningSync ?? Promise.resolve())
      .catch(() => undefined)
      .then(() => {
        this.queuedSync = undefined;
        const run = Promise.all([this.fh.datasync(), this.log.sync()]).then(() => undefined);
        this.runningSync = run;
        void run
          .catch(() => undefined)
          .then(() => {
            if (this.runningSync === run) this.runningSync = undefined;
          });
        return run;
      });
    return this.queuedSync;
  }

  async flush(): Promise<void> {
    const r = await this.sealAttempt();
    await r.committed;
    await this.settled();
    await this.fh.datasync();
  }

  protected readUnlocked(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.read(offset, length, into);
  }

  protected ownJob(): (() => Promise<void>) | undefined {
    if (!this.bitmap || !this.drainAllowed()) return undefined;
    return async () => {
      const r = await this.sealAttempt();
      await r.committed;
    };
  }

  /** The bitmap is shipped once the control plane knows write order was lost, and while the spool has room. */
  private drainAllowed(): boolean {
    return this.state.overflow?.reported === true && this.ctx.spool.usedBytes <= this.spoolLowWater();
  }

  protected override overflowProgress() {
    const o = this.state.overflow;
    if (!o || !this.bitmap) return {};
    this.overflowPeak = Math.max(this.overflowPeak, this.bitmap.dirtyBytes);
    return { resync: { id: o.resyncId, doneBytes: this.overflowPeak - this.bitmap.dirtyBytes, totalBytes: this.overflowPeak } };
  }

  /** Seals the open batch (with a job's extra ranges); see planUnderLock for what that means in each mode. */
  protected sealAttempt(extra?: ExtraRequest): Promise<SealResult> {
    return this.sealMutex.run(async () => {
      await this.readyToSeal();
      await this.gate.enterExclusive();
      let plan: Plan;
      try {
        plan = this.planUnderLock(extra);
      } finally {
        this.gate.leaveExclusive();
      }
      const committed = this.carryOut(plan);
      committed.catch(() => undefined);
      return { committed, taken: plan.kind === "batch" && plan.taken };
    });
  }

  /** Bitmap mode persists the bitmap at each commit: one at a time. Journal mode pipelines the spool writes. */
  private async readyToSeal(): Promise<void> {
    if (this.bitmap) await this.settled();
    else await this.pipelineRoom();
  }

  /** A tag means something once the replica is whole and write order is kept. */
  get canTag(): boolean {
    return this.tagBlocker === undefined;
  }

  /** Why no tag can be cut on this disk now (for logs), or undefined if one can. */
  get tagBlocker(): string | undefined {
    if (this.closed) return "the disk is closed";
    const initial = this.state.initial;
    if (!initial.complete) return `initial replication not complete (${initial.doneBytes} of ${initial.totalBytes} bytes)`;
    if (this.state.resync) return `resync ${this.state.resync.id} in progress`;
    if (this.bitmap) return "bitmap mode (the spool overflowed): write order is lost until the dirty blocks are shipped";
    return undefined;
  }

  /**
   * Cuts one tag on every disk at the same instant: every disk's write lock is held at once (taken in the given
   * order), each disk's open batch is sealed carrying the tag (an empty batch if nothing is dirty), then all are
   * released. The replicas at these batches are the disks at that instant: a crash-consistent recovery point.
   * Resolves once the tagged batches are durable in the spool; false (nothing cut) if a disk cannot carry a tag.
   */
  static async cutTag(disks: TrackedDisk[], tag: Omit<BatchTag, "time">, kindAtCut?: () => BatchTag["kind"]): Promise<BatchTag | undefined> {
    const locked = async (i: number): Promise<{ committed: Promise<void>[]; tag?: BatchTag }> => {
      if (i < disks.length) return disks[i]!.sealMutex.run(() => locked(i + 1));
      for (const d of disks) await d.readyToSeal();
      for (const d of disks) await d.gate.enterExclusive();
      const plans: Plan[] = [];
      let cut: BatchTag | undefined;
      try {
        if (disks.every((d) => d.canTag)) {
          // The kind may be decided at the instant itself (an app tag past its freeze bound is only crash-consistent).
          cut = { ...tag, ...(kindAtCut ? { kind: kindAtCut() } : {}), time: new Date().toISOString() };
          for (const d of disks) plans.push(d.planUnderLock(undefined, cut));
        }
      } finally {
        for (const d of disks) d.gate.leaveExclusive();
      }
      // A disk that overflowed at this very seal folds instead: the tag is then incomplete, and no point comes of it.
      const complete = cut !== undefined && plans.every((p) => p.kind === "batch" && p.batch.tag === cut);
      return { committed: plans.map((p, j) => disks[j]!.carryOut(p)), ...(complete ? { tag: cut } : {}) };
    };
    const { committed, tag: cut } = await locked(0);
    await Promise.all(committed);
    return cut;
  }

  /**
   * The group barrier's three steps (see group.ts) on every disk at once: `hold` takes every disk's seal mutex and
   * write lock (as cutTag does) and keeps them; `cut` seals each disk's open batch carrying the tag, still holding;
   * `release` lets writes go and hands the sealed batches to the spool. `done` resolves once they are durable there.
   */
  /** Resolves when no seal is in progress on any disk and each has spool room: a hold that follows is quick. Holds nothing. */
  static async ready(disks: TrackedDisk[]): Promise<void> {
    for (const d of disks) {
      await d.sealMutex.run(async () => {});
      await d.readyToSeal();
    }
  }

  static async hold(disks: TrackedDisk[]): Promise<DiskHold> {
    let letGo!: () => void;
    const released = new Promise<void>((r) => (letGo = r));
    let entered!: () => void;
    const holding = new Promise<void>((r) => (entered = r));
    let plans: Plan[] = [];
    let committed: Promise<void>[] = [];
    let open = true;
    const locked = async (i: number): Promise<void> => {
      if (i < disks.length) return disks[i]!.sealMutex.run(() => locked(i + 1));
      for (const d of disks) await d.readyToSeal();
      for (const d of disks) await d.gate.enterExclusive();
      entered();
      await released;
    };
    const all = locked(0);
    await Promise.race([holding, all]);
    const handle: DiskHold = {
      canTag: () => disks.every((d) => d.canTag),
      cut: (tag) => {
        if (!open || plans.length > 0 || !disks.every((d) => d.canTag)) return undefined;
        plans = disks.map((d) => d.planUnderLock(undefined, tag));
        return plans.every((p) => p.kind === "batch" && p.batch.tag === tag) ? tag : undefined;
      },
      release: () => {
        if (!open) return;
        open = false;
        for (const d of disks) d.gate.leaveExclusive();
        // Still under every disk's seal mutex: the sealed batches enter each disk's pipeline in order.
        committed = plans.map((p, j) => disks[j]!.carryOut(p));
        letGo();
      },
      done: all.then(() => Promise.all(committed)).then(() => undefined),
    };
    return handle;
  }

  /**
   * Under the write lock (no write in flight): decides and snapshots.
   * - journal mode, spool has room: the dirty set (plus the job's extra ranges) becomes a batch of the bytes read now;
   * - journal mode, spool full: switch to bitmap mode (write order is given up until the bitmap is shipped);
   * - bitmap mode, drain allowed: the next dirty blocks become a batch flagged with the overflow's resync id;
   * - bitmap mode otherwise: fold the dirty log into the bitmap file.
   */
  private planUnderLock(extra?: ExtraRequest, tag?: BatchTag): Plan {
    clearTimeout(this.sealTimer);
    this.sealTimer = undefined;
    const now = Date.now();
    const { spool, tuning } = this.ctx;
    if (!this.bitmap) {
      if (!this.dirty.isEmpty && spool.usedBytes + this.dirty.bytes > spool.maxBytes) return this.overflow(now);
      const taken = extra?.take(Math.max(0, tuning.maxBatchBytes - this.dirty.bytes));
      if (this.dirty.isEmpty && !taken && !tag) return { kind: "none" };
      // A job's extra ranges were not written through the disk: only a batch of writes alone comes from staging.
      if (taken) this.staging.giveUp();
      const ranges = this.dirty;
      const wrote = !ranges.isEmpty;
      this.dirty = new RangeSet();
      if (taken) ranges.addAll(taken.ranges);
      const gen = this.log.length > 0 ? this.log.rotate() : this.log.generation - 1;
      const batch: SealedBatch = {
        extents: ranges.toExtents(),
        ...(this.staging.seal(ranges) ?? this.readRanges(ranges)),
        flags: taken?.flags ?? {},
        firstWriteMs: wrote ? this.firstWriteMs : now,
        lastWriteMs: wrote ? this.lastWriteMs : now,
        ...(tag ? { tag } : {}),
      };
      return { kind: "batch", batch, gen, taken: taken !== undefined || tag !== undefined, ...(taken?.onCommit ? { onCommit: taken.onCommit } : {}) };
    }
    const overflow = this.state.overflow!;
    if (this.drainAllowed()) {
      const ranges = RangeSet.of(this.bitmap.take(tuning.maxBatchBytes));
      const complete = this.bitmap.count === 0;
      const gen = this.log.length > 0 ? this.log.rotate() : this.log.generation - 1;
      const batch: SealedBatch = {
        extents: ranges.toExtents(),
        ...this.readRanges(ranges),
        flags: { resyncId: overflow.resyncId, ...(complete ? { resyncComplete: true } : {}) },
        firstWriteMs: now,
        lastWriteMs: now,
      };
      if (!complete) return { kind: "batch", batch, gen, taken: false, bitmap: "persist" };
      this.bitmap = undefined;
      this.overflowPeak = 0;
      return {
        kind: "batch",
        batch,
        gen,
        taken: false,
        bitmap: "remove",
        onCommit: (s) => {
          s.mode = "journal";
          s.overflow = undefined;
        },
      };
    }
    if (this.log.length === 0 && !this.bitmapUnpersisted) return { kind: "none" };
    this.bitmapUnpersisted = false;
    return { kind: "fold", gen: this.log.length > 0 ? this.log.rotate() : this.log.generation - 1 };
  }

  private overflow(now: number): Plan {
    const { spool } = this.ctx;
    const bitmap = new BlockBitmap(this.sizeBytes);
    for (const r of this.dirty) bitmap.mark(r.start, r.end);
    this.bitmap = bitmap;
    this.overflowPeak = bitmap.dirtyBytes;
    this.dirty = new RangeSet();
    // Bitmap mode seals what the image holds; journal mode resumes with nothing dirty and nothing staged.
    this.staging.reset();
    const mib = (n: number) => `${Math.round(n / 1024 / 1024)} MiB`;
    const reason = `spool full (${mib(spool.usedBytes)} of ${mib(spool.maxBytes)}): tracking dirty blocks, write order lost until they are shipped`;
    return {
      kind: "fold",
      gen: this.log.length > 0 ? this.log.rotate() : this.log.generation - 1,
      overflow: { resyncId: randomUUID(), reason, since: new Date(now).toISOString(), reported: false },
    };
  }

  private carryOut(plan: Plan): Promise<void> {
    const bitmapPath = statePaths(this.ctx.stateDir).bitmap(this.id);
    if (plan.kind === "none") return this.settled();
    if (plan.kind === "fold") {
      if (plan.overflow) {
        this.ctx.log(`disk ${this.id}: ${plan.overflow.reason} (resync ${plan.overflow.resyncId})`);
        this.ctx.health.set(`SpoolOverflow:${this.id}`, "Warning", `disk ${this.id}: ${plan.overflow.reason}`);
      }
      const committed = this.chain(async () => {
        // The bitmap as it is now: a superset of what the removed log generations hold.
        const bits = this.bitmap?.snapshot();
        if (bits) await this.retrying("StateWriteFailed", `saving the bitmap of disk ${this.id}`, () => writeFileAtomic(bitmapPath, bits));
        if (plan.overflow) {
          this.state.mode = "bitmap";
          this.state.overflow = plan.overflow;
          await this.persist();
        }
        await this.log.removeThrough(plan.gen);
      });
      if (plan.overflow) this.ctx.changed({ checkin: true });
      return committed;
    }
    return this.emit(plan.batch, plan.onCommit, async () => {
      if (plan.bitmap === "remove") {
        await removeIfExists(bitmapPath);
        this.ctx.health.clear(`SpoolOverflow:${this.id}`);
        this.ctx.log(`disk ${this.id}: dirty blocks shipped, back to journal mode`);
        this.ctx.changed();
      } else if (plan.bitmap === "persist") {
        const bits = this.bitmap?.snapshot();
        if (bits) await this.retrying("StateWriteFailed", `saving the bitmap of disk ${this.id}`, () => writeFileAtomic(bitmapPath, bits));
      }
      await this.log.removeThrough(plan.gen);
    });
  }

  /**
   * The current bytes of `ranges`, read synchronously: the caller holds the write lock, and page-cache reads take
   * microseconds, into a reused payload buffer (see payloadBuffer).
   */
  private readRanges(ranges: RangeSet): { payload: Buffer; release: () => void } {
    const { payload, release } = this.payloadBuffer(ranges.bytes);
    let at = 0;
    for (const r of ranges) {
      const len = r.end - r.start;
      let done = 0;
      while (done < len) {
        const n = readSync(this.fh.fd, payload, at + done, len - done, r.start + done);
        if (n === 0) {
          payload.fill(0, at + done, at + len);
          break;
        }
        done += n;
      }
      at += len;
    }
    return { payload, release };
  }

  override async close(): Promise<void> {
    if (this.closed) return;
    clearTimeout(this.sealTimer);
    await super.close();
    // What was written is sealed into the spool (or, in bitmap mode, folded into the bitmap) before the agent stops.
    const r = await this.sealAttempt();
    await r.committed;
    await this.settled();
    await this.fh.datasync().catch(() => undefined);
    // A client's sync still running uses both files.
    await Promise.allSettled([this.queuedSync, this.runningSync]);
    await this.log.close();
    await this.fh.close();
    this.staging.close();
  }
}
