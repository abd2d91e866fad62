// What every replicated disk shares: sequence numbers, the seal → spool → commit pipeline, and the background jobs (initial copy, resync).
// Over 500 lines: the pipeline (seal → spool → commit → ship) and the background jobs share the disk's state and its
// commit chain; what differs by kind of disk is in tracked-disk.ts and scanned-disk.ts.
import { mkdir, open } from "node:fs/promises";
import { crc32c } from "@node-rs/crc32";
import { encodeBatchHeader, type BatchFlags, type BatchTag, type Extent } from "../shared/replication/batch";
import { MAX_MANIFEST_RANGE, RESYNC_BLOCK_BYTES, type ManifestResponse, type ResyncCommand } from "../shared/protection/agent-protocol";
import type { BatchBuffers } from "./batch-buffers";
import { DataMap } from "./data-map";
import { readJsonFile, writeFileAtomic } from "./files";
import { Mutex, Signal } from "./gate";
import type { Health } from "./health";
import { RangeSet, takePrefix } from "./ranges";
import { backoffMs, describe, sleep } from "./retry";
import type { Shipper } from "./shipper";
import type { Spool } from "./spool";
import { diskStateSchema, RESYNCS_REMEMBERED, statePaths, type DiskState } from "./state";

export interface DiskTuning {
  /** A batch is sealed when its payload reaches this (default 4 MiB). */
  maxBatchBytes: number;
  /** ...or this long after its first write (default 1 s). */
  sealIntervalMs: number;
  /** Batches being written to the spool at once, over all of the agent's disks (memory: this many batches). */
  pipelineDepth: number;
  /** Initial copy, resync and bitmap drain only ship while the spool holds at most this fraction of its bound. */
  spoolLowWater: number;
}

export const DEFAULT_TUNING: DiskTuning = { maxBatchBytes: 4 * 1024 * 1024, sealIntervalMs: 1000, pipelineDepth: 2, spoolLowWater: 0.5 };

/** What a disk needs from its agent. */
export interface DiskContext {
  itemId: string;
  stateDir: string;
  spool: Spool;
  /** Payload buffers and the spool pipeline, shared by the agent's disks. */
  buffers: BatchBuffers;
  shipper: Shipper;
  health: Health;
  tuning: DiskTuning;
  log: (line: string) => void;
  /** CRC32C per 64 KiB block of the replica at the resync's base (the control plane's manifest). */
  manifest: (diskId: string, resyncId: string, offset: number, length: number) => Promise<ManifestResponse>;
  /** Something the heartbeat shows changed; `checkin` asks for a check-in soon (e.g. to report an overflow). */
  changed: (opts?: { checkin?: boolean }) => void;
}

/** A disk as the agent first sees it (from the registration). */
export interface DiskSpec {
  id: string;
  sizeBytes: number;
  path: string;
  /** The registration's next sequence number: 1 means the replica is still all zeros. */
  registeredNextSeq: number;
}

/** Extra ranges a job wants in the next batch, handed over under the disk's lock once the batch's budget is known. */
export interface ExtraRequest {
  take(budget: number): ExtraTaken | undefined;
}

export interface ExtraTaken {
  ranges: RangeSet;
  flags: BatchFlags;
  onCommit?: (s: DiskState) => void;
}

export interface SealResult {
  /** Resolves when the batch (or fold) is durable and the state that says so is persisted. */
  committed: Promise<void>;
  /** The job's extra ranges went into a batch. */
  taken: boolean;
}

/** A sealed batch, before its sequence number. */
export interface SealedBatch {
  extents: Extent[];
  payload: Buffer;
  flags: BatchFlags;
  firstWriteMs: number;
  lastWriteMs: number;
  tag?: BatchTag;
  /** Called once the payload is durable in the spool: its buffer may be reused (emit does not copy it). */
  release?: () => void;
}

/** A job that walks the disk from `cursor`: `found` holds ranges in [cursor, scannedTo) that still have to be shipped. */
interface Sweep {
  cursor: number;
  found: RangeSet;
  scannedTo: number;
  /** Where the image held data when the sweep began (see findUsed); asked for once per sweep. */
  map?: Promise<DataMap | undefined>;
}

interface ResyncSweep extends Sweep {
  id: string;
  marker: boolean;
}

export const ZERO_BLOCK = Buffer.alloc(RESYNC_BLOCK_BYTES);

/** How far a job reads ahead of what it ships, at most, before sealing what it found (so progress shows on sparse disks). */
const SCAN_WINDOW = 64 * 1024 * 1024;
const READ_CHUNK = 4 * 1024 * 1024;

export async function loadDiskState(stateDir: string, spec: DiskSpec, kind: "tracked" | "scanned"): Promise<{ state: DiskState; created: boolean }> {
  const paths = statePaths(stateDir);
  await mkdir(paths.disk(spec.id), { recursive: true });
  const found = await readJsonFile(paths.diskState(spec.id), diskStateSchema);
  if (found) {
    if (found.sizeBytes !== spec.sizeBytes) {
      throw new Error(`disk ${spec.id}: the state directory describes a ${found.sizeBytes}-byte disk, the registration a ${spec.sizeBytes}-byte one`);
    }
    return { state: found, created: false };
  }
  const state: DiskState = {
    v: 1,
    id: spec.id,
    sizeBytes: spec.sizeBytes,
    source: { path: spec.path, kind },
    nextSeq: spec.registeredNextSeq,
    freshReplica: spec.registeredNextSeq === 1,
    initial: { doneBytes: 0, totalBytes: spec.sizeBytes, complete: false },
    mode: "journal",
    resyncsDone: [],
  };
  await writeFileAtomic(paths.diskState(spec.id), JSON.stringify(state, null, 2));
  return { state, created: true };
}

export abstract class ReplicatedDisk {
  readonly id: string;
  readonly sizeBytes: number;
  /** The committed state (what disk.json says, or is about to say). */
  protected readonly state: DiskState;
  /** The next sequence number to hand out (≥ state.nextSeq: sealed batches not yet committed sit in between). */
  protected allocSeq: number;
  protected readonly sealMutex = new Mutex();
  protected readonly wake = new Signal();
  protected closed = false;
  private commitTail: Promise<void> = Promise.resolve();
  /** What follows commits once their state is saved (see emit), in seq order. */
  private afterTail: Promise<void> = Promise.resolve();
  private currentWrite: Promise<void> = Promise.resolve();
  private queuedWrite: Promise<void> | undefined;
  private loop: Promise<void> | undefined;
  private initialSweep: Sweep | undefined;
  private resyncSweep: ResyncSweep | undefined;
  private readonly idleWaiters: (() => void)[] = [];
  private scanChunk: Buffer | undefined;
  private noMapSaid = false;

  constructor(
    protected readonly ctx: DiskContext,
    state: DiskState,
  ) {
    this.id = state.id;
    this.sizeBytes = state.sizeBytes;
    this.state = state;
    this.allocSeq = state.nextSeq;
  }

  // ---- what a kind of disk provides ----

  /** Seals the open batch with the job's extra ranges, if any (see TrackedDisk and ScannedDisk). */
  protected abstract sealAttempt(extra?: ExtraRequest): Promise<SealResult>;
  /** Reads current bytes without the write lock (a job looking for what to ship; seals re-read under the lock). */
  protected abstract readUnlocked(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  /** A job of this kind of disk that goes before the shared ones (bitmap drain, scan pass), if due. */
  protected abstract ownJob(): (() => Promise<void>) | undefined;
  /** Bytes known to differ from the replica and not yet sealed. */
  abstract dirtyBytes(): number;
  abstract get mode(): "journal" | "bitmap";
  /** Resolves when everything written before the call is sealed and durable in the spool. */
  abstract flush(): Promise<void>;
  /** Called by a resync sweep for each block it compared (scanned disks keep fingerprints). */
  protected resyncCompared(_block: number, _checksum: number, _equal: boolean): void {}

  // ---- the pipeline: seal (caller, under sealMutex) → spool (concurrent) → commit (in seq order) ----

  /**
   * Hands out the next seq, encodes the batch's header and writes header and payload to the spool (concurrently with
   * other batches; the payload is not copied: batch.release says when its buffer is free again); resolves once it is
   * committed: durable, the state that says so saved, handed to the shipper. Call under sealMutex.
   */
  protected emit(batch: SealedBatch, onCommit?: (s: DiskState) => void, afterCommit?: () => void | Promise<void>): Promise<void> {
    const seq = this.allocSeq++;
    const header = encodeBatchHeader(
      {
        itemId: this.ctx.itemId,
        diskId: this.id,
        seq,
        extents: batch.extents,
        firstWriteMs: batch.firstWriteMs,
        lastWriteMs: batch.lastWriteMs,
        ...batch.flags,
        ...(batch.tag ? { tag: batch.tag } : {}),
      },
      batch.payload,
    );
    const size = header.length + batch.payload.length;
    this.ctx.spool.reserve(this.id, size);
    const durable = this.retrying("SpoolWriteFailed", `writing batch ${seq} of disk ${this.id} to the spool`, () =>
      this.ctx.spool.put(this.id, seq, [header, batch.payload], size),
    );
    this.ctx.buffers.track(durable);
    void durable.then(() => batch.release?.());
    let committed!: Promise<void>;
    const step = this.chain(async () => {
      await durable;
      this.state.nextSeq = seq + 1;
      onCommit?.(this.state);
      // The next commit need not wait for this state write: one write covers every commit made meanwhile. What
      // depends on the state being saved (dropping the dirty log, shipping) follows it, in seq order.
      const saved = this.persist();
      committed = this.afterTail = this.afterTail.then(async () => {
        await saved;
        try {
          await afterCommit?.();
        } catch (e) {
          // Housekeeping only (an old dirty log left behind is replayed, shipping its ranges once more): the batch is committed.
          this.ctx.log(`disk ${this.id}: after batch ${seq}: ${describe(e)}`);
        }
        this.ctx.shipper.add(this.id, seq);
        this.ctx.changed();
      });
    });
    return step.then(() => committed);
  }

  /** A state change in commit order (after every batch sealed before it is committed). */
  protected chain(step: () => Promise<void>): Promise<void> {
    const run = this.commitTail.then(step);
    this.commitTail = run.catch((e) => {
      // Steps retry their own I/O; reaching here is a bug, and later commits must not run as if this one had.
      this.ctx.health.set(`CommitFailed:${this.id}`, "Critical", `disk ${this.id}: ${describe(e)}`);
      this.closed = true;
    });
    return run;
  }

  /** Every commit queued so far is done, its state saved and its batch handed to the shipper. */
  protected settled(): Promise<void> {
    return this.commitTail.then(() => this.afterTail);
  }

  /** Waits until fewer than `pipelineDepth` batches (of any of the agent's disks) are being written to the spool. */
  protected pipelineRoom(): Promise<void> {
    return this.ctx.buffers.room();
  }

  /**
   * Saves disk.json as the state is when the write starts; resolves once a write that started after the call is done.
   * Writes never overlap, and requests made while one is in flight share the next.
   */
  protected persist(): Promise<void> {
    if (this.queuedWrite) return this.queuedWrite;
    const path = statePaths(this.ctx.stateDir).diskState(this.id);
    const queued = this.currentWrite.then(() => {
      this.queuedWrite = undefined;
      const json = JSON.stringify(this.state, null, 2);
      this.currentWrite = this.retrying("StateWriteFailed", `saving the state of disk ${this.id}`, () => writeFileAtomic(path, json));
      return this.currentWrite;
    });
    this.queuedWrite = queued;
    return queued;
  }

  /** Local I/O is retried with backoff (a full or failing disk), with the problem shown in the heartbeat meanwhile. */
  protected async retrying<T>(code: string, what: string, io: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await io();
        if (attempt > 0) this.ctx.health.clear(`${code}:${this.id}`);
        return r;
      } catch (e) {
        this.ctx.health.set(`${code}:${this.id}`, "Critical", `${what}: ${describe(e)}`);
        if (attempt % 10 === 0) this.ctx.log(`${what} failed: ${describe(e)}; retrying`);
        await sleep(backoffMs(attempt, 200, 10_000));
      }
    }
  }

  // ---- background jobs ----

  start(): void {
    this.loop ??= this.runJobs();
  }

  private async runJobs(): Promise<void> {
    for (let attempt = 0; !this.closed;) {
      const job = this.nextJob();
      if (!job) {
        // Nothing left to sweep: the chunk buffer is not kept (4 MiB per disk) until a job needs one again.
        if (this.state.initial.complete && !this.state.resync) this.scanChunk = undefined;
        this.notifyIdle();
        await this.wake.wait(1000);
        continue;
      }
      try {
        await job();
        this.notifyIdle();
        attempt = 0;
        this.ctx.health.clear(`DiskJobFailed:${this.id}`);
      } catch (e) {
        if (this.closed) break;
        this.ctx.health.set(`DiskJobFailed:${this.id}`, "Warning", `disk ${this.id}: ${describe(e)}`);
        if (attempt % 10 === 0) this.ctx.log(`disk ${this.id}: ${describe(e)}; retrying`);
        await sleep(backoffMs(attempt++, 1000, 60_000));
      }
    }
  }

  private nextJob(): (() => Promise<void>) | undefined {
    const own = this.ownJob();
    if (own) return own;
    if (!this.jobRoom()) return undefined;
    if (this.state.resync) return () => this.resyncStep();
    if (!this.state.initial.complete && this.hasInitialCopy()) return () => this.initialStep();
    return undefined;
  }

  /** Wakes the job loop (the spool drained, a check-in brought news). */
  poke(): void {
    this.wake.notify();
  }

  /** Scanned disks do their initial copy as their first scan pass. */
  protected hasInitialCopy(): boolean {
    return true;
  }

  /** Jobs ship only in journal mode and while the spool has room, so that live writes keep their place in it. */
  protected jobRoom(): boolean {
    return this.mode === "journal" && this.ctx.spool.usedBytes <= this.spoolLowWater();
  }

  protected spoolLowWater(): number {
    return Math.floor(this.ctx.spool.maxBytes * this.ctx.tuning.spoolLowWater);
  }

  /**
   * A buffer for a batch's payload of `bytes` and the `release` that hands it back once the batch is durable in the
   * spool (SealedBatch.release); the agent's disks share them (BatchBuffers).
   */
  protected payloadBuffer(bytes: number): { payload: Buffer; release: () => void } {
    return this.ctx.buffers.take(bytes);
  }

  /** Where the source image holds data (undefined: read everything; the reason is logged once per disk). */
  protected dataMap(): Promise<DataMap | undefined> {
    return DataMap.of(this.state.source.path, (why) => {
      if (this.noMapSaid) return;
      this.noMapSaid = true;
      this.ctx.log(`disk ${this.id}: ${why}`);
    });
  }

  /**
   * The one buffer the disk's jobs read through when they look at the disk chunk by chunk (one job runs at a time, and
   * each is done with a chunk before it reads the next): a sweep of the whole disk allocates nothing per chunk.
   */
  protected scanBuffer(): Buffer {
    return (this.scanChunk ??= Buffer.allocUnsafe(READ_CHUNK));
  }

  /** Ranges of [from, scannedTo) worth copying: every block, or (replica still all zeros) every block that is not all zeros. */
  private async findUsed(sw: Sweep, skipZeros: boolean): Promise<void> {
    const target = this.ctx.tuning.maxBatchBytes;
    const windowEnd = Math.min(this.sizeBytes, sw.scannedTo + SCAN_WINDOW);
    if (!skipZeros) {
      const end = Math.min(this.sizeBytes, sw.scannedTo + target);
      sw.found.add(sw.scannedTo, end);
      sw.scannedTo = end;
      return;
    }
    const map = await (sw.map ??= this.dataMap());
    while (sw.found.bytes < target && sw.scannedTo < windowEnd) {
      // A hole reads as zeros, which the fresh replica holds: skipped unread (a hole written since is in the dirty set).
      const holeEnd = map?.holeEnd(sw.scannedTo, RESYNC_BLOCK_BYTES, this.sizeBytes) ?? sw.scannedTo;
      if (holeEnd > sw.scannedTo) {
        sw.scannedTo = holeEnd;
        continue;
      }
      const len = Math.min(READ_CHUNK, windowEnd - sw.scannedTo);
      const buf = await this.readUnlocked(sw.scannedTo, len, this.scanBuffer());
      forEachBlock(sw.scannedTo, len, (start, end) => {
        const part = buf.subarray(start - sw.scannedTo, end - sw.scannedTo);
        if (!part.equals(ZERO_BLOCK.subarray(0, part.length))) sw.found.add(start, end);
      });
      sw.scannedTo += len;
    }
  }

  /** The next ranges a sweep ships (at most `budget` bytes, never past what it has scanned), and whether it reaches the end. */
  private takeFromSweep(sw: Sweep, budget: number): { ranges: RangeSet; progress: number; complete: boolean } {
    const t = takePrefix(sw.found, budget, sw.scannedTo);
    sw.found = t.rest;
    sw.cursor = t.progress;
    return { ranges: t.ranges, progress: t.progress, complete: t.progress >= this.sizeBytes };
  }

  private async initialStep(): Promise<void> {
    const sw = (this.initialSweep ??= { cursor: this.state.initial.doneBytes, found: new RangeSet(), scannedTo: this.state.initial.doneBytes });
    if (sw.found.bytes < this.ctx.tuning.maxBatchBytes && sw.scannedTo < this.sizeBytes) await this.findUsed(sw, this.state.freshReplica);
    const result = await this.sealAttempt({
      take: (budget) => {
        const t = this.takeFromSweep(sw, budget);
        const complete = t.complete;
        return {
          ranges: t.ranges,
          flags: { initial: true, ...(complete ? { initialComplete: true } : {}) },
          onCommit: (s) => {
            s.initial.doneBytes = t.progress;
            s.initial.complete = complete;
          },
        };
      },
    });
    if (result.taken && sw.cursor >= this.sizeBytes) {
      await result.committed;
      this.initialSweep = undefined;
      this.ctx.log(`disk ${this.id}: initial replication sealed (${this.sizeBytes} bytes)`);
    }
  }

  /** A resync the control plane asks for (from a check-in); a repeated or finished one is ignored. */
  acceptResync(cmd: ResyncCommand): Promise<void> {
    if (this.state.resyncsDone.includes(cmd.resyncId) || this.state.resync?.id === cmd.resyncId) return Promise.resolve();
    const replaced = this.state.resync?.id;
    this.ctx.log(`disk ${this.id}: resync ${cmd.resyncId} from batch ${cmd.baseSeq} (${cmd.reason})${replaced ? `, replacing ${replaced}` : ""}`);
    return this.chain(async () => {
      this.state.resync = {
        id: cmd.resyncId,
        baseSeq: cmd.baseSeq,
        reason: cmd.reason,
        fetchedBytes: 0,
        started: false,
        doneBytes: 0,
        totalBytes: this.sizeBytes,
      };
      this.resyncSweep = undefined;
      await this.persist();
      this.wake.notify();
      this.ctx.changed();
    });
  }

  /**
   * One step of a differential resync:
   * 1. fetch the replica's checksums at the base, range by range, into resync.manifest — before anything of the resync
   *    is shipped, because the apply side moves the replica on once the resync's first batch arrives;
   * 2. seal the resync's first batch (it names the resync; every write after it is in a later batch);
   * 3. compare the disk with the manifest window by window and ship the blocks that differ, the last batch `resyncComplete`.
   */
  private async resyncStep(): Promise<void> {
    const r = this.state.resync!;
    if (r.fetchedBytes < this.sizeBytes) {
      await this.fetchManifest(r.id, r.fetchedBytes);
      return;
    }
    if (this.resyncSweep?.id !== r.id) {
      this.resyncSweep = { id: r.id, marker: r.started, cursor: r.doneBytes, found: new RangeSet(), scannedTo: r.doneBytes };
    }
    const sw = this.resyncSweep;
    if (!sw.marker) {
      const first = await this.sealAttempt({
        take: () => ({
          ranges: new RangeSet(),
          flags: { resyncId: r.id },
          onCommit: (s) => {
            if (s.resync?.id === r.id) s.resync.started = true;
          },
        }),
      });
      if (first.taken) sw.marker = true;
      return;
    }
    if (sw.found.bytes < this.ctx.tuning.maxBatchBytes && sw.scannedTo < this.sizeBytes) await this.compareWithManifest(sw);
    const initialDone = this.state.initial.complete;
    await this.sealAttempt({
      take: (budget) => {
        const t = this.takeFromSweep(sw, budget);
        const complete = t.complete;
        return {
          ranges: t.ranges,
          // A resync compares every block with the replica: it also completes an unfinished initial copy.
          flags: { resyncId: r.id, ...(complete ? { resyncComplete: true, ...(initialDone ? {} : { initial: true, initialComplete: true }) } : {}) },
          onCommit: (s) => {
            if (s.resync?.id !== r.id) return;
            s.resync.doneBytes = t.progress;
            if (complete) {
              s.resyncsDone = [...s.resyncsDone, r.id].slice(-RESYNCS_REMEMBERED);
              s.resync = undefined;
              if (!s.initial.complete) s.initial = { doneBytes: this.sizeBytes, totalBytes: this.sizeBytes, complete: true };
              this.ctx.log(`disk ${this.id}: resync ${r.id} sealed`);
            }
          },
        };
      },
    });
  }

  /** Fetches the replica's checksums of the next range into resync.manifest. */
  private async fetchManifest(resyncId: string, from: number): Promise<void> {
    const length = Math.min(MAX_MANIFEST_RANGE, this.sizeBytes - from);
    let m: ManifestResponse;
    try {
      m = await this.ctx.manifest(this.id, resyncId, from, length);
    } catch (e) {
      if ((e as { status?: number }).status === 409 && (e as { code?: string }).code === "NoSuchResync") {
        this.ctx.log(`disk ${this.id}: the control plane no longer asks for resync ${resyncId}; dropped`);
        await this.chain(async () => {
          if (this.state.resync?.id === resyncId) this.state.resync = undefined;
          await this.persist();
        });
        return;
      }
      throw e;
    }
    if (m.offset !== from || m.blockBytes !== RESYNC_BLOCK_BYTES || m.checksums.length !== Math.ceil(length / RESYNC_BLOCK_BYTES)) {
      throw new Error(`resync manifest of ${from}+${length} does not describe that range in ${RESYNC_BLOCK_BYTES}-byte blocks`);
    }
    const sums = Buffer.alloc(m.checksums.length * 4);
    m.checksums.forEach((c, i) => sums.writeUInt32LE(c >>> 0, i * 4));
    const path = statePaths(this.ctx.stateDir).resyncManifest(this.id);
    const fh = await open(path, from === 0 ? "w" : "r+");
    try {
      await fh.write(sums, 0, sums.length, (from / RESYNC_BLOCK_BYTES) * 4);
    } finally {
      await fh.close();
    }
    await this.chain(async () => {
      if (this.state.resync?.id !== resyncId) return;
      this.state.resync.fetchedBytes = from + length;
      await this.persist();
    });
  }

  /** Compares the next window of the disk with the manifest; blocks that differ go to `found`. */
  private async compareWithManifest(sw: ResyncSweep): Promise<void> {
    const at = sw.scannedTo;
    const end = Math.min(this.sizeBytes, at + SCAN_WINDOW);
    const firstBlock = at / RESYNC_BLOCK_BYTES;
    const blocks = Math.ceil((end - at) / RESYNC_BLOCK_BYTES);
    const sums = Buffer.alloc(blocks * 4);
    const fh = await open(statePaths(this.ctx.stateDir).resyncManifest(this.id), "r");
    try {
      await fh.read(sums, 0, sums.length, firstBlock * 4);
    } finally {
      await fh.close();
    }
    for (let from = at; from < end; from += READ_CHUNK) {
      const len = Math.min(READ_CHUNK, end - from);
      const buf = await this.readUnlocked(from, len, this.scanBuffer());
      for (let off = 0; off < len; off += RESYNC_BLOCK_BYTES) {
        const block = (from + off) / RESYNC_BLOCK_BYTES;
        const replica = sums.readUInt32LE((block - firstBlock) * 4);
        const equal = crc32c(buf.subarray(off, off + RESYNC_BLOCK_BYTES)) === replica;
        if (!equal) sw.found.add(from + off, Math.min(from + off + RESYNC_BLOCK_BYTES, this.sizeBytes));
        this.resyncCompared(block, replica, equal);
      }
    }
    sw.scannedTo = end;
  }

  // ---- progress and waiting ----

  /** The disk's line in the heartbeat. */
  heartbeat() {
    const spool = this.ctx.spool.stats(this.id);
    const r = this.state.resync;
    return {
      nextSeq: this.allocSeq,
      spoolBatches: spool.batches,
      spoolBytes: spool.bytes,
      mode: this.mode,
      dirtyBytes: this.dirtyBytes(),
      initialReplication: {
        doneBytes: this.state.initial.complete ? this.sizeBytes : this.state.initial.doneBytes,
        totalBytes: this.sizeBytes,
        complete: this.state.initial.complete,
      },
      ...(r ? { resync: { id: r.id, doneBytes: r.doneBytes, totalBytes: r.totalBytes } } : this.overflowProgress()),
    };
  }

  protected overflowProgress(): { resync?: { id: string; doneBytes: number; totalBytes: number } } {
    return {};
  }

  /** Overflow resyncs not yet acknowledged by a check-in. */
  unreportedOverflow(): { diskId: string; resyncId: string; reason: string } | undefined {
    const o = this.state.overflow;
    return o && !o.reported ? { diskId: this.id, resyncId: o.resyncId, reason: o.reason } : undefined;
  }

  markOverflowReported(resyncId: string): void {
    void this.chain(async () => {
      if (this.state.overflow?.resyncId !== resyncId || this.state.overflow.reported) return;
      this.state.overflow.reported = true;
      await this.persist();
      this.wake.notify();
    });
  }

  get initialReplication() {
    return { ...this.state.initial };
  }

  /** Nothing left to do: initial copy and resyncs done, nothing dirty, nothing sealed that the cache does not have. */
  isIdle(): boolean {
    return (
      this.state.initial.complete &&
      !this.state.resync &&
      this.mode === "journal" &&
      this.dirtyBytes() === 0 &&
      this.ctx.shipper.pending(this.id) === 0 &&
      this.allocSeq === this.state.nextSeq
    );
  }

  /** Resolves once everything written before the call is in the cache and announced (in bitmap mode: once the overflow is shipped). */
  async drain(): Promise<void> {
    await this.flush();
    while (this.mode === "bitmap" && !this.closed) {
      await new Promise<void>((r) => this.idleWaiters.push(r));
    }
    await this.settled();
    await this.ctx.shipper.waitShipped(this.id, this.allocSeq - 1);
  }

  /** Resolves once the disk is idle (see isIdle). */
  async waitIdle(): Promise<void> {
    while (!this.isIdle()) {
      if (this.closed) throw new Error(`disk ${this.id} is closed`);
      if (this.dirtyBytes() > 0 && this.mode === "journal") await this.flush();
      await this.settled();
      await this.ctx.shipper.waitShipped(this.id, this.allocSeq - 1);
      if (!this.isIdle()) await Promise.race([new Promise<void>((r) => this.idleWaiters.push(r)), sleep(200)]);
    }
  }

  protected notifyIdle(): void {
    const w = this.idleWaiters.splice(0);
    for (const f of w) f();
  }

  /** Stops the jobs; what is written stays tracked (the spool, the dirty log) for the next start. */
  async close(): Promise<void> {
    this.closed = true;
    this.wake.notify();
    this.notifyIdle();
    await this.loop;
    await this.settled();
  }
}

/** Calls `fn` for each 64 KiB-aligned block piece of [from, from + length). */
export function forEachBlock(from: number, length: number, fn: (start: number, end: number) => void): void {
  const end = from + length;
  for (let start = from; start < end;) {
    const next = Math.min(end, (Math.floor(start / RESYNC_BLOCK_BYTES) + 1) * RESYNC_BLOCK_BYTES);
    fn(start, next);
    start = next;
  }
}
