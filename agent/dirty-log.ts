// The per-disk write-ahead log of dirty ranges: a range is appended before the image is written, so that a restarted agent knows what to ship again.
import { close, closeSync, existsSync, fdatasync, open, openSync, readdirSync, readFileSync, renameSync, write, writeSync } from "node:fs";
import { unlink } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { crc32c } from "@node-rs/crc32";
import type { Range } from "./ranges";

/** One record: offset u64, length u32, crc32c of the 12 bytes before it (a torn tail is recognised and ignored). */
export const DIRTY_RECORD_BYTES = 16;

export function encodeDirtyRecord(offset: number, length: number, into = Buffer.alloc(DIRTY_RECORD_BYTES)): Buffer {
  into.writeBigUInt64LE(BigInt(offset), 0);
  into.writeUInt32LE(length, 8);
  into.writeUInt32LE(crc32c(into.subarray(0, 12)), 12);
  return into;
}

/** The ranges of a log's bytes, up to the first record that is torn or not a record. */
export function parseDirtyLog(buf: Buffer): Range[] {
  const out: Range[] = [];
  for (let at = 0; at + DIRTY_RECORD_BYTES <= buf.length; at += DIRTY_RECORD_BYTES) {
    if (crc32c(buf.subarray(at, at + 12)) !== buf.readUInt32LE(at + 12)) break;
    const start = Number(buf.readBigUInt64LE(at));
    out.push({ start, end: start + buf.readUInt32LE(at + 8) });
  }
  return out;
}

/**
 * A generation's file is zero-filled ahead of its records, this much at a time, and records overwrite the zeros: a sync
 * then changes no file size or block allocation, so on ext4 its fdatasync writes one page and skips the journal commit
 * (which would wait behind every other file's pending metadata: the spool's, the image's, other processes'). A zero
 * record fails its checksum, so replay stops where the records end.
 */
const PREFILL_BYTES = 64 * 1024;
const ZEROS = Buffer.alloc(PREFILL_BYTES);

const LOG_NAME = /^dirty\.(\d+)\.log$/;
const logName = (gen: number) => `dirty.${gen}.log`;
/**
 * The next generation's file, made ready off the event loop (created, zero-filled and fdatasynced) so that a rotation —
 * under the disk's write lock, on the event loop — only renames it: creating and filling a file there could wait behind
 * an ext4 journal commit, holding every write back, and the first sync of a fresh file would itself need one.
 */
const SPARE_NAME = "dirty-next.log";

const openAsync = promisify(open);
const writeAsync = promisify(write);
const fdatasyncAsync = promisify(fdatasync);

function writeAll(fd: number, data: Buffer, position: number): void {
  for (let done = 0; done < data.length;) done += writeSync(fd, data, done, data.length - done, position + done);
}

/**
 * Generations of log files: a seal rotates to a new generation under the disk's write lock, and a generation's file is
 * removed once the batch that carries its ranges is durable in the spool. An append is a synchronous write of one
 * 16-byte record into the page cache (microseconds): the writer of the image never queues behind image and spool I/O
 * on libuv's threadpool for it, and once it returns the process may die, the range is not lost. Nothing is synced but
 * on `sync` (an NBD flush or FUA write): the agent protects against its own death by default, and against power loss
 * for what a client asked to be durable.
 */
export class DirtyLog {
  private fd: number;
  /** Generations rotated away whose files may hold records not yet fsynced: kept open until synced or removed. */
  private readonly retired = new Map<number, number>();
  /** Descriptors a sync is using: closed when it ends, not under its feet. */
  private readonly syncingFds = new Map<number, number>();
  private readonly closeAfterSync = new Set<number>();
  private records = 0;
  /** Bytes of the current generation's file that are zero-filled or records. */
  private prefilled = 0;
  private readonly record = Buffer.alloc(DIRTY_RECORD_BYTES);
  private readonly gens: Set<number>;
  /** The spare file's descriptor once it is ready; whether one is being made. */
  private spare: number | undefined;
  private preparing: Promise<void> | undefined;
  private closed = false;

  private constructor(
    private readonly dir: string,
    private gen: number,
    existing: number[],
  ) {
    this.fd = this.create(gen);
    this.gens = new Set([...existing, gen]);
    this.prepareSpare();
  }

  /** Opens the log in `dir`: the ranges of every generation left by a previous run, and a fresh generation to append to. */
  static open(dir: string): { log: DirtyLog; replayed: Range[]; replayedGens: number[] } {
    const gens = readdirSync(dir)
      .map((n) => LOG_NAME.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
    // A spare holding records was a generation whose rename a power cut undid (a sync of its records does not commit
    // the rename): it is the newest generation.
    const spare = join(dir, SPARE_NAME);
    if (existsSync(spare) && parseDirtyLog(readFileSync(spare)).length > 0) {
      const gen = (gens[gens.length - 1] ?? 0) + 1;
      renameSync(spare, join(dir, logName(gen)));
      gens.push(gen);
    }
    const replayed = gens.flatMap((g) => parseDirtyLog(readFileSync(join(dir, logName(g)))));
    return { log: new DirtyLog(dir, (gens[gens.length - 1] ?? 0) + 1, gens), replayed, replayedGens: gens };
  }

  get generation(): number {
    return this.gen;
  }

  /** Records appended to the current generation. */
  get length(): number {
    return this.records;
  }

  /** Creates a generation's file, zero-filled ahead (see PREFILL_BYTES). */
  private create(gen: number): number {
    const fd = openSync(join(this.dir, logName(gen)), "w");
    this.prefilled = 0;
    try {
      this.prefill(fd);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    return fd;
  }

  private prefill(fd: number): void {
    writeAll(fd, ZEROS, this.prefilled);
    this.prefilled += PREFILL_BYTES;
  }

  /** Appends a range (written when this returns; throws if it cannot be). */
  append(offset: number, length: number): void {
    const at = this.records * DIRTY_RECORD_BYTES;
    if (at + DIRTY_RECORD_BYTES > this.prefilled) this.prefill(this.fd);
    writeAll(this.fd, encodeDirtyRecord(offset, length, this.record), at);
    this.records++;
  }

  /**
   * Starts a new generation; returns the one that ended (remove it, and every older one, once its ranges are durable
   * elsewhere). Called under the write lock.
   */
  rotate(): number {
    const ended = this.gen;
    this.retired.set(ended, this.fd);
    this.gen++;
    this.fd = this.takeSpare(this.gen) ?? this.create(this.gen);
    this.gens.add(this.gen);
    this.records = 0;
    this.prepareSpare();
    return ended;
  }

  /** The spare file as generation `gen`, if it is ready. */
  private takeSpare(gen: number): number | undefined {
    const fd = this.spare;
    if (fd === undefined) return undefined;
    this.spare = undefined;
    try {
      renameSync(join(this.dir, SPARE_NAME), join(this.dir, logName(gen)));
    } catch {
      closeSync(fd);
      return undefined;
    }
    this.prefilled = PREFILL_BYTES;
    return fd;
  }

  /** Makes the spare file ready in the background (a rotation that finds none creates its file itself). */
  private prepareSpare(): void {
    if (this.preparing || this.spare !== undefined || this.closed) return;
    const path = join(this.dir, SPARE_NAME);
    this.preparing = (async () => {
      let fd: number | undefined;
      try {
        fd = await openAsync(path, "w");
        for (let done = 0; done < PREFILL_BYTES;) done += (await writeAsync(fd, ZEROS, done, PREFILL_BYTES - done, done)).bytesWritten;
        await fdatasyncAsync(fd);
      } catch {
        if (fd !== undefined) close(fd, () => undefined);
        fd = undefined;
      }
      this.preparing = undefined;
      if (fd === undefined) return;
      if (this.closed) {
        close(fd, () => undefined);
        return;
      }
      this.spare = fd;
    })();
  }

  /** Removes the files of generations ≤ `gen`. */
  async removeThrough(gen: number): Promise<void> {
    for (const g of [...this.gens]) {
      if (g > gen || g === this.gen) continue;
      this.gens.delete(g);
      const fd = this.retired.get(g);
      if (fd !== undefined) {
        this.retired.delete(g);
        this.closeFd(fd);
      }
      await unlink(join(this.dir, logName(g))).catch((e: NodeJS.ErrnoException) => (e.code === "ENOENT" ? undefined : Promise.reject(e)));
    }
  }

  /**
   * Resolves once every record appended before the call is on stable storage: the current generation and every rotated
   * one not yet removed are fdatasynced (a removed one's ranges are in a batch that is durable in the spool).
   */
  async sync(): Promise<void> {
    const wereRetired = [...this.retired];
    const fds = [this.fd, ...wereRetired.map(([, fd]) => fd)];
    for (const fd of fds) this.syncingFds.set(fd, (this.syncingFds.get(fd) ?? 0) + 1);
    try {
      await Promise.all(fds.map((fd) => new Promise<void>((resolve, reject) => fdatasync(fd, (e) => (e ? reject(e) : resolve())))));
    } finally {
      for (const fd of fds) {
        const users = this.syncingFds.get(fd)! - 1;
        if (users > 0) this.syncingFds.set(fd, users);
        else {
          this.syncingFds.delete(fd);
          if (this.closeAfterSync.delete(fd)) close(fd, () => undefined);
        }
      }
    }
    // A generation already rotated away when the sync began got no append since: nothing in it is unsynced, its
    // descriptor can go (its file stays until removed). The generation current then may have had appends meanwhile.
    for (const [g, fd] of wereRetired) {
      if (this.retired.get(g) === fd) {
        this.retired.delete(g);
        this.closeFd(fd);
      }
    }
  }

  private closeFd(fd: number): void {
    if (this.syncingFds.has(fd)) this.closeAfterSync.add(fd);
    else closeSync(fd);
  }

  /** Closes the files; resolves once a spare being made meanwhile is closed too (nothing is written in the directory after). */
  async close(): Promise<void> {
    this.closed = true;
    for (const fd of this.retired.values()) this.closeFd(fd);
    this.retired.clear();
    this.closeFd(this.fd);
    if (this.spare !== undefined) closeSync(this.spare);
    this.spare = undefined;
    await this.preparing;
  }
}
