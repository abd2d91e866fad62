// The control plane's side of the agent: registration, check-ins (SAS renewal, resync commands), resync manifests.
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { crc32c } from "@node-rs/crc32";
import { parseInput, registerRequestSchema } from "../contract/api";
import {
  AGENT_WARNINGS,
  checkinRequestSchema,
  manifestRequestSchema,
  RESYNC_BLOCK_BYTES,
  type CheckinResponse,
  type GroupInfo,
  type ManifestResponse,
  type RegistrationResponse,
  type ResyncCommand,
} from "./agent-protocol";
import { seqOfBlobName } from "../replication/batch";
import { readSeedChecksums, ZERO_BLOCK_CRC } from "./seed-copy";
import { BadRequest, Conflict, isConflict, isNotFound, NotFound, Unauthorized } from "../contract/errors";
import { cacheContainerName, clearIssues, directionOf, isControlPlaneResync, raiseIssue, type DiskRecord, type ReplicatedItem } from "./items";
import { ItemStore } from "../storage/item-store";
import type { Config } from "../config/settings";
import { directionAccounts } from "../storage/names";
import { type Direction } from "../storage/names";
import { REPLICATION_QUEUE } from "../storage/names";
import { TABLES } from "../storage/names";
import type { EntityTable, StoragePort } from "../storage/ports";

export const hashSecret = (secret: string) => createHash("sha256").update(secret, "utf8").digest("hex");

/** A registration token, by its hash: which item it enables and until when. */
export interface TokenEntity {
  partitionKey: "token";
  rowKey: string;
  itemId: string;
  expiresAt: string;
}

/** The item's current agent: the hash of its key (a re-registration replaces it and fences the old agent out). */
interface AgentEntity {
  partitionKey: "agent";
  rowKey: string;
  keyHash: string;
  registeredAt: string;
}

/** A replication group's barrier secret (partition: the group). */
interface GroupSecretEntity {
  partitionKey: string;
  rowKey: "secret";
  secret: string;
}

/** Where a group member's agent listens (partition: the group, row: `member|<itemId>`). */
interface GroupMemberEntity {
  partitionKey: string;
  rowKey: string;
  host: string;
  port: number;
  reportedAt: string;
}

export interface AgentsDeps {
  config: Config;
  storage: StoragePort;
  items: ItemStore;
  now?: () => Date;
}

const NOT_PROTECTED = new Set(["Enabling", "EnableFailed", "Disabling"]);
/** States in which the item's agent has nothing to replicate any more: its key and tokens are refused (and revoked on commit). */
const NO_AGENT = new Set([...NOT_PROTECTED, "FailoverCommitted"]);

/** Agent warnings the item's health shows (Warning severity); other codes an agent reports are ignored. */
export const AGENT_WARNING_CODES: ReadonlySet<string> = new Set(Object.values(AGENT_WARNINGS));

/** The resyncs the control plane waits for (halted disks, a re-protect's seed, an operator's request): the agent runs them. */
function resyncCommands(disks: DiskRecord[]): ResyncCommand[] {
  return disks
    .filter((d) => isControlPlaneResync(d.resync))
    .map((d) => ({ diskId: d.id, resyncId: d.resync!.id, baseSeq: d.resync!.baseSeq, reason: d.resync!.reason }));
}

/** Chunk reads of a manifest in flight at once. */
const MANIFEST_READS = 4;

/** A registration found its item disabled under it. */
class ItemGone extends Error {}

export class Agents {
  private readonly now: () => Date;

  constructor(private readonly deps: AgentsDeps) {
    this.now = deps.now ?? (() => new Date());
  }

  private table(): Promise<EntityTable> {
    return this.deps.storage.table(TABLES.registrations);
  }

  /** Issues the one-time registration token for a new item (only its hash is kept). */
  async issueToken(itemId: string): Promise<{ token: string; expiresAt: string; revoke: () => Promise<void> }> {
    const token = randomBytes(32).toString("base64url");
    const expiresAt = new Date(this.now().getTime() + this.deps.config.agent.tokenTtlHours * 3600_000).toISOString();
    const t = await this.table();
    const rowKey = hashSecret(token);
    await t.createEntity<TokenEntity>({ partitionKey: "token", rowKey, itemId, expiresAt });
    return { token, expiresAt, revoke: () => t.deleteEntity("token", rowKey).then(() => undefined) };
  }

  /** Forgets every token and agent key of an item (disable). */
  async forget(itemId: string): Promise<void> {
    const t = await this.table();
    const id = itemId.replace(/'/g, "''");
    for await (const e of t.listEntities<TokenEntity>({ queryOptions: { filter: `PartitionKey eq 'token' and itemId eq '${id}'` } })) {
      await t.deleteEntity("token", e.rowKey).catch((err) => (isNotFound(err) ? undefined : Promise.reject(err)));
    }
    await t.deleteEntity("agent", itemId).catch((err) => (isNotFound(err) ? undefined : Promise.reject(err)));
  }

  /** Exchanges a registration token for an agent key and SAS URLs scoped to this item's cache container and the queue. */
  async register(body: unknown): Promise<RegistrationResponse> {
    const { token, replace } = parseInput(registerRequestSchema, body);
    const t = await this.table();
    const reg = await t.getEntity<TokenEntity>("token", hashSecret(token)).catch((e) => (isNotFound(e) ? undefined : Promise.reject(e)));
    if (!reg) throw new Unauthorized("unknown registration token");
    const now = this.now();
    if (Date.parse(reg.expiresAt) <= now.getTime()) throw new Unauthorized(`registration token expired at ${reg.expiresAt}`);
    const item = await this.protectedItem(reg.itemId);
    // A token is usable for its whole lifetime (an agent that lost its state registers again), but never silently:
    // taking over from a registered agent locks that one out, so it has to be asked for.
    const registered = await t.getEntity<AgentEntity>("agent", item.id).catch((e) => (isNotFound(e) ? undefined : Promise.reject(e)));
    if (registered && !replace) {
      throw new Conflict(
        "AgentAlreadyRegistered",
        `an agent registered for item '${item.id}' at ${registered.registeredAt}; registering again locks it out: send { "token", "replace": true } to do so`,
        { itemId: item.id, registeredAt: registered.registeredAt },
      );
    }
    try {
      return await this.registerAgentOf(item, now);
    } catch (e) {
      // A disable racing this registration removed the cache or the replicas under it: the item is going, not an error.
      if (!isNotFound(e) && !(e instanceof ItemGone)) throw e;
      await this.forgetAgentIfGone(item.id);
      throw new Unauthorized("the replicated item of this agent is not being protected");
    }
  }

  /** After a registration that met a disable: the agent key it wrote goes with the item (disable may have run first). */
  private async forgetAgentIfGone(itemId: string): Promise<void> {
    const found = await this.deps.items.get(itemId);
    if (found && !NOT_PROTECTED.has(found.item.state)) return;
    const t = await this.table();
    await t.deleteEntity("agent", itemId).catch((err) => (isNotFound(err) ? undefined : Promise.reject(err)));
  }

  private async registerAgentOf(item: ReplicatedItem, now: Date): Promise<RegistrationResponse> {
    const t = await this.table();
    const agentKey = randomBytes(32).toString("base64url");
    await t.upsertEntity<AgentEntity>({ partitionKey: "agent", rowKey: item.id, keyHash: hashSecret(agentKey), registeredAt: now.toISOString() }, "Replace");
    const current = await this.deps.items.updateItem(item.id, (i) => {
      if (NOT_PROTECTED.has(i.state)) return undefined;
      i.agent = { registeredAt: now.toISOString(), registrations: (i.agent?.registrations ?? 0) + 1 };
      i.updatedAt = now.toISOString();
      return i;
    });
    // The item went (or began going) while this agent registered: its key goes too.
    if (!current || NOT_PROTECTED.has(current.state)) throw new ItemGone();
    const disks = await this.deps.items.listDisks(item.id);
    return {
      itemId: item.id,
      vmName: item.vm.name,
      agentKey,
      ...(await this.endpoints(item)),
      disks: await Promise.all(disks.map(async (d) => ({ id: d.id, role: d.role, sizeBytes: d.sizeBytes, nextSeq: await this.nextSeq(directionOf(item), d) }))),
      // A re-protect's seed (or any resync the control plane waits for) is known before the agent's first job starts:
      // a disk must compare with its seeded replica, never copy itself whole first.
      resync: resyncCommands(disks),
      policy: item.policy,
      ...(item.replicationGroup ? { replicationGroup: item.replicationGroup } : {}),
      // The group's agents find each other through `group` (its coordinator and members).
      peers: [],
      ...(item.replicationGroup ? { group: await this.groupInfo(item) } : {}),
      checkinIntervalSeconds: this.deps.config.agent.checkinSeconds,
    };
  }

  /**
   * Renews the agent's SAS URLs, records resyncs it reports, hands it the resyncs the control plane needs, and tells it
   * when a planned failover shuts its VM down (`shutdown`: refuse writes, cut the final tag).
   */
  async checkin(body: unknown): Promise<CheckinResponse> {
    const req = parseInput(checkinRequestSchema, body);
    const item = await this.authenticate(req.itemId, req.agentKey);
    const at = this.now().toISOString();
    // The whole request is checked before anything is written: a refused check-in changes nothing.
    const reported = req.resyncRequired ?? [];
    if (reported.length > 0) {
      const known = new Set((await this.deps.items.listDisks(item.id)).map((d) => d.id));
      const unknown = reported.map((r, n) => ({ r, n })).filter(({ r }) => !known.has(r.diskId));
      if (unknown.length > 0) {
        throw new BadRequest(
          `${unknown.map(({ r }) => `'${r.diskId}'`).join(", ")} ${unknown.length === 1 ? "is not a disk" : "are not disks"} of this item`,
          unknown.map(({ n }) => ({ field: `resyncRequired[${n}].diskId`, message: "unknown disk" })),
        );
      }
    }
    for (const r of reported) {
      const disk = await this.deps.items.updateDisk(item.id, r.diskId, (d) => {
        // A resync the control plane started (a corrupt batch) covers the whole disk already and must stay: replacing
        // it would un-halt the disk past the batch that was never applied.
        if (d.resync?.id === r.resyncId || isControlPlaneResync(d.resync)) return undefined;
        d.state = "ResyncRequired";
        d.resync = { id: r.resyncId, reason: r.reason, origin: "agent", baseSeq: d.lastAppliedSeq ?? 0, since: at };
        return d;
      });
      if (!disk) throw new BadRequest(`disk '${r.diskId}' is not a disk of this item`, [{ field: "resyncRequired.diskId", message: "unknown disk" }]);
      if (disk.resync?.id !== r.resyncId) continue;
      await this.deps.items.updateItem(item.id, (i) => {
        if (i.health.issues.some((h) => h.code === "ResyncRequired" && h.diskId === r.diskId)) return undefined;
        raiseIssue(i, {
          code: "ResyncRequired",
          severity: "Warning",
          diskId: r.diskId,
          message: `disk ${r.diskId}: ${r.reason} (resync ${r.resyncId})`,
          since: at,
        });
        if (i.state === "Protected" || i.state === "InitialReplication") i.state = "ResyncRequired";
        i.updatedAt = at;
        return i;
      });
    }
    await this.syncWarnings(item, req.warnings ?? [], at);
    const disks = await this.deps.items.listDisks(item.id);
    const resync = resyncCommands(disks);
    if (item.replicationGroup && req.groupListen) await this.recordListen(item.replicationGroup, item.id, req.groupListen);
    return {
      ...(await this.endpoints(item)),
      policy: item.policy,
      resync,
      ...(item.replicationGroup ? { group: await this.groupInfo(item) } : {}),
      checkinIntervalSeconds: this.deps.config.agent.checkinSeconds,
      // Planned failover: the item as read for this check-in says whether the source is shutting down; a rolled-back
      // failover clears it, and the next check-in without it lets the agent accept writes again.
      ...(item.sourceShutdown ? { shutdown: { tagId: item.sourceShutdown.tagId } } : {}),
    };
  }

  private groups(): Promise<EntityTable> {
    return this.deps.storage.table(TABLES.replicationGroups);
  }

  /**
   * Where an agent of the group listens, and when it last said so (each check-in): the row is kept per group, so a
   * member that moved groups is not reused.
   */
  private async recordListen(group: string, itemId: string, at: { host: string; port: number }): Promise<void> {
    const t = await this.groups();
    await t.upsertEntity<GroupMemberEntity>(
      { partitionKey: group, rowKey: `member|${itemId}`, host: at.host, port: at.port, reportedAt: this.now().toISOString() },
      "Replace",
    );
  }

  /** The group's secret (256 random bits, created on first need), its members, and its coordinator. */
  async groupInfo(item: ReplicatedItem): Promise<GroupInfo> {
    const name = item.replicationGroup!;
    const t = await this.groups();
    let secret: string | undefined = (await t.getEntity<GroupSecretEntity>(name, "secret").catch((e) => (isNotFound(e) ? undefined : Promise.reject(e))))
      ?.secret;
    if (!secret) {
      const fresh = randomBytes(32).toString("base64url");
      // Two agents asking at once: the first insert wins, the other reads it.
      secret = await t.createEntity<GroupSecretEntity>({ partitionKey: name, rowKey: "secret", secret: fresh }).then(
        () => fresh,
        async (e) => (isConflict(e) ? (await t.getEntity<GroupSecretEntity>(name, "secret")).secret : Promise.reject(e)),
      );
    }
    const members = (await this.deps.items.list())
      .filter((i) => i.replicationGroup === name && !NOT_PROTECTED.has(i.state))
      .map((i) => i.id)
      .sort();
    const listening = new Map<string, GroupMemberEntity>();
    const id = name.replace(/'/g, "''");
    // An agent that stopped checking in (three intervals) is not a coordinator: the group moves on to the next one.
    const alive = this.now().getTime() - 3 * this.deps.config.agent.checkinSeconds * 1000;
    for await (const e of t.listEntities<GroupMemberEntity>({
      queryOptions: { filter: `PartitionKey eq '${id}' and RowKey ge 'member|' and RowKey lt 'member|~'` },
    })) {
      if (Date.parse(e.reportedAt) >= alive) listening.set(e.rowKey.slice("member|".length), e);
    }
    // Deterministic: the member with the smallest item id among the live ones that said where they listen.
    const first = members.find((m) => listening.has(m));
    const at = first ? listening.get(first)! : undefined;
    return { name, secret: secret!, coordinator: first && at ? { itemId: first, host: at.host, port: at.port } : null, members };
  }

  /**
   * The item's agent-warning issues follow the check-in: each reported known code is raised (or reworded), each known
   * code not reported is cleared. The item is written only when its health changes, so repeated check-ins are no-ops.
   */
  private async syncWarnings(item: ReplicatedItem, warnings: { code: string; message: string }[], at: string): Promise<void> {
    const reported = new Map(warnings.filter((w) => AGENT_WARNING_CODES.has(w.code)).map((w) => [w.code, w.message]));
    // The usual check-in: nothing reported, nothing open — no second read of the item.
    if (reported.size === 0 && !item.health.issues.some((x) => AGENT_WARNING_CODES.has(x.code))) return;
    await this.deps.items.updateItem(item.id, (i) => {
      const before = JSON.stringify(i.health);
      clearIssues(i, (x) => AGENT_WARNING_CODES.has(x.code) && x.diskId === undefined && !reported.has(x.code));
      for (const [code, message] of reported) raiseIssue(i, { code, severity: "Warning", message: `agent: ${message}`, since: at });
      if (JSON.stringify(i.health) === before) return undefined;
      i.updatedAt = at;
      return i;
    });
  }

  /** CRC32C of each 64 KiB block of the replica at the resync's base watermark, for a differential resync. */
  async resyncManifest(body: unknown): Promise<ManifestResponse> {
    const req = parseInput(manifestRequestSchema, body);
    const item = await this.authenticate(req.itemId, req.agentKey);
    const found = await this.deps.items.getDisk(item.id, req.diskId);
    if (!found) throw new NotFound("disk", req.diskId);
    const disk = found.disk;
    if (disk.resync?.id !== req.resyncId || !isControlPlaneResync(disk.resync)) {
      throw new Conflict("NoSuchResync", `disk '${disk.id}' has no resync '${req.resyncId}' in progress`, { diskId: disk.id, resync: disk.resync ?? null });
    }
    if (req.offset + req.length > disk.sizeBytes) {
      throw new BadRequest(`range ends past the disk's ${disk.sizeBytes} bytes`, [{ field: "length", message: `offset + length must be ≤ ${disk.sizeBytes}` }]);
    }
    const blob = (await this.deps.storage.replicas(directionOf(item))).getPageBlobClient(disk.replicaBlob);
    const props = await blob.getProperties();
    const watermark = props.blobSequenceNumber ?? 0;
    if (watermark !== disk.resync.baseSeq) {
      throw new Conflict("ReplicaMoved", `replica of disk '${disk.id}' is at batch ${watermark}, not the resync's base ${disk.resync.baseSeq}`, { watermark });
    }
    // A re-protect's seed copied through the control plane kept its checksums: no read of the replica while it is that seed.
    if (disk.resync.origin === "seed") {
      const replicas = await this.deps.storage.replicas(directionOf(item));
      const kept = await readSeedChecksums(replicas, item.id, disk.id, req.resyncId, props.etag!, req.offset, req.length);
      if (kept) return { diskId: disk.id, resyncId: req.resyncId, baseSeq: watermark, offset: req.offset, blockBytes: RESYNC_BLOCK_BYTES, checksums: kept };
    }
    // Only pages that hold data are read (a seed's empty regions, a sparse disk): the rest are zero blocks. Chunks are
    // read a few at a time, so the checksum pass runs at the account's throughput rather than one request's.
    const end = req.offset + req.length;
    const written: [number, number][] = [];
    for await (const page of blob.listPageRanges(req.offset, req.length).byPage()) {
      for (const r of page.pageRange ?? []) written.push([Math.max(req.offset, r.start), Math.min(end, r.end + 1)]);
    }
    const holdsData = (from: number, to: number) => written.some(([a, b]) => a < to && b > from);
    const checksums: number[] = new Array(req.length / RESYNC_BLOCK_BYTES).fill(ZERO_BLOCK_CRC);
    const chunk = 4 * 1024 * 1024;
    const chunks: number[] = [];
    for (let at = req.offset; at < end; at += chunk) if (holdsData(at, Math.min(end, at + chunk))) chunks.push(at);
    let next = 0;
    const worker = async () => {
      while (next < chunks.length) {
        const at = chunks[next++]!;
        const n = Math.min(chunk, end - at);
        const bytes = await blob.downloadToBuffer(at, n);
        for (let b = 0; b < n; b += RESYNC_BLOCK_BYTES)
          checksums[(at - req.offset + b) / RESYNC_BLOCK_BYTES] = crc32c(bytes.subarray(b, b + RESYNC_BLOCK_BYTES));
      }
    };
    await Promise.all(Array.from({ length: MANIFEST_READS }, worker));
    return { diskId: disk.id, resyncId: req.resyncId, baseSeq: watermark, offset: req.offset, blockBytes: RESYNC_BLOCK_BYTES, checksums };
  }

  private async protectedItem(itemId: string): Promise<ReplicatedItem> {
    const found = await this.deps.items.get(itemId);
    if (found?.item.state === "Reprotecting") {
      // The agent of a re-protect registers as soon as it has its token; the seed is being prepared: it tries again.
      throw new Conflict("ReprotectInProgress", `replicated item '${itemId}' is being re-protected: its replicas are being seeded; register again shortly`, {
        itemId,
        state: found.item.state,
      });
    }
    if (!found || NO_AGENT.has(found.item.state)) throw new Unauthorized("the replicated item of this agent is not being protected");
    return found.item;
  }

  private async authenticate(itemId: string, agentKey: string): Promise<ReplicatedItem> {
    const t = await this.table();
    const agent = await t.getEntity<AgentEntity>("agent", itemId).catch((e) => (isNotFound(e) ? undefined : Promise.reject(e)));
    const given = Buffer.from(hashSecret(agentKey), "hex");
    if (!agent || !timingSafeEqual(given, Buffer.from(agent.keyHash, "hex"))) throw new Unauthorized("unknown agent or wrong agent key");
    return this.protectedItem(itemId);
  }

  /** SAS URLs: create+write on the item's cache container only, add-only on the replication queue. */
  private async endpoints(item: ReplicatedItem): Promise<Pick<RegistrationResponse, "cache" | "queue">> {
    const now = this.now();
    const expiresOn = new Date(now.getTime() + this.deps.config.agent.sasTtlHours * 3600_000);
    const startsOn = new Date(now.getTime() - 5 * 60_000); // clock skew between the VM and storage
    const direction = directionOf(item);
    const { cache } = directionAccounts(this.deps.config, direction);
    const { control } = this.deps.config.storage;
    const containerName = cacheContainerName(item.id);
    // The cache container lives in the account of the region the VM replicates from.
    const blob = await this.deps.storage.sas.cacheContainer(direction, containerName, startsOn, expiresOn);
    const queue = await this.deps.storage.sas.queue(REPLICATION_QUEUE, startsOn, expiresOn);
    await this.deps.storage.replicationQueue();
    return {
      cache: { containerUrl: `${cache.blobUrl}/${containerName}?${blob.sas}`, expiresOn: blob.expiresOn.toISOString() },
      queue: { url: `${control.queueUrl}/${REPLICATION_QUEUE}?${queue.sas}`, messageEncoding: "base64", expiresOn: queue.expiresOn.toISOString() },
    };
  }

  /** Above everything applied (the replica's watermark) and everything waiting in the cache: a new agent never reuses a seq. */
  private async nextSeq(direction: Direction, disk: DiskRecord): Promise<number> {
    const replica = (await this.deps.storage.replicas(direction)).getPageBlobClient(disk.replicaBlob);
    let highest = (await replica.getProperties()).blobSequenceNumber ?? 0;
    const cache = this.deps.storage.cache(direction).getContainerClient(cacheContainerName(disk.itemId));
    for await (const b of cache.listBlobsFlat({ prefix: `${disk.id}/` })) highest = Math.max(highest, seqOfBlobName(b.name) ?? 0);
    return highest + 1;
  }
}
