// The local spool: sealed batches, one durable file each, kept until the cache has them and the queue announced them.
import { mkdir, open, readdir, readFile, rename, stat, unlink, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { SEQ_DIGITS } from "../shared/replication/batch";
import { statePaths } from "./state";

const BATCH_FILE = /^(\d+)\.batch$/;

/**
 * Files of shipped batches are kept for later batches to overwrite, as long as the spool's files (batches, reserved and
 * kept) stay within its bound: the spool's footprint is its high-water mark, never more than the bound, like a
 * preallocated journal. Overwriting a kept file writes into pages and blocks that already exist: no block allocation,
 * no journal commit at its fdatasync when the size is unchanged (bulk batches are all the bound), and no fresh page
 * cache. A fresh file's pages are what costs: measured on the 2-core benchmark machine with Azurite writing on the
 * other core, 4 MiB batches into new files cost 1.6–2.0 CPU s per GiB, into kept files 0.18 (see the README).
 * The count is bounded too (the bound in default 4 MiB batches, at least eight): small batches (a trickle of 4 KiB
 * writes) must not leave hundreds of thousands of tiny files for a restart to remove.
 */
const KEPT_FILE_BYTES = 4 * 1024 * 1024;

export interface SpoolStats {
  batches: number;
  bytes: number;
}

/**
 * Bounded by `maxBytes` over all disks. Bytes being written count from the moment a seal reserves them, so that the
 * bound decided under a disk's lock holds when the files land.
 */
export class Spool {
  private readonly perDisk = new Map<string, { batches: Map<number, number>; reserved: number; free: { path: string; size: number }[] }>();
  private freeNames = 0;
  private total = 0;
  /** Bytes and number of kept files (see above), and how many may be kept. */
  private freeBytes = 0;
  private freeCount = 0;
  private readonly maxFreeCount: number;
  private waiters: { below: number; resolve: () => void }[] = [];
  /** The sync round being formed (it starts when the one before it ends), and the end of the last round started. */
  private forming: { members: Promise<void>[]; go: Promise<void> } | undefined;
  private roundsTail: Promise<unknown> = Promise.resolve();
  /** Called when a batch leaves the spool (room for jobs waiting on it). */
  onChange: (() => void) | undefined;

  constructor(
    private readonly stateDir: string,
    readonly maxBytes: number,
  ) {
    this.maxFreeCount = Math.max(8, Math.ceil(maxBytes / KEPT_FILE_BYTES));
  }

  private disk(diskId: string) {
    let d = this.perDisk.get(diskId);
    if (!d) {
      d = { batches: new Map(), reserved: 0, free: [] };
      this.perDisk.set(diskId, d);
    }
    return d;
  }

  path(diskId: string, seq: number): string {
    return join(statePaths(this.stateDir).spool(diskId), `${String(seq).padStart(SEQ_DIGITS, "0")}.batch`);
  }

  /**
   * Opens a disk's spool: temp and recycled files (a write into one may have been interrupted) and batches at or above
   * `nextSeq` (sealed but never committed: their ranges are still in the dirty log and will be sealed again) are
   * removed. Returns the seqs left.
   */
  async open(diskId: string, nextSeq: number): Promise<number[]> {
    const dir = statePaths(this.stateDir).spool(diskId);
    await mkdir(dir, { recursive: true });
    const d = this.disk(diskId);
    for (const name of await readdir(dir)) {
      const m = BATCH_FILE.exec(name);
      if (!m || Number(m[1]) >= nextSeq) {
        await unlink(join(dir, name));
        continue;
      }
      const size = (await stat(join(dir, name))).size;
      d.batches.set(Number(m[1]), size);
      this.total += size;
    }
    return [...d.batches.keys()].sort((a, b) => a - b);
  }

  /** Bytes in the spool and reserved for batches being written. */
  get usedBytes(): number {
    return this.total;
  }

  stats(diskId: string): SpoolStats {
    const d = this.perDisk.get(diskId);
    if (!d) return { batches: 0, bytes: 0 };
    let bytes = 0;
    for (const n of d.batches.values()) bytes += n;
    return { batches: d.batches.size, bytes };
  }

  reserve(diskId: string, bytes: number): void {
    this.disk(diskId).reserved += bytes;
    this.total += bytes;
  }

  /**
   * Writes a batch durably (into a recycled file or a temp file, fdatasync, rename); its reservation becomes its size.
   * `parts` are written one after the other (a header and a payload need not be copied into one buffer); the caller
   * keeps them unchanged until this resolves (a failed attempt is retried from them). Syncs are group-committed: files
   * written while a round of syncs runs are synced together in the next round, so a burst of batches costs a few
   * journal commits, not one each.
   */
  async put(diskId: string, seq: number, parts: readonly Buffer[], reserved: number): Promise<void> {
    const path = this.path(diskId, seq);
    const d = this.disk(diskId);
    const size = parts.reduce((n, p) => n + p.length, 0);
    const recycled = this.takeFree(d.free, size);
    const tmp = recycled?.path ?? `${path}.tmp`;
    // A failed attempt leaves no file behind (a kept file it was writing into is no longer counted): the retry starts
    // afresh, and a full disk gets the space back.
    const discard = (e: unknown) =>
      unlink(tmp).then(
        () => Promise.reject(e),
        () => Promise.reject(e),
      );
    const fh = await open(tmp, recycled ? "r+" : "w").catch(discard);
    try {
      // One writev for all the parts (one trip to the threadpool); a short write is finished part by part.
      let done = (await fh.writev(parts, 0)).bytesWritten;
      let at = 0;
      for (const p of parts) {
        const end = at + p.length;
        while (done < end) done += (await fh.write(p, done - at, end - done, done)).bytesWritten;
        at = end;
      }
      if (recycled && recycled.size > size) await fh.truncate(size);
      await this.syncTogether(fh);
    } catch (e) {
      await fh.close().catch(() => undefined);
      return discard(e);
    }
    await fh.close().catch(discard);
    await rename(tmp, path).catch(discard);
    d.reserved -= reserved;
    this.total += size - reserved;
    d.batches.set(seq, size);
  }

  /** The kept file that fits `size` best (the smallest at least that large, else the largest), taken off the list. */
  private takeFree(free: { path: string; size: number }[], size: number): { path: string; size: number } | undefined {
    let fit = -1;
    let largest = -1;
    free.forEach((f, i) => {
      if (f.size >= size && (fit < 0 || f.size < free[fit]!.size)) fit = i;
      if (largest < 0 || f.size > free[largest]!.size) largest = i;
    });
    const best = fit >= 0 ? fit : largest;
    if (best < 0) return undefined;
    const [taken] = free.splice(best, 1);
    this.freeBytes -= taken!.size;
    this.freeCount--;
    return taken;
  }

  /** Joins the next sync round; resolves once this file's data is on stable storage. */
  private syncTogether(fh: FileHandle): Promise<void> {
    if (!this.forming) {
      const round = {
        members: [] as Promise<void>[],
        go: this.roundsTail.then(() => {
          this.forming = undefined;
        }),
      };
      this.forming = round;
      // Registered before any member's: when the previous round ends, this round closes and its syncs start together.
      this.roundsTail = round.go.then(() => Promise.allSettled(round.members));
    }
    const mine = this.forming.go.then(() => fh.datasync());
    this.forming.members.push(mine);
    return mine;
  }

  read(diskId: string, seq: number): Promise<Buffer> {
    return readFile(this.path(diskId, seq));
  }

  /** A batch's file, open for reading, and its size (the caller closes it). */
  async openBatch(diskId: string, seq: number): Promise<{ size: number; file: FileHandle }> {
    const file = await open(this.path(diskId, seq), "r");
    try {
      return { size: (await file.stat()).size, file };
    } catch (e) {
      await file.close().catch(() => undefined);
      throw e;
    }
  }

  /** Removes a shipped batch (its file is kept for a later batch to overwrite while the kept files stay within their bounds, above). */
  async remove(diskId: string, seq: number): Promise<void> {
    const d = this.disk(diskId);
    const path = this.path(diskId, seq);
    const size = d.batches.get(seq);
    const gone = (e: NodeJS.ErrnoException) => (e.code === "ENOENT" ? false : Promise.reject(e));
    if (size !== undefined && this.total + this.freeBytes <= this.maxBytes && this.freeCount < this.maxFreeCount) {
      const free = join(statePaths(this.stateDir).spool(diskId), `${++this.freeNames}.free`);
      // Counted before the rename, so that removals running meanwhile see the bounds as they will be.
      this.freeBytes += size;
      this.freeCount++;
      if (await rename(path, free).then(() => true, gone)) d.free.push({ path: free, size });
      else {
        this.freeBytes -= size;
        this.freeCount--;
      }
    } else await unlink(path).catch(gone);
    if (size !== undefined) {
      d.batches.delete(seq);
      this.total -= size;
    }
    this.wake();
    this.onChange?.();
  }

  /** Resolves once the spool holds at most `bytes`. */
  waitBelow(bytes: number): Promise<void> {
    if (this.total <= bytes) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ below: bytes, resolve }));
  }

  /** Releases every waiter (the agent is stopping; they re-check why they waited). */
  interrupt(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const x of w) x.resolve();
  }

  private wake(): void {
    const ready = this.waiters.filter((w) => this.total <= w.below);
    if (ready.length === 0) return;
    this.waiters = this.waiters.filter((w) => this.total > w.below);
    for (const w of ready) w.resolve();
  }
}
