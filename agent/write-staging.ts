// The open batch's writes as they were written, so that a seal takes the batch's bytes from memory instead of reading them back from the image.
import { SECTOR } from "../shared/replication/batch";
import type { RangeSet } from "./ranges";

/** A staged write: its range, and where its bytes are in the staging buffer. */
export interface StagedWrite {
  readonly start: number;
  readonly end: number;
  readonly at: number;
}

/**
 * Every write admitted into a tracked disk's open batch is copied here in the order of admission, and a seal builds the
 * batch's payload from the copies (later writes win where they overlap) instead of reading the image under the write
 * lock: one memory copy instead of a file read, and none at all for writes that arrive in ascending order (a
 * sequential stream), whose staging buffer is the payload.
 *
 * The copies are the image's bytes only if every write of the batch was staged and landed in the image in the order
 * it was staged. So staging gives up for the rest of the batch (the seal then reads the image, as before) when a write
 * is not sector-aligned (the batch also holds the image's bytes around it), does not fit, overlaps a write still in
 * flight (their order in the image is not known; the NBD server never does this: it orders overlapping requests), or
 * fails to reach the image; and the disk gives up on the batch where its ranges did not come from staged writes
 * (ranges replayed from the dirty log, a job's extra ranges, bitmap mode).
 */
export class WriteStaging {
  private buf: { payload: Buffer; release: () => void } | undefined;
  private used = 0;
  private entries: StagedWrite[] = [];
  private valid = true;
  /** Every entry starts at or after the end of the one before it: the entries in order are the payload. */
  private ascending = true;
  /** Staged writes not yet in the image. */
  private readonly inFlight = new Set<StagedWrite>();

  constructor(
    private readonly capacity: number,
    /** A buffer of at least `bytes` and the call that gives it back once its batch is durable (ReplicatedDisk.payloadBuffer). */
    private readonly take: (bytes: number) => { payload: Buffer; release: () => void },
  ) {}

  /**
   * Copies a write admitted into the open batch (already tracked, not yet written to the image); `landed` must follow
   * once the image write ends. Undefined when the write cannot be staged (staging has then given up on the batch).
   */
  stage(offset: number, data: Uint8Array): StagedWrite | undefined {
    if (!this.valid) return undefined;
    const end = offset + data.length;
    const overlaps = [...this.inFlight].some((w) => w.start < end && offset < w.end);
    if (offset % SECTOR !== 0 || data.length % SECTOR !== 0 || this.used + data.length > this.capacity || overlaps) {
      this.giveUp();
      return undefined;
    }
    this.buf ??= this.take(this.capacity);
    this.buf.payload.set(data, this.used);
    const last = this.entries[this.entries.length - 1];
    if (last && offset < last.end) this.ascending = false;
    const staged: StagedWrite = { start: offset, end, at: this.used };
    this.entries.push(staged);
    this.used += data.length;
    this.inFlight.add(staged);
    return staged;
  }

  /** The image write of a staged write ended; `ok` false: it failed, so the image may not hold what was staged. */
  landed(staged: StagedWrite | undefined, ok: boolean): void {
    if (!staged) return;
    this.inFlight.delete(staged);
    if (!ok) this.giveUp();
  }

  /** The open batch holds ranges that were not staged: its seal reads the image. */
  giveUp(): void {
    this.valid = false;
  }

  /**
   * Under the write lock, sealing exactly `ranges` (the open batch): its payload from the staged writes, or undefined
   * (staging gave up, or nothing was staged): read the image. The next batch starts with nothing staged either way.
   */
  seal(ranges: RangeSet): { payload: Buffer; release: () => void } | undefined {
    const buf = this.buf;
    const usable = this.valid && buf !== undefined && this.entries.length > 0 && this.inFlight.size === 0;
    let out: { payload: Buffer; release: () => void } | undefined;
    if (usable && this.ascending) {
      // Non-overlapping and in ascending order: their concatenation is the ranges' bytes in order.
      if (this.used === ranges.bytes) {
        out = { payload: buf.payload.subarray(0, this.used), release: buf.release };
        this.buf = undefined;
      }
    } else if (usable) {
      out = this.take(ranges.bytes);
      const starts: number[] = [];
      const offsets: number[] = [];
      let at = 0;
      for (const r of ranges) {
        starts.push(r.start);
        offsets.push(at);
        at += r.end - r.start;
      }
      // Each write lies inside one range (the ranges are the union of the writes); later writes overwrite earlier ones.
      for (const e of this.entries) {
        let lo = 0;
        let hi = starts.length - 1;
        while (lo < hi) {
          const mid = (lo + hi + 1) >> 1;
          if (starts[mid]! <= e.start) lo = mid;
          else hi = mid - 1;
        }
        buf.payload.copy(out.payload, offsets[lo]! + (e.start - starts[lo]!), e.at, e.at + (e.end - e.start));
      }
    }
    this.reset();
    return out;
  }

  /** The next batch starts with nothing staged (after a seal, or when the disk leaves bitmap mode with nothing dirty). */
  reset(): void {
    this.used = 0;
    this.entries = [];
    this.valid = true;
    this.ascending = true;
  }

  /** Gives the staging buffer back (the disk is closing). */
  close(): void {
    this.buf?.release();
    this.buf = undefined;
  }
}
