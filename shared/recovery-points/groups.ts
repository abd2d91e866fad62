// Replication group membership: one ETag-conditional record per group, so that concurrent enables cannot overfill a group or mix region pairs.
import { MAX_GROUP_VMS } from "../contract/api";
import { Conflict, isConflict, isNotFound, storageStatus } from "../contract/errors";
import type { ItemStore } from "../storage/item-store";
import { TABLES } from "../storage/names";
import type { EntityTable, Tables } from "../storage/ports";

/** The group's row in ReplicationGroups (partition: the group); its members with when each was claimed. */
interface MembershipEntity {
  partitionKey: string;
  rowKey: typeof MEMBERSHIP_ROW;
  body: string;
}

interface Membership {
  sourceRegion?: string;
  targetRegion?: string;
  members: Record<string, string>;
}

const MEMBERSHIP_ROW = "membership";
/** A claim whose item never appeared (an enable that crashed between claim and item) stops counting after this. */
const STALE_CLAIM_MS = 10 * 60_000;
const MAX_ATTEMPTS = 50;

export class ReplicationGroups {
  constructor(private readonly deps: { storage: Tables; items: ItemStore; now?: () => Date }) {}

  private now(): Date {
    return this.deps.now?.() ?? new Date();
  }

  private table(): Promise<EntityTable> {
    return this.deps.storage.table(TABLES.replicationGroups);
  }

  private async read(group: string): Promise<{ value: Membership; etag: string } | undefined> {
    const t = await this.table();
    try {
      const e = await t.getEntity<MembershipEntity>(group, MEMBERSHIP_ROW);
      return { value: JSON.parse(e.body) as Membership, etag: e.etag };
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** A group's record, created from the items that already name it (groups older than the record). */
  private async readOrCreate(group: string): Promise<{ value: Membership; etag: string }> {
    for (;;) {
      const found = await this.read(group);
      if (found) return found;
      const members = (await this.deps.items.list()).filter((i) => i.replicationGroup === group);
      const at = this.now().toISOString();
      const value: Membership = {
        ...(members[0] ? { sourceRegion: members[0].vm.region, targetRegion: members[0].targetRegion } : {}),
        members: Object.fromEntries(members.map((m) => [m.id, at])),
      };
      try {
        await (await this.table()).createEntity<MembershipEntity>({ partitionKey: group, rowKey: MEMBERSHIP_ROW, body: JSON.stringify(value) });
      } catch (e) {
        if (!isConflict(e)) throw e;
      }
    }
  }

  /**
   * Makes `itemId` a member of `group` (a no-op if it is one): 409 ReplicationGroupFull past 16 VMs, 409
   * ReplicationGroupRegionMismatch when the group replicates another region pair. Concurrent claims serialise on the
   * record's ETag, so the checks hold for all of them together.
   */
  async claim(group: string, itemId: string, sourceRegion: string, targetRegion: string): Promise<void> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const { value, etag } = await this.readOrCreate(group);
      if (value.members[itemId]) return;
      let ids = Object.keys(value.members);
      if (ids.length >= MAX_GROUP_VMS) ids = await this.prune(value);
      if (ids.length >= MAX_GROUP_VMS) {
        throw new Conflict("ReplicationGroupFull", `replication group '${group}' already has ${MAX_GROUP_VMS} VMs, the most a group holds`, {
          field: "replicationGroup",
          members: ids.length,
        });
      }
      if (ids.length > 0 && (value.sourceRegion !== sourceRegion || value.targetRegion !== targetRegion)) {
        throw new Conflict(
          "ReplicationGroupRegionMismatch",
          `replication group '${group}' replicates ${value.sourceRegion} → ${value.targetRegion}; this VM would replicate ${sourceRegion} → ${targetRegion}`,
          { field: "replicationGroup", itemId: ids[0] },
        );
      }
      const next: Membership = {
        sourceRegion,
        targetRegion,
        members: { ...Object.fromEntries(ids.map((id) => [id, value.members[id]!])), [itemId]: this.now().toISOString() },
      };
      if (await this.write(group, next, etag)) return;
    }
    throw new Conflict("ConcurrentChange", `replication group '${group}' is changing too fast; try again`, { field: "replicationGroup" });
  }

  /** `itemId` leaves `group` (a no-op if it is not a member). */
  async release(group: string, itemId: string): Promise<void> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const found = await this.read(group);
      if (!found || !found.value.members[itemId]) return;
      const { [itemId]: _gone, ...members } = found.value.members;
      if (await this.write(group, { ...found.value, members }, found.etag)) return;
    }
  }

  /** Members whose item exists, or whose claim is recent (its enable is still running). */
  private async prune(value: Membership): Promise<string[]> {
    const existing = new Set((await this.deps.items.list()).map((i) => i.id));
    const cutoff = this.now().getTime() - STALE_CLAIM_MS;
    return Object.keys(value.members).filter((id) => existing.has(id) || Date.parse(value.members[id]!) > cutoff);
  }

  /** false when another writer changed the record since it was read (412). */
  private async write(group: string, value: Membership, etag: string): Promise<boolean> {
    try {
      await (
        await this.table()
      ).updateEntity<MembershipEntity>({ partitionKey: group, rowKey: MEMBERSHIP_ROW, body: JSON.stringify(value) }, "Replace", { etag });
      return true;
    } catch (e) {
      if (storageStatus(e) === 412) return false;
      throw e;
    }
  }
}
