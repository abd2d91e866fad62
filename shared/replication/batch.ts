// The batch: a versioned binary header (item, disk, seq, extents, tag, write times, checksums) then the payload.
import { crc32c } from "@node-rs/crc32";

export const BATCH_MAGIC = "SRB1";
export const BATCH_VERSION = 1;
export const SECTOR = 512;
/** Azure accepts at most 4 MiB in one page write; a batch's payload is split into writes of at most this. */
export const MAX_PAGE_WRITE = 4 * 1024 * 1024;
/** Digits of the zero-padded sequence number in blob names, so that name order is sequence order. */
export const SEQ_DIGITS = 20;

export type TagKind = "crash" | "app";

export interface BatchTag {
  /** The same id on every disk of the VM (and every VM of a group) for one instant. */
  id: string;
  kind: TagKind;
  /** Source time of the tag, ISO 8601. */
  time: string;
  scope: "vm" | "group";
  /** Group tags: the replication group, and the items that took part in the barrier (all must reach the tag). */
  group?: string;
  members?: string[];
}

export interface Extent {
  /** 512-aligned offset on the disk. */
  offset: number;
  /** 512-multiple length. */
  length: number;
}

export interface BatchFlags {
  /** Part of initial replication (the first full copy). */
  initial?: boolean;
  /** The last batch of initial replication for this disk. */
  initialComplete?: boolean;
  /** Part of a resync: `resyncId` names it; the last one carries `resyncComplete`. */
  resyncId?: string;
  resyncComplete?: boolean;
}

export interface BatchHeader extends BatchFlags {
  itemId: string;
  diskId: string;
  seq: number;
  /** Non-overlapping, in offset order; the payload holds their bytes in that order. */
  extents: Extent[];
  tag?: BatchTag;
  /** Source time (ms since epoch) of the first and last write in the batch. */
  firstWriteMs: number;
  lastWriteMs: number;
  payloadLength: number;
  payloadCrc32c: number;
}

export interface Batch {
  header: BatchHeader;
  payload: Buffer;
}

export class CorruptBatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CorruptBatchError";
  }
}

/** `<disk>/<seq zero-padded>.batch` inside the item's cache container. */
export function batchBlobName(diskId: string, seq: number): string {
  return `${diskId}/${String(seq).padStart(SEQ_DIGITS, "0")}.batch`;
}

/** The sequence number in a batch blob name, or undefined when the name is not a batch's. */
export function seqOfBlobName(name: string): number | undefined {
  const m = /\/(\d{20})\.batch$/.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** The queue message that announces a batch (base64-encoded JSON on the wire, as the Functions trigger expects). */
export interface BatchMessage {
  v: 1;
  itemId: string;
  diskId: string;
  seq: number;
}

export function checkExtents(extents: Extent[], diskBytes?: number): void {
  let end = 0;
  for (const e of extents) {
    if (!Number.isSafeInteger(e.offset) || !Number.isSafeInteger(e.length) || e.offset % SECTOR || e.length % SECTOR || e.length <= 0) {
      throw new CorruptBatchError(`extent ${e.offset}+${e.length} is not 512-aligned`);
    }
    if (e.offset < end) throw new CorruptBatchError(`extent at ${e.offset} overlaps or is out of order`);
    end = e.offset + e.length;
  }
  if (diskBytes !== undefined && end > diskBytes) throw new CorruptBatchError(`extent ends at ${end}, past the disk's ${diskBytes} bytes`);
}

// Header layout (little-endian): magic[4] version u16 flags u16 headerLength u32 seq u64 firstWriteMs f64 lastWriteMs f64
// extentCount u32 payloadLength u32 payloadCrc32c u32, then itemId, diskId, resyncId, tag as u16-length UTF-8 strings,
// then extents (offset u64, length u32), then headerCrc32c u32 over everything before it.
const FLAG_INITIAL = 1;
const FLAG_INITIAL_COMPLETE = 2;
const FLAG_TAG = 4;
const FLAG_RESYNC = 8;
const FLAG_RESYNC_COMPLETE = 16;
const FIXED = 4 + 2 + 2 + 4 + 8 + 8 + 8 + 4 + 4 + 4;

function str(s: string): Buffer {
  const b = Buffer.from(s, "utf8");
  if (b.length > 0xffff) throw new RangeError("header string too long");
  const out = Buffer.alloc(2 + b.length);
  out.writeUInt16LE(b.length, 0);
  b.copy(out, 2);
  return out;
}

/** Encodes a batch; the payload checksum is computed here. */
export function encodeBatch(h: Omit<BatchHeader, "payloadLength" | "payloadCrc32c">, payload: Buffer): Buffer {
  return Buffer.concat([encodeBatchHeader(h, payload), payload]);
}

/**
 * A batch's header alone (the payload's checksum in it): the batch is this followed by the payload, so that a writer
 * can write both without copying the payload into one buffer.
 */
export function encodeBatchHeader(h: Omit<BatchHeader, "payloadLength" | "payloadCrc32c">, payload: Buffer): Buffer {
  checkExtents(h.extents);
  const total = h.extents.reduce((n, e) => n + e.length, 0);
  if (total !== payload.length) throw new RangeError(`extents cover ${total} bytes but the payload has ${payload.length}`);
  const flags =
    (h.initial ? FLAG_INITIAL : 0) |
    (h.initialComplete ? FLAG_INITIAL_COMPLETE : 0) |
    (h.tag ? FLAG_TAG : 0) |
    (h.resyncId ? FLAG_RESYNC : 0) |
    (h.resyncComplete ? FLAG_RESYNC_COMPLETE : 0);
  const strings = Buffer.concat([str(h.itemId), str(h.diskId), str(h.resyncId ?? ""), str(h.tag ? JSON.stringify(h.tag) : "")]);
  const ext = Buffer.alloc(h.extents.length * 12);
  h.extents.forEach((e, i) => {
    ext.writeBigUInt64LE(BigInt(e.offset), i * 12);
    ext.writeUInt32LE(e.length, i * 12 + 8);
  });
  const headerLength = FIXED + strings.length + ext.length + 4;
  const fixed = Buffer.alloc(FIXED);
  fixed.write(BATCH_MAGIC, 0, "ascii");
  fixed.writeUInt16LE(BATCH_VERSION, 4);
  fixed.writeUInt16LE(flags, 6);
  fixed.writeUInt32LE(headerLength, 8);
  fixed.writeBigUInt64LE(BigInt(h.seq), 12);
  fixed.writeDoubleLE(h.firstWriteMs, 20);
  fixed.writeDoubleLE(h.lastWriteMs, 28);
  fixed.writeUInt32LE(h.extents.length, 36);
  fixed.writeUInt32LE(payload.length, 40);
  fixed.writeUInt32LE(crc32c(payload), 44);
  const head = Buffer.concat([fixed, strings, ext]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32c(head), 0);
  return Buffer.concat([head, crc]);
}

/**
 * The length of a batch's header, read from the batch's first bytes (at least the fixed part; the header itself may be
 * longer than `start`); undefined if `start` does not begin like a batch of this version.
 */
export function batchHeaderLength(start: Buffer): number | undefined {
  if (start.length < FIXED || start.toString("ascii", 0, 4) !== BATCH_MAGIC || start.readUInt16LE(4) !== BATCH_VERSION) return undefined;
  const headerLength = start.readUInt32LE(8);
  return headerLength >= FIXED + 4 ? headerLength : undefined;
}

/**
 * The write times of a batch whose header checksum holds, without checking the payload (the apply side does that);
 * undefined for anything that is not a batch header.
 */
export function batchWriteTimes(buf: Buffer): { firstWriteMs: number; lastWriteMs: number } | undefined {
  const headerLength = batchHeaderLength(buf);
  if (headerLength === undefined || headerLength > buf.length) return undefined;
  if (crc32c(buf.subarray(0, headerLength - 4)) !== buf.readUInt32LE(headerLength - 4)) return undefined;
  return { firstWriteMs: buf.readDoubleLE(20), lastWriteMs: buf.readDoubleLE(28) };
}

/** Decodes and verifies a batch; anything inconsistent is a CorruptBatchError, never a partial result. */
export function decodeBatch(buf: Buffer): Batch {
  if (buf.length < FIXED + 4) throw new CorruptBatchError(`batch of ${buf.length} bytes is shorter than a header`);
  if (buf.toString("ascii", 0, 4) !== BATCH_MAGIC) throw new CorruptBatchError("not a batch (bad magic)");
  const version = buf.readUInt16LE(4);
  if (version !== BATCH_VERSION) throw new CorruptBatchError(`batch version ${version} is not supported`);
  const flags = buf.readUInt16LE(6);
  const headerLength = buf.readUInt32LE(8);
  if (headerLength < FIXED + 4 || headerLength > buf.length) throw new CorruptBatchError("header length out of range");
  if (crc32c(buf.subarray(0, headerLength - 4)) !== buf.readUInt32LE(headerLength - 4)) {
    throw new CorruptBatchError("header checksum mismatch");
  }
  const extentCount = buf.readUInt32LE(36);
  const payloadLength = buf.readUInt32LE(40);
  const payloadCrc32c = buf.readUInt32LE(44);
  let at = FIXED;
  const readStr = () => {
    const n = buf.readUInt16LE(at);
    const s = buf.toString("utf8", at + 2, at + 2 + n);
    at += 2 + n;
    return s;
  };
  const itemId = readStr();
  const diskId = readStr();
  const resyncId = readStr();
  const tagJson = readStr();
  const extents: Extent[] = [];
  for (let i = 0; i < extentCount; i++) {
    extents.push({ offset: Number(buf.readBigUInt64LE(at)), length: buf.readUInt32LE(at + 8) });
    at += 12;
  }
  if (at + 4 !== headerLength) throw new CorruptBatchError("header layout mismatch");
  const payload = buf.subarray(headerLength);
  if (payload.length !== payloadLength) throw new CorruptBatchError(`payload is ${payload.length} bytes, header says ${payloadLength}`);
  if (crc32c(payload) !== payloadCrc32c) throw new CorruptBatchError("payload checksum mismatch");
  checkExtents(extents);
  if (extents.reduce((n, e) => n + e.length, 0) !== payloadLength) throw new CorruptBatchError("extents do not cover the payload");
  const header: BatchHeader = {
    itemId,
    diskId,
    seq: Number(buf.readBigUInt64LE(12)),
    extents,
    firstWriteMs: buf.readDoubleLE(20),
    lastWriteMs: buf.readDoubleLE(28),
    payloadLength,
    payloadCrc32c,
    ...(flags & FLAG_INITIAL ? { initial: true } : {}),
    ...(flags & FLAG_INITIAL_COMPLETE ? { initialComplete: true } : {}),
    ...(flags & FLAG_RESYNC ? { resyncId } : {}),
    ...(flags & FLAG_RESYNC_COMPLETE ? { resyncComplete: true } : {}),
    ...(flags & FLAG_TAG ? { tag: JSON.parse(tagJson) as BatchTag } : {}),
  };
  return { header, payload };
}

/**
 * The page writes that apply a batch: contiguous extents merged, each write ≤ 4 MiB,
 * as (offset, payload slice) in disk order.
 */
export function pageWrites(batch: Batch): { offset: number; data: Buffer }[] {
  const out: { offset: number; data: Buffer }[] = [];
  let p = 0;
  let run: { offset: number; start: number; length: number } | undefined;
  const flush = () => {
    if (!run) return;
    for (let i = 0; i < run.length; i += MAX_PAGE_WRITE) {
      const n = Math.min(MAX_PAGE_WRITE, run.length - i);
      out.push({ offset: run.offset + i, data: batch.payload.subarray(run.start + i, run.start + i + n) });
    }
    run = undefined;
  };
  for (const e of batch.header.extents) {
    if (run && run.offset + run.length === e.offset) run.length += e.length;
    else {
      flush();
      run = { offset: e.offset, start: p, length: e.length };
    }
    p += e.length;
  }
  flush();
  return out;
}

/**
 * The page writes that apply consecutive batches at once, as if each were applied in turn: where extents overlap, the
 * later batch's bytes win; neighbouring pieces smaller than `mergeUpTo` are joined into one write (fewer requests for
 * small scattered writes). One batch gives exactly pageWrites(batch).
 */
export function mergedPageWrites(batches: Batch[], mergeUpTo = MAX_PAGE_WRITE): { offset: number; data: Buffer }[] {
  if (batches.length === 1) return pageWrites(batches[0]!);
  let segments: { offset: number; data: Buffer }[] = [];
  for (const b of batches) segments = overlay(segments, pageWrites(b));
  const out: { offset: number; data: Buffer }[] = [];
  let run: { offset: number; parts: Buffer[]; length: number } | undefined;
  const flush = () => {
    if (run) out.push({ offset: run.offset, data: run.parts.length === 1 ? run.parts[0]! : Buffer.concat(run.parts, run.length) });
    run = undefined;
  };
  for (const s of segments) {
    if (run && run.offset + run.length === s.offset && run.length + s.data.length <= Math.min(mergeUpTo, MAX_PAGE_WRITE)) {
      run.parts.push(s.data);
      run.length += s.data.length;
    } else {
      flush();
      run = { offset: s.offset, parts: [s.data], length: s.data.length };
    }
  }
  flush();
  return out;
}

/** `top` laid over `base` (each sorted by offset and disjoint): top whole, and what it leaves of base; sorted, disjoint. */
function overlay(base: { offset: number; data: Buffer }[], top: { offset: number; data: Buffer }[]): { offset: number; data: Buffer }[] {
  const out = [...top];
  let j = 0;
  for (const s of base) {
    const end = s.offset + s.data.length;
    while (j < top.length && top[j]!.offset + top[j]!.data.length <= s.offset) j++;
    let at = s.offset;
    for (let k = j; k < top.length && top[k]!.offset < end; k++) {
      const t = top[k]!;
      if (t.offset > at) out.push({ offset: at, data: s.data.subarray(at - s.offset, t.offset - s.offset) });
      at = Math.max(at, t.offset + t.data.length);
    }
    if (at < end) out.push({ offset: at, data: s.data.subarray(at - s.offset) });
  }
  return out.sort((a, b) => a.offset - b.offset);
}
