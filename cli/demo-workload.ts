// The drill's workload and its witness: random writes by a real NBD client (qemu-io) through the agents' exports, and every disk fingerprinted at each group cut.
import { setTimeout as sleep } from "node:timers/promises";
import { closeSync, openSync, readSync } from "node:fs";
import { crc32c } from "@node-rs/crc32";
import type { BatchTag } from "../shared/replication/batch";
import { QemuIo } from "./qemu-io";
import { BLOCK, KEEP_TAGS, MiB } from "./demo-model";
import { DemoError } from "./demo-model";

// ---------------------------------------------------------------------------------------------
// Fingerprints: each disk as it is at a group cut, 4 bytes per 64 KiB block

const readBuffer = Buffer.alloc(4 * MiB);

/** CRC32C of every 64 KiB block of an image file, read now (synchronously: it runs at the cut, writes held). */
export function fingerprintFile(path: string, sizeBytes: number): Uint32Array {
  const out = new Uint32Array(Math.ceil(sizeBytes / BLOCK));
  const fd = openSync(path, "r");
  try {
    for (let at = 0; at < sizeBytes; at += readBuffer.length) {
      const n = Math.min(readBuffer.length, sizeBytes - at);
      let got = 0;
      while (got < n) {
        const r = readSync(fd, readBuffer, got, n - got, at + got);
        if (r === 0) break;
        got += r;
      }
      readBuffer.fill(0, got, n); // past the end of a short image: zeros
      for (let b = 0; b < n; b += BLOCK) out[(at + b) / BLOCK] = crc32c(readBuffer.subarray(b, Math.min(n, b + BLOCK)));
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** Per group tag, each VM's disks at the cut (keyed `<itemId>/<diskId>`); only the newest KEEP_TAGS tags. */
export class CutFingerprints {
  private readonly tags = new Map<string, { time: string; disks: Map<string, Uint32Array> }>();

  record(itemId: string, tag: BatchTag, disks: { id: string; path: string; sizeBytes: number }[]): void {
    let entry = this.tags.get(tag.id);
    if (!entry) {
      entry = { time: tag.time, disks: new Map() };
      this.tags.set(tag.id, entry);
      for (const old of [...this.tags.keys()].slice(0, Math.max(0, this.tags.size - KEEP_TAGS))) this.tags.delete(old);
    }
    for (const d of disks) entry.disks.set(`${itemId}/${d.id}`, fingerprintFile(d.path, d.sizeBytes));
  }

  get(tagId: string, itemId: string, diskId: string): Uint32Array | undefined {
    return this.tags.get(tagId)?.disks.get(`${itemId}/${diskId}`);
  }

  has(tagId: string): boolean {
    return this.tags.has(tagId);
  }
}

// ---------------------------------------------------------------------------------------------
// The workload: random 4 KiB-aligned writes by a real NBD client (qemu-io) through the agent's exports, each awaited, paced to a rate

export interface DiskTarget {
  vm: string;
  itemId: string;
  diskId: string;
  /** The agent's NBD socket: the disk is the export named after its id. */
  socket: string;
  sizeBytes: number;
}

export class Workload {
  /** The acknowledged writes per disk (`<vm>/<diskId>`): what the workload knows reached its disk. */
  readonly acknowledged = new Map<string, { writes: number; bytes: number }>();
  failure: Error | undefined;
  private running = true;
  private readonly loops: Promise<void>[];

  constructor(targets: DiskTarget[], bytesPerSecond: number) {
    const perDisk = bytesPerSecond / targets.length;
    this.loops = targets.map((t) => this.writer(t, perDisk));
  }

  get bytes(): number {
    let n = 0;
    for (const a of this.acknowledged.values()) n += a.bytes;
    return n;
  }

  get writes(): number {
    let n = 0;
    for (const a of this.acknowledged.values()) n += a.writes;
    return n;
  }

  private async writer(t: DiskTarget, bytesPerSecond: number): Promise<void> {
    const io = QemuIo.open(`nbd+unix:///${t.diskId}?socket=${t.socket}`);
    try {
      await this.write(t, io, bytesPerSecond);
    } finally {
      await io.close();
    }
  }

  private async write(t: DiskTarget, io: QemuIo, bytesPerSecond: number): Promise<void> {
    const acked = { writes: 0, bytes: 0 };
    this.acknowledged.set(`${t.vm}/${t.diskId}`, acked);
    const pages = t.sizeBytes / 4096;
    const started = performance.now();
    while (this.running) {
      const len = 4096 * (1 + Math.floor(Math.random() * 16));
      const offset = 4096 * Math.floor(Math.random() * (pages - len / 4096 + 1));
      try {
        // Each write its own byte value: a write lost or applied out of order shows in the fingerprints.
        await io.write(offset, len, 1 + (acked.writes % 255));
      } catch (e) {
        this.failure ??= new DemoError(`a write to ${t.vm}/${t.diskId} failed: ${(e as Error).message}`);
        return;
      }
      acked.writes++;
      acked.bytes += len;
      const due = started + (acked.bytes / bytesPerSecond) * 1000;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }
}
