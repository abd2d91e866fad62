// Dirty blocks of a whole disk, one bit per block: what the agent tracks when the spool is full and write order is given up.
import type { Range } from "./ranges";

/** Granularity of bitmap mode: a write dirties the 16 KiB blocks it touches (1 TiB disk → 8 MiB bitmap). */
export const BITMAP_BLOCK_BYTES = 16 * 1024;

export class BlockBitmap {
  readonly bits: Uint8Array;
  readonly blocks: number;
  private dirtyBlocks = 0;
  /** Where the next `take` starts looking (blocks before it were clear when last looked at). */
  private hint = 0;

  constructor(
    readonly sizeBytes: number,
    readonly blockBytes = BITMAP_BLOCK_BYTES,
    bits?: Uint8Array,
  ) {
    this.blocks = Math.ceil(sizeBytes / blockBytes);
    const n = Math.ceil(this.blocks / 8);
    if (bits && bits.length !== n) throw new RangeError(`bitmap of ${bits.length} bytes does not describe ${this.blocks} blocks`);
    this.bits = bits ? Uint8Array.from(bits) : new Uint8Array(n);
    if (bits) for (const b of this.bits) this.dirtyBlocks += popcount(b);
  }

  get count(): number {
    return this.dirtyBlocks;
  }

  /** Bytes the dirty blocks cover (the last block may be short). */
  get dirtyBytes(): number {
    if (this.dirtyBlocks === 0) return 0;
    const lastShort = this.isSet(this.blocks - 1) ? this.blocks * this.blockBytes - this.sizeBytes : 0;
    return this.dirtyBlocks * this.blockBytes - lastShort;
  }

  isSet(block: number): boolean {
    return (this.bits[block >>> 3]! & (1 << (block & 7))) !== 0;
  }

  /** True when every block [start, end) touches is already dirty. */
  covers(start: number, end: number): boolean {
    for (let b = Math.floor(start / this.blockBytes); b * this.blockBytes < end; b++) if (!this.isSet(b)) return false;
    return true;
  }

  /** Marks the blocks [start, end) touches. */
  mark(start: number, end: number): void {
    const last = Math.min(this.blocks, Math.ceil(end / this.blockBytes));
    for (let b = Math.floor(start / this.blockBytes); b < last; b++) {
      const mask = 1 << (b & 7);
      const byte = this.bits[b >>> 3]!;
      if ((byte & mask) === 0) {
        this.bits[b >>> 3] = byte | mask;
        this.dirtyBlocks++;
        if (b < this.hint) this.hint = b;
      }
    }
  }

  /** Clears and returns dirty blocks, lowest first, as merged byte ranges covering at most `maxBytes` (at least one block). */
  take(maxBytes: number): Range[] {
    const out: Range[] = [];
    let taken = 0;
    let b = this.hint;
    while (this.dirtyBlocks > 0 && b < this.blocks && (taken === 0 || taken + this.blockBytes <= maxBytes)) {
      if (this.bits[b >>> 3] === 0) {
        b = (b | 7) + 1;
        continue;
      }
      if (this.isSet(b)) {
        this.bits[b >>> 3]! &= ~(1 << (b & 7));
        this.dirtyBlocks--;
        const start = b * this.blockBytes;
        const end = Math.min(this.sizeBytes, start + this.blockBytes);
        const prev = out[out.length - 1];
        if (prev && prev.end === start) prev.end = end;
        else out.push({ start, end });
        taken += end - start;
      }
      b++;
    }
    this.hint = this.dirtyBlocks === 0 ? 0 : b;
    if (this.dirtyBlocks > 0 && this.hint >= this.blocks) this.hint = 0;
    return out;
  }

  snapshot(): Buffer {
    return Buffer.from(this.bits);
  }
}

function popcount(byte: number): number {
  let n = 0;
  for (let b = byte; b; b &= b - 1) n++;
  return n;
}
