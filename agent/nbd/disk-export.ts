// The disk adapter: a TrackedDisk as an NBD export — reads and writes in receipt order where they overlap, zeroes in bounded pieces, FLUSH and FUA made durable.
import { WritesRefusedError, type TrackedDisk } from "../tracked-disk";
import { NbdErr, type NbdErrno } from "./protocol";
import { RangeOrder } from "./range-order";

/** WRITE_ZEROES is written through the tracked disk in pieces of this size (one shared, never-written zero buffer). */
export const ZERO_PIECE_BYTES = 1024 * 1024;
const ZEROES = Buffer.alloc(ZERO_PIECE_BYTES);

/** What the server needs of an export. Calls are ordered by when they are made (see RangeOrder): make them on receipt. */
export interface NbdExport {
  readonly name: string;
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
  /** Resolves once the bytes are in the image and in the replication stream; `fua`: and durable. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void>;
  /** Contents after TRIM are unspecified by the protocol: the range is left as it is (see the README's NBD section). */
  trim(offset: number, length: number): Promise<void>;
  /** Every write acknowledged before the call is durable. */
  flush(): Promise<void>;
}

export class TrackedDiskExport implements NbdExport {
  private readonly order = new RangeOrder();

  constructor(private readonly disk: TrackedDisk) {}

  get name(): string {
    return this.disk.id;
  }

  get size(): number {
    return this.disk.sizeBytes;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const release = await this.order.admit(offset, offset + length, false);
    try {
      return await this.disk.read(offset, length);
    } finally {
      release();
    }
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const release = await this.order.admit(offset, offset + data.length, true);
    try {
      await this.disk.write(offset, data);
    } finally {
      release();
    }
    // FUA: image fdatasync + write-ahead log fsync (TrackedDisk.syncWrites), not a sealed batch.
    if (fua) await this.disk.syncWrites();
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    const release = await this.order.admit(offset, offset + length, true);
    try {
      for (let at = 0; at < length; at += ZERO_PIECE_BYTES) {
        await this.disk.write(offset + at, ZEROES.subarray(0, Math.min(ZERO_PIECE_BYTES, length - at)));
      }
    } finally {
      release();
    }
    if (fua) await this.disk.syncWrites();
  }

  async trim(_offset: number, _length: number): Promise<void> {
    // Deliberately nothing: the image and the replica stay equal, and a filesystem's discards cost no replication.
  }

  flush(): Promise<void> {
    return this.disk.syncWrites();
  }
}

/** The reply's error for a failed export call: refused writes (planned failover) are a shutdown, the rest an I/O error. */
export function nbdErrorOf(e: unknown): NbdErrno {
  if (e instanceof WritesRefusedError) return NbdErr.ESHUTDOWN;
  if (e instanceof RangeError) return NbdErr.EINVAL;
  return NbdErr.EIO;
}
