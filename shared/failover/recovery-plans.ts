// Recovery plans: named, ordered groups of replicated items that fail over together (ASR: ≤ 7 groups, ≤ 100 items).
import { randomBytes } from "node:crypto";
import { createPlanRequestSchema, fieldPath, parseInput } from "../contract/api";
import { ApiError, BadRequest, Conflict, NotFound, isConflict, isNotFound, type FieldIssue } from "../contract/errors";
import type { ReplicatedItem } from "../protection/items";
import type { ItemStore } from "../storage/item-store";
import { TABLES } from "../storage/names";
import type { EntityTable, Tables } from "../storage/ports";

export interface RecoveryPlan {
  id: string;
  /** Unique, case-insensitive. */
  name: string;
  /** Item ids in failover order: group N+1 starts when group N's VMs run. */
  groups: string[][];
  createdAt: string;
}

/**
 * One partition holds every plan (`id|<id>`) and the claim on its name (`name|<lowercase name>`), so that a plan
 * and its name are written in one transaction: a second plan of the same name fails whole, and writes nothing.
 */
const PARTITION = "plan";
const planRow = (id: string) => `id|${id}`;
const nameRow = (name: string) => `name|${name.toLowerCase()}`;
const PLAN_ID = /^[a-z0-9]{1,64}$/;

interface PlanEntity {
  partitionKey: string;
  rowKey: string;
  body: string;
}
interface NameEntity {
  partitionKey: string;
  rowKey: string;
  planId: string;
}

export interface RecoveryPlanDeps {
  storage: Tables;
  items: ItemStore;
  now?: () => Date;
}

export class RecoveryPlans {
  private readonly now: () => Date;

  constructor(private readonly deps: RecoveryPlanDeps) {
    this.now = deps.now ?? (() => new Date());
  }

  private table(): Promise<EntityTable> {
    return this.deps.storage.table(TABLES.recoveryPlans);
  }

  /** Validates the whole plan (shape, limits, items, replication groups) before writing anything. */
  async create(body: unknown): Promise<RecoveryPlan> {
    const req = parseInput(createPlanRequestSchema, body);
    await this.checkItems(req.groups);
    const t = await this.table();
    for (let attempt = 0; ; attempt++) {
      const plan: RecoveryPlan = { id: randomBytes(6).toString("hex"), name: req.name, groups: req.groups, createdAt: this.now().toISOString() };
      try {
        await t.submitTransaction([
          ["create", { partitionKey: PARTITION, rowKey: nameRow(plan.name), planId: plan.id } satisfies NameEntity],
          ["create", { partitionKey: PARTITION, rowKey: planRow(plan.id), body: JSON.stringify(plan) } satisfies PlanEntity],
        ]);
        return plan;
      } catch (e) {
        if (!isConflict(e)) throw e;
        const holder = await this.nameHolder(plan.name);
        if (holder)
          throw new Conflict("PlanExists", `a recovery plan named '${req.name}' already exists: plan '${holder}' (names are case-insensitive)`, {
            field: "name",
            planId: holder,
          });
        // The random id was taken (or the name was released in between): try again with a fresh id.
        if (attempt >= 5) throw e;
      }
    }
  }

  async list(): Promise<RecoveryPlan[]> {
    const t = await this.table();
    const out: RecoveryPlan[] = [];
    const filter = `PartitionKey eq '${PARTITION}' and RowKey ge 'id|' and RowKey lt 'id}'`;
    for await (const e of t.listEntities<PlanEntity>({ queryOptions: { filter } })) out.push(JSON.parse(e.body) as RecoveryPlan);
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.name.localeCompare(b.name));
  }

  async get(id: string): Promise<RecoveryPlan> {
    if (!PLAN_ID.test(id)) throw new NotFound("recovery plan", id);
    const t = await this.table();
    try {
      const e = await t.getEntity<PlanEntity>(PARTITION, planRow(id));
      return JSON.parse(e.body) as RecoveryPlan;
    } catch (e) {
      if (isNotFound(e)) throw new NotFound("recovery plan", id);
      throw e;
    }
  }

  private async nameHolder(name: string): Promise<string | undefined> {
    const t = await this.table();
    try {
      return (await t.getEntity<NameEntity>(PARTITION, nameRow(name))).planId;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /**
   * Every item exists (404 naming the first unknown one), and each replication group is whole and in one plan
   * group: its VMs share recovery points and fail over together, never one alone (400 naming field and group).
   */
  private async checkItems(groups: string[][]): Promise<void> {
    const all = await this.deps.items.list();
    const byId = new Map(all.map((i) => [i.id, i]));
    const positions = groups.flatMap((g, gi) => g.map((id, ii) => ({ id, gi, field: fieldPath(["groups", gi, ii]) })));

    const unknown = positions.find((p) => !byId.has(p.id));
    if (unknown) {
      throw new ApiError(404, "NotFound", `replicated item '${unknown.id}' does not exist (${unknown.field})`, {
        field: unknown.field,
        replicatedItem: unknown.id,
      });
    }

    const byGroup = new Map<string, typeof positions>();
    for (const p of positions) {
      const rg = byId.get(p.id)!.replicationGroup;
      if (rg) byGroup.set(rg, [...(byGroup.get(rg) ?? []), p]);
    }
    const inPlan = new Set(positions.map((p) => p.id));
    const issues: FieldIssue[] = [];
    for (const [rg, members] of byGroup) {
      const home = members[0]!;
      for (const p of members.filter((m) => m.gi !== home.gi)) {
        issues.push({
          field: p.field,
          message: `is in replication group '${rg}', like '${home.id}' at ${home.field}: a replication group fails over together, so its VMs belong in one plan group`,
        });
      }
      const missing = all.filter((i) => i.replicationGroup === rg && !inPlan.has(i.id));
      if (missing.length > 0) {
        issues.push({
          field: home.field,
          message: `is in replication group '${rg}', whose ${describe(missing)} ${missing.length === 1 ? "is" : "are"} not in the plan: a VM of a replication group cannot fail over alone`,
        });
      }
    }
    if (issues.length > 0) throw new BadRequest(`invalid recovery plan: ${issues.map((i) => `${i.field} ${i.message}`).join("; ")}`, issues);
  }
}

function describe(items: ReplicatedItem[]): string {
  return `member${items.length === 1 ? "" : "s"} ${items.map((i) => `'${i.id}' (VM ${i.vm.name})`).join(", ")}`;
}
