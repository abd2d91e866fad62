// The local spool: sealed batches, one durable file each, kept until the cache has them and the queue announced them.
import { mkdir, open, readdir, readFile, rename, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import { SEQ_DIGITS } from "../shared/replication/batch";
import { statePaths } from "./state";

const BATCH_FILE = /^(\d+)\.batch$/;

export interface SpoolStats {
  batches: number;
  bytes: number;
}

/**
 * Bounded by `maxBytes` over all disks. Bytes being written count from the moment a seal reserves them, so that the
 * bound decided under a disk's lock holds when the files land.
 */
export class Spool {
  private readonly perDisk = new Map<string, { batches: Map<number, number>; reserved: number }>();
  private total = 0;
  private waiters: { below: number; resolve: () => void }[] = [];
  /** Called when a batch leaves the spool (room for jobs waiting on it). */
  onChange: (() => void) | undefined;

  constructor(
    private readonly stateDir: string,
    readonly maxBytes: number,
  ) {}

  private disk(diskId: string) {
    let d = this.perDisk.get(diskId);
    if (!d) {
      d = { batches: new Map(), reserved: 0 };
      this.perDisk.set(diskId, d);
    }
    return d;
  }

  path(diskId: string, seq: number): string {
    return join(statePaths(this.stateDir).spool(diskId), `${String(seq).padStart(SEQ_DIGITS, "0")}.batch`);
  }

  /**
   * Opens a disk's spool: temp files of an interrupted write and batches at or above `nextSeq` (sealed but never
   * committed: their ranges are still in the dirty log and will be sealed again) are removed. Returns the seqs left.
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

  /** Writes a batch durably (temp file, fsync, rename); its reservation becomes its size. */
  async put(diskId: string, seq: number, data: Buffer, reserved: number): Promise<void> {
    const path = this.path(diskId, seq);
    const tmp = `${path}.tmp`;
    const fh = await open(tmp, "w");
    try {
      let done = 0;
      while (done < data.length) done += (await fh.write(data, done, data.length - done)).bytesWritten;
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    const d = this.disk(diskId);
    d.reserved -= reserved;
    this.total += data.length - reserved;
    d.batches.set(seq, data.length);
  }

  read(diskId: string, seq: number): Promise<Buffer> {
    return readFile(this.path(diskId, seq));
  }

  async remove(diskId: string, seq: number): Promise<void> {
    await unlink(this.path(diskId, seq)).catch((e: NodeJS.ErrnoException) => (e.code === "ENOENT" ? undefined : Promise.reject(e)));
    const d = this.disk(diskId);
    const size = d.batches.get(seq);
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
