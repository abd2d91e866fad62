// The replicated-item records in Table Storage: items, their disks, the VM claims that keep a VM protected once.
import { isConflict, isNotFound, storageStatus } from "../contract/errors";
import { DISK_ID_PATTERN, ITEM_ID_PATTERN } from "../contract/api";
import type { EntityTable, Tables } from "./ports";
import { TABLES } from "./names";
import { type DiskRecord, type ItemState, type ReplicatedItem } from "../protection/items";

interface ItemEntity {
  partitionKey: "item";
  rowKey: string;
  state: ItemState;
  body: string;
}
interface ClaimEntity {
  partitionKey: "vm";
  rowKey: string;
  itemId: string;
}
interface DiskEntity {
  partitionKey: string;
  rowKey: string;
  body: string;
}

/**
 * Optimistic concurrency on one entity: read it with its ETag, change a copy, write it only if unchanged (412
 * otherwise, then again). `change` returning undefined means "nothing to write".
 */
async function readModifyWrite<T>(
  read: () => Promise<{ value: T; etag: string } | undefined>,
  write: (value: T, etag: string) => Promise<unknown>,
  change: (value: T) => T | undefined,
): Promise<T | undefined> {
  for (let attempt = 0; ; attempt++) {
    const found = await read();
    if (!found) return undefined;
    const next = change(structuredClone(found.value));
    if (!next) return found.value;
    try {
      await write(next, found.etag);
      return next;
    } catch (e) {
      if (storageStatus(e) !== 412 || attempt >= 20) throw e;
    }
  }
}

export class ItemStore {
  constructor(private readonly storage: Tables) {}

  private items(): Promise<EntityTable> {
    return this.storage.table(TABLES.items);
  }

  private disks(): Promise<EntityTable> {
    return this.storage.table(TABLES.disks);
  }

  async get(id: string): Promise<{ item: ReplicatedItem; etag: string } | undefined> {
    // An id outside the rule names no item; never sent to storage as a key (a `/` there is a 500 after retries).
    if (!ITEM_ID_PATTERN.test(id)) return undefined;
    const t = await this.items();
    try {
      const e = await t.getEntity<ItemEntity>("item", id);
      return { item: JSON.parse(e.body) as ReplicatedItem, etag: e.etag };
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  async list(): Promise<ReplicatedItem[]> {
    const t = await this.items();
    const out: ReplicatedItem[] = [];
    for await (const e of t.listEntities<ItemEntity>({ queryOptions: { filter: "PartitionKey eq 'item'" } })) {
      out.push(JSON.parse(e.body) as ReplicatedItem);
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  }

  async create(item: ReplicatedItem): Promise<void> {
    const t = await this.items();
    await t.createEntity<ItemEntity>({ partitionKey: "item", rowKey: item.id, state: item.state, body: JSON.stringify(item) });
  }

  /** Replaces the item; with `etag`, only if nobody changed it since it was read (412 otherwise). */
  async put(item: ReplicatedItem, etag?: string): Promise<string> {
    const t = await this.items();
    const r = await t.updateEntity<ItemEntity>({ partitionKey: "item", rowKey: item.id, state: item.state, body: JSON.stringify(item) }, "Replace", {
      etag: etag ?? "*",
    });
    return r.etag ?? "";
  }

  async delete(id: string): Promise<void> {
    const t = await this.items();
    try {
      await t.deleteEntity("item", id);
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
  }

  /** Claims the VM for `itemId`; returns the item that already holds it, if any. */
  async claimVm(key: string, itemId: string): Promise<string | undefined> {
    const t = await this.items();
    try {
      await t.createEntity<ClaimEntity>({ partitionKey: "vm", rowKey: key, itemId });
      return undefined;
    } catch (e) {
      if (!isConflict(e)) throw e;
      const held = await t.getEntity<ClaimEntity>("vm", key).catch((err) => (isNotFound(err) ? undefined : Promise.reject(err)));
      return held ? held.itemId : this.claimVm(key, itemId);
    }
  }

  /** Releases the claim only if `itemId` still holds it. */
  async releaseVm(key: string, itemId: string): Promise<void> {
    const t = await this.items();
    try {
      const held = await t.getEntity<ClaimEntity>("vm", key);
      if (held.itemId === itemId) await t.deleteEntity("vm", key, { etag: held.etag });
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
  }

  async putDisks(disks: DiskRecord[]): Promise<void> {
    if (disks.length === 0) return;
    const t = await this.disks();
    // One partition per item and ≤ 65 disks: one transaction, all or nothing.
    await t.submitTransaction(disks.map((d) => ["upsert", { partitionKey: d.itemId, rowKey: d.id, body: JSON.stringify(d) } satisfies DiskEntity, "Replace"]));
  }

  async listDisks(itemId: string): Promise<DiskRecord[]> {
    if (!ITEM_ID_PATTERN.test(itemId)) return [];
    const t = await this.disks();
    const out: DiskRecord[] = [];
    const filter = `PartitionKey eq '${itemId.replace(/'/g, "''")}'`;
    for await (const e of t.listEntities<DiskEntity>({ queryOptions: { filter } })) out.push(JSON.parse(e.body) as DiskRecord);
    return out.sort((a, b) => a.index - b.index);
  }

  async getDisk(itemId: string, diskId: string): Promise<{ disk: DiskRecord; etag: string } | undefined> {
    if (!ITEM_ID_PATTERN.test(itemId) || !DISK_ID_PATTERN.test(diskId)) return undefined;
    const t = await this.disks();
    try {
      const e = await t.getEntity<DiskEntity>(itemId, diskId);
      return { disk: JSON.parse(e.body) as DiskRecord, etag: e.etag };
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** Replaces the disk record; with `etag`, only if unchanged since read (412 otherwise). */
  async putDisk(disk: DiskRecord, etag?: string): Promise<string> {
    const t = await this.disks();
    const r = await t.updateEntity<DiskEntity>({ partitionKey: disk.itemId, rowKey: disk.id, body: JSON.stringify(disk) }, "Replace", {
      etag: etag ?? "*",
    });
    return r.etag ?? "";
  }

  /** Read-modify-write of one disk record, retried when another writer got there first. */
  updateDisk(itemId: string, diskId: string, change: (d: DiskRecord) => DiskRecord | undefined): Promise<DiskRecord | undefined> {
    return readModifyWrite(
      async () => {
        const f = await this.getDisk(itemId, diskId);
        return f && { value: f.disk, etag: f.etag };
      },
      (d, etag) => this.putDisk(d, etag),
      change,
    );
  }

  /** Read-modify-write of the item, retried on a concurrent update. */
  updateItem(itemId: string, change: (i: ReplicatedItem) => ReplicatedItem | undefined): Promise<ReplicatedItem | undefined> {
    return readModifyWrite(
      async () => {
        const f = await this.get(itemId);
        return f && { value: f.item, etag: f.etag };
      },
      (i, etag) => this.put(i, etag),
      change,
    );
  }

  /**
   * Read-modify-write of the item with its disks read after the item, retried on a concurrent update: two disks
   * finishing at once each see the other's record on some attempt, so the item never keeps a stale state.
   */
  updateItemWithDisks(itemId: string, change: (i: ReplicatedItem, disks: DiskRecord[]) => ReplicatedItem | undefined): Promise<ReplicatedItem | undefined> {
    let disks: DiskRecord[] = [];
    return readModifyWrite(
      async () => {
        const f = await this.get(itemId);
        if (!f) return undefined;
        disks = await this.listDisks(itemId);
        return { value: f.item, etag: f.etag };
      },
      (i, etag) => this.put(i, etag),
      (i) => change(i, disks),
    );
  }

  async deleteDisks(itemId: string): Promise<void> {
    const disks = await this.listDisks(itemId);
    if (disks.length === 0) return;
    const t = await this.disks();
    await t.submitTransaction(disks.map((d) => ["delete", { partitionKey: itemId, rowKey: d.id }]));
  }
}
