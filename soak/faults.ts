// The soak's faults that reach into the product's own protocols: a cache batch corrupted, a group member stalled in prepare, the spool overflowing while uploads are blocked, a SAS that stops working before its expiry.
import { readFileSync } from "node:fs";
import { ContainerClient, AnonymousCredential } from "@azure/storage-blob";
import { batchBlobName, seqOfBlobName } from "../shared/replication/batch";
import { statePaths } from "../agent/state";
import { sleep, type FaultRecord, type SoakContext } from "./context";
import type { SoakVm } from "./vms";

/** The fault's own random choices. */
export interface Choices {
  pick: <T>(xs: readonly T[]) => T;
  between: (lo: number, hi: number) => number;
  next: () => number;
}

/** Seqs of a disk's batches in the cache now. */
async function cached(ctx: SoakContext, v: SoakVm, diskId: string): Promise<number[]> {
  const seqs: number[] = [];
  for await (const b of ctx.cache(v).listBlobsFlat({ prefix: `${diskId}/` })) {
    const seq = seqOfBlobName(b.name);
    if (seq !== undefined) seqs.push(seq);
  }
  return seqs;
}

const watermarkOf = async (ctx: SoakContext, v: SoakVm, diskId: string) => (await (await ctx.replica(v, diskId)).getProperties()).blobSequenceNumber ?? 0;

/**
 * A batch damaged in the cache before it is applied: a new batch is caught the moment it appears and one of its bytes
 * flipped in place (the same blob, rewritten only if it is still the agent's upload). The product must never write it:
 * its checksum fails, the disk halts for a resync and the agent ships what differs. If the apply read the batch first
 * (it prefetches), the corruption lands too late and the next batch is tried.
 */
export async function batchCorrupt(ctx: SoakContext, c: Choices): Promise<FaultRecord> {
  const v = c.pick(ctx.vms.filter((x) => x.direction === "forward"));
  const d = c.pick(v.spec.diskIds);
  const cache = ctx.cache(v);
  let seen = Math.max(await watermarkOf(ctx, v, d), ...(await cached(ctx, v, d)));
  const until = Date.now() + 30_000;
  let tooLate = 0;
  while (Date.now() < until) {
    const seqs = (await cached(ctx, v, d)).filter((s) => s > seen);
    if (seqs.length === 0) {
      await sleep(10);
      continue;
    }
    const seq = Math.min(...seqs);
    seen = seq;
    const blob = cache.getBlockBlobClient(batchBlobName(d, seq));
    let at: number;
    let size: number;
    try {
      const etag = (await blob.getProperties()).etag!;
      const data = await blob.downloadToBuffer(0, undefined, { conditions: { ifMatch: etag }, abortSignal: AbortSignal.timeout(120_000) });
      at = Math.floor(c.next() * data.length);
      size = data.length;
      data[at] ^= 0x5a;
      await blob.upload(data, data.length, { conditions: { ifMatch: etag } });
    } catch {
      continue; // applied and removed (or rewritten) meanwhile
    }
    const watermark = await watermarkOf(ctx, v, d);
    if (watermark >= seq) {
      tooLate++;
      continue; // applied before the damage landed: harmless, and no fault
    }
    const r = ctx.record("batch-corrupt", `${v.spec.name}/${d} batch ${seq} (watermark ${watermark}): byte ${at} of ${size} flipped in the cache`);
    r.items = [v.itemId];
    // What the product did: halted the disk for a resync (the checksum), or applied the batch read before the damage.
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const item = (await ctx.api("GET", `replicated-items/${v.itemId}`)).body;
      const disk = item?.disks?.find((x) => x.id === d);
      const issue = item?.health?.issues.find((i) => i.code === "CorruptBatch" && i.diskId === d && i.seq === seq);
      if (disk?.resync?.reason.includes(`batch ${seq} is corrupt`) || issue) {
        r.effect = `never applied: ${d} halted for a resync (${disk?.resync?.reason ?? issue?.message})`;
        ctx.log(`  ${r.effect}`);
        return r;
      }
      if ((await watermarkOf(ctx, v, d)) >= seq && !disk?.resync) break;
      await sleep(250);
    }
    if ((await watermarkOf(ctx, v, d)) < seq) {
      ctx.log("  no halt seen within 30 s");
      return r;
    }
    // Read before the damage (the apply prefetches, and the watermark had not moved yet), or applied damaged: the
    // oracle's byte checks tell which. Either way this injection took no effect: the next batch is tried.
    ctx.log(`  batch ${seq} was applied without a halt: from a copy read before the damage, or the oracle will find the flipped byte`);
  }
  return ctx.record("batch-corrupt", `${v.spec.name}/${d}: no batch caught before its apply within 30 s (${tooLate} too late)`);
}

/**
 * A group member stalled in prepare: the next group tag's prepare reaches a member's hook (the coordinator's own
 * counts too), and that agent's whole process is stopped there for a few seconds. The tag must abort (or complete
 * whole); the oracle checks every group point sealed.
 */
export async function groupStall(ctx: SoakContext, c: Choices): Promise<FaultRecord> {
  const members = ctx.vms.filter((x) => x.spec.group !== undefined && x.alive);
  const v = c.pick(members);
  const ms = Math.round(c.between(2000, 6000));
  const marks = members.map((m) => m.logMark());
  const stall = await v.stallInPrepare(ms, 25_000);
  if (!stall) return ctx.record("group-stall", `${v.spec.name}: no group prepare reached it within 25 s: nothing stalled`);
  const r = ctx.record("group-stall", `${v.spec.name}'s agent stopped (SIGSTOP) for ${ms} ms inside a group prepare`);
  r.items = members.map((m) => m.itemId);
  // The tag's outcome, as the agents log it.
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const lines = members.flatMap((m, i) =>
      m
        .linesSince(marks[i]!)
        .filter((l) => /group tag \S+ (aborted|not cut here)/.test(l))
        .map((l) => `${m.spec.name}: ${l.trim()}`),
    );
    if (lines.length > 0) {
      for (const l of lines) {
        const m = /group tag (\S+) (aborted|not cut here)/.exec(l);
        if (m) ctx.abortedTags.set(m[1]!, m[2] === "aborted" ? "aborted" : "not cut by a member");
      }
      r.effect = lines[0]!;
      ctx.log(`  ${r.effect}`);
      return r;
    }
    await sleep(250);
  }
  r.effect = "the tag completed whole (no abort logged)";
  ctx.log(`  ${r.effect}`);
  return r;
}

/**
 * Spool overflow: storage stops answering (Azurite SIGSTOPped) while the NBD VM, whose agent has a small spool
 * (`--spool-max-mb`), writes a burst. The agent must switch to tracking dirty blocks and show the item ResyncRequired;
 * once storage answers the dirty blocks are shipped and the item is Protected again.
 */
export async function spoolOverflow(ctx: SoakContext, storage: { stop: () => void; resume: () => void }): Promise<FaultRecord> {
  const v = ctx.vms.find((x) => x.spec.capture === "nbd");
  if (!v || v.direction !== "forward" || !v.alive) return ctx.record("spool-overflow", "the NBD VM is not replicating now: nothing done");
  const mark = v.logMark();
  const r = ctx.record("spool-overflow", `Azurite SIGSTOPped while ${v.spec.name} writes a burst (64× its rate) into its ${v.spec.spoolMaxMb} MiB spool`);
  r.items = [v.itemId];
  const started = Date.now();
  v.boost = 64;
  storage.stop();
  let full: string | undefined;
  try {
    while (Date.now() - started < 20_000) {
      full = v.linesSince(mark).find((l) => l.includes("spool full"));
      if (full) break;
      await sleep(100);
    }
    // A little more of the burst goes to the bitmap.
    if (full) await sleep(1000);
  } finally {
    storage.resume();
    v.boost = 1;
  }
  r.detail += ` (${((Date.now() - started) / 1000).toFixed(1)} s)`;
  if (!full) {
    ctx.log("  the spool did not fill within 20 s");
    return r;
  }
  // The agent reports the overflow at its next check-in: the item shows ResyncRequired with the reason.
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const item = (await ctx.api("GET", `replicated-items/${v.itemId}`)).body;
    const disk = item?.disks?.find((x) => x.resync?.origin === "agent" && x.resync.reason.includes("spool full"));
    if (disk) {
      r.effect = `${v.spec.name}/${disk.id} ${disk.state}: ${disk.resync!.reason}`;
      ctx.log(`  ${r.effect}`);
      return r;
    }
    await sleep(250);
  }
  r.effect = `the agent logged "${full.trim()}"; the item never showed it ResyncRequired within 30 s`;
  ctx.log(`  ${r.effect}`);
  return r;
}

/** The cache SAS an agent holds now (what it saved at its last registration or check-in). */
export function agentCacheSas(v: SoakVm): { containerUrl: string; expiresOn: string } | undefined {
  try {
    const state = JSON.parse(readFileSync(statePaths(v.stateDir).agent, "utf8")) as { cache?: { containerUrl: string; expiresOn: string } };
    return state.cache;
  } catch {
    return undefined;
  }
}

/** Tries a SAS URL once (a tiny blob of the soak's own); the status code the cache answers with (201 when it works). */
export async function trySas(containerUrl: string): Promise<number> {
  const c = new ContainerClient(containerUrl, new AnonymousCredential(), { retryOptions: { maxTries: 1, tryTimeoutInMs: 15_000 } });
  try {
    await c.getBlockBlobClient("soak-sas-probe").upload("probe", 5);
    return 201;
  } catch (e) {
    return (e as { statusCode?: number }).statusCode ?? 0;
  }
}
