// Failover planning: the request, which items it selects in which order, which recovery point each gets, and the lock that makes one failover own them.
import { failoverRequestSchema, parseInput, type FailoverRequest } from "../contract/api";
import { ApiError, BadRequest, Conflict, IllegalState, NotFound, storageStatus } from "../contract/errors";
import type { FailoverRecord, FailoverType, ItemState, ReplicatedItem } from "../protection/items";
import type { ItemStore } from "../storage/item-store";
import { groupPartition, type RecoveryPoint, type RecoveryPoints } from "../recovery-points/points";

/** What the orchestration is started with: everything decided, nothing left to look up but the points. */
export interface FailoverInput {
  instanceId: string;
  type: FailoverType;
  recoveryPoint: string;
  testNetwork?: string;
  /** Control-plane time the failover was accepted (ISO) and the same instant for blob names (yyyymmddThhmmssZ). */
  startedAt: string;
  stamp: string;
  selection: { kind: "items" | "group" | "plan"; id?: string };
  /** Item ids in failover order: one stage for items or a group, a recovery plan's groups otherwise. */
  stages: string[][];
}

/** A plan as the failover needs it; the recovery plans store provides it. */
export interface PlanLookup {
  get(planId: string): Promise<{ id: string; groups: string[][] }>;
}

/** The states each type may start from (ASR: a VM still copying has no point; one already failed over is not the source any more). */
const STARTABLE: Record<FailoverType, ReadonlySet<ItemState>> = {
  test: new Set(["Protected", "ResyncRequired"]),
  planned: new Set(["Protected"]),
  unplanned: new Set(["Protected", "ResyncRequired"]),
};

/** The state an item is in while a failover of that type owns it. */
export const lockedState = (type: FailoverType): ItemState => (type === "test" ? "TestFailover" : "FailingOver");

const withoutDisplaced = (f: FailoverRecord): Omit<FailoverRecord, "displaced"> => {
  const { displaced: _d, ...rest } = f;
  return rest;
};

export const failoverStamp = (at: Date) =>
  at
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");

export interface FailoverPlanningDeps {
  items: ItemStore;
  points: RecoveryPoints;
  plans?: PlanLookup;
  now?: () => Date;
}

/** A point chosen for an item: the point and the item's disks in it. */
export interface ChosenPoint {
  point: RecoveryPoint;
  /** The item's disks of the point (a group point holds every member's). */
  disks: RecoveryPoint["disks"];
}

export class FailoverPlanning {
  private readonly now: () => Date;

  constructor(private readonly deps: FailoverPlanningDeps) {
    this.now = deps.now ?? (() => new Date());
  }

  /**
   * Validates a failover request completely and locks its items for `instanceId`: 400/404/409 before anything
   * changes. Returns the orchestration's input; `unlock` undoes the lock if the orchestration cannot be started.
   */
  async accept(body: unknown, instanceId: string): Promise<FailoverInput> {
    const req = parseInput(failoverRequestSchema, body);
    const recoveryPoint = req.recoveryPoint ?? (req.type === "planned" ? "latest" : "latest-processed");
    const { stages, selection } = await this.select(req);
    const all = await this.itemsOf(stages.flat());
    for (const item of all) {
      if (!STARTABLE[req.type].has(item.state))
        throw new IllegalState(item.id, item.state, `start ${req.type === "unplanned" ? "an" : "a"} ${req.type} failover`);
    }
    await this.checkGroupsWhole(all, stages, selection.kind);
    // Failover disks and target VMs are named after the VM: two VMs of one name in one failover would collide.
    const names = new Map<string, string>();
    for (const item of all) {
      const key = item.vm.name.toLowerCase();
      const other = names.get(key);
      if (other)
        throw new Conflict("DuplicateVmName", `items '${other}' and '${item.id}' are both VM '${item.vm.name}': fail them over separately`, {
          items: [other, item.id],
        });
      names.set(key, item.id);
    }
    // Unknown or foreign point ids, and a choice with no point yet, are refused now rather than half-way.
    if (recoveryPoint !== "latest") await this.choosePoints(all, recoveryPoint);
    // `latest` is cut from the replicas: a replica whose first full copy never arrived would fail over as zeros.
    else await this.checkInitialReplication(all);
    const at = this.now();
    const input: FailoverInput = {
      instanceId,
      type: req.type,
      recoveryPoint,
      ...(req.testNetwork ? { testNetwork: req.testNetwork } : {}),
      startedAt: at.toISOString(),
      stamp: failoverStamp(at),
      selection,
      stages,
    };
    await this.lock(all, input);
    return input;
  }

  /** Every disk of every item finished its initial replication (else 409 naming the first disk that did not). */
  private async checkInitialReplication(items: ReplicatedItem[]): Promise<void> {
    for (const item of items) {
      const missing = (await this.deps.items.listDisks(item.id)).find((d) => !d.initialComplete);
      if (missing) {
        throw new Conflict(
          "InitialReplicationIncomplete",
          `replicated item '${item.id}': disk '${missing.id}' has not finished its initial replication, so its replica holds no usable copy yet; fail over to a recovery point or wait`,
          { itemId: item.id, diskId: missing.id },
        );
      }
    }
  }

  private async select(req: FailoverRequest): Promise<Pick<FailoverInput, "stages" | "selection">> {
    if (req.itemIds) return { stages: [req.itemIds], selection: { kind: "items" } };
    if (req.groupId !== undefined) {
      const members = (await this.deps.items.list()).filter((i) => i.replicationGroup === req.groupId && i.state !== "Disabling");
      if (members.length === 0) throw new NotFound("replication group", req.groupId);
      return { stages: [members.map((i) => i.id)], selection: { kind: "group", id: req.groupId } };
    }
    if (!this.deps.plans) throw new BadRequest("recovery plans are not available here", [{ field: "planId", message: "not supported" }]);
    const plan = await this.deps.plans.get(req.planId!);
    return { stages: plan.groups.map((g) => [...g]), selection: { kind: "plan", id: plan.id } };
  }

  private async itemsOf(ids: string[]): Promise<ReplicatedItem[]> {
    const out: ReplicatedItem[] = [];
    for (const id of ids) {
      const found = await this.deps.items.get(id);
      if (!found) throw new NotFound("replicated item", id);
      out.push(found.item);
    }
    return out;
  }

  /** ASR: a VM of a replication group fails over with its whole group, in one stage. */
  private async checkGroupsWhole(selected: ReplicatedItem[], stages: string[][], kind: FailoverInput["selection"]["kind"]): Promise<void> {
    const groups = new Set(selected.map((i) => i.replicationGroup).filter((g): g is string => !!g));
    if (groups.size === 0) return;
    const everyone = await this.deps.items.list();
    for (const group of groups) {
      const members = everyone.filter((i) => i.replicationGroup === group && i.state !== "Disabling").map((i) => i.id);
      const stage = stages.find((s) => s.some((id) => members.includes(id)))!;
      const missing = members.filter((id) => !stage.includes(id));
      if (missing.length > 0) {
        throw new Conflict(
          "GroupMemberAlone",
          `replication group '${group}' fails over whole${kind === "plan" ? ", in one group of the plan" : ""}: also select ${missing.map((m) => `'${m}'`).join(", ")} (or use groupId)`,
          { group, missing },
        );
      }
    }
  }

  /**
   * The point each item fails over to. Members of a replication group get one group point (the same instant on
   * every VM); other items their own newest match. `latest` is not a stored point: the failover cuts it.
   */
  async choosePoints(items: ReplicatedItem[], choice: string): Promise<Map<string, ChosenPoint>> {
    const out = new Map<string, ChosenPoint>();
    const byGroup = new Map<string, ReplicatedItem[]>();
    for (const item of items) {
      if (item.replicationGroup) byGroup.set(item.replicationGroup, [...(byGroup.get(item.replicationGroup) ?? []), item]);
    }
    for (const item of items) {
      if (out.has(item.id)) continue;
      const group = item.replicationGroup;
      if (group) {
        const members = byGroup.get(group)!;
        const candidates = (await this.deps.points.listPartition(groupPartition(group))).filter((p) => members.every((m) => p.members?.includes(m.id)));
        const point = await this.pick(candidates, choice, item, `replication group '${group}'`);
        for (const m of members) out.set(m.id, { point, disks: point.disks.filter((d) => d.itemId === m.id) });
      } else {
        const candidates = (await this.deps.points.listForItem(item)).filter((p) => p.scope === "vm");
        const point = await this.pick(candidates, choice, item, `item '${item.id}'`);
        out.set(item.id, { point, disks: point.disks.filter((d) => d.itemId === item.id) });
      }
    }
    return out;
  }

  private async pick(newestFirst: RecoveryPoint[], choice: string, item: ReplicatedItem, whose: string): Promise<RecoveryPoint> {
    if (choice === "latest-processed" || choice === "latest-app-consistent") {
      const p = choice === "latest-processed" ? newestFirst[0] : newestFirst.find((x) => x.kind === "app");
      if (!p) {
        throw new Conflict("NoRecoveryPoint", `${whose} has no ${choice === "latest-processed" ? "" : "app-consistent "}recovery point yet`, {
          itemId: item.id,
          recoveryPoint: choice,
        });
      }
      return p;
    }
    const p = newestFirst.find((x) => x.id === choice);
    if (p) return p;
    // Say whether the id exists elsewhere (another item's point) or not at all.
    const own = await this.deps.points.listForItem(item);
    if (own.some((x) => x.id === choice)) {
      throw new BadRequest(
        `recovery point '${choice}' is not a ${item.replicationGroup ? "group point of the whole replication group" : "point of this VM"}: ${whose} needs one`,
        [{ field: "recoveryPoint", message: "not usable for this selection" }],
      );
    }
    if (await this.pointExistsElsewhere(choice)) {
      throw new BadRequest(`recovery point '${choice}' belongs to another item, not to ${whose}`, [
        { field: "recoveryPoint", message: "is a point of another item" },
      ]);
    }
    throw new ApiError(404, "NotFound", `recovery point '${choice}' does not exist for ${whose}`, { recoveryPoint: choice, itemId: item.id });
  }

  private async pointExistsElsewhere(id: string): Promise<boolean> {
    for (const other of await this.deps.items.list()) {
      if ((await this.deps.points.listForItem(other)).some((p) => p.id === id)) return true;
    }
    return false;
  }

  /** Each item moves to its locked state only if nobody changed it since it was checked; all or none. */
  private async lock(items: ReplicatedItem[], input: FailoverInput): Promise<void> {
    const locked: ReplicatedItem[] = [];
    try {
      for (const item of items) {
        const found = await this.deps.items.get(item.id);
        if (!found || found.item.state !== item.state)
          throw new IllegalState(item.id, found?.item.state ?? "gone", `start ${input.type === "unplanned" ? "an" : "a"} ${input.type} failover`);
        const record: FailoverRecord = {
          instanceId: input.instanceId,
          type: input.type,
          requestedPoint: input.recoveryPoint,
          startedAt: input.startedAt,
          previousState: item.state,
          resources: { disks: [] },
          ...(found.item.failover ? { displaced: withoutDisplaced(found.item.failover) } : {}),
        };
        const next: ReplicatedItem = { ...found.item, state: lockedState(input.type), failover: record, updatedAt: input.startedAt };
        try {
          await this.deps.items.put(next, found.etag);
        } catch (e) {
          if (storageStatus(e) !== 412) throw e;
          throw new Conflict("ConcurrentChange", `replicated item '${item.id}' changed while the failover was being accepted; try again`, { itemId: item.id });
        }
        locked.push(found.item);
      }
    } catch (e) {
      await this.unlock(
        locked.map((i) => i.id),
        input.instanceId,
      );
      throw e;
    }
  }

  /** Returns items locked by `instanceId` to the state they had (the orchestration could not be started). */
  async unlock(itemIds: string[], instanceId: string): Promise<void> {
    for (const id of itemIds) {
      await this.deps.items.updateItem(id, (i) => {
        if (i.failover?.instanceId !== instanceId) return undefined;
        const { failover: _f, sourceShutdown: _s, ...rest } = i;
        // The item's previous failover record (say a cleaned-up test failover) is put back, not lost.
        return {
          ...rest,
          ...(i.failover.displaced ? { failover: i.failover.displaced } : {}),
          state: i.failover.previousState,
          updatedAt: this.now().toISOString(),
        };
      });
    }
  }
}
