// Sets of byte ranges on a disk: the dirty set of the open batch, the blocks an initial copy or a resync ships.
import { SECTOR, type Extent } from "../shared/replication/batch";

/** A half-open byte range [start, end). */
export interface Range {
  start: number;
  end: number;
}

/** The 512-aligned range that encloses [offset, offset + length): what a write of those bytes dirties. */
export function alignOut(offset: number, length: number): Range {
  return { start: Math.floor(offset / SECTOR) * SECTOR, end: Math.ceil((offset + length) / SECTOR) * SECTOR };
}

/**
 * Sorted, non-overlapping, non-adjacent ranges (adjacent ones are merged, so the ranges are the batch's extents).
 * Sized for a batch's dirty set (thousands of ranges); whole-disk tracking uses BlockBitmap.
 */
export class RangeSet {
  private starts: number[] = [];
  private ends: number[] = [];
  private total = 0;

  static of(ranges: Iterable<Range>): RangeSet {
    const s = new RangeSet();
    for (const r of ranges) s.add(r.start, r.end);
    return s;
  }

  get bytes(): number {
    return this.total;
  }

  get size(): number {
    return this.starts.length;
  }

  get isEmpty(): boolean {
    return this.starts.length === 0;
  }

  /** Index of the first range whose end is ≥ `at` (the first that `at` may touch or precede). */
  private firstEndingAtOrAfter(at: number): number {
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! < at) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Adds [start, end); returns how many bytes were not in the set before. */
  add(start: number, end: number): number {
    if (end <= start) return 0;
    const i = this.firstEndingAtOrAfter(start);
    // Ranges i..j-1 touch or overlap [start, end) and merge with it.
    let j = i;
    let covered = 0;
    let s = start;
    let e = end;
    while (j < this.starts.length && this.starts[j]! <= end) {
      const rs = this.starts[j]!;
      const re = this.ends[j]!;
      covered += Math.max(0, Math.min(re, end) - Math.max(rs, start));
      if (rs < s) s = rs;
      if (re > e) e = re;
      j++;
    }
    const added = end - start - covered;
    if (j === i) {
      this.starts.splice(i, 0, s);
      this.ends.splice(i, 0, e);
    } else {
      this.starts[i] = s;
      this.ends[i] = e;
      if (j - i > 1) {
        this.starts.splice(i + 1, j - i - 1);
        this.ends.splice(i + 1, j - i - 1);
      }
    }
    this.total += added;
    return added;
  }

  addAll(other: RangeSet): void {
    for (const r of other) this.add(r.start, r.end);
  }

  /** True when every byte of [start, end) is in the set. */
  covers(start: number, end: number): boolean {
    if (end <= start) return true;
    const i = this.firstEndingAtOrAfter(end);
    return i < this.starts.length && this.starts[i]! <= start;
  }

  /** Bytes of [start, end) not yet in the set. */
  missing(start: number, end: number): number {
    let covered = 0;
    for (let i = this.firstEndingAtOrAfter(start + 1); i < this.starts.length && this.starts[i]! < end; i++) {
      covered += Math.min(this.ends[i]!, end) - Math.max(this.starts[i]!, start);
    }
    return end - start - covered;
  }

  clear(): void {
    this.starts = [];
    this.ends = [];
    this.total = 0;
  }

  *[Symbol.iterator](): IterableIterator<Range> {
    for (let i = 0; i < this.starts.length; i++) yield { start: this.starts[i]!, end: this.ends[i]! };
  }

  toArray(): Range[] {
    return [...this];
  }

  /** The ranges as batch extents: in offset order, none longer than `maxExtent` (an extent's length is a u32). */
  toExtents(maxExtent = 1024 * 1024 * 1024): Extent[] {
    const out: Extent[] = [];
    for (const r of this) {
      for (let at = r.start; at < r.end; at += maxExtent) out.push({ offset: at, length: Math.min(maxExtent, r.end - at) });
    }
    return out;
  }

  /** The set's ranges clipped to [0, limit). */
  clip(limit: number): RangeSet {
    const out = new RangeSet();
    for (const r of this) if (r.start < limit) out.add(r.start, Math.min(r.end, limit));
    return out;
  }
}

/**
 * The part of `found` (ranges ahead of a job's cursor, discovered up to `scannedTo`) that fits in `budget` bytes,
 * and how far the job has then progressed: everything before `progress` is either included or needs no shipping.
 */
export function takePrefix(found: RangeSet, budget: number, scannedTo: number): { ranges: RangeSet; progress: number; rest: RangeSet } {
  const ranges = new RangeSet();
  const rest = new RangeSet();
  let left = Math.max(0, Math.floor(budget / SECTOR) * SECTOR);
  let progress = scannedTo;
  for (const r of found) {
    if (progress !== scannedTo) {
      rest.add(r.start, r.end);
      continue;
    }
    const n = Math.min(left, r.end - r.start);
    if (n > 0) ranges.add(r.start, r.start + n);
    left -= n;
    if (r.start + n < r.end) {
      progress = r.start + n;
      rest.add(r.start + n, r.end);
    }
  }
  return { ranges, progress, rest };
}
