// Recovery points: tag arrivals (a replica snapshot per disk per tag), sealing complete tags, listing, pruning.
import type { TagApplied } from "../replication/apply";
import type { BatchTag } from "../replication/batch";
import { isConflict, isNotFound } from "../contract/errors";
import { directionOf, type ReplicatedItem } from "../protection/items";
import { type ItemStore } from "../storage/item-store";
import { TABLES } from "../storage/names";
import { pointsToKeep } from "./thinning";
import type { EntityTable, StoragePort } from "../storage/ports";

export interface PointDisk {
  itemId: string;
  diskId: string;
  /** Snapshot of the replica blob `replicas/<itemId>/<diskId>.vhd` taken when the tag's batch was applied. */
  snapshot: string;
  /** The batch that carried the tag: the replica's watermark in the snapshot. */
  seq: number;
}

export interface RecoveryPoint {
  /** The tag's id: the same on every disk (and every VM of a group) for one instant. */
  id: string;
  kind: "crash" | "app";
  /** Source time of the tag (ISO). */
  time: string;
  scope: "vm" | "group";
  itemId?: string;
  /** The replication group whose tag this was (a VM point of a group tag names it too). */
  group?: string;
  /** Items of a group point. */
  members?: string[];
  disks: PointDisk[];
  sealedAt: string;
}

export interface TagArrival extends PointDisk {
  tag: BatchTag;
  arrivedAt: string;
}

interface Row {
  partitionKey: string;
  rowKey: string;
  body: string;
}

const MAX_TIME = 9_999_999_999_999;
/** Newest first in a partition: row keys sort by inverted time. */
const pointRowKey = (timeMs: number, id: string) => `${String(MAX_TIME - timeMs).padStart(13, "0")}|${id}`;
export const vmPartition = (itemId: string) => `vm|${itemId}`;
export const groupPartition = (group: string) => `group|${group}`;
const esc = (s: string) => s.replace(/'/g, "''");

export interface RecoveryPointDeps {
  storage: StoragePort;
  items: ItemStore;
  now?: () => Date;
}

export class RecoveryPoints {
  private readonly now: () => Date;

  constructor(private readonly deps: RecoveryPointDeps) {
    this.now = deps.now ?? (() => new Date());
  }

  private points(): Promise<EntityTable> {
    return this.deps.storage.table(TABLES.recoveryPoints);
  }

  private arrivals(): Promise<EntityTable> {
    return this.deps.storage.table(TABLES.tagArrivals);
  }

  /** Records that a disk's replica reached a tag (its snapshot taken), then seals whatever that completes. */
  async recordArrival(arrival: Omit<TagArrival, "arrivedAt">): Promise<RecoveryPoint[]> {
    const t = await this.arrivals();
    const row: TagArrival = { ...arrival, arrivedAt: this.now().toISOString() };
    await t.upsertEntity<Row>({ partitionKey: arrival.itemId, rowKey: `${arrival.tag.id}|${arrival.diskId}`, body: JSON.stringify(row) }, "Replace");
    return this.sealTag(arrival.itemId, arrival.tag);
  }

  private async arrivalsOf(itemId: string, tagId?: string): Promise<TagArrival[]> {
    const t = await this.arrivals();
    const filter = tagId
      ? `PartitionKey eq '${esc(itemId)}' and RowKey ge '${esc(tagId)}|' and RowKey lt '${esc(tagId)}|~'`
      : `PartitionKey eq '${esc(itemId)}'`;
    const out: TagArrival[] = [];
    for await (const e of t.listEntities<Row>({ queryOptions: { filter } })) out.push(JSON.parse(e.body) as TagArrival);
    return out;
  }

  /** Every disk of the item has the tag: a VM point; every disk of every member: a group point. */
  async sealTag(itemId: string, tag: BatchTag): Promise<RecoveryPoint[]> {
    const sealed: RecoveryPoint[] = [];
    const vm = await this.completeFor(itemId, tag.id);
    if (vm) {
      const p = await this.insert(vmPartition(itemId), {
        id: tag.id,
        kind: tag.kind,
        time: tag.time,
        scope: "vm",
        itemId,
        ...(tag.scope === "group" && tag.group ? { group: tag.group } : {}),
        disks: vm,
        sealedAt: this.now().toISOString(),
      });
      if (p) sealed.push(p);
    }
    if (tag.scope === "group" && tag.group && tag.members?.length) {
      const all: PointDisk[] = [];
      for (const member of tag.members) {
        const disks = member === itemId ? vm : await this.completeFor(member, tag.id);
        if (!disks) return sealed;
        all.push(...disks);
      }
      const p = await this.insert(groupPartition(tag.group), {
        id: tag.id,
        kind: tag.kind,
        time: tag.time,
        scope: "group",
        group: tag.group,
        members: [...tag.members].sort(),
        disks: all,
        sealedAt: this.now().toISOString(),
      });
      if (p) sealed.push(p);
    }
    if (vm && (tag.scope !== "group" || sealed.some((p) => p.scope === "group") || (await this.exists(groupPartition(tag.group ?? ""), tag)))) {
      await this.dropArrivals(itemId, tag.id);
    }
    return sealed;
  }

  /** The item's disks at the tag, or undefined while some disk has not reached it. */
  private async completeFor(itemId: string, tagId: string): Promise<PointDisk[] | undefined> {
    const [disks, arrived] = await Promise.all([this.deps.items.listDisks(itemId), this.arrivalsOf(itemId, tagId)]);
    if (disks.length === 0) return undefined;
    const byDisk = new Map(arrived.map((a) => [a.diskId, a]));
    if (!disks.every((d) => byDisk.has(d.id))) return undefined;
    return disks.map((d) => {
      const a = byDisk.get(d.id)!;
      return { itemId, diskId: d.id, snapshot: a.snapshot, seq: a.seq };
    });
  }

  private async insert(partition: string, point: RecoveryPoint): Promise<RecoveryPoint | undefined> {
    const t = await this.points();
    try {
      await t.createEntity<Row>({ partitionKey: partition, rowKey: pointRowKey(Date.parse(point.time), point.id), body: JSON.stringify(point) });
      return point;
    } catch (e) {
      if (isConflict(e)) return undefined; // sealed already (a retried apply, or the timer got there first)
      throw e;
    }
  }

  /** A point cut by a failover from drained replicas (`latest`); recording it again returns the one recorded. */
  async recordCutPoint(point: RecoveryPoint): Promise<RecoveryPoint> {
    return (await this.insert(vmPartition(point.itemId!), point)) ?? (await this.get(vmPartition(point.itemId!), point))!;
  }

  private async get(partition: string, tag: Pick<BatchTag, "id" | "time">): Promise<RecoveryPoint | undefined> {
    const t = await this.points();
    try {
      return JSON.parse((await t.getEntity<Row>(partition, pointRowKey(Date.parse(tag.time), tag.id))).body) as RecoveryPoint;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** The arrival already recorded for a disk and tag (a re-run of apply after a crash), if any. */
  async arrival(itemId: string, diskId: string, tagId: string): Promise<TagArrival | undefined> {
    const t = await this.arrivals();
    try {
      return JSON.parse((await t.getEntity<Row>(itemId, `${tagId}|${diskId}`)).body) as TagArrival;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** True when the item's VM point of this tag exists (sealed before a crash re-ran the apply). */
  async sealed(itemId: string, tag: BatchTag): Promise<boolean> {
    return this.exists(vmPartition(itemId), tag);
  }

  private async exists(partition: string, tag: BatchTag): Promise<boolean> {
    const t = await this.points();
    try {
      await t.getEntity(partition, pointRowKey(Date.parse(tag.time), tag.id));
      return true;
    } catch (e) {
      if (isNotFound(e)) return false;
      throw e;
    }
  }

  private async dropArrivals(itemId: string, tagId: string): Promise<void> {
    const t = await this.arrivals();
    for (const a of await this.arrivalsOf(itemId, tagId)) {
      await t.deleteEntity(itemId, `${tagId}|${a.diskId}`).catch((e) => (isNotFound(e) ? undefined : Promise.reject(e)));
    }
  }

  async listPartition(partition: string): Promise<RecoveryPoint[]> {
    const t = await this.points();
    const out: RecoveryPoint[] = [];
    for await (const e of t.listEntities<Row>({ queryOptions: { filter: `PartitionKey eq '${esc(partition)}'` } }))
      out.push(JSON.parse(e.body) as RecoveryPoint);
    return out; // row keys are inverted times: newest first
  }

  /** The item's points, newest first: its own (scope vm) and those of its group that include it. */
  async listForItem(item: ReplicatedItem): Promise<RecoveryPoint[]> {
    const own = await this.listPartition(vmPartition(item.id));
    const group = item.replicationGroup ? (await this.listPartition(groupPartition(item.replicationGroup))).filter((p) => p.members?.includes(item.id)) : [];
    return [...own, ...group].sort((a, b) => Date.parse(b.time) - Date.parse(a.time) || (a.scope === b.scope ? 0 : a.scope === "group" ? -1 : 1));
  }

  /** The newest point and the newest app-consistent one, for the item's view and its RPO. */
  async summary(item: ReplicatedItem): Promise<{ latest?: RecoveryPoint; latestApp?: RecoveryPoint; nowMs: number }> {
    const points = await this.listForItem(item);
    const latestApp = points.find((p) => p.kind === "app");
    return { ...(points[0] ? { latest: points[0] } : {}), ...(latestApp ? { latestApp } : {}), nowMs: this.now().getTime() };
  }

  /** Thins the item's points per its policy; a pruned point's snapshots go unless another point of the same tag still uses them. */
  async prune(item: ReplicatedItem, nowMs = this.now().getTime()): Promise<RecoveryPoint[]> {
    const partition = vmPartition(item.id);
    const points = await this.listPartition(partition);
    const keep = pointsToKeep(
      points.map((p) => ({ id: p.id, timeMs: Date.parse(p.time), kind: p.kind })),
      nowMs,
      item.policy,
    );
    const pruned: RecoveryPoint[] = [];
    for (const p of points.filter((x) => !keep.has(x.id))) {
      await this.deletePoint(partition, p);
      pruned.push(p);
    }
    return pruned;
  }

  /** Thins a group's points with the policy of (any of) its members. */
  async pruneGroup(group: string, policy: ReplicatedItem["policy"], nowMs = this.now().getTime()): Promise<RecoveryPoint[]> {
    const partition = groupPartition(group);
    const points = await this.listPartition(partition);
    const keep = pointsToKeep(
      points.map((p) => ({ id: p.id, timeMs: Date.parse(p.time), kind: p.kind })),
      nowMs,
      policy,
    );
    const pruned: RecoveryPoint[] = [];
    for (const p of points.filter((x) => !keep.has(x.id))) {
      await this.deletePoint(partition, p);
      pruned.push(p);
    }
    return pruned;
  }

  /** Deletes a point and the snapshots no other point of its tag refers to. */
  async deletePoint(partition: string, p: RecoveryPoint): Promise<void> {
    const t = await this.points();
    await t.deleteEntity(partition, pointRowKey(Date.parse(p.time), p.id)).catch((e) => (isNotFound(e) ? undefined : Promise.reject(e)));
    const tag = { id: p.id, time: p.time } as BatchTag;
    // One snapshot per disk and tag serves both the VM point and the group point of that tag.
    const groupPointStays = p.scope === "vm" && p.group !== undefined && (await this.exists(groupPartition(p.group), tag));
    for (const d of p.disks) {
      if (groupPointStays) continue;
      if (p.scope === "group" && (await this.exists(vmPartition(d.itemId), tag))) continue;
      await this.deleteSnapshot(d);
    }
  }

  private async deleteSnapshot(d: PointDisk): Promise<void> {
    // An item's points are always of its current direction: commit deletes them all before a re-protect can turn it.
    const found = await this.deps.items.get(d.itemId);
    const replicas = await this.deps.storage.replicas(found ? directionOf(found.item) : "forward");
    await replicas
      .getPageBlobClient(`${d.itemId}/${d.diskId}.vhd`)
      .withSnapshot(d.snapshot)
      .delete()
      .catch((e) => (isNotFound(e) ? undefined : Promise.reject(e)));
  }

  /** Arrivals of tags that can no longer complete (a member never reached a group tag): their rows and orphan snapshots go. */
  async expireArrivals(itemId: string, olderThanMs: number): Promise<number> {
    const t = await this.arrivals();
    let n = 0;
    for (const a of await this.arrivalsOf(itemId)) {
      if (Date.parse(a.tag.time) >= olderThanMs) continue;
      const point = await this.get(vmPartition(itemId), a.tag);
      if (!point?.disks.some((d) => d.diskId === a.diskId && d.snapshot === a.snapshot)) await this.deleteSnapshot(a);
      await t.deleteEntity(itemId, `${a.tag.id}|${a.diskId}`).catch((e) => (isNotFound(e) ? undefined : Promise.reject(e)));
      n++;
    }
    return n;
  }

  /** Everything of an item (disable, commit): its points and arrivals; group points that include it lose it. */
  async deleteAllOf(item: ReplicatedItem): Promise<void> {
    for (const p of await this.listPartition(vmPartition(item.id))) await this.deletePoint(vmPartition(item.id), p);
    // A group point without one of its members can no longer bring the group back: it goes too (the other
    // members keep their snapshots where their own VM points still use them).
    if (item.replicationGroup) {
      const partition = groupPartition(item.replicationGroup);
      for (const p of await this.listPartition(partition)) if (p.members?.includes(item.id)) await this.deletePoint(partition, p);
    }
    await this.expireArrivals(item.id, MAX_TIME);
  }
}

/**
 * The apply hook of recovery points: a tag reached, snapshot the replica at exactly this batch (under the lease) and
 * seal whatever the arrival completes. Idempotent: a run repeated after a crash reuses its snapshot or finds the point sealed.
 */
export function snapshotAtTag(points: RecoveryPoints, log: (line: string) => void): (applied: TagApplied) => Promise<void> {
  return async ({ item, disk, seq, tag, replica, leaseId }) => {
    const earlier = await points.arrival(item.id, disk.id, tag.id);
    if (earlier?.seq === seq) {
      await points.sealTag(item.id, tag);
      return;
    }
    if (await points.sealed(item.id, tag)) return;
    const { snapshot } = await replica.createSnapshot({ conditions: { leaseId }, metadata: { tag: tag.id, seq: String(seq) } });
    const sealed = await points.recordArrival({ itemId: item.id, diskId: disk.id, snapshot: snapshot!, seq, tag });
    for (const p of sealed) log(`sealed ${p.scope} recovery point ${p.id} (${p.kind}, ${p.time})`);
  };
}
