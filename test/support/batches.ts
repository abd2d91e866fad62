// Batches for tests, built with the real encoder, and a byte model of the disk they should produce.
import { encodeBatch, type BatchFlags, type BatchTag, type Extent } from "../../shared/replication/batch";

export const SECTOR = 512;
export const KiB = 1024;
export const MiB = 1024 * 1024;

/** Deterministic pseudo-random numbers (mulberry32), so a failing case can be replayed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomBytes(next: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i + 4 <= n; i += 4) b.writeUInt32LE(Math.floor(next() * 4294967296), i);
  for (let i = n - (n % 4); i < n; i++) b[i] = Math.floor(next() * 256);
  return b;
}

export interface Write {
  offset: number;
  data: Buffer;
}

/** Disjoint sector-aligned writes in offset order (adjacent ones allowed), as a batch carries them. */
export function randomWrites(next: () => number, diskBytes: number, count: number, maxBytes = 64 * KiB): Write[] {
  const sectors = diskBytes / SECTOR;
  const picked: Write[] = [];
  for (let i = 0; i < count; i++) {
    const len = (1 + Math.floor(next() * (maxBytes / SECTOR))) * SECTOR;
    const offset = Math.floor(next() * (sectors - len / SECTOR)) * SECTOR;
    picked.push({ offset, data: randomBytes(next, len) });
  }
  picked.sort((a, b) => a.offset - b.offset);
  const out: Write[] = [];
  let end = 0;
  for (const w of picked) {
    if (w.offset < end) continue;
    out.push(w);
    end = w.offset + w.data.length;
  }
  return out;
}

/** What the source disk holds: every write applied in order. */
export class DiskModel {
  readonly bytes: Buffer;
  constructor(readonly sizeBytes: number) {
    this.bytes = Buffer.alloc(sizeBytes);
  }
  apply(writes: Write[]): void {
    for (const w of writes) w.data.copy(this.bytes, w.offset);
  }
  clone(): DiskModel {
    const m = new DiskModel(this.sizeBytes);
    this.bytes.copy(m.bytes);
    return m;
  }
}

export interface BatchSpec extends BatchFlags {
  itemId: string;
  diskId: string;
  seq: number;
  writes: Write[];
  tag?: BatchTag;
  firstWriteMs?: number;
  lastWriteMs?: number;
}

export function encodeWrites(spec: BatchSpec): Buffer {
  const extents: Extent[] = spec.writes.map((w) => ({ offset: w.offset, length: w.data.length }));
  const now = Date.now();
  const { writes: _writes, firstWriteMs, lastWriteMs, ...rest } = spec;
  return encodeBatch(
    { ...rest, extents, firstWriteMs: firstWriteMs ?? now - 1000, lastWriteMs: lastWriteMs ?? now },
    Buffer.concat(spec.writes.map((w) => w.data)),
  );
}
