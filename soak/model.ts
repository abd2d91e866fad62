// The soak's oracle data: every write sent to a disk and when it was acknowledged, and the disk's bytes after any prefix of them.

/** One write as the workload issued it: a run of one byte (or explicit bytes once resolved from the image after a crash). */
export interface LoggedWrite {
  offset: number;
  length: number;
  byte: number;
  data?: Buffer;
  /** Wall-clock ms (sub-ms precision) when it was sent, and when the disk acknowledged it (Infinity: not yet). */
  sentAt: number;
  ackedAt: number;
}

export const wallNow = () => performance.timeOrigin + performance.now();

/**
 * Writes to one disk are issued one at a time, so the log is in order and `ackedAt` grows with it: the disk at an
 * instant t holds every write acknowledged before t, possibly the one in flight at t, and none sent after it.
 */
export class DiskModel {
  readonly writes: LoggedWrite[] = [];
  /** The write sent and not yet acknowledged (at most one). */
  pending: LoggedWrite | undefined;
  private cacheK = 0;
  private cache: Buffer;

  constructor(
    readonly key: string,
    readonly size: number,
  ) {
    this.cache = Buffer.alloc(size);
  }

  send(w: Omit<LoggedWrite, "ackedAt">): LoggedWrite {
    const full = { ...w, ackedAt: Infinity };
    this.writes.push(full);
    this.pending = full;
    return full;
  }

  ack(at: number): void {
    if (this.pending) this.pending.ackedAt = at;
    this.pending = undefined;
  }

  /** The pending write never reached the disk (refused, or the writer died before it): it is not part of the disk. */
  drop(): void {
    if (!this.pending) return;
    const i = this.writes.lastIndexOf(this.pending);
    if (i >= 0) this.writes.splice(i, 1);
    if (this.cacheK > i) this.reset();
    this.pending = undefined;
  }

  /**
   * After a crash the disk itself says what became of the write in flight: all of it, none of it, or (a torn write)
   * part of it — the bytes found there replace it in the log, as what the disk now holds.
   */
  resolveFromDisk(found: Buffer, at: number): "applied" | "absent" | "torn" {
    const w = this.pending;
    if (!w) return "absent";
    const i = this.writes.lastIndexOf(w);
    const before = Buffer.from(this.at(i).subarray(w.offset, w.offset + w.length));
    const written = w.data ?? Buffer.alloc(w.length, w.byte);
    if (found.equals(before)) {
      this.drop();
      return "absent";
    }
    w.ackedAt = at;
    this.pending = undefined;
    if (found.equals(written)) return "applied";
    w.data = Buffer.from(found);
    if (this.cacheK > i) this.reset();
    return "torn";
  }

  private reset(): void {
    this.cache.fill(0);
    this.cacheK = 0;
  }

  /** The disk after the first k writes (a shared buffer: copy it to keep it). */
  at(k: number): Buffer {
    if (k < this.cacheK) this.reset();
    for (; this.cacheK < k; this.cacheK++) {
      const w = this.writes[this.cacheK]!;
      if (w.data) w.data.copy(this.cache, w.offset);
      else this.cache.fill(w.byte, w.offset, w.offset + w.length);
    }
    return this.cache;
  }

  /** Every acknowledged write applied (the workload paused, nothing in flight). */
  current(): Buffer {
    return this.at(this.writes.filter((w) => w.ackedAt !== Infinity).length);
  }

  /**
   * Does `bytes` equal the disk at instant t? Acknowledged before t − slack ⇒ in it; sent after t ⇒ not; anything
   * in between may or may not be (slack 0 for disks whose writes pass the agent; a scanned disk's point is the state
   * at one instant of its quiet round, before the tag's time). Tag times are whole milliseconds.
   */
  matchesAt(t: number, bytes: Buffer, slackMs = 0): { ok: boolean; kmin: number; kmax: number; firstDiff: number } {
    const kmin = this.writes.filter((w) => w.ackedAt < t - slackMs).length;
    const kmax = this.writes.filter((w) => w.sentAt < t + 1).length;
    let firstDiff = -1;
    for (let k = kmin; k <= Math.max(kmin, kmax); k++) {
      const m = this.at(k);
      if (m.equals(bytes)) return { ok: true, kmin, kmax, firstDiff: -1 };
      if (k === kmin) firstDiff = firstDifference(m, bytes);
    }
    return { ok: false, kmin, kmax, firstDiff };
  }
}

export function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i += 4096) {
    const end = Math.min(n, i + 4096);
    if (!a.subarray(i, end).equals(b.subarray(i, end))) {
      for (let j = i; j < end; j++) if (a[j] !== b[j]) return j;
    }
  }
  return a.length === b.length ? -1 : n;
}
