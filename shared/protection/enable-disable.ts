// Protecting a VM: enable replication (target resources, replicas, cache), disable it, and register its agent.
import type { StoragePort } from "../storage/ports";
import { SEED_CHECKSUMS_PREFIX } from "./seed-copy";
import { randomUUID } from "node:crypto";
import { enableRequestSchema, parseInput, updateRequestSchema, type EnableRequest } from "../contract/api";
import type { Agents } from "./agents";
import type { RecoveryPoints } from "../recovery-points/points";
import { Conflict, IllegalState, NotFound } from "../contract/errors";
import { ReplicationGroups } from "../recovery-points/groups";
import { resourceGroupIdOf, type Fabric, type FabricResource } from "../fabric/port";
import { cacheContainerName, replicaBlobName, vmKey, type DiskRecord, type ReplicatedItem, type TargetResources } from "./items";
import { ItemStore } from "../storage/item-store";
import type { Config } from "../config/settings";
import { VHD_FOOTER_BYTES, vhdFooter } from "../replication/vhd";
import type { JobHandle, Jobs } from "../operations/jobs";
import type { ReplicationHistory } from "../operations/history";

export interface ProtectionDeps {
  config: Config;
  storage: StoragePort;
  fabric: Fabric;
  items: ItemStore;
  agents: Agents;
  points: RecoveryPoints;
  /** Enable and disable are recorded as jobs. */
  jobs?: Jobs;
  /** Disable removes the item's replication history. */
  history?: ReplicationHistory;
  now?: () => Date;
}

/** How long a disable owns its item: another DELETE within this is refused; after it, a stalled disable is resumed. */
const DISABLE_CLAIM_MS = 120_000;

/** ASR names target resources after the source with this suffix. */
export const TARGET_SUFFIX = "-asr";

export interface TargetNames {
  resourceGroup: string;
  vnet: string;
  subnet: string;
  availabilitySet?: string;
}

/** Target names: explicit overrides win, else `<source>-asr`; the subnet is matched by name. */
export function targetNames(req: EnableRequest): TargetNames {
  const t = req.target ?? {};
  const as = t.availabilitySet ?? (req.vm.availabilitySet ? `${req.vm.availabilitySet}${TARGET_SUFFIX}` : undefined);
  return {
    resourceGroup: t.resourceGroup ?? `${req.vm.resourceGroup}${TARGET_SUFFIX}`,
    vnet: t.vnet ?? `${req.vm.network.vnet}${TARGET_SUFFIX}`,
    subnet: t.subnet ?? req.vm.network.subnet,
    ...(as ? { availabilitySet: as } : {}),
  };
}

/** Steps already done by a failing enable, undone newest first. */
class Undo {
  private readonly steps: { what: string; run: () => Promise<unknown> }[] = [];
  push(what: string, run: () => Promise<unknown>): void {
    this.steps.push({ what, run });
  }
  async run(): Promise<string[]> {
    const failed: string[] = [];
    for (const s of this.steps.reverse()) {
      try {
        await s.run();
      } catch (e) {
        failed.push(`${s.what}: ${(e as Error).message}`);
      }
    }
    return failed;
  }
}

export interface EnableResult {
  item: ReplicatedItem;
  disks: DiskRecord[];
  agentRegistration: { token: string; expiresAt: string };
}

export class Protection {
  private readonly now: () => Date;

  private readonly groups: ReplicationGroups;

  constructor(private readonly deps: ProtectionDeps) {
    this.now = deps.now ?? (() => new Date());
    this.groups = new ReplicationGroups({ storage: deps.storage, items: deps.items, now: this.now });
  }

  async enable(body: unknown): Promise<EnableResult> {
    const req = parseInput(enableRequestSchema, body);
    const { items } = this.deps;
    const key = vmKey(req.vm);

    const itemId = randomUUID();
    const holder = await items.claimVm(key, itemId);
    if (holder) {
      const existing = await items.get(holder);
      if (existing?.item.state === "EnableFailed") {
        // A failed enable left a visible item behind: clean it, then take the VM.
        await this.disable(holder);
        return this.enable(body);
      }
      if (!existing) {
        await items.releaseVm(key, holder);
        return this.enable(body);
      }
      throw new Conflict(
        "AlreadyProtected",
        `VM '${req.vm.name}' (${req.vm.region}/${req.vm.resourceGroup}) is already protected by replicated item '${holder}'`,
        {
          itemId: holder,
          state: existing.item.state,
        },
      );
    }

    const undo = new Undo();
    undo.push("release VM claim", () => items.releaseVm(key, itemId));
    if (req.replicationGroup) {
      const group = req.replicationGroup;
      try {
        await this.groups.claim(group, itemId, req.vm.region, req.targetRegion);
      } catch (e) {
        await undo.run();
        throw e;
      }
      undo.push(`leave replication group ${group}`, () => this.groups.release(group, itemId));
    }
    // The VM (and its place in the group) is ours: from here on the operation is a job, whatever its outcome.
    let job: JobHandle | undefined;
    try {
      job = await this.deps.jobs?.start("enable", [itemId], { firstStep: "validating", details: { vm: req.vm.name, targetRegion: req.targetRegion } });
    } catch (e) {
      await undo.run();
      throw e;
    }
    const at = this.now().toISOString();
    const item: ReplicatedItem = {
      id: itemId,
      state: "Enabling",
      vm: {
        name: req.vm.name,
        region: req.vm.region,
        resourceGroup: req.vm.resourceGroup,
        size: req.vm.size,
        network: req.vm.network,
        ...(req.vm.availabilitySet ? { availabilitySet: req.vm.availabilitySet } : {}),
      },
      targetRegion: req.targetRegion,
      ...(req.replicationGroup ? { replicationGroup: req.replicationGroup } : {}),
      policy: req.policy,
      health: { status: "Healthy", issues: [] },
      createdAt: at,
      updatedAt: at,
    };
    try {
      await items.create(item);
      undo.push("delete item record", () => items.delete(itemId));

      await job?.step("creating target resources");
      item.target = await this.createTargetResources(req, undo);
      await job?.step("creating replica disks and the cache");
      const disks = await this.createReplicas(itemId, req, undo);
      await this.createCache(itemId, undo);
      await items.putDisks(disks);
      undo.push("delete disk records", () => items.deleteDisks(itemId));
      await job?.step("issuing the agent's registration token");
      const agentRegistration = await this.issueToken(itemId, undo);

      item.state = "InitialReplication";
      item.updatedAt = this.now().toISOString();
      await items.put(item);
      await job?.succeed();
      return { item, disks, agentRegistration };
    } catch (error) {
      await job?.fail(error);
      const leftovers = await undo.run();
      if (leftovers.length > 0) {
        // Rollback itself failed: keep the item visible so that a retry or a disable finishes the job.
        item.state = "EnableFailed";
        item.error = { code: "EnableFailed", message: `${(error as Error).message}; not rolled back: ${leftovers.join("; ")}` };
        item.updatedAt = this.now().toISOString();
        await items.create(item).catch(() => items.put(item));
        await this.deps.items.claimVm(key, itemId).catch(() => undefined);
      }
      throw error;
    }
  }

  /**
   * Joins or leaves a replication group without re-enabling replication (ASR requires a re-enable). The item's group
   * points start at the first group tag it takes part in; its VM points are unaffected.
   */
  async update(itemId: string, body: unknown): Promise<ReplicatedItem> {
    const req = parseInput(updateRequestSchema, body);
    const found = await this.deps.items.get(itemId);
    if (!found) throw new NotFound("replicatedItem", itemId);
    const { item } = found;
    if (!["InitialReplication", "Protected", "ResyncRequired"].includes(item.state)) throw new IllegalState(itemId, item.state, "change its replication group");
    // A replication group holds at most 16 VMs from one region pair: the group's record is claimed first (atomically).
    const previous = item.replicationGroup;
    if (req.replicationGroup && req.replicationGroup !== previous) await this.groups.claim(req.replicationGroup, itemId, item.vm.region, item.targetRegion);
    const updated = await this.deps.items.updateItem(itemId, (i) => {
      if (req.replicationGroup) i.replicationGroup = req.replicationGroup;
      else delete i.replicationGroup;
      i.updatedAt = this.now().toISOString();
      return i;
    });
    if (!updated) {
      if (req.replicationGroup && req.replicationGroup !== previous) await this.groups.release(req.replicationGroup, itemId);
      throw new NotFound("replicatedItem", itemId);
    }
    if (previous && previous !== req.replicationGroup) await this.groups.release(previous, itemId);
    return updated;
  }

  private async createTargetResources(req: EnableRequest, undo: Undo): Promise<TargetResources> {
    const { fabric } = this.deps;
    const names = targetNames(req);
    const region = req.targetRegion;
    const created = (r: { resource: FabricResource; created: boolean }) => {
      if (r.created) undo.push(`delete ${r.resource.id}`, () => fabric.delete(r.resource.id));
      return r.resource;
    };

    const rg = created(await fabric.ensureResourceGroup(region, names.resourceGroup));
    const source = await fabric.sourceNetwork(req.vm.region, req.vm.resourceGroup, req.vm.network.vnet, req.vm.network.subnet, req.vm.network.privateIp);
    // The target network mirrors the source's address space and subnets, under their own names, so that the VM's IP
    // can be kept; it is shared by every VM of that source network, so an item's override never renames a subnet: a
    // `target.subnet` names a subnet the target network has (a source subnet's mirror, or one made there).
    const vnet = created(
      await fabric.ensureVirtualNetwork(region, names.resourceGroup, names.vnet, {
        addressSpace: source.addressSpace ?? [],
        subnets: source.subnets ?? [],
      }),
    );
    if (!vnet.subnets?.some((s) => s.name.toLowerCase() === names.subnet.toLowerCase())) {
      throw new Conflict(
        "TargetSubnetMissing",
        `target network '${vnet.name}' has no subnet '${names.subnet}' (${(vnet.subnets ?? []).map((s) => s.name).join(", ") || "none"}); target.subnet must name one of them`,
        { field: "target.subnet" },
      );
    }
    const mappings = (await fabric.ensureNetworkMapping(source, vnet)).map(created);
    const as = names.availabilitySet ? created(await fabric.ensureAvailabilitySet(region, names.resourceGroup, names.availabilitySet)) : undefined;
    return {
      resourceGroup: { id: rg.id, name: rg.name },
      vnet: { id: vnet.id, name: vnet.name },
      subnet: names.subnet,
      ...(as ? { availabilitySet: { id: as.id, name: as.name } } : {}),
      networkMappings: mappings.map((m) => m.id),
    };
  }

  /** One page blob per disk: the disk's bytes (sparse, zero) then a fixed-VHD footer; watermark 0. */
  private async createReplicas(itemId: string, req: EnableRequest, undo: Undo): Promise<DiskRecord[]> {
    const container = await this.deps.storage.replicas("forward");
    const startedAt = this.now().toISOString();
    const disks: DiskRecord[] = req.vm.disks.map((d, index) => ({
      itemId,
      id: d.id,
      role: index === 0 ? "os" : "data",
      index,
      sizeBytes: d.sizeBytes,
      replicaBlob: replicaBlobName(itemId, d.id),
      state: "InitialReplication",
      initialStartedAt: startedAt,
    }));
    await Promise.all(
      disks.map(async (d) => {
        const blob = container.getPageBlobClient(d.replicaBlob);
        undo.push(`delete replica ${d.replicaBlob}`, () => blob.deleteIfExists({ deleteSnapshots: "include" }));
        await blob.create(d.sizeBytes + VHD_FOOTER_BYTES, { blobSequenceNumber: 0, metadata: { itemid: itemId, diskid: d.id } });
        await blob.uploadPages(vhdFooter(d.sizeBytes), d.sizeBytes, VHD_FOOTER_BYTES);
      }),
    );
    return disks;
  }

  private async createCache(itemId: string, undo: Undo): Promise<void> {
    const container = this.deps.storage.cache("forward").getContainerClient(cacheContainerName(itemId));
    undo.push(`delete cache container ${container.containerName}`, () => container.deleteIfExists());
    await container.create({ metadata: { itemid: itemId } });
  }

  private async issueToken(itemId: string, undo: Undo): Promise<{ token: string; expiresAt: string }> {
    const { token, expiresAt, revoke } = await this.deps.agents.issueToken(itemId);
    undo.push("delete registration token", revoke);
    return { token, expiresAt };
  }

  async get(itemId: string): Promise<ReplicatedItem> {
    const found = await this.deps.items.get(itemId);
    if (!found) throw new NotFound("replicatedItem", itemId);
    return found.item;
  }

  /** Disables replication: removes the cache, the replicas with their snapshots, the records, and unused target resources. */
  async disable(itemId: string): Promise<{ id: string; state: "Disabled"; removed: string[] }> {
    const { items } = this.deps;
    // Moving to Disabling is the claim, ETag-conditional: of concurrent DELETEs one proceeds, the others get 409 (404
    // once the item is gone). A disable that stopped half-way (a crash) is resumed by a DELETE once it has been quiet.
    let won = false;
    const item = await items.updateItem(itemId, (i) => {
      won = false;
      if (i.state === "FailingOver" || i.state === "TestFailover") return undefined;
      if (i.state === "Disabling" && this.now().getTime() - Date.parse(i.updatedAt) < DISABLE_CLAIM_MS) return undefined;
      won = true;
      i.state = "Disabling";
      i.updatedAt = this.now().toISOString();
      return i;
    });
    if (!item) throw new NotFound("replicatedItem", itemId);
    if (!won) {
      if (item.state !== "Disabling") throw new IllegalState(itemId, item.state, "disable replication");
      throw new Conflict("DisableInProgress", `replicated item '${itemId}' is already being disabled`, { itemId, state: item.state });
    }
    const jobs = this.deps.jobs;
    return jobs ? jobs.run("disable", [itemId], (job) => this.removeAll(item, job)) : this.removeAll(item);
  }

  /** Everything replication made for the item goes, step by step. */
  private async removeAll(item: ReplicatedItem, job?: { step(name: string): Promise<void> }): Promise<{ id: string; state: "Disabled"; removed: string[] }> {
    const { items, storage } = this.deps;
    const itemId = item.id;
    const removed: string[] = [];
    await job?.step("removing the cache and the replicas");
    // Both directions: a re-protected item has a cache and replicas in each region (the other direction's are its seed).
    for (const direction of ["forward", "reverse"] as const) {
      const where = direction === "forward" ? "" : " (reverse)";
      if (
        await storage
          .cache(direction)
          .getContainerClient(cacheContainerName(itemId))
          .deleteIfExists()
          .then((r) => r.succeeded)
      ) {
        removed.push(`cache container ${cacheContainerName(itemId)}${where}`);
      }
      const replicas = await storage.replicas(direction);
      for await (const b of replicas.listBlobsFlat({ prefix: `${itemId}/` })) {
        const blob = replicas.getBlobClient(b.name);
        // An apply run may hold the replica's lease; disabling wins (the run is fenced out and finds the item gone).
        await blob
          .getBlobLeaseClient()
          .breakLease(0)
          .catch(() => undefined);
        if ((await blob.deleteIfExists({ deleteSnapshots: "include" })).succeeded) removed.push(`replica ${b.name}${where}`);
      }
      for await (const b of replicas.listBlobsFlat({ prefix: `${SEED_CHECKSUMS_PREFIX}${itemId}/` })) {
        if ((await replicas.getBlobClient(b.name).deleteIfExists()).succeeded) removed.push(`seed checksums ${b.name}${where}`);
      }
    }
    await job?.step("removing recovery points and agent credentials");
    await this.deps.agents.forget(itemId);
    await this.deps.points.deleteAllOf(item);
    await this.deps.history?.deleteAll(itemId);
    await job?.step("removing unused target resources");
    removed.push(...(await this.deleteUnusedTargetResources(item)));
    await items.deleteDisks(itemId);
    if (item.replicationGroup) await this.groups.release(item.replicationGroup, itemId);
    await items.delete(itemId);
    await items.releaseVm(vmKey(item.vm), itemId);
    return { id: itemId, state: "Disabled", removed };
  }

  /** Target resources site-recovery created and no other item uses go; the rest stay. */
  private async deleteUnusedTargetResources(item: ReplicatedItem): Promise<string[]> {
    if (!item.target) return [];
    const { fabric } = this.deps;
    const others = (await this.deps.items.list()).filter((i) => i.id !== item.id && i.target);
    const used = new Set(
      others.flatMap((o) =>
        [o.target!.resourceGroup.id, o.target!.vnet.id, o.target!.availabilitySet?.id, ...o.target!.networkMappings]
          .filter(Boolean)
          .map((id) => id!.toLowerCase()),
      ),
    );
    // A failed-over (or test) VM still running in the target keeps its resource group, network and availability set.
    for (const r of [...(await fabric.list("virtualMachine")), ...(await fabric.list("networkInterface"))]) {
      if (!r.createdBySiteRecovery) continue;
      used.add(resourceGroupIdOf(r.id).toLowerCase());
      for (const id of [r.vnetId, r.availabilitySetId]) if (id) used.add(id.toLowerCase());
    }
    const removed: string[] = [];
    const drop = async (id: string | undefined) => {
      if (!id || used.has(id.toLowerCase())) return;
      const r = await fabric.get(id);
      // A mapping stays with a network still in use.
      if (r?.kind === "networkMapping" && [r.sourceId, r.targetId].some((x) => x && used.has(x.toLowerCase()))) return;
      if (r?.createdBySiteRecovery && (await fabric.delete(id))) removed.push(`${r.kind} ${r.id}`);
    };
    for (const m of item.target.networkMappings) await drop(m);
    await drop(item.target.availabilitySet?.id);
    await drop(item.target.vnet.id);
    // A resource group goes only when nothing site-recovery knows of is left in it.
    await drop(item.target.resourceGroup.id);
    return removed;
  }
}
