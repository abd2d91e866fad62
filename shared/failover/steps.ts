// The failover's steps, each idempotent (a retried or replayed step finds its own work done): drain and cut, copy disks, NIC, VM, start, record.
import type { ContainerPort } from "../storage/ports";
import { setTimeout as sleep } from "node:timers/promises";
import { applyBatches } from "../replication/apply";
import { seqOfBlobName, batchBlobName } from "../replication/batch";
import { isLeaseHeld, isNotFound } from "../contract/errors";
import type { FabricResource } from "../fabric/port";
import { resourceId } from "../fabric/port";
import { type FailoverInput } from "./start";
import { FailoverEndings } from "./endings";
import {
  cacheContainerName,
  directionOf,
  failoverPlacement,
  replicaBlobName,
  replicationSource,
  type FailoverPlacement,
  type FailoverRecord,
  type ReplicatedItem,
} from "../protection/items";
import { snapshotAtTag, vmPartition, type RecoveryPoint } from "../recovery-points/points";
import { FAILOVER_CONTAINER } from "../storage/names";

/**
 * How long a drain for `latest` may apply before it gives up with its own error. It must end well inside the
 * activity's `functionTimeout` (host.json: 10 min), or the host kills the activity before the deadline says why.
 */
export const DRAIN_DEADLINE_MS = 8 * 60_000;

/** A failover step that cannot succeed by retrying (the orchestration stops and rolls back). */
export class FailoverStepError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "FailoverStepError";
  }
}

/** What one VM fails over from: the point and, per disk, the snapshot to copy. */
export interface VmPlan {
  itemId: string;
  vmName: string;
  point: NonNullable<FailoverRecord["point"]>;
  disks: { diskId: string; index: number; sizeBytes: number; snapshot: string }[];
  note?: string;
}

/** One VM in the orchestration's output. */
export interface VmOutcome {
  itemId: string;
  vm: string;
  recoveryPoint: NonNullable<FailoverRecord["point"]>;
  /** How much source time the failed-over VM does not have: the failover's start minus the point's time (0 when after). */
  dataLossWindowSeconds: number;
  failoverDurationSeconds: number;
  targetVm: { id: string; name: string; resourceGroup: string; privateIp: string; powerState: string };
  disks: { diskId: string; blob: string }[];
  note?: string;
}

export type CopyState = "success" | "pending";

/** The final tag of a planned failover: one id per failover, so a retry or a restarted agent cuts it once. */
export const finalTagId = (instanceId: string) => `final-${instanceId}`;
/** The point `latest` cuts from the drained replicas. */
export const latestPointId = (instanceId: string) => `latest-${instanceId}`;

/** Apply stops after which draining cannot get further. */
const HALTS: ReadonlySet<string> = new Set(["corrupt", "awaitingResync", "gone", "disabled"]);

/** The steps that carry a failover forward; how it ends (rollback, commit, cleanup) is in endings.ts. */
export type { FailoverStepsDeps } from "./endings";

export class FailoverSteps extends FailoverEndings {
  private async owned(itemId: string, instanceId: string): Promise<ReplicatedItem> {
    const found = await this.deps.items.get(itemId);
    if (!found) throw new FailoverStepError("ItemGone", `replicated item '${itemId}' no longer exists`);
    if (found.item.failover?.instanceId !== instanceId) {
      throw new FailoverStepError("NotLocked", `replicated item '${itemId}' is not held by failover ${instanceId} (state ${found.item.state})`);
    }
    return found.item;
  }

  /** Changes the item's failover record, only while this failover holds it. */
  private record(itemId: string, instanceId: string, change: (f: FailoverRecord, i: ReplicatedItem) => void): Promise<ReplicatedItem | undefined> {
    return this.deps.items.updateItem(itemId, (i) => {
      if (i.failover?.instanceId !== instanceId) return undefined;
      change(i.failover, i);
      i.updatedAt = this.now().toISOString();
      return i;
    });
  }

  /** Notes when a step first finished for the item (a retried step keeps its first time). */
  private mark(itemId: string, instanceId: string, step: string): Promise<unknown> {
    return this.record(itemId, instanceId, (f) => {
      f.timeline ??= [];
      if (!f.timeline.some((t) => t.step === step)) f.timeline.push({ step, at: this.now().toISOString() });
    });
  }

  /** The items are still this failover's; the names the status shows. */
  async verify(input: FailoverInput): Promise<{ itemId: string; vm: string }[]> {
    const out = [];
    for (const id of input.stages.flat()) out.push({ itemId: id, vm: (await this.owned(id, input.instanceId)).vm.name });
    // The orchestration runs: the record it replaced is not needed any more.
    for (const id of input.stages.flat()) await this.record(id, input.instanceId, (f) => void delete f.displaced);
    return out;
  }

  // ---------------------------------------------------------------------------------------------
  // Planned: shut the source down, wait for its final tag

  async requestShutdown(input: FailoverInput, itemId: string): Promise<string> {
    const tagId = finalTagId(input.instanceId);
    await this.owned(itemId, input.instanceId);
    await this.deps.items.updateItem(itemId, (i) => {
      if (i.sourceShutdown?.tagId === tagId) return undefined;
      i.sourceShutdown = { tagId, instanceId: input.instanceId, requestedAt: this.now().toISOString() };
      return i;
    });
    return tagId;
  }

  /** True once the final tag's VM point is sealed: every write the source acknowledged is in it; the VM is then off. */
  async finalPointSealed(input: FailoverInput, itemId: string): Promise<boolean> {
    const item = await this.owned(itemId, input.instanceId);
    const tagId = finalTagId(input.instanceId);
    const sealed = (await this.deps.points.listPartition(vmPartition(itemId))).some((p) => p.id === tagId);
    if (sealed) {
      // The VM that replicated: the original one forward, the failed-over one in the recovery region for a failback.
      const source = replicationSource(item);
      await this.deps.fabric.setPowerState(source.region, source.resourceGroup, source.name, "deallocated");
    }
    return sealed;
  }

  // ---------------------------------------------------------------------------------------------
  // Latest: apply everything in the cache, then cut a point from the replicas

  /**
   * Applies every batch the cache holds in order, then snapshots each replica under its lease (never between two
   * writes of a batch) as the point `latest-<instance>`. When the source cache cannot be reached there is no point,
   * only a note: the plan falls back to the latest processed point. A retry after the point was recorded returns it.
   */
  async drainAndCut(input: FailoverInput, itemId: string): Promise<{ pointId?: string; note?: string }> {
    const item = await this.owned(itemId, input.instanceId);
    const pointId = latestPointId(input.instanceId);
    if ((await this.deps.points.listPartition(vmPartition(itemId))).some((p) => p.id === pointId)) return { pointId };
    const disks = await this.deps.items.listDisks(itemId);
    const direction = directionOf(item);
    const cache = this.deps.storage.cache(direction).getContainerClient(cacheContainerName(itemId));
    const deadline = Date.now() + (this.deps.drainTimeoutMs ?? DRAIN_DEADLINE_MS);
    for (const disk of disks) {
      const reached = await this.drainDisk(item, disk.id, cache, deadline);
      if (reached === "unreachable") {
        return { note: "the source region's cache could not be reached: failed over to the latest processed point instead of latest" };
      }
    }
    const replicas = await this.deps.storage.replicas(direction);
    const pointDisks: RecoveryPoint["disks"] = [];
    let newestWriteMs = 0;
    for (const disk of disks) {
      const blob = replicas.getPageBlobClient(replicaBlobName(itemId, disk.id));
      const lease = blob.getBlobLeaseClient();
      await this.untilLeased(() => lease.acquireLease(30), deadline);
      try {
        const props = await blob.getProperties({ conditions: { leaseId: lease.leaseId } });
        const seq = props.blobSequenceNumber ?? 0;
        const { snapshot } = await blob.createSnapshot({ conditions: { leaseId: lease.leaseId }, metadata: { tag: pointId, seq: String(seq) } });
        pointDisks.push({ itemId, diskId: disk.id, snapshot: snapshot!, seq });
      } finally {
        await lease.releaseLease().catch(() => undefined);
      }
      const record = await this.deps.items.getDisk(itemId, disk.id);
      newestWriteMs = Math.max(newestWriteMs, record?.disk.lastAppliedWriteMs ?? 0);
    }
    const time = new Date(newestWriteMs || this.now().getTime()).toISOString();
    await this.deps.points.recordCutPoint({ id: pointId, kind: "crash", time, scope: "vm", itemId, disks: pointDisks, sealedAt: this.now().toISOString() });
    this.log(`failover ${input.instanceId}: ${itemId} drained, point ${pointId} cut at ${time}`);
    return { pointId };
  }

  /**
   * Applies, through the same apply as the queue (joining or waiting for a run in progress), every batch that was
   * contiguous in the cache when the drain began: a source still writing does not make it chase a moving target.
   */
  private async drainDisk(item: ReplicatedItem, diskId: string, cache: ContainerPort, deadline: number): Promise<"drained" | "unreachable"> {
    const replica = (await this.deps.storage.replicas(directionOf(item))).getPageBlobClient(replicaBlobName(item.id, diskId));
    const cached = await this.listCached(cache, diskId);
    if (cached === "unreachable") return "unreachable";
    let watermark = (await replica.getProperties()).blobSequenceNumber ?? 0;
    let target = watermark;
    // A gap can never close now (its batch may have gone with the source): the drain stops before it.
    while (cached.has(target + 1)) target++;
    while (watermark < target) {
      if (Date.now() > deadline) throw new Error(`draining ${item.id}/${diskId} did not finish in time (watermark ${watermark}, cached up to ${target})`);
      const outcome = await applyBatches(
        {
          storage: this.deps.storage,
          items: this.deps.items,
          config: this.deps.config,
          log: this.log,
          onTagApplied: snapshotAtTag(this.deps.points, this.log),
        },
        { v: 1, itemId: item.id, diskId, seq: target },
      );
      // A halted disk (corrupt batch, resync) applies no further: latest is what the replica holds.
      if (outcome.result === "ran" && outcome.stop && HALTS.has(outcome.stop)) return "drained";
      if (outcome.result !== "ran") await sleep(200); // another run holds the disk: look again shortly
      watermark = (await replica.getProperties()).blobSequenceNumber ?? 0;
    }
    return "drained";
  }

  /** The seqs cached for a disk, or "unreachable" when the cache does not answer within the bound. */
  private async listCached(cache: ContainerPort, diskId: string): Promise<Set<number> | "unreachable"> {
    const list = (async () => {
      const seqs = new Set<number>();
      for await (const b of cache.listBlobsFlat({ prefix: `${diskId}/` })) {
        const seq = seqOfBlobName(b.name);
        if (seq !== undefined && b.name === batchBlobName(diskId, seq)) seqs.add(seq);
      }
      return seqs;
    })();
    const bound = this.deps.cacheTimeoutMs ?? 20_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([list, new Promise<"unreachable">((r) => (timer = setTimeout(() => r("unreachable"), bound)))]);
    } catch (e) {
      if (isNotFound(e)) return new Set(); // no cache container: nothing pending
      this.log(`source cache unreachable: ${(e as Error).message}`);
      return "unreachable";
    } finally {
      clearTimeout(timer);
      list.catch(() => undefined);
    }
  }

  private async untilLeased(acquire: () => Promise<unknown>, deadline: number): Promise<void> {
    for (;;) {
      try {
        await acquire();
        return;
      } catch (e) {
        if (!isLeaseHeld(e) || Date.now() > deadline) throw e;
        await sleep(250);
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The points

  /** Chooses every item's point (group members share one) and records it on the items; the copy step's input. */
  async plan(input: FailoverInput, latest: Record<string, { pointId?: string; note?: string }> = {}): Promise<VmPlan[]> {
    const items: ReplicatedItem[] = [];
    for (const id of input.stages.flat()) items.push(await this.owned(id, input.instanceId));
    const chosen = new Map<string, { point: RecoveryPoint; disks: RecoveryPoint["disks"]; note?: string }>();
    const fellBack = items.filter((i) => input.recoveryPoint === "latest" && input.type !== "planned" && !latest[i.id]?.pointId);
    if (input.type === "planned" || (input.recoveryPoint === "latest" && fellBack.length === 0)) {
      for (const item of items) {
        const id = input.type === "planned" ? finalTagId(input.instanceId) : latestPointId(input.instanceId);
        const point = (await this.deps.points.listPartition(vmPartition(item.id))).find((p) => p.id === id);
        if (!point) throw new FailoverStepError("PointMissing", `point ${id} of '${item.id}' is not sealed`);
        chosen.set(item.id, { point, disks: point.disks });
      }
    } else {
      // `latest` with an unreachable cache: every VM takes its latest processed point, so a group stays consistent.
      const choice = input.recoveryPoint === "latest" ? "latest-processed" : input.recoveryPoint;
      const note = input.recoveryPoint === "latest" ? (fellBack.map((i) => latest[i.id]?.note).find(Boolean) ?? undefined) : undefined;
      try {
        for (const [id, c] of await this.deps.planning.choosePoints(items, choice)) chosen.set(id, { ...c, ...(note ? { note } : {}) });
      } catch (e) {
        throw new FailoverStepError("NoRecoveryPoint", (e as Error).message);
      }
    }
    const plans: VmPlan[] = [];
    for (const item of items) {
      const c = chosen.get(item.id)!;
      const disks = await this.deps.items.listDisks(item.id);
      const point = { id: c.point.id, kind: c.point.kind, time: c.point.time, scope: c.point.scope };
      plans.push({
        itemId: item.id,
        vmName: item.vm.name,
        point,
        disks: disks.map((d) => {
          const pd = c.disks.find((x) => x.diskId === d.id);
          if (!pd) throw new FailoverStepError("PointIncomplete", `point ${point.id} has no snapshot of disk '${d.id}' of '${item.id}'`);
          return { diskId: d.id, index: d.index, sizeBytes: d.sizeBytes, snapshot: pd.snapshot };
        }),
        ...(c.note ? { note: c.note } : {}),
      });
      await this.record(item.id, input.instanceId, (f) => {
        f.point = point;
        if (c.note) f.note = c.note;
      });
      await this.mark(item.id, input.instanceId, "recovery point chosen");
    }
    return plans;
  }

  // ---------------------------------------------------------------------------------------------
  // Per VM: disks, NIC, VM, power

  failoverBlobName(input: FailoverInput, plan: VmPlan, diskId: string): string {
    return `${plan.vmName}-${diskId}-${input.stamp}.vhd`;
  }

  /**
   * Starts a server-side copy of each disk's snapshot into `failover/<vm>-<disk>-<time>.vhd` (once: a copy this
   * failover started is never restarted unless it failed) and says whether any is still pending.
   */
  async copyDisks(input: FailoverInput, plan: VmPlan): Promise<{ state: CopyState; copied: number; total: number }> {
    const item = await this.owned(plan.itemId, input.instanceId);
    const direction = directionOf(item);
    const container = await this.failoverContainer(direction);
    const replicas = await this.deps.storage.replicas(direction);
    const names = plan.disks.map((d) => this.failoverBlobName(input, plan, d.diskId));
    // Recorded before the copies start, so that a rollback or cleanup finds every blob this step may have made.
    await this.record(plan.itemId, input.instanceId, (f) => {
      f.direction = direction;
      f.resources.disks = [...new Set([...f.resources.disks, ...names])];
    });
    await this.mark(plan.itemId, input.instanceId, "disk copies started");
    const done = await Promise.all(
      plan.disks.map(async (d, n) => {
        const target = container.getPageBlobClient(names[n]!);
        const props = await target.getProperties().catch((e) => (isNotFound(e) ? undefined : Promise.reject(e)));
        if (props && props.metadata?.failover === input.instanceId && props.copyStatus !== "failed" && props.copyStatus !== "aborted") {
          return props.copyStatus === "success" || props.copyStatus === undefined;
        }
        // Failover disks live in the replicas' account: the copy source is authorized by this request's shared key,
        // no SAS (Azurite, given a SAS, first downloads the whole source to check it, and fails past ~512 MiB).
        const source = replicas.getPageBlobClient(replicaBlobName(plan.itemId, d.diskId)).withSnapshot(d.snapshot);
        // The poller's first poll starts the copy; its status is then checked by later calls of this step, not waited on here.
        const poller = await target.beginCopyFromURL(source.url, {
          metadata: { failover: input.instanceId, item: plan.itemId, disk: d.diskId, point: plan.point.id },
        });
        poller.stopPolling();
        return poller.getOperationState().result?.copyStatus === "success";
      }),
    );
    const copied = done.filter(Boolean).length;
    return { state: copied === plan.disks.length ? "success" : "pending", copied, total: plan.disks.length };
  }

  /** Where the item fails over to in its direction: the recovery region's target resources, or the original ones (failback). */
  private placement(item: ReplicatedItem): FailoverPlacement {
    const p = failoverPlacement(item);
    if (!p) throw new FailoverStepError("NoTarget", `replicated item '${item.id}' has no target resources for a ${directionOf(item)} failover`);
    return p;
  }

  /** The target network of the VM: the mapped vnet and subnet, or for a test failover the isolated test network. */
  private async network(input: FailoverInput, item: ReplicatedItem): Promise<{ vnet: FabricResource; subnet: string }> {
    const target = this.placement(item);
    const mapped = await this.deps.fabric.get(target.vnetId);
    if (!mapped) throw new FailoverStepError("NetworkMissing", `target network ${target.vnetId} no longer exists`);
    if (input.type !== "test") return { vnet: mapped, subnet: target.subnet };
    const name = input.testNetwork ?? `${target.vnetName}-test`;
    const ensured = await this.deps.fabric.ensureVirtualNetwork(target.region, target.resourceGroup, name, {
      addressSpace: mapped.addressSpace ?? [],
      subnets: mapped.subnets ?? [],
    });
    await this.record(item.id, input.instanceId, (f) => void (f.resources.testNetworkId = ensured.resource.id));
    return { vnet: ensured.resource, subnet: target.subnet };
  }

  /**
   * A planned or unplanned failover lands where a VM of the item may already be: the one an earlier failover left in
   * the recovery region, or (failback) the original VM. That VM is replaced, not duplicated: it goes, with its NIC
   * (which holds the address to keep) and the failover disks it was made from; recorded first, so a retried step
   * knows. A VM of that name the item never had is not touched: the step fails instead.
   */
  private async replaceLeftVm(input: FailoverInput, item: ReplicatedItem, plan: VmPlan): Promise<void> {
    if (input.type === "test") return;
    const target = this.placement(item);
    const vmId = resourceId("virtualMachine", target.resourceGroup, this.targetVmName(input, plan));
    const left = await this.deps.fabric.get(vmId);
    if (!left || left.tags?.failover === input.instanceId) return;
    const original = directionOf(item) === "reverse" && target.resourceGroup.toLowerCase() === item.vm.resourceGroup.toLowerCase();
    if (left.tags?.item !== item.id && !original) {
      throw new FailoverStepError(
        "TargetVmExists",
        `a VM '${left.name}' that site-recovery did not make for this item exists in ${target.resourceGroup}: remove or rename it, then fail over again`,
      );
    }
    const container = await this.failoverContainer(directionOf(item));
    const prefix = `${container.url}/`;
    const disks = [left.osDisk, ...(left.dataDisks ?? [])]
      .filter((d): d is NonNullable<typeof d> => d !== undefined && d.vhdUri.startsWith(prefix))
      .map((d) => decodeURIComponent(d.vhdUri.slice(prefix.length).split("?")[0]!));
    await this.record(item.id, input.instanceId, (f) => {
      f.replaced ??= { vmId: left.id, ...(left.nicId ? { nicId: left.nicId } : {}), disks };
    });
    await this.deps.fabric.delete(left.id);
    if (left.nicId) await this.deps.fabric.delete(left.nicId);
    for (const name of disks) await container.getPageBlobClient(name).deleteIfExists({ deleteSnapshots: "include" });
    this.log(`failover ${input.instanceId}: replaced ${left.id} (${disks.length} disk(s))`);
    await this.mark(item.id, input.instanceId, "left-behind VM replaced");
  }

  private targetVmName(input: FailoverInput, plan: VmPlan): string {
    return input.type === "test" ? `${plan.vmName}-test` : plan.vmName;
  }

  async createNic(input: FailoverInput, plan: VmPlan): Promise<{ nicId: string; privateIp: string }> {
    const item = await this.owned(plan.itemId, input.instanceId);
    const target = this.placement(item);
    const nicId = resourceId("networkInterface", target.resourceGroup, `${this.targetVmName(input, plan)}-nic`);
    const made = await this.deps.fabric.get(nicId);
    if (made?.tags?.failover !== input.instanceId) await this.replaceLeftVm(input, item, plan);
    const { vnet, subnet } = await this.network(input, item);
    const ensured = await this.deps.fabric.ensureNetworkInterface({
      region: target.region,
      resourceGroup: target.resourceGroup,
      name: `${this.targetVmName(input, plan)}-nic`,
      vnetId: vnet.id,
      subnet,
      allocation: input.type === "test" ? "fromEnd" : "retain",
      ...(target.preferredIp ? { preferredIp: target.preferredIp } : {}),
      tags: { failover: input.instanceId, item: item.id },
    });
    const nic = ensured.resource;
    await this.record(item.id, input.instanceId, (f) => {
      f.resources.nicId = nic.id;
      f.resources.privateIp = nic.privateIp!;
    });
    await this.mark(item.id, input.instanceId, "network interface created");
    return { nicId: nic.id, privateIp: nic.privateIp! };
  }

  async createVm(input: FailoverInput, plan: VmPlan, nicId: string): Promise<{ vmId: string }> {
    const item = await this.owned(plan.itemId, input.instanceId);
    const target = this.placement(item);
    const container = await this.failoverContainer(directionOf(item));
    const disk = (d: VmPlan["disks"][number]) => ({
      name: `${this.targetVmName(input, plan)}-${d.diskId}`,
      vhdUri: container.getPageBlobClient(this.failoverBlobName(input, plan, d.diskId)).url,
      ...(d.index > 0 ? { lun: d.index - 1 } : {}),
    });
    const os = plan.disks.find((d) => d.index === 0) ?? plan.disks[0]!;
    const ensured = await this.deps.fabric.ensureVirtualMachine({
      region: target.region,
      resourceGroup: target.resourceGroup,
      name: this.targetVmName(input, plan),
      size: item.vm.size,
      nicId,
      ...(target.availabilitySetId ? { availabilitySetId: target.availabilitySetId } : {}),
      osDisk: disk(os),
      dataDisks: plan.disks.filter((d) => d !== os).map(disk),
      tags: { failover: input.instanceId, item: item.id, recoveryPoint: plan.point.id },
    });
    await this.record(item.id, input.instanceId, (f) => void (f.resources.vmId = ensured.resource.id));
    await this.mark(item.id, input.instanceId, "VM created");
    return { vmId: ensured.resource.id };
  }

  async startVm(input: FailoverInput, plan: VmPlan): Promise<{ powerState: string }> {
    const item = await this.owned(plan.itemId, input.instanceId);
    const target = this.placement(item);
    const vm = await this.deps.fabric.setPowerState(target.region, target.resourceGroup, this.targetVmName(input, plan), "running");
    await this.mark(item.id, input.instanceId, "VM running");
    return { powerState: vm.powerState ?? "running" };
  }

  /** The VM runs: the item is failed over (or in test failover until cleanup); the output row. */
  async complete(input: FailoverInput, plan: VmPlan): Promise<VmOutcome> {
    const item = await this.owned(plan.itemId, input.instanceId);
    const now = this.now();
    const duration = Math.max(0, (now.getTime() - Date.parse(input.startedAt)) / 1000);
    const updated = await this.record(item.id, input.instanceId, (f, i) => {
      if (!f.completedAt) {
        f.completedAt = now.toISOString();
        f.durationSeconds = duration;
      }
      // A planned failover's source stays shut down (its agent keeps refusing writes); only a rollback starts it again.
      i.state = input.type === "test" ? "TestFailover" : "FailedOver";
    });
    const f = updated?.failover ?? item.failover!;
    const vm = f.resources.vmId ? await this.deps.fabric.get(f.resources.vmId) : undefined;
    const name = this.targetVmName(input, plan);
    const target = this.placement(item);
    return {
      itemId: item.id,
      vm: item.vm.name,
      recoveryPoint: plan.point,
      dataLossWindowSeconds: Math.max(0, Math.round((Date.parse(input.startedAt) - Date.parse(plan.point.time)) / 1000)),
      failoverDurationSeconds: f.durationSeconds ?? duration,
      targetVm: {
        id: vm?.id ?? resourceId("virtualMachine", target.resourceGroup, name),
        name,
        resourceGroup: target.resourceGroup,
        privateIp: f.resources.privateIp ?? "",
        powerState: vm?.powerState ?? "unknown",
      },
      disks: plan.disks.map((d) => ({ diskId: d.diskId, blob: `${FAILOVER_CONTAINER}/${this.failoverBlobName(input, plan, d.diskId)}` })),
      ...(plan.note ? { note: plan.note } : {}),
    };
  }
}
