// The cache sweep: re-announces disks whose cache holds batches that nobody is applying, so a lost message only delays.
import type { StoragePort } from "../storage/ports";
import { announceBatch, STALLED } from "./apply";
import { seqOfBlobName, batchBlobName } from "./batch";
import { isNotFound } from "../contract/errors";
import { cacheContainerName, directionOf, raiseIssue, type DiskRecord, type ItemState, type ReplicatedItem } from "../protection/items";
import { type ItemStore } from "../storage/item-store";
import type { Config } from "../config/settings";

export interface SweepDeps {
  storage: StoragePort;
  items: ItemStore;
  config: Config;
  now?: () => Date;
  log?: (line: string) => void;
}

export interface SweepReport {
  /** Disks looked at. */
  disks: number;
  /** Disks re-announced, with the batch the kick names. */
  kicked: { itemId: string; diskId: string; seq: number }[];
}

/** Items with nothing to apply: being created, failed to create, or being removed. */
const NOT_REPLICATING: ReadonlySet<ItemState> = new Set(["Enabling", "EnableFailed", "Disabling", "Reprotecting"]);
const CONCURRENT_DISKS = 8;
/** A batch cached this long without the disk moving is shown to the operator (a gap that never fills, a failing processor). */
export const STALL_WARNING_SECONDS = 300;

/**
 * For every disk of every replicating item: when its cache holds a batch that has waited `stallSeconds`, and the
 * disk neither made progress nor was kicked within that time, announce its lowest cached batch again. The apply
 * side decides what that means (apply, wait for a gap, clean a leftover), so a kick is always safe.
 */
export async function sweepCache(deps: SweepDeps): Promise<SweepReport> {
  const now = (deps.now ?? (() => new Date()))();
  const items = (await deps.items.list()).filter((i) => !NOT_REPLICATING.has(i.state));
  const byId = new Map(items.map((i) => [i.id, i]));
  const disks = (await Promise.all(items.map((i) => deps.items.listDisks(i.id)))).flat();
  const report: SweepReport = { disks: disks.length, kicked: [] };
  let next = 0;
  const worker = async () => {
    while (next < disks.length) {
      const disk = disks[next++];
      const seq = await sweepDisk(deps, byId.get(disk.itemId)!, disk, now);
      if (seq !== undefined) report.kicked.push({ itemId: disk.itemId, diskId: disk.id, seq });
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENT_DISKS, disks.length) }, worker));
  if (report.kicked.length > 0) {
    deps.log?.(`re-announced ${report.kicked.length} stalled disk(s): ${report.kicked.map((k) => `${k.itemId}/${k.diskId}@${k.seq}`).join(", ")}`);
  }
  return report;
}

/** The seq it kicked, if it did. */
async function sweepDisk(deps: SweepDeps, item: ReplicatedItem, disk: DiskRecord, now: Date): Promise<number | undefined> {
  const stallMs = deps.config.sweep.stallSeconds * 1000;
  const quietFor = (iso: string | undefined) => iso === undefined || now.getTime() - Date.parse(iso) >= stallMs;
  if (!quietFor(disk.lastAppliedAt) || !quietFor(disk.lastKickAt)) return undefined;

  // Names sort by seq: the first batch blob listed is the lowest, all the sweep needs.
  const cache = deps.storage.cache(directionOf(item)).getContainerClient(cacheContainerName(disk.itemId));
  let lowest: { seq: number; lastModified: Date } | undefined;
  try {
    for await (const page of cache.listBlobsFlat({ prefix: `${disk.id}/` }).byPage({ maxPageSize: 10 })) {
      for (const b of page.segment.blobItems) {
        const seq = seqOfBlobName(b.name);
        if (seq !== undefined && b.name === batchBlobName(disk.id, seq)) {
          lowest = { seq, lastModified: b.properties.lastModified };
          break;
        }
      }
      if (lowest) break;
    }
  } catch (e) {
    if (isNotFound(e)) return undefined; // the cache container went with a disable
    throw e;
  }
  // A batch uploaded moments ago has its own message on the way.
  const waitedMs = lowest ? now.getTime() - lowest.lastModified.getTime() : 0;
  if (!lowest || waitedMs < stallMs) return undefined;

  // A halted disk already says why it waits (ResyncRequired); anything else waiting this long is news to the operator.
  const seq = lowest.seq;
  if (
    waitedMs >= STALL_WARNING_SECONDS * 1000 &&
    disk.state !== "ResyncRequired" &&
    !item.health.issues.some((i) => i.code === STALLED && i.diskId === disk.id)
  ) {
    await deps.items.updateItem(disk.itemId, (i) => {
      raiseIssue(i, {
        code: STALLED,
        severity: "Warning",
        diskId: disk.id,
        seq,
        since: now.toISOString(),
        message: `disk '${disk.id}': batch ${seq} has waited ${Math.round(waitedMs / 60_000)} min in the cache without the disk moving (a batch missing from the sequence, or the processor failing: see the function log)`,
      });
      i.updatedAt = now.toISOString();
      return i;
    });
  }

  await announceBatch(deps.storage, { v: 1, itemId: disk.itemId, diskId: disk.id, seq });
  await deps.items.updateDisk(disk.itemId, disk.id, (d) => {
    d.lastKickAt = now.toISOString();
    return d;
  });
  return seq;
}
