// The replica page blob and the cache blobs as apply touches them: the watermark read, a batch's pages written with the watermark in one fenced step, a batch downloaded whole.
import type { ContainerPort, PageBlobPort } from "../storage/ports";
import { MAX_PAGE_WRITE, mergedPageWrites, type Batch } from "./batch";
import { isNotFound } from "../contract/errors";
import { ApplyLimits, DEFAULT_APPLY_LIMITS } from "./limits";

/** The replica's watermark: its blob sequence number; undefined when the replica does not exist. */
export async function readWatermark(replica: PageBlobPort, leaseId?: string): Promise<number | undefined> {
  try {
    const p = await replica.getProperties(leaseId ? { conditions: { leaseId } } : {});
    return p.blobSequenceNumber ?? 0;
  } catch (e) {
    if (isNotFound(e)) return undefined;
    throw e;
  }
}

/**
 * Writes one batch's pages (each ≤ 4 MiB, 512-aligned), every write fenced by the lease and by the watermark it
 * must follow: a processor whose lease was taken, or that read a watermark since moved, gets 412 and writes nothing.
 * On a failure the writes already in flight finish before the error is thrown, so none outlives the call.
 */
export async function writeBatch(
  replica: PageBlobPort,
  batch: Batch,
  fence: { leaseId: string; watermark: number },
  tuning: Pick<ApplyLimits, "writeConcurrency" | "writeChunkBytes"> = DEFAULT_APPLY_LIMITS,
): Promise<void> {
  return writeBatches(replica, [batch], fence, tuning);
}

/**
 * Writes consecutive batches as one (see mergedPageWrites: the later batch wins where they overlap), every write fenced
 * by the watermark before the first of them. Killed half-way, the replica holds that watermark plus some of their
 * extents; applying them again from the first gives exactly the state after the last.
 */
export async function writeBatches(
  replica: PageBlobPort,
  batches: Batch[],
  fence: { leaseId: string; watermark: number },
  tuning: Pick<ApplyLimits, "writeConcurrency" | "writeChunkBytes"> = DEFAULT_APPLY_LIMITS,
): Promise<void> {
  const chunk = Math.min(tuning.writeChunkBytes, MAX_PAGE_WRITE);
  const writes = splitWrites(mergedPageWrites(batches, chunk), chunk);
  const concurrency = tuning.writeConcurrency;
  const conditions = { leaseId: fence.leaseId, ifSequenceNumberEqualTo: fence.watermark };
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (!failure && next < writes.length) {
      const w = writes[next++];
      try {
        await replica.uploadPages(w.data, w.offset, w.data.length, { conditions });
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, writes.length)) }, worker));
  if (failure) throw failure.error;
}

/** Cuts writes to `chunk` bytes (a multiple of 512, so alignment holds). */
function splitWrites(writes: { offset: number; data: Buffer }[], chunk: number): { offset: number; data: Buffer }[] {
  const out: { offset: number; data: Buffer }[] = [];
  for (const w of writes) {
    for (let at = 0; at < w.data.length; at += chunk) out.push({ offset: w.offset + at, data: w.data.subarray(at, at + chunk) });
  }
  return out;
}

/**
 * One GET of the whole blob; a body shorter than announced is a failed download (retried), never a batch to verify.
 * `into`, when given and large enough, receives the bytes (the result is a view of it): a caller that reuses its
 * buffers spares the process a large allocation per batch, which is what drives its garbage collections.
 */
export async function downloadBlob(cache: ContainerPort, name: string, into?: Buffer): Promise<Buffer> {
  const r = await cache.getBlobClient(name).download(0);
  const body = r.readableStreamBody;
  if (!body) throw new Error(`download of ${name} returned no body`);
  let bytes: Buffer;
  if (into && r.contentLength !== undefined && r.contentLength <= into.length) {
    let at = 0;
    for await (const chunk of body) {
      const c = chunk as Buffer;
      if (at + c.length > r.contentLength) throw new Error(`download of ${name} is longer than its ${r.contentLength} bytes`);
      c.copy(into, at);
      at += c.length;
    }
    bytes = into.subarray(0, at);
  } else {
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    bytes = Buffer.concat(chunks);
  }
  if (r.contentLength !== undefined && bytes.length !== r.contentLength) {
    throw new Error(`download of ${name} ended after ${bytes.length} of ${r.contentLength} bytes`);
  }
  return bytes;
}
