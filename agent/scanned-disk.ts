// A disk written by other programs (an image file, a block device): found changed by scanning, block by block, against fingerprints of what was shipped.
import { open, type FileHandle } from "node:fs/promises";
import { crc32c } from "@node-rs/crc32";
import { decodeBatch } from "../shared/replication/batch";
import { RESYNC_BLOCK_BYTES } from "../shared/protection/agent-protocol";
import type { BatchTag } from "../shared/replication/batch";
import { forEachBlock, loadDiskState, ReplicatedDisk, ZERO_BLOCK, type DiskContext, type DiskSpec, type ExtraRequest, type SealResult } from "./disk";
import type { DataMap } from "./data-map";
import { QuietProbe, type Look } from "./quiet";
import { RangeSet, takePrefix } from "./ranges";
import { statePaths, type DiskState } from "./state";

/** Fingerprint granularity: the resync block, so that a manifest's checksums are fingerprints too. */
export const FINGERPRINT_BLOCK = RESYNC_BLOCK_BYTES;
const ZERO_CRC = crc32c(ZERO_BLOCK);
const SCAN_WINDOW = 64 * 1024 * 1024;
const READ_CHUNK = 4 * 1024 * 1024;

interface Pass {
  number: number;
  /** The first pass: initial replication (batches flagged `initial`, the last `initialComplete`). */
  initial: boolean;
  /** Fingerprints describe the replica; without a baseline every block is shipped. */
  baseline: boolean;
  cursor: number;
  found: RangeSet;
  scannedTo: number;
  /**
   * Where the image held data when the pass began (resolving to undefined: read everything), asked for once per pass; a
   * hole filled since is seen next pass.
   */
  map?: Promise<DataMap | undefined>;
}

/**
 * Passes after the first (initial replication) run when the agent asks (scanNow): it scans every disk of the VM in
 * one round, so that a round in which no disk changed is one instant of all of them (see Agent.scanRound).
 */
export class ScannedDisk extends ReplicatedDisk {
  private pass: Pass | undefined;
  private passes = 0;
  private readonly passWaiters: { pass: number; resolve: () => void }[] = [];
  /** Fingerprint changes learnt outside a batch (resync blocks found equal), persisted with the next commit. */
  private staged = new Map<number, number>();

  private constructor(
    ctx: DiskContext,
    state: DiskState,
    private readonly source: FileHandle,
    private readonly fpFile: FileHandle,
    /** CRC32C of each block as the replica holds it once every committed batch is applied. */
    private readonly fp: Uint32Array,
    private readonly probe: QuietProbe,
  ) {
    super(ctx, state);
  }

  static async open(ctx: DiskContext, spec: DiskSpec): Promise<ScannedDisk> {
    const { state, created } = await loadDiskState(ctx.stateDir, spec, "scanned");
    const paths = statePaths(ctx.stateDir);
    const source = await open(spec.path, "r");
    const st = await source.stat();
    if (st.isFile() && st.size > spec.sizeBytes) {
      await source.close();
      throw new Error(`image ${spec.path} is ${st.size} bytes, larger than disk ${spec.id} (${spec.sizeBytes} bytes)`);
    }
    if (state.source.path !== spec.path && !created) ctx.log(`disk ${spec.id}: source is now ${spec.path} (was ${state.source.path})`);
    const blocks = Math.ceil(spec.sizeBytes / FINGERPRINT_BLOCK);
    const fpPath = paths.fingerprints(spec.id);
    const fpFile = await open(fpPath, "a+").then(async (fh) => {
      await fh.close();
      return open(fpPath, "r+");
    });
    const fp = new Uint32Array(blocks);
    const onDisk = await fpFile.read(Buffer.from(fp.buffer), 0, blocks * 4, 0);
    let baseline = state.scan?.baseline ?? false;
    if (state.source.kind === "tracked" || !state.scan || onDisk.bytesRead !== blocks * 4) {
      // No fingerprints of what the replica holds: a replica still all zeros has zero fingerprints, any other needs a full pass.
      const fresh = state.freshReplica && state.initial.doneBytes === 0 && state.nextSeq === spec.registeredNextSeq;
      fp.fill(ZERO_CRC);
      baseline = fresh;
      await fpFile.truncate(0);
      await fpFile.write(Buffer.from(fp.buffer), 0, blocks * 4, 0);
    }
    state.source = { path: spec.path, kind: "scanned" };
    state.scan = { blockBytes: FINGERPRINT_BLOCK, baseline, passes: state.scan?.passes ?? 0 };
    const probe = await QuietProbe.open(spec.path);
    const disk = new ScannedDisk(ctx, state, source, fpFile, fp, probe);
    await disk.persist();
    return disk;
  }

  /**
   * Batches still in the spool are committed but maybe not in fingerprints.bin (the agent died in between):
   * their blocks' fingerprints are taken from the batches themselves, in seq order.
   */
  async repairFingerprints(spooled: number[]): Promise<void> {
    const changed = new Map<number, number>();
    for (const seq of spooled) {
      const { header, payload } = decodeBatch(await this.ctx.spool.read(this.id, seq));
      let at = 0;
      for (const e of header.extents) {
        forEachBlock(e.offset, e.length, (s, end) => {
          if (s % FINGERPRINT_BLOCK === 0 && (end - s === FINGERPRINT_BLOCK || end === this.sizeBytes)) {
            changed.set(s / FINGERPRINT_BLOCK, crc32c(payload.subarray(at + s - e.offset, at + end - e.offset)));
          }
        });
        at += e.length;
      }
    }
    for (const [i, c] of changed) this.fp[i] = c;
    await this.writeFingerprints(changed);
  }

  get mode(): "journal" {
    return "journal";
  }

  dirtyBytes(): number {
    return this.pass?.found.bytes ?? 0;
  }

  protected override hasInitialCopy(): boolean {
    return false;
  }

  /** Resolves when a whole pass that started after the call is sealed and durable in the spool. */
  scanNow(): Promise<void> {
    if (this.closed) return Promise.resolve();
    const target = this.passes + 1;
    this.wake.notify();
    return new Promise((resolve) => this.passWaiters.push({ pass: target, resolve }));
  }

  async flush(): Promise<void> {
    await this.scanNow();
    await this.settled();
  }

  protected async readUnlocked(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.source.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    // Past the end of a short image: zeros.
    return done < length ? buf.fill(0, done) : buf;
  }

  protected ownJob(): (() => Promise<void>) | undefined {
    if (this.state.resync || !this.jobRoom()) return undefined;
    const due = this.pass !== undefined || !this.state.initial.complete || this.passWaiters.length > 0;
    return due ? () => this.scanStep() : undefined;
  }

  private startPass(): Pass {
    const initial = !this.state.initial.complete;
    const from = initial ? this.state.initial.doneBytes : 0;
    this.passes++;
    return { number: this.passes, initial, baseline: this.state.scan!.baseline, cursor: from, found: new RangeSet(), scannedTo: from };
  }

  private budget(): number {
    return Math.max(FINGERPRINT_BLOCK, Math.floor(this.ctx.tuning.maxBatchBytes / FINGERPRINT_BLOCK) * FINGERPRINT_BLOCK);
  }

  private async scanStep(): Promise<void> {
    const pass = (this.pass ??= this.startPass());
    const budget = this.budget();
    if (pass.found.bytes < budget && pass.scannedTo < this.sizeBytes) {
      await this.compareWindow(pass, budget);
      if (pass.found.bytes < budget && pass.scannedTo < this.sizeBytes) {
        if (pass.initial && pass.found.isEmpty) {
          // A zero region: progress without a batch.
          const p = pass.scannedTo;
          pass.cursor = p;
          await this.chain(async () => {
            this.state.initial.doneBytes = p;
            await this.persist();
          });
        }
        return;
      }
    }
    const last = pass.scannedTo >= this.sizeBytes;
    if (last && pass.found.isEmpty && !pass.initial) {
      await this.endPass(
        pass,
        this.chain(async () => this.passDone(this.state)),
      );
      return;
    }
    const result = await this.sealAttempt({
      take: (b) => {
        const t = takePrefix(pass.found, b, pass.scannedTo);
        pass.found = t.rest;
        pass.cursor = t.progress;
        const end = t.progress >= this.sizeBytes;
        return {
          ranges: t.ranges,
          flags: pass.initial ? { initial: true, ...(end ? { initialComplete: true } : {}) } : {},
          onCommit: (s) => {
            if (pass.initial) {
              s.initial.doneBytes = t.progress;
              s.initial.complete = end;
            }
            if (end) this.passDone(s);
          },
        };
      },
    });
    if (pass.cursor >= this.sizeBytes) await this.endPass(pass, result.committed);
  }

  private passDone(s: DiskState): void {
    s.scan!.passes++;
    s.scan!.baseline = true;
  }

  private async endPass(pass: Pass, committed: Promise<void>): Promise<void> {
    this.pass = undefined;
    await committed;
    if (pass.initial) this.ctx.log(`disk ${this.id}: initial replication sealed (${this.sizeBytes} bytes)`);
    for (let i = this.passWaiters.length - 1; i >= 0; i--) {
      if (this.passWaiters[i]!.pass <= pass.number) this.passWaiters.splice(i, 1)[0]!.resolve();
    }
  }

  /** Reads ahead from `scannedTo` and collects blocks whose checksum differs from their fingerprint (all of them without a baseline). */
  private async compareWindow(pass: Pass, budget: number): Promise<void> {
    const map = await (pass.map ??= this.dataMap());
    const end = Math.min(this.sizeBytes, pass.scannedTo + SCAN_WINDOW);
    while (pass.scannedTo < end && pass.found.bytes < budget && !this.closed) {
      const from = pass.scannedTo;
      const holeEnd = map?.holeEnd(from, FINGERPRINT_BLOCK, this.sizeBytes) ?? from;
      if (holeEnd > from) {
        // Whole blocks of a hole read as zeros: a block changed if its fingerprint is not that of zeros. Nothing is read,
        // and the sweep may run past the window (a hole costs nothing to pass).
        for (let b = from; b < holeEnd; b += FINGERPRINT_BLOCK) {
          if (!pass.baseline || this.fp[b / FINGERPRINT_BLOCK] !== ZERO_CRC) pass.found.add(b, Math.min(b + FINGERPRINT_BLOCK, this.sizeBytes));
        }
        pass.scannedTo = holeEnd;
        continue;
      }
      const len = Math.min(READ_CHUNK, end - from);
      const buf = await this.readUnlocked(from, len, this.scanBuffer());
      for (let off = 0; off < len; off += FINGERPRINT_BLOCK) {
        const i = (from + off) / FINGERPRINT_BLOCK;
        const changed = !pass.baseline || crc32c(buf.subarray(off, off + FINGERPRINT_BLOCK)) !== this.fp[i];
        if (changed) pass.found.add(from + off, Math.min(from + off + FINGERPRINT_BLOCK, this.sizeBytes));
      }
      pass.scannedTo = from + len;
    }
  }

  protected override resyncCompared(block: number, checksum: number, equal: boolean): void {
    // Equal: the replica holds these bytes, whatever the fingerprint said. Different blocks get theirs when shipped.
    if (equal) this.staged.set(block, checksum);
  }

  /** Reads the ranges now (no lock: other programs write this disk) and fingerprints exactly the bytes shipped. */
  protected sealAttempt(extra?: ExtraRequest): Promise<SealResult> {
    return this.sealMutex.run(async () => {
      await this.pipelineRoom();
      const taken = extra?.take(this.budget());
      if (!taken) return { committed: this.settled(), taken: false };
      const { payload, release } = this.payloadBuffer(taken.ranges.bytes);
      const updates = this.staged;
      this.staged = new Map();
      let at = 0;
      for (const r of taken.ranges) {
        const len = r.end - r.start;
        await this.readUnlocked(r.start, len, payload.subarray(at, at + len));
        forEachBlock(r.start, len, (s, e) => {
          if (s % FINGERPRINT_BLOCK === 0 && (e - s === FINGERPRINT_BLOCK || e === this.sizeBytes)) {
            updates.set(s / FINGERPRINT_BLOCK, crc32c(payload.subarray(at + s - r.start, at + e - r.start)));
          }
        });
        at += len;
      }
      const now = Date.now();
      const committed = this.emit(
        { extents: taken.ranges.toExtents(), payload, flags: taken.flags, firstWriteMs: now, lastWriteMs: now, release },
        taken.onCommit,
        async () => {
          for (const [i, c] of updates) this.fp[i] = c;
          await this.writeFingerprints(updates);
        },
      );
      committed.catch(() => undefined);
      return { committed, taken: true };
    });
  }

  /** Writes changed fingerprints in place, runs of neighbours in one write. */
  private async writeFingerprints(changed: Map<number, number>): Promise<void> {
    const idx = [...changed.keys()].sort((a, b) => a - b);
    for (let i = 0; i < idx.length;) {
      let j = i + 1;
      while (j < idx.length && idx[j] === idx[j - 1]! + 1) j++;
      const first = idx[i]!;
      const n = j - i;
      await this.retrying("StateWriteFailed", `saving fingerprints of disk ${this.id}`, () =>
        this.fpFile.write(Buffer.from(this.fp.buffer, first * 4, n * 4), 0, n * 4, first * 4),
      );
      i = j;
    }
  }

  /** One look from outside (see QuietProbe): two looks that differ in nothing bracket a pass no write touched. */
  look(): Promise<Look> {
    return this.probe.look();
  }

  /** The sequence number the next batch of this disk will carry. */
  get nextSeq(): number {
    return this.allocSeq;
  }

  /** Why no tag can be cut on this disk now, or undefined if one can (a quiet pass must then vouch for it). */
  get tagBlocker(): string | undefined {
    if (this.closed) return "the disk is closed";
    const initial = this.state.initial;
    if (!initial.complete) return `initial replication not complete (${initial.doneBytes} of ${initial.totalBytes} bytes)`;
    if (this.state.resync) return `resync ${this.state.resync.id} in progress`;
    return undefined;
  }

  /**
   * Seals an empty batch carrying `tag`, right after the batch `afterSeq - 1` (the last of a pass found quiet): if any
   * other batch came in between, nothing is sealed and undefined is returned. Resolves to the commit once the batch
   * is sealed (the caller may still hold other disks' writes); the commit resolves once it is durable in the spool.
   */
  sealTag(tag: BatchTag, afterSeq: number): Promise<{ committed: Promise<void> } | undefined> {
    return this.sealMutex.run(async () => {
      if (this.allocSeq !== afterSeq || this.tagBlocker !== undefined || this.pass !== undefined) return undefined;
      const now = Date.now();
      const committed = this.emit({ extents: [], payload: Buffer.alloc(0), flags: {}, firstWriteMs: now, lastWriteMs: now, tag });
      committed.catch(() => undefined);
      return { committed };
    });
  }

  override async close(): Promise<void> {
    if (this.closed) return;
    await super.close();
    for (const w of this.passWaiters.splice(0)) w.resolve();
    await this.probe.close();
    await this.fpFile.close();
    await this.source.close();
  }
}
