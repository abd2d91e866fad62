// Re-protect (turn a committed item around, seed its new replicas from what is left, hand over to the agent) and resync on request.
import { parseInput, reprotectRequestSchema, resyncRequestSchema } from "../contract/api";
import type { Agents } from "./agents";
import { Conflict, IllegalState, isLeaseHeld, isNotFound, NotFound, storageCode, storageStatus } from "../contract/errors";
import type { Fabric } from "../fabric/port";
import {
  cacheContainerName,
  directionOf,
  isControlPlaneResync,
  replicaBlobName,
  type DiskRecord,
  type DiskSeed,
  type OriginalResources,
  type ReplicatedItem,
  type SeedSource,
} from "./items";
import { type ItemStore } from "../storage/item-store";
import { isEmulatedAccount, type Config } from "../config/settings";
import { bindSeedChecksums, copySeedPages, deleteSeedChecksums, storeSeedChecksums } from "./seed-copy";
import { readReplicationStatus } from "../replication/status";
import { directionAccounts, flipped, regionsAreDistinct, REPLICAS_CONTAINER, type Direction } from "../storage/names";
import type { StoragePort } from "../storage/ports";
import { VHD_FOOTER_BYTES, vhdFooter } from "../replication/vhd";
import type { Jobs } from "../operations/jobs";

/** What the orchestration is started with. */
export interface ReprotectInput {
  instanceId: string;
  itemId: string;
  from: Direction;
  to: Direction;
  startedAt: string;
}

export interface ReprotectDeps {
  config: Config;
  storage: StoragePort;
  items: ItemStore;
  fabric: Fabric;
  agents: Agents;
  /** A re-protect is a job (started with the orchestration, id = its instance id); a resync request is one too. */
  jobs?: Jobs;
  now?: () => Date;
  log?: (line: string) => void;
}

/** A re-protect step that cannot succeed by retrying (the orchestration stops and rolls back). */
export class ReprotectStepError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "ReprotectStepError";
  }
}

/** The resync a re-protect's seed hands the agent (one id per re-protect; each disk has its own record of it). */
export const seedResyncId = (instanceId: string) => `seed-${instanceId}`;

/** Per disk and for the whole item: what the differential initial replication compared, shipped, and how long is left. */
export interface ReprotectProgress {
  /** `running`: still copying; `done`: Protected in the new direction; `ended`: the item left the re-protect (disabled, failed over). */
  state: "running" | "done" | "ended";
  itemState: string;
  disks: { diskId: string; seed: SeedSource; doneBytes: number; totalBytes: number; transferredBytes: number; etaSeconds: number | null }[];
  doneBytes: number;
  totalBytes: number;
  transferredBytes: number;
  etaSeconds: number | null;
}

/** A re-protect lock with no orchestration behind it is released only after this long (it may be starting right now). */
export const REPROTECT_ABANDONED_AFTER_MS = 5 * 60_000;

const SEED_STATES = new Set(["InitialReplication", "ResyncRequired", "Protected"]);

export class Reprotection {
  private readonly now: () => Date;
  private readonly log: (line: string) => void;

  constructor(private readonly deps: ReprotectDeps) {
    this.now = deps.now ?? (() => new Date());
    this.log = deps.log ?? (() => undefined);
  }

  // ---------------------------------------------------------------------------------------------
  // The request

  /**
   * Validates the request and locks the item for `instanceId` (state Reprotecting, ETag-conditional): 400/404/409
   * before anything changes. Issues the registration token for the agent on the VM that now runs.
   */
  async accept(
    itemId: string,
    body: unknown,
    instanceId: string,
  ): Promise<{ input: ReprotectInput; item: ReplicatedItem; agentRegistration: { token: string; expiresAt: string } }> {
    parseInput(reprotectRequestSchema, body ?? {});
    const found = await this.deps.items.get(itemId);
    if (!found) throw new NotFound("replicatedItem", itemId);
    if (found.item.state === "Reprotecting") {
      throw new Conflict("ReprotectInProgress", `replicated item '${itemId}' is already being re-protected (instance ${found.item.reprotect?.instanceId})`, {
        itemId,
        state: found.item.state,
        instanceId: found.item.reprotect?.instanceId ?? null,
      });
    }
    if (found.item.state !== "FailoverCommitted") throw new IllegalState(itemId, found.item.state, "re-protect (only a FailoverCommitted item can)");
    if (!regionsAreDistinct(this.deps.config)) {
      throw new Conflict(
        "ReprotectNeedsTwoRegions",
        "re-protect replicates back into the original region, which needs its own storage: CACHE_STORAGE (original region) and REPLICA_STORAGE (recovery region) name the same account",
        { settings: ["CACHE_STORAGE", "REPLICA_STORAGE"] },
      );
    }
    const from = directionOf(found.item);
    const at = this.now().toISOString();
    const input: ReprotectInput = { instanceId, itemId, from, to: flipped(from), startedAt: at };
    const locked: ReplicatedItem = {
      ...found.item,
      state: "Reprotecting",
      reprotect: { instanceId, from, to: input.to, startedAt: at },
      updatedAt: at,
    };
    try {
      await this.deps.items.put(locked, found.etag);
    } catch (e) {
      if ((e as { statusCode?: number }).statusCode !== 412) throw e;
      const now = await this.deps.items.get(itemId);
      throw new IllegalState(itemId, now?.item.state ?? "gone", "re-protect (it changed meanwhile)");
    }
    // The old direction's agent was forgotten at commit; a token left from then goes too, and this one is the new agent's.
    await this.deps.agents.forget(itemId);
    const { token, expiresAt } = await this.deps.agents.issueToken(itemId);
    const item =
      (await this.deps.items.updateItem(itemId, (i) => {
        if (i.reprotect?.instanceId !== instanceId) return undefined;
        i.reprotect.tokenExpiresAt = expiresAt;
        return i;
      })) ?? locked;
    return { input, item, agentRegistration: { token, expiresAt } };
  }

  /** The orchestration could not be started: the item returns to FailoverCommitted, its token goes. */
  async unlock(input: ReprotectInput, error: string): Promise<void> {
    await this.deps.items.updateItem(input.itemId, (i) => {
      if (i.reprotect?.instanceId !== input.instanceId || i.state !== "Reprotecting") return undefined;
      return {
        ...i,
        state: "FailoverCommitted",
        reprotect: { ...i.reprotect, error: { code: "ReprotectNotStarted", message: error } },
        updatedAt: this.now().toISOString(),
      };
    });
    await this.deps.agents.forget(input.itemId);
  }

  private async owned(input: ReprotectInput): Promise<ReplicatedItem> {
    const found = await this.deps.items.get(input.itemId);
    if (!found) throw new ReprotectStepError("ItemGone", `replicated item '${input.itemId}' no longer exists`);
    if (found.item.reprotect?.instanceId !== input.instanceId) {
      throw new ReprotectStepError("NotLocked", `replicated item '${input.itemId}' is not held by re-protect ${input.instanceId} (state ${found.item.state})`);
    }
    return found.item;
  }

  private async held(input: ReprotectInput): Promise<ReplicatedItem> {
    const item = await this.owned(input);
    if (item.state !== "Reprotecting") throw new ReprotectStepError("NotReprotecting", `replicated item '${input.itemId}' is ${item.state}, not Reprotecting`);
    return item;
  }

  // ---------------------------------------------------------------------------------------------
  // The steps (each idempotent: a retried or replayed step finds its own work done)

  /**
   * The new direction's side: the failback target (the original resource group, network, subnet and availability
   * set, recorded as found) and the cache beside the VM that now runs; the old direction's cache goes (nobody writes
   * it any more: its agent was forgotten at commit). Returns the disks to seed.
   */
  async prepare(input: ReprotectInput): Promise<{ disks: { diskId: string; sizeBytes: number }[] }> {
    const item = await this.held(input);
    await this.deps.jobs?.step(input.instanceId, "preparing the target region");
    const { fabric, storage } = this.deps;
    if (input.to === "reverse" && !item.original) {
      const rg = (await fabric.ensureResourceGroup(item.vm.region, item.vm.resourceGroup)).resource;
      const n = item.vm.network;
      const vnet = await fabric.sourceNetwork(item.vm.region, item.vm.resourceGroup, n.vnet, n.subnet, n.privateIp);
      const as = item.vm.availabilitySet
        ? (await fabric.ensureAvailabilitySet(item.vm.region, item.vm.resourceGroup, item.vm.availabilitySet)).resource
        : undefined;
      const original: OriginalResources = {
        resourceGroup: { id: rg.id, name: rg.name },
        vnet: { id: vnet.id, name: vnet.name },
        subnet: n.subnet,
        ...(as ? { availabilitySet: { id: as.id, name: as.name } } : {}),
      };
      await this.deps.items.updateItem(item.id, (i) => (i.reprotect?.instanceId === input.instanceId ? { ...i, original } : undefined));
    }
    if (input.to === "forward") {
      const vnet = item.target ? await fabric.get(item.target.vnet.id) : undefined;
      if (!vnet) throw new ReprotectStepError("TargetMissing", `the recovery region's network of '${item.id}' no longer exists: disable and enable again`);
    }
    await storage.cache(input.from).getContainerClient(cacheContainerName(item.id)).deleteIfExists();
    await storage
      .cache(input.to)
      .getContainerClient(cacheContainerName(item.id))
      .createIfNotExists({ metadata: { itemid: item.id, direction: input.to } });
    const disks = await this.deps.items.listDisks(item.id);
    return { disks: disks.map((d) => ({ diskId: d.id, sizeBytes: d.sizeBytes })) };
  }

  /**
   * Seeds one disk's replica in the new direction, choosing (once) the newest copy left: the other direction's
   * replica, copied server-side into this direction's account; else this direction's replica from an earlier cycle,
   * in place; else nothing (an empty replica: the agent then ships every block that is not zero, and the item says so).
   */
  async seedDisk(input: ReprotectInput, diskId: string): Promise<{ state: "success" | "pending"; seed: DiskSeed }> {
    const item = await this.held(input);
    await this.deps.jobs?.step(input.instanceId, "seeding replicas");
    const disk = (await this.deps.items.listDisks(item.id)).find((d) => d.id === diskId);
    if (!disk) throw new ReprotectStepError("DiskGone", `disk '${diskId}' of '${item.id}' no longer exists`);
    const blobName = replicaBlobName(item.id, diskId);
    const size = disk.sizeBytes + VHD_FOOTER_BYTES;
    const source = (await this.deps.storage.replicas(input.from)).getPageBlobClient(blobName);
    const target = (await this.deps.storage.replicas(input.to)).getPageBlobClient(blobName);
    let seed = item.reprotect?.seeds?.[diskId];
    if (!seed) {
      const usable = async (b: typeof source) => {
        const p = await b.getProperties().catch((e) => (isNotFound(e) ? undefined : Promise.reject(e)));
        return p?.contentLength === size;
      };
      const chosen: DiskSeed = (await usable(source))
        ? { source: "other-direction-replica" }
        : (await usable(target))
          ? { source: "previous-replica", note: `the ${input.from} replica is gone; seeded from the ${input.to} replica left by an earlier cycle` }
          : { source: "none", note: `nothing usable is left in either region for disk '${diskId}': the whole disk is copied (every block that is not zero)` };
      const updated = await this.deps.items.updateItem(item.id, (i) => {
        if (i.reprotect?.instanceId !== input.instanceId) return undefined;
        i.reprotect.seeds ??= {};
        i.reprotect.seeds[diskId] ??= chosen;
        return i;
      });
      seed = updated?.reprotect?.seeds?.[diskId] ?? chosen;
      this.log(`re-protect ${input.instanceId}: disk ${diskId} seeded from ${seed.source}`);
    }
    // Nothing of an earlier apply run may hold the replica while it is replaced.
    const breakLease = () =>
      target
        .getBlobLeaseClient()
        .breakLease(0)
        .catch(() => undefined);
    if (seed.source === "other-direction-replica") {
      const props = await target.getProperties().catch((e) => (isNotFound(e) ? undefined : Promise.reject(e)));
      if (props?.metadata?.reprotect === input.instanceId && props.copyStatus !== "failed" && props.copyStatus !== "aborted") {
        return { state: props.copyStatus === "pending" ? "pending" : "success", seed };
      }
      await breakLease();
      const metadata = { reprotect: input.instanceId, itemid: item.id, diskid: diskId };
      const accounts = [directionAccounts(this.deps.config, input.from).replica, directionAccounts(this.deps.config, input.to).replica];
      if (!accounts.some(isEmulatedAccount)) {
        const sas = await this.deps.storage.sas.replicaRead(input.from, REPLICAS_CONTAINER, blobName, this.now());
        try {
          const poller = await target.beginCopyFromURL(`${source.url}?${sas}`, { metadata });
          poller.stopPolling();
          const status = poller.getOperationState().result?.copyStatus;
          return { state: status === "success" ? "success" : "pending", seed };
        } catch (e) {
          // A source the storage cannot verify is refused: then the pages that hold data are copied through here instead.
          if (!((storageStatus(e) ?? 0) >= 500 || storageCode(e) === "CannotVerifyCopySource")) throw e;
          this.log(`re-protect ${input.instanceId}: server-side copy of ${diskId} refused (${storageCode(e) ?? storageStatus(e)}); copying its pages`);
        }
      }
      // One pass: the pages that hold data are copied and every block's checksum is kept, so the agent's compare
      // needs no second read of the seed. The copy counts as whole only once its checksums are stored.
      const started = performance.now();
      const sums = await copySeedPages(source, target, size, disk.sizeBytes);
      const replicas = await this.deps.storage.replicas(input.to);
      await storeSeedChecksums(replicas, item.id, diskId, seedResyncId(input.instanceId), sums);
      await target.setMetadata(metadata);
      this.log(`re-protect ${input.instanceId}: ${diskId} copied with its checksums in ${((performance.now() - started) / 1000).toFixed(1)} s`);
      const note = accounts.some(isEmulatedAccount)
        ? "copied by the control plane (the storage emulator cannot copy server-side across accounts), checksums kept: no second read of the seed"
        : "the storage refused a server-side copy across accounts: the pages that hold data were copied by the control plane";
      const updated = await this.deps.items.updateItem(item.id, (i) => {
        const s = i.reprotect?.instanceId === input.instanceId ? i.reprotect.seeds?.[diskId] : undefined;
        if (!s || s.note) return undefined;
        s.note = note;
        return i;
      });
      return { state: "success", seed: updated?.reprotect?.seeds?.[diskId] ?? seed };
    }
    if (seed.source === "none") {
      const props = await target.getProperties().catch((e) => (isNotFound(e) ? undefined : Promise.reject(e)));
      if (props?.metadata?.reprotect !== input.instanceId) {
        await breakLease();
        await target.create(size, { blobSequenceNumber: 0, metadata: { reprotect: input.instanceId, itemid: item.id, diskid: diskId } });
        await target.uploadPages(vhdFooter(disk.sizeBytes), disk.sizeBytes, VHD_FOOTER_BYTES);
      }
      return { state: "success", seed };
    }
    await breakLease();
    return { state: "success", seed };
  }

  /**
   * The hand-over: every replica of the new direction starts at watermark 0, each disk waits for the agent's seed
   * resync (halted at 0: the agent fetches the replica's checksums, then ships only the blocks that differ), and the
   * item turns around (direction flipped, InitialReplication): from now on the agent can register.
   */
  async finishSeed(input: ReprotectInput): Promise<ReplicatedItem> {
    const item = await this.owned(input);
    await this.deps.jobs?.step(input.instanceId, "handing over to the agent; differential initial replication");
    if (item.state !== "Reprotecting") return item; // done before a restart
    const at = this.now().toISOString();
    const replicas = await this.deps.storage.replicas(input.to);
    const resyncId = seedResyncId(input.instanceId);
    for (const disk of await this.deps.items.listDisks(item.id)) {
      const blob = replicas.getPageBlobClient(replicaBlobName(item.id, disk.id));
      const props = await blob.getProperties();
      if (props.copyStatus === "pending") throw new Error(`the seed copy of disk '${disk.id}' is still pending`);
      let etag = props.etag!;
      if ((props.blobSequenceNumber ?? 0) !== 0) etag = (await blob.updateSequenceNumber("update", 0)).etag!;
      // The seed copy's checksums serve the agent's manifest while the replica is exactly this seed.
      await bindSeedChecksums(replicas, item.id, disk.id, resyncId, etag);
      const seed = item.reprotect?.seeds?.[disk.id]?.source ?? "none";
      await this.deps.items.updateDisk(item.id, disk.id, (d) => {
        if (d.resync?.id === resyncId) return undefined;
        const next: DiskRecord = {
          itemId: d.itemId,
          id: d.id,
          role: d.role,
          index: d.index,
          sizeBytes: d.sizeBytes,
          replicaBlob: replicaBlobName(item.id, d.id),
          state: "InitialReplication",
          resync: {
            id: resyncId,
            reason: `re-protect ${input.instanceId}: compare with the seed (${seed}) and ship the blocks that differ`,
            origin: "seed",
            baseSeq: 0,
            since: at,
          },
          initialStartedAt: at,
          initialTransfer: { bytes: 0, throughSeq: 0 },
        };
        return next;
      });
    }
    const updated = await this.deps.items.updateItem(item.id, (i) => {
      if (i.reprotect?.instanceId !== input.instanceId || i.state !== "Reprotecting") return undefined;
      i.direction = input.to;
      i.state = "InitialReplication";
      i.reprotect.seededAt = at;
      delete i.sourceShutdown;
      delete i.agent;
      // Issues of the old direction (its agent, its disks) say nothing about this one.
      i.health = { status: "Healthy", issues: [] };
      i.updatedAt = at;
      return i;
    });
    this.log(`re-protect ${input.instanceId}: ${item.id} now replicates ${input.to}; waiting for its agent`);
    return updated ?? item;
  }

  /** How far the differential initial replication is: compared, shipped, ETA (per disk and for the item). */
  async progress(input: ReprotectInput): Promise<ReprotectProgress> {
    const found = await this.deps.items.get(input.itemId);
    if (!found || found.item.reprotect?.instanceId !== input.instanceId) {
      return { state: "ended", itemState: found?.item.state ?? "Deleted", disks: [], doneBytes: 0, totalBytes: 0, transferredBytes: 0, etaSeconds: null };
    }
    const item = found.item;
    const disks = await this.deps.items.listDisks(item.id);
    const status = await readReplicationStatus(this.deps.storage, item, disks, this.now());
    const rows = disks.map((d) => {
      const i = status.disks[d.id]!.initialReplication;
      return {
        diskId: d.id,
        seed: item.reprotect?.seeds?.[d.id]?.source ?? "none",
        doneBytes: i.doneBytes,
        totalBytes: i.totalBytes,
        transferredBytes: i.transferredBytes,
        etaSeconds: i.etaSeconds,
      };
    });
    const sum = (k: "doneBytes" | "totalBytes" | "transferredBytes") => rows.reduce((n, r) => n + r[k], 0);
    const etas = rows.map((r) => r.etaSeconds);
    const state =
      item.state === "Protected" && directionOf(item) === input.to
        ? "done"
        : SEED_STATES.has(item.state) && directionOf(item) === input.to
          ? "running"
          : "ended";
    return {
      state,
      itemState: item.state,
      disks: rows,
      doneBytes: sum("doneBytes"),
      totalBytes: sum("totalBytes"),
      transferredBytes: sum("transferredBytes"),
      etaSeconds: state === "done" ? 0 : etas.some((e) => e === null) ? null : Math.max(0, ...(etas as number[])),
    };
  }

  /** Protected in the new direction: what the re-protect shipped is recorded on the item. */
  async complete(input: ReprotectInput, progress: ReprotectProgress): Promise<void> {
    const at = this.now().toISOString();
    await this.deps.items.updateItem(input.itemId, (i) => {
      if (i.reprotect?.instanceId !== input.instanceId || i.reprotect.completedAt) return undefined;
      i.reprotect = { ...i.reprotect, completedAt: at, transferredBytes: progress.transferredBytes, totalBytes: progress.totalBytes };
      return i;
    });
    // The seed resyncs are done: their checksums describe nothing any more.
    const replicas = await this.deps.storage.replicas(input.to);
    for (const d of progress.disks) await deleteSeedChecksums(replicas, input.itemId, d.diskId);
    await this.deps.jobs?.end(input.instanceId, "Succeeded");
  }

  /**
   * A re-protect that failed before the hand-over: the item returns to FailoverCommitted in its old direction, the new
   * cache goes, the token is revoked. Seeded replicas stay (the next re-protect copies over them). After the hand-over
   * the item replicates in the new direction already: only the error is recorded.
   */
  async rollback(input: ReprotectInput, error: string, code?: string): Promise<void> {
    await this.deps.jobs?.end(input.instanceId, "Failed", {
      code: code ?? /^\w+: ([A-Za-z][A-Za-z0-9]*): /.exec(error)?.[1] ?? "ReprotectFailed",
      message: error,
    });
    const found = await this.deps.items.get(input.itemId);
    if (!found || found.item.reprotect?.instanceId !== input.instanceId) return;
    if (found.item.state !== "Reprotecting") {
      await this.deps.items.updateItem(input.itemId, (i) =>
        i.reprotect?.instanceId === input.instanceId
          ? { ...i, reprotect: { ...i.reprotect, error: { code: code ?? "ReprotectFailed", message: error } } }
          : undefined,
      );
      return;
    }
    await this.deps.storage.cache(input.to).getContainerClient(cacheContainerName(input.itemId)).deleteIfExists();
    await this.deps.agents.forget(input.itemId);
    await this.deps.items.updateItem(input.itemId, (i) => {
      if (i.reprotect?.instanceId !== input.instanceId || i.state !== "Reprotecting") return undefined;
      return {
        ...i,
        state: "FailoverCommitted",
        reprotect: { ...i.reprotect, error: { code: code ?? "ReprotectFailed", message: error } },
        updatedAt: this.now().toISOString(),
      };
    });
    this.log(`re-protect ${input.instanceId}: ${input.itemId} rolled back: ${error}`);
  }

  /**
   * Items held by a re-protect whose orchestration will never finish it — terminated, failed before or during its own
   * rollback, or gone (never started, purged) — are handed back as its rollback does: before the hand-over the item
   * returns to FailoverCommitted in its old direction (new cache removed, token revoked) and can be re-protected
   * again; after it, the item already replicates in the new direction and only the error and the job's end are
   * recorded. `statusOf` says where an orchestration is (undefined: no such instance).
   */
  async releaseAbandoned(statusOf: (instanceId: string) => Promise<string | undefined>): Promise<{ itemId: string; instanceId: string; status: string }[]> {
    const released: { itemId: string; instanceId: string; status: string }[] = [];
    const now = this.now().getTime();
    for (const item of await this.deps.items.list()) {
      const r = item.reprotect;
      if (!r || r.completedAt || r.error) continue;
      const status = await statusOf(r.instanceId);
      // An instance not found yet may be one being started right now: only an old lock without one is abandoned.
      const abandoned =
        status === undefined ? now - Date.parse(r.startedAt) > REPROTECT_ABANDONED_AFTER_MS : ["Terminated", "Failed", "Canceled"].includes(status);
      if (!abandoned) continue;
      const code = status === "Terminated" ? "ReprotectTerminated" : status === undefined ? "ReprotectLost" : "ReprotectFailed";
      const why = status === undefined ? `its orchestration ${r.instanceId} does not exist` : `its orchestration ${r.instanceId} is ${status}`;
      await this.rollback(
        { instanceId: r.instanceId, itemId: item.id, from: r.from, to: r.to, startedAt: r.startedAt },
        `the re-protect was abandoned: ${why}`,
        code,
      );
      released.push({ itemId: item.id, instanceId: r.instanceId, status: status ?? "missing" });
    }
    return released;
  }

  // ---------------------------------------------------------------------------------------------
  // Resync on request (ASR's "Resynchronize")

  /**
   * Every disk of a ResyncRequired item that waits gets a fresh differential resync from its replica's current
   * watermark: the agent fetches the checksums and ships the blocks that differ. The watermark is read under the
   * replica's lease, so no apply run moves it between the read and the record.
   */
  async requestResync(itemId: string, body: unknown): Promise<ReplicatedItem> {
    parseInput(resyncRequestSchema, body ?? {});
    const found = await this.deps.items.get(itemId);
    if (!found) throw new NotFound("replicatedItem", itemId);
    const item = found.item;
    if (item.state !== "ResyncRequired") throw new IllegalState(itemId, item.state, "resync (only a ResyncRequired item can)");
    const jobs = this.deps.jobs;
    // The job is the request: the resync itself runs in the agent and shows on the disks (and the DiskResyncRequired alert).
    return jobs ? jobs.run("resync", [itemId], (job) => this.resyncAccepted(item, job)) : this.resyncAccepted(item);
  }

  private async resyncAccepted(item: ReplicatedItem, job?: { step(name: string): Promise<void> }): Promise<ReplicatedItem> {
    const itemId = item.id;
    await job?.step("reading each waiting disk's watermark under its lease and recording its resync");
    const replicas = await this.deps.storage.replicas(directionOf(item));
    const at = this.now().toISOString();
    for (const disk of (await this.deps.items.listDisks(itemId)).filter((d) => d.state === "ResyncRequired")) {
      const blob = replicas.getPageBlobClient(disk.replicaBlob);
      const lease = blob.getBlobLeaseClient();
      for (let attempt = 0; ; attempt++) {
        try {
          await lease.acquireLease(15);
          break;
        } catch (e) {
          if (!isLeaseHeld(e) || attempt >= 40)
            throw isLeaseHeld(e) ? new Conflict("DiskBusy", `disk '${disk.id}' is being applied right now; try again`, { diskId: disk.id }) : e;
          await new Promise((r) => setTimeout(r, 250));
        }
      }
      try {
        const watermark = (await blob.getProperties({ conditions: { leaseId: lease.leaseId } })).blobSequenceNumber ?? 0;
        await this.deps.items.updateDisk(itemId, disk.id, (d) => {
          const prior = isControlPlaneResync(d.resync) && d.resync.baseSeq === watermark ? d.resync.supersededThrough : undefined;
          d.state = "ResyncRequired";
          d.resync = {
            id: `request-${at.replace(/[^0-9]/g, "")}-${disk.id}`.slice(0, 64),
            reason: "resync requested by the operator",
            origin: "request",
            baseSeq: watermark,
            since: at,
            ...(prior !== undefined ? { supersededThrough: prior } : {}),
          };
          return d;
        });
      } finally {
        await lease.releaseLease().catch(() => undefined);
      }
    }
    const updated = await this.deps.items.updateItem(itemId, (i) => ({ ...i, updatedAt: at }));
    if (!updated) throw new NotFound("replicatedItem", itemId);
    return updated;
  }
}
