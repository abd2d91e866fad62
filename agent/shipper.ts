// Ships spooled batches: upload to the item's cache container, announce on the queue, then drop from the spool; retries forever.
import { CacheClient, type CacheEndpoints } from "./cache-client";
import { batchBlobName, batchHeaderLength, batchWriteTimes, type BatchMessage } from "../shared/replication/batch";
import { HEARTBEAT_BLOB } from "../shared/protection/agent-protocol";
import type { Health } from "./health";
import { backoffMs, classify, describe, sleep } from "./retry";
import type { Spool } from "./spool";

export interface ShipperOptions {
  itemId: string;
  spool: Spool;
  health: Health;
  /** Uploads in flight at once (memory: this many chunks of UPLOAD_CHUNK_BYTES). */
  concurrency: number;
  /** The SAS was refused: renew it (a check-in) before the next attempt. */
  onCredentialsRefused: () => void;
  log: (line: string) => void;
}

// Our own backoff decides retries; each request is one attempt, bounded in time so that a hung connection is retried.
const REQUEST_TIMEOUT_MS = 120_000;
/** What an upload holds in memory: its batch is read from the spool file and sent this much at a time. */
export const UPLOAD_CHUNK_BYTES = 1024 * 1024;

/** Base64 of the JSON message, as the Functions queue trigger expects. */
export function encodeBatchMessage(m: BatchMessage): string {
  return Buffer.from(JSON.stringify(m), "utf8").toString("base64");
}

export class Shipper {
  private readonly cache: CacheClient;
  /** Per disk: seqs committed and not yet acknowledged (waiting or in flight), ascending. */
  private readonly outstanding = new Map<string, number[]>();
  private readonly inFlight = new Set<string>();
  private readonly waiters: { diskId: string; seq: number; resolve: () => void }[] = [];
  private readonly stopping = new AbortController();
  private readonly running = new Set<Promise<void>>();
  private paused = false;
  private nextDisk = 0;
  private failures = 0;
  /** Chunks of finished uploads, reused by the next ones: steady shipping allocates no buffer per batch. */
  private readonly freeChunks: Buffer[] = [];
  /** Batches acknowledged by the cache since start. */
  shipped = 0;
  shippedBytes = 0;

  constructor(
    private readonly opts: ShipperOptions,
    endpoints: CacheEndpoints,
  ) {
    this.cache = new CacheClient(endpoints, { connections: opts.concurrency + 1, timeoutMs: REQUEST_TIMEOUT_MS });
  }

  /** New SAS URLs (a check-in renewed them): uploads from now on use them. */
  setEndpoints(e: CacheEndpoints): void {
    this.cache.setEndpoints(e);
  }

  /** A batch is committed to the spool: ship it. */
  add(diskId: string, seq: number): void {
    let q = this.outstanding.get(diskId);
    if (!q) {
      q = [];
      this.outstanding.set(diskId, q);
    }
    if (q.length > 0 && q[q.length - 1]! > seq) {
      q.push(seq);
      q.sort((a, b) => a - b);
    } else q.push(seq);
    this.pump();
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.pump();
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Batches of a disk not yet acknowledged by the cache. */
  pending(diskId: string): number {
    return this.outstanding.get(diskId)?.length ?? 0;
  }

  /** Resolves once every batch of the disk up to `seq` is in the cache and announced. */
  waitShipped(diskId: string, seq: number): Promise<void> {
    if (!this.hasOutstandingThrough(diskId, seq)) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ diskId, seq, resolve }));
  }

  private hasOutstandingThrough(diskId: string, seq: number): boolean {
    const q = this.outstanding.get(diskId);
    return q !== undefined && q.length > 0 && q[0]! <= seq;
  }

  private pump(): void {
    if (this.paused || this.stopping.signal.aborted) return;
    const disks = [...this.outstanding.keys()];
    let idle = 0;
    // Round robin over disks, lowest waiting seq of each first.
    while (this.running.size < this.opts.concurrency && idle < disks.length) {
      const diskId = disks[this.nextDisk++ % disks.length]!;
      const seq = this.outstanding.get(diskId)!.find((s) => !this.inFlight.has(`${diskId}/${s}`));
      if (seq === undefined) {
        idle++;
        continue;
      }
      idle = 0;
      const key = `${diskId}/${seq}`;
      this.inFlight.add(key);
      const task = this.ship(diskId, seq).finally(() => {
        this.inFlight.delete(key);
        this.running.delete(task);
        this.pump();
      });
      this.running.add(task);
    }
  }

  private async ship(diskId: string, seq: number): Promise<void> {
    const chunk = this.freeChunks.pop() ?? Buffer.allocUnsafe(UPLOAD_CHUNK_BYTES);
    try {
      await this.shipFrom(chunk, diskId, seq);
    } finally {
      if (this.freeChunks.length < this.opts.concurrency) this.freeChunks.push(chunk);
    }
  }

  private async shipFrom(chunk: Buffer, diskId: string, seq: number): Promise<void> {
    const { spool, health, itemId } = this.opts;
    for (let attempt = 0; !this.stopping.signal.aborted; attempt++) {
      try {
        const size = await this.upload(chunk, diskId, seq);
        await this.cache.sendMessage(encodeBatchMessage({ v: 1, itemId, diskId, seq }), this.stopping.signal);
        await spool.remove(diskId, seq);
        this.acknowledged(diskId, seq, size);
        return;
      } catch (e) {
        if (this.stopping.signal.aborted) return;
        this.failures++;
        const kind = classify(e);
        if (kind === "credentials") this.opts.onCredentialsRefused();
        const what = kind === "gone" ? "the cache container or queue is gone (replication disabled?)" : "cannot reach the cache";
        health.set("CacheUnreachable", kind === "gone" ? "Critical" : "Warning", `${what}: ${describe(e)}; ${this.backlog()} batch(es) waiting in the spool`);
        if (attempt === 0 || attempt % 10 === 0) this.opts.log(`upload of ${diskId} batch ${seq} failed (attempt ${attempt + 1}): ${describe(e)}`);
        await sleep(backoffMs(attempt, 500, kind === "gone" ? 60_000 : 30_000), this.stopping.signal);
      }
    }
  }

  /**
   * Streams the batch from its spool file to the cache through `chunk`, one piece at a time (memory per upload is the
   * chunk, not the batch); resolves with its size. The blob's metadata carries the write times from its header.
   */
  private async upload(chunk: Buffer, diskId: string, seq: number): Promise<number> {
    const { size, file } = await this.opts.spool.openBatch(diskId, seq);
    try {
      const readAt = async (into: Buffer, position: number): Promise<Buffer> => {
        const n = Math.min(into.length, size - position);
        for (let done = 0; done < n;) {
          const { bytesRead } = await file.read(into, done, n - done, position + done);
          if (bytesRead === 0) throw new Error(`spool file of batch ${seq} of disk ${diskId} shrank while being read`);
          done += bytesRead;
        }
        return into.subarray(0, n);
      };
      // The header (its times go into the blob's metadata, before the body): it fits the first piece but for a batch
      // of a great many extents.
      let first: Buffer | undefined = await readAt(chunk, 0);
      const headerLength = batchHeaderLength(first) ?? 0;
      const header = headerLength > first.length && headerLength <= size ? await readAt(Buffer.allocUnsafe(headerLength), 0) : first;
      const times = writeTimes(header);
      await this.cache.putBlobChunked(
        batchBlobName(diskId, seq),
        size,
        async (send) => {
          for (let at = 0; at < size;) {
            // The first piece is in the chunk already, unless an earlier try of this request sent more.
            const piece = first ?? (await readAt(chunk, at));
            first = undefined;
            await send(piece);
            at += piece.length;
          }
        },
        {
          contentType: "application/octet-stream",
          metadata: { firstwritems: String(times.first), lastwritems: String(times.last) },
          signal: this.stopping.signal,
        },
      );
      return size;
    } finally {
      await file.close();
    }
  }

  private backlog(): number {
    let n = 0;
    for (const q of this.outstanding.values()) n += q.length;
    return n;
  }

  private acknowledged(diskId: string, seq: number, bytes: number): void {
    const q = this.outstanding.get(diskId)!;
    q.splice(q.indexOf(seq), 1);
    this.shipped++;
    this.shippedBytes += bytes;
    if (this.opts.health.has("CacheUnreachable")) {
      this.opts.health.clear("CacheUnreachable");
      this.opts.log(`cache reachable again after ${this.failures} failed attempt(s)`);
      this.failures = 0;
    }
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i]!;
      if (!this.hasOutstandingThrough(w.diskId, w.seq)) {
        this.waiters.splice(i, 1);
        w.resolve();
      }
    }
  }

  /** Writes the heartbeat blob; false (and nothing thrown) when the cache cannot be reached. */
  async uploadHeartbeat(body: string): Promise<boolean> {
    try {
      await this.cache.putBlob(HEARTBEAT_BLOB, body, { contentType: "application/json", signal: this.stopping.signal });
      return true;
    } catch {
      return false;
    }
  }

  /** Stops shipping: uploads in flight get `graceMs` to finish, then are abandoned (their batches stay in the spool). */
  async stop(graceMs: number): Promise<void> {
    this.paused = true;
    const all = Promise.all([...this.running]);
    const timer = new Promise<void>((r) => setTimeout(r, graceMs).unref?.());
    await Promise.race([all, timer]);
    this.stopping.abort();
    await all;
    this.cache.close();
  }
}

/**
 * The write times a batch's header carries, for the blob's metadata. The payload's checksum is not checked here (the
 * apply side checks it before anything is written): a batch that does not decode is shipped anyway and quarantined there.
 */
function writeTimes(data: Buffer): { first: number; last: number } {
  const t = batchWriteTimes(data);
  return t ? { first: Math.round(t.firstWriteMs), last: Math.round(t.lastWriteMs) } : { first: 0, last: 0 };
}
