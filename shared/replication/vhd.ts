// Fixed-VHD footers: builds, parses and checks the 512-byte trailer that turns raw disk bytes into an Azure page-blob disk.
import { randomBytes } from "node:crypto";

/** Size of a VHD footer; a fixed VHD is the raw disk bytes followed by one footer. */
export const VHD_FOOTER_BYTES = 512;

const MIB = 1024 * 1024;
const SECTOR = 512;
const COOKIE = "conectix";
const FEATURES = 0x00000002;
const FORMAT_VERSION = 0x00010000;
const FIXED_DATA_OFFSET = 0xffffffffffffffffn;
/** Hyper-V's creator; qemu-img trusts the footer's current size only for a few creators, this one among them. */
const CREATOR_APPLICATION = "win ";
const CREATOR_VERSION = 0x000a0000;
const CREATOR_HOST_OS = "Wi2k";
const DISK_TYPE_FIXED = 2;
/** Largest total sector count the CHS geometry can describe (about 127.5 GiB). */
const MAX_CHS_SECTORS = 65535 * 16 * 255;
/** The VHD timestamp epoch: 2000-01-01T00:00:00Z, in ms since the Unix epoch. */
const VHD_EPOCH_MS = Date.UTC(2000, 0, 1, 0, 0, 0);
/** Largest disk accepted: 8 TiB - 1 MiB, so disk plus footer fits an 8 TiB page blob (Azure's page-blob limit). */
const MAX_SIZE_BYTES = 8 * 1024 * 1024 * MIB - MIB;

// Field offsets in the footer (VHD specification, "Hard Disk Footer Format").
const OFF = {
  cookie: 0,
  features: 8,
  formatVersion: 12,
  dataOffset: 16,
  timestamp: 24,
  creatorApplication: 28,
  creatorVersion: 32,
  creatorHostOs: 36,
  originalSize: 40,
  currentSize: 48,
  cylinders: 56,
  heads: 58,
  sectorsPerTrack: 59,
  diskType: 60,
  checksum: 64,
  uniqueId: 68,
  savedState: 84,
} as const;

export interface ChsGeometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

export interface VhdFooterOptions {
  /** 16 bytes; random by default. */
  uniqueId?: Buffer;
  /** Creation time; now by default. Must lie in 2000-01-01 .. 2136-02-07 (an unsigned 32-bit second count). */
  timestamp?: Date;
}

export interface ParsedVhdFooter {
  cookie: string;
  diskType: number;
  currentSize: number;
  originalSize: number;
  checksumValid: boolean;
  geometry: ChsGeometry;
  uniqueId: Buffer;
  timestamp: Date;
  creatorApplication: string;
}

/** The VHD specification's CHS geometry for a disk of sizeBytes (total sectors capped at 65535*16*255). */
export function chsGeometry(sizeBytes: number): ChsGeometry {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
    throw new RangeError(`disk size must be a non-negative whole number of bytes, got ${sizeBytes}`);
  }
  const totalSectors = Math.min(Math.floor(sizeBytes / SECTOR), MAX_CHS_SECTORS);
  let sectorsPerTrack: number;
  let heads: number;
  let cylinderTimesHeads: number;
  if (totalSectors >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    heads = Math.max(Math.floor((cylinderTimesHeads + 1023) / 1024), 4);
    if (cylinderTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    }
    if (cylinderTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylinderTimesHeads / heads), heads, sectorsPerTrack };
}

/** One's complement of the byte sum of the footer, with the checksum field counted as zero. */
function footerChecksum(footer: Buffer): number {
  let sum = 0;
  for (let i = 0; i < VHD_FOOTER_BYTES; i++) {
    if (i >= OFF.checksum && i < OFF.checksum + 4) continue;
    sum += footer[i]!;
  }
  return ~sum >>> 0;
}

function assertDiskSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % MIB !== 0) {
    throw new RangeError(`VHD disk size must be a positive whole number of MiB, got ${sizeBytes} bytes`);
  }
  if (sizeBytes > MAX_SIZE_BYTES) {
    throw new RangeError(
      `VHD disk size must be at most ${MAX_SIZE_BYTES} bytes (8 TiB - 1 MiB, so the page blob with its footer stays within 8 TiB), got ${sizeBytes}`,
    );
  }
}

/** The 512-byte footer of a fixed VHD whose disk is sizeBytes long (a positive whole number of MiB, at most 8 TiB - 1 MiB). */
export function vhdFooter(sizeBytes: number, opts: VhdFooterOptions = {}): Buffer {
  assertDiskSize(sizeBytes);
  const uniqueId = opts.uniqueId ?? randomBytes(16);
  if (uniqueId.length !== 16) {
    throw new RangeError(`VHD unique id must be 16 bytes, got ${uniqueId.length}`);
  }
  const when = opts.timestamp ?? new Date();
  const seconds = Math.floor((when.getTime() - VHD_EPOCH_MS) / 1000);
  if (!Number.isSafeInteger(seconds) || seconds < 0 || seconds > 0xffffffff) {
    throw new RangeError(`VHD timestamp must lie between 2000-01-01 and 2136-02-07, got ${String(when)}`);
  }
  const geometry = chsGeometry(sizeBytes);

  const footer = Buffer.alloc(VHD_FOOTER_BYTES);
  footer.write(COOKIE, OFF.cookie, "ascii");
  footer.writeUInt32BE(FEATURES, OFF.features);
  footer.writeUInt32BE(FORMAT_VERSION, OFF.formatVersion);
  footer.writeBigUInt64BE(FIXED_DATA_OFFSET, OFF.dataOffset);
  footer.writeUInt32BE(seconds, OFF.timestamp);
  footer.write(CREATOR_APPLICATION, OFF.creatorApplication, "ascii");
  footer.writeUInt32BE(CREATOR_VERSION, OFF.creatorVersion);
  footer.write(CREATOR_HOST_OS, OFF.creatorHostOs, "ascii");
  footer.writeBigUInt64BE(BigInt(sizeBytes), OFF.originalSize);
  footer.writeBigUInt64BE(BigInt(sizeBytes), OFF.currentSize);
  footer.writeUInt16BE(geometry.cylinders, OFF.cylinders);
  footer.writeUInt8(geometry.heads, OFF.heads);
  footer.writeUInt8(geometry.sectorsPerTrack, OFF.sectorsPerTrack);
  footer.writeUInt32BE(DISK_TYPE_FIXED, OFF.diskType);
  uniqueId.copy(footer, OFF.uniqueId);
  footer.writeUInt8(0, OFF.savedState);
  footer.writeUInt32BE(footerChecksum(footer), OFF.checksum);
  return footer;
}

/** Reads the fields of a 512-byte VHD footer; throws RangeError if it is not 512 bytes. Does not judge validity. */
export function parseVhdFooter(footer: Buffer): ParsedVhdFooter {
  if (footer.length !== VHD_FOOTER_BYTES) {
    throw new RangeError(`VHD footer must be ${VHD_FOOTER_BYTES} bytes, got ${footer.length}`);
  }
  return {
    cookie: footer.toString("latin1", OFF.cookie, OFF.cookie + 8),
    diskType: footer.readUInt32BE(OFF.diskType),
    currentSize: Number(footer.readBigUInt64BE(OFF.currentSize)),
    originalSize: Number(footer.readBigUInt64BE(OFF.originalSize)),
    checksumValid: footer.readUInt32BE(OFF.checksum) === footerChecksum(footer),
    geometry: {
      cylinders: footer.readUInt16BE(OFF.cylinders),
      heads: footer.readUInt8(OFF.heads),
      sectorsPerTrack: footer.readUInt8(OFF.sectorsPerTrack),
    },
    uniqueId: Buffer.from(footer.subarray(OFF.uniqueId, OFF.uniqueId + 16)),
    timestamp: new Date(VHD_EPOCH_MS + footer.readUInt32BE(OFF.timestamp) * 1000),
    creatorApplication: footer.toString("latin1", OFF.creatorApplication, OFF.creatorApplication + 4),
  };
}

/**
 * True if footer is a well-formed fixed-VHD footer: 512 bytes, cookie "conectix", valid checksum, format
 * version 1.0, fixed data offset, disk type 2, current size a positive whole number of MiB (and equal to
 * sizeBytes when given).
 */
export function isValidFixedVhdFooter(footer: Buffer, sizeBytes?: number): boolean {
  if (footer.length !== VHD_FOOTER_BYTES) return false;
  const parsed = parseVhdFooter(footer);
  if (parsed.cookie !== COOKIE || !parsed.checksumValid) return false;
  if (footer.readUInt32BE(OFF.formatVersion) !== FORMAT_VERSION) return false;
  if (footer.readBigUInt64BE(OFF.dataOffset) !== FIXED_DATA_OFFSET) return false;
  if (parsed.diskType !== DISK_TYPE_FIXED) return false;
  const size = parsed.currentSize;
  if (!Number.isSafeInteger(size) || size <= 0 || size % MIB !== 0) return false;
  return sizeBytes === undefined || size === sizeBytes;
}
