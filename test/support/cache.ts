// Replays what agents shipped: a disk's batches in the cache, decoded and applied in seq order over the replica (or zeros).
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { ContainerClient } from "@azure/storage-blob";
import type { QueueClient } from "@azure/storage-queue";
import { decodeBatch, seqOfBlobName, type BatchHeader, type BatchMessage } from "../../shared/replication/batch";
import { HEARTBEAT_BLOB, heartbeatSchema, type Heartbeat } from "../../shared/protection/agent-protocol";
import { cacheContainerName, replicaBlobName } from "../../shared/protection/items";
import type { TestStack } from "./stack";

export interface ShippedBatch {
  seq: number;
  header: BatchHeader;
  payload: Buffer;
  metadata: Record<string, string>;
}

/** Every batch of a disk in the cache (read with the account key), decoded and verified, in seq order. */
export async function cacheBatches(cache: ContainerClient, diskId: string): Promise<ShippedBatch[]> {
  const out: ShippedBatch[] = [];
  for await (const b of cache.listBlobsFlat({ prefix: `${diskId}/`, includeMetadata: true })) {
    const seq = seqOfBlobName(b.name);
    if (seq === undefined) continue;
    const { header, payload } = decodeBatch(await cache.getBlobClient(b.name).downloadToBuffer());
    if (header.seq !== seq || header.diskId !== diskId) throw new Error(`${b.name} holds batch ${header.diskId}/${header.seq}`);
    out.push({ seq, header, payload, metadata: b.metadata ?? {} });
  }
  return out.sort((a, b) => a.seq - b.seq);
}

/** The batches an agent has sealed but not shipped yet, from its state directory's spool, in seq order. */
export async function spoolBatches(stateDir: string, diskId: string): Promise<ShippedBatch[]> {
  const dir = join(stateDir, "spool", diskId);
  const out: ShippedBatch[] = [];
  for (const name of await readdir(dir)) {
    if (!/^\d+\.batch$/.test(name)) continue;
    const { header, payload } = decodeBatch(await readFile(join(dir, name)));
    out.push({ seq: header.seq, header, payload, metadata: {} });
  }
  return out.sort((a, b) => a.seq - b.seq);
}

/** Applies batches in order over `base` (copied): each extent's bytes at its offset. */
export function replayBatches(batches: ShippedBatch[], base: Buffer): Buffer {
  const image = Buffer.from(base);
  for (const b of batches) {
    let at = 0;
    for (const e of b.header.extents) {
      b.payload.copy(image, e.offset, at, at + e.length);
      at += e.length;
    }
  }
  return image;
}

/** Throws unless `seqs` are exactly from, from+1, ... (no gap, no duplicate). */
export function assertContiguous(seqs: number[], from = 1): void {
  seqs.forEach((s, i) => {
    if (s !== from + i) throw new Error(`batches are not contiguous from ${from}: expected ${from + i}, found ${s} (seqs ${seqs.join(",")})`);
  });
}

/** True when the stack's host polls queues (an apply side consumes the announcements and applies, then deletes, batches). */
export function stackAppliesBatches(stack: TestStack): boolean {
  return /queueTrigger/.test(stack.host.describe(""));
}

export interface ReplayedDisk {
  /** The replica at its watermark with every later cached batch applied: what the replica will hold once all is applied. */
  image: Buffer;
  /** The replica's blob sequence number (the last applied batch). */
  watermark: number;
  /** Cached batches above the watermark, in order (contiguous from watermark + 1). */
  batches: ShippedBatch[];
}

/**
 * What a disk's replication amounts to: the replica's bytes at its watermark plus every batch the cache holds above
 * it, applied in order — whether or not an apply side is running (without one, the watermark stays 0 and this is the
 * cache replayed onto the replica as created). With `untilSeq`, waits until those reach that batch (uploads may land
 * out of order); reads that an apply side raced (it moved the watermark meanwhile) are taken again.
 */
export async function replayDisk(
  stack: TestStack,
  itemId: string,
  diskId: string,
  opts: { untilSeq?: number; timeoutMs?: number } = {},
): Promise<ReplayedDisk> {
  const replicas = await stack.services.storage.replicas();
  const replica = replicas.getPageBlobClient(replicaBlobName(itemId, diskId));
  const cache = stack.services.storage.cacheBlobs.getContainerClient(cacheContainerName(itemId));
  const deadline = Date.now() + (opts.timeoutMs ?? 60_000);
  for (let seen = ""; ;) {
    const props = await replica.getProperties();
    const before = props.blobSequenceNumber ?? 0;
    const base = await replica.downloadToBuffer(0, (props.contentLength ?? 0) - 512);
    const batches = (await cacheBatches(cache, diskId)).filter((b) => b.seq > before);
    const after = (await replica.getProperties()).blobSequenceNumber ?? 0;
    if (after === before) {
      const contiguous = batches.every((b, i) => b.seq === before + 1 + i);
      const reached = before + batches.length >= (opts.untilSeq ?? 0);
      if (contiguous && reached) return { image: replayBatches(batches, base), watermark: before, batches };
      seen = `watermark ${before}, cached ${batches.map((b) => b.seq).join(",") || "none"}`;
      if (opts.untilSeq === undefined)
        assertContiguous(
          batches.map((b) => b.seq),
          before + 1,
        );
    }
    if (Date.now() > deadline) throw new Error(`disk ${diskId} did not reach batch ${opts.untilSeq} (${seen})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Receives every message on the replication queue (base64 JSON, as the Functions trigger expects) and deletes them. */
export async function takeAnnouncements(queue: QueueClient): Promise<BatchMessage[]> {
  const out: BatchMessage[] = [];
  for (;;) {
    const { receivedMessageItems: got } = await queue.receiveMessages({ numberOfMessages: 32, visibilityTimeout: 300 });
    if (got.length === 0) return out;
    for (const m of got) {
      out.push(JSON.parse(Buffer.from(m.messageText, "base64").toString("utf8")) as BatchMessage);
      await queue.deleteMessage(m.messageId, m.popReceipt);
    }
  }
}

/** The agent's heartbeat blob, validated against the protocol's schema. */
export async function readHeartbeat(stack: TestStack, itemId: string): Promise<Heartbeat> {
  const blob = stack.services.storage.cacheBlobs.getContainerClient(cacheContainerName(itemId)).getBlobClient(HEARTBEAT_BLOB);
  return heartbeatSchema.parse(JSON.parse((await blob.downloadToBuffer()).toString("utf8")));
}
