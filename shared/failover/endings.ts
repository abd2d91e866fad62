// How a failover ends, other than by completing: a rollback (also of an abandoned one), the commit, a test failover's cleanup, and its job.
import type { ContainerPort, StoragePort } from "../storage/ports";
import { Conflict, IllegalState, NotFound } from "../contract/errors";
import type { Fabric } from "../fabric/port";
import { FailoverPlanning, type FailoverInput } from "./start";
import { replicationSource, replicationStateOf, type FailoverRecord, type ReplicatedItem } from "../protection/items";
import { type ItemStore } from "../storage/item-store";
import { type RecoveryPoints } from "../recovery-points/points";
import type { Config } from "../config/settings";
import { type Direction } from "../storage/names";
import { FAILOVER_CONTAINER } from "../storage/names";
import type { Jobs, JobStep } from "../operations/jobs";

export type StepRecorder = { step(name: string): Promise<void> };

export interface FailoverStepsDeps {
  config: Config;
  storage: StoragePort;
  items: ItemStore;
  points: RecoveryPoints;
  fabric: Fabric;
  planning: FailoverPlanning;
  now?: () => Date;
  log?: (line: string) => void;
  /** Revokes an item's agent credentials (commit: the source does not replicate in this direction any more). */
  agents?: { forget(itemId: string): Promise<void> };
  /** Commit and test-failover cleanup are recorded as jobs; a failover's job is ended by `endJob`. */
  jobs?: Jobs;
  /** `latest`: how long the source cache may stay unreachable before the failover falls back to the latest processed point. */
  cacheTimeoutMs?: number;
  /** `latest`: how long draining the cache may take before the failover gives up on the step (it is retried). */
  drainTimeoutMs?: number;
}

/** A lock whose orchestration cannot be found after this long was never started (or was purged). */
const ABANDONED_AFTER_MS = 5 * 60_000;

export class FailoverEndings {
  protected readonly now: () => Date;
  protected readonly log: (line: string) => void;

  constructor(protected readonly deps: FailoverStepsDeps) {
    this.now = deps.now ?? (() => new Date());
    this.log = deps.log ?? (() => undefined);
  }

  /** Failover disks sit beside the replicas they are copied from: the recovery region forward, the original one for a failback. */
  protected async failoverContainer(direction: Direction): Promise<ContainerPort> {
    return this.deps.storage.failover(direction);
  }

  // ---------------------------------------------------------------------------------------------
  // Undo: a failed failover, a test failover's cleanup

  /** Removes what a failover made for the item (VM, NIC, disks, an unused test network); returns what went. */
  async removeResources(f: FailoverRecord): Promise<string[]> {
    const removed: string[] = [];
    const fabric = this.deps.fabric;
    if (f.resources.vmId && (await fabric.delete(f.resources.vmId))) removed.push(f.resources.vmId);
    if (f.resources.nicId && (await fabric.delete(f.resources.nicId))) removed.push(f.resources.nicId);
    const container = await this.failoverContainer(f.direction ?? "forward");
    for (const name of f.resources.disks) {
      const r = await container.getPageBlobClient(name).deleteIfExists({ deleteSnapshots: "include" });
      if (r.succeeded) removed.push(`${FAILOVER_CONTAINER}/${name}`);
    }
    if (f.resources.testNetworkId) {
      const vnet = await fabric.get(f.resources.testNetworkId);
      const inUse = (await fabric.list("networkInterface")).some((n) => n.vnetId?.toLowerCase() === f.resources.testNetworkId!.toLowerCase());
      if (vnet?.createdBySiteRecovery && !inUse && (await fabric.delete(vnet.id))) removed.push(vnet.id);
    }
    return removed;
  }

  /**
   * Items still held by a failover whose orchestration will never finish them — terminated, failed before or during
   * its own rollback, or gone (never started, purged) — are handed back as a rollback does: what it made goes, the
   * source's shutdown is lifted (its agent accepts writes again), the item returns to replication. `statusOf` says
   * where an orchestration is (undefined: no such instance).
   */
  async releaseAbandoned(statusOf: (instanceId: string) => Promise<string | undefined>): Promise<{ itemId: string; instanceId: string; status: string }[]> {
    const released: { itemId: string; instanceId: string; status: string }[] = [];
    const now = this.now().getTime();
    for (const item of await this.deps.items.list()) {
      const f = item.failover;
      if (!f || (item.state !== "FailingOver" && item.state !== "TestFailover") || f.completedAt || f.cleanedUpAt) continue;
      const status = await statusOf(f.instanceId);
      // An instance not found yet may be one being started right now: only an old lock without one is abandoned.
      const abandoned = status === undefined ? now - Date.parse(f.startedAt) > ABANDONED_AFTER_MS : ["Terminated", "Failed", "Canceled"].includes(status);
      if (!abandoned) continue;
      const code = status === "Terminated" ? "FailoverTerminated" : status === undefined ? "FailoverLost" : "FailoverFailed";
      const why = status === undefined ? `its orchestration ${f.instanceId} does not exist` : `its orchestration ${f.instanceId} is ${status}`;
      await this.rollback({ instanceId: f.instanceId }, item.id, `the failover was abandoned: ${why}`, code);
      await this.endJob(f.instanceId, { state: "Failed", error: { code, message: `the failover was abandoned: ${why}` } });
      released.push({ itemId: item.id, instanceId: f.instanceId, status: status ?? "missing" });
    }
    return released;
  }

  /** A failover that failed: what it made goes, the source VM runs again, the item returns to where it was. */
  async rollback(input: Pick<FailoverInput, "instanceId">, itemId: string, error: string, code = "FailoverFailed"): Promise<string[]> {
    const found = await this.deps.items.get(itemId);
    const f = found?.item.failover;
    if (!found || f?.instanceId !== input.instanceId) return [];
    const removed = await this.removeResources(f);
    if (found.item.sourceShutdown) {
      const source = replicationSource(found.item);
      await this.deps.fabric.setPowerState(source.region, source.resourceGroup, source.name, "running");
    }
    await this.deps.items.updateItemWithDisks(itemId, (i, disks) => {
      if (i.failover?.instanceId !== input.instanceId) return undefined;
      delete i.sourceShutdown;
      i.failover = { ...i.failover, resources: { disks: [] }, error: { code, message: error } };
      i.state = replicationStateOf({ ...i, state: i.failover.previousState }, disks);
      i.updatedAt = this.now().toISOString();
      return i;
    });
    this.log(`failover ${input.instanceId}: ${itemId} rolled back (${removed.length} resources removed): ${error}`);
    return removed;
  }

  // ---------------------------------------------------------------------------------------------
  // After the failover

  /** Commit: the failed-over VM is the one that counts; the item's recovery points go (the choice is final). */
  async commit(itemId: string): Promise<ReplicatedItem> {
    const found = await this.deps.items.get(itemId);
    if (!found) throw new NotFound("replicated item", itemId);
    if (found.item.state !== "FailedOver") throw new IllegalState(itemId, found.item.state, "commit a failover (only a FailedOver item can)");
    return this.asJob("commit", itemId, (job) => this.commitAccepted(found.item, job));
  }

  private async commitAccepted(item: ReplicatedItem, job: StepRecorder): Promise<ReplicatedItem> {
    const itemId = item.id;
    await job.step("deleting the recovery points");
    await this.deps.points.deleteAllOf(item);
    await job.step("committing the failover");
    const at = this.now().toISOString();
    // ETag-conditional: of two concurrent commits exactly one moves the item; the other sees it committed (409).
    let won = false;
    const committed = await this.deps.items.updateItem(itemId, (i) => {
      won = false;
      if (i.state !== "FailedOver") return undefined;
      won = true;
      i.state = "FailoverCommitted";
      if (i.failover) i.failover.committedAt = at;
      i.updatedAt = at;
      return i;
    });
    if (!committed) throw new NotFound("replicated item", itemId);
    if (!won) throw new IllegalState(itemId, committed.state, "commit a failover (only a FailedOver item can)");
    // The old source's agent has nothing left to replicate: its key and any registration token go.
    await this.deps.agents?.forget(itemId);
    return committed;
  }

  /** Test failover cleanup: the test VM, its NIC and disks (and an unused test network) go; replication never stopped. */
  async cleanupTestFailover(itemId: string): Promise<{ item: ReplicatedItem; removed: string[] }> {
    const found = await this.deps.items.get(itemId);
    if (!found) throw new NotFound("replicated item", itemId);
    const f = found.item.failover;
    if (found.item.state !== "TestFailover" || !f || f.type !== "test")
      throw new IllegalState(itemId, found.item.state, "clean up a test failover (there is none)");
    if (!f.completedAt && !f.error) {
      throw new Conflict("TestFailoverRunning", `the test failover of '${itemId}' is still running (instance ${f.instanceId}); clean up when it has finished`, {
        itemId,
        instanceId: f.instanceId,
      });
    }
    return this.asJob("test-failover-cleanup", itemId, (job) => this.cleanupAccepted(itemId, f, job));
  }

  private async cleanupAccepted(itemId: string, f: FailoverRecord, job: StepRecorder): Promise<{ item: ReplicatedItem; removed: string[] }> {
    await job.step("removing the test VM, its NIC and disks");
    const removed = await this.removeResources(f);
    await job.step("returning the item to replication");
    const at = this.now().toISOString();
    // ETag-conditional: of two concurrent cleanups exactly one returns the item to replication; the other gets 409.
    let won = false;
    const item = await this.deps.items.updateItemWithDisks(itemId, (i, disks) => {
      won = false;
      if (i.state !== "TestFailover" || i.failover?.instanceId !== f.instanceId || i.failover.cleanedUpAt) return undefined;
      won = true;
      i.failover = { ...i.failover, resources: { disks: [] }, cleanedUpAt: at };
      if (i.failover.completedAt) i.lastDrillAt = at;
      i.state = replicationStateOf({ ...i, state: i.failover.previousState }, disks);
      i.updatedAt = at;
      return i;
    });
    if (!item) throw new NotFound("replicated item", itemId);
    if (!won) throw new IllegalState(itemId, item.state, "clean up a test failover (it was cleaned up meanwhile)");
    return { item, removed };
  }

  // ---------------------------------------------------------------------------------------------
  // Jobs

  private asJob<T>(type: "commit" | "test-failover-cleanup", itemId: string, work: (job: StepRecorder) => Promise<T>): Promise<T> {
    return this.deps.jobs ? this.deps.jobs.run(type, [itemId], work) : work({ step: async () => {} });
  }

  /** A failover's job ends with the orchestration (its steps as the orchestration timed them), or when it is found abandoned. */
  async endJob(
    instanceId: string,
    outcome: { state: "Succeeded" | "Failed"; error?: { code: string; message: string }; steps?: JobStep[] },
  ): Promise<number | undefined> {
    const job = await this.deps.jobs?.end(instanceId, outcome.state, outcome.error, outcome.steps);
    return job?.durationSeconds ?? undefined;
  }
}
