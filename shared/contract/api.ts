// What crosses the wire: zod schemas for requests, the types inferred from them, and the 400 they produce.
import { z } from "zod";
import { BadRequest, type FieldIssue } from "./errors";
import { AZURE_REGIONS } from "../config/regions";

export const MiB = 1024 * 1024;
export const TiB = 1024 * 1024 * MiB;
/** A page blob holds at most 8 TiB; the replica adds a 512-byte VHD footer to the disk. */
export const MAX_DISK_BYTES = 8 * TiB - MiB;
export const MAX_OS_DISK_BYTES = 4 * TiB;
export const MAX_DATA_DISKS = 64;
export const MAX_GROUP_VMS = 16;

const region = z
  .string()
  .transform((r) => r.toLowerCase())
  .refine((r) => AZURE_REGIONS.has(r), { message: "unknown Azure region (use an ARM location name such as eastus)" });

// ARM naming rules, kept to what both a VM and its replica resources accept.
const vmName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}[A-Za-z0-9_]$|^[A-Za-z0-9]$/, "1-64 letters, digits, '_', '.', '-'; not ending in '.' or '-'");
const rgName = z.string().regex(/^[A-Za-z0-9_().-]{0,89}[A-Za-z0-9_()-]$/, "1-90 letters, digits, '_', '(', ')', '.', '-'; not ending in '.'");
// `-asr` is appended to default target names, so leave room for it.
const resourceName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,75}[A-Za-z0-9_]$|^[A-Za-z0-9]$/, "1-77 letters, digits, '_', '.', '-'; starting with a letter or digit");
/** Disk ids become blob names (`<item>/<disk>.vhd`, `<disk>/<seq>.batch`) and table keys: the rule is checked before any storage call. */
export const DISK_ID_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const diskId = z.string().regex(DISK_ID_PATTERN, "1-63 lowercase letters, digits, '_' or '-', starting with a letter or digit");
export const diskIdSchema = diskId;
const ipv4 = z.string().regex(/^((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/, "an IPv4 address");

const groupName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$/, "1-80 letters, digits, '_', '.', '-'");

const diskSpec = z.object({
  id: diskId,
  sizeBytes: z
    .number()
    .int()
    .positive()
    .refine((n) => n % MiB === 0, { message: "must be a whole number of MiB (1048576 bytes), as Azure managed disks require" })
    .refine((n) => n <= MAX_DISK_BYTES, { message: `at most ${MAX_DISK_BYTES} bytes (a page blob is at most 8 TiB, footer included)` }),
});

export const policySchema = z
  .object({
    recoveryPointRetentionHours: z.number().int().min(1).max(360).default(24),
    crashConsistentFrequencySeconds: z.number().int().min(10).max(3600).default(300),
    appConsistentFrequencyMinutes: z.number().int().min(0).max(1440).default(240),
    /** Alert when the RPO exceeds this many minutes (RPO_ALERT_MINUTES otherwise). */
    rpoAlertMinutes: z.number().int().min(1).max(1440).optional(),
  })
  .strict();
export type ReplicationPolicy = z.infer<typeof policySchema>;

export const enableRequestSchema = z
  .object({
    vm: z
      .object({
        name: vmName,
        region,
        resourceGroup: rgName,
        size: z.string().regex(/^[A-Za-z0-9_]{1,64}$/, "an Azure VM size such as Standard_D2s_v5"),
        network: z.object({ vnet: resourceName, subnet: resourceName, privateIp: ipv4.optional() }).strict(),
        availabilitySet: resourceName.optional(),
        disks: z
          .array(diskSpec)
          .min(1, "a VM has at least its OS disk")
          .max(1 + MAX_DATA_DISKS, `at most one OS disk and ${MAX_DATA_DISKS} data disks`)
          .superRefine((disks, ctx) => {
            const seen = new Set<string>();
            disks.forEach((d, i) => {
              if (seen.has(d.id)) ctx.addIssue({ code: "custom", path: [i, "id"], message: `duplicate disk id '${d.id}'` });
              seen.add(d.id);
            });
            if (disks[0] && disks[0].sizeBytes > MAX_OS_DISK_BYTES) {
              ctx.addIssue({ code: "custom", path: [0, "sizeBytes"], message: "the OS disk (the first) is at most 4 TiB" });
            }
          }),
      })
      .strict(),
    targetRegion: region,
    target: z
      .object({
        resourceGroup: rgName.optional(),
        vnet: resourceName.optional(),
        subnet: resourceName.optional(),
        availabilitySet: resourceName.optional(),
      })
      .strict()
      .optional(),
    replicationGroup: groupName.optional(),
    policy: policySchema.default({ recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 300, appConsistentFrequencyMinutes: 240 }),
  })
  .strict()
  .superRefine((r, ctx) => {
    if (r.targetRegion === r.vm.region) {
      ctx.addIssue({ code: "custom", path: ["targetRegion"], message: "must differ from the VM's region" });
    }
  });
export type EnableRequest = z.infer<typeof enableRequestSchema>;

/** PATCH of an item: the replication group to join, or null to leave it. */
export const updateRequestSchema = z.object({ replicationGroup: groupName.nullable() }).strict();

/** Re-protect and resync take no options (yet): `{}` or no body; anything else is refused by name. */
export const reprotectRequestSchema = z.object({}).strict();
export const resyncRequestSchema = z.object({}).strict();

/** `replace`: an agent is already registered for the item and this one takes over (the registered one is locked out). */
export const registerRequestSchema = z.object({ token: z.string().min(1).max(512), replace: z.boolean().optional() }).strict();

/** ASR's recovery plan limits: at most 7 groups and 100 items. */
export const MAX_PLAN_GROUPS = 7;
export const MAX_PLAN_ITEMS = 100;

/**
 * Item ids as the API hands them out (UUIDs); looser than a UUID so that an unknown id gets its 404, not a 400. They
 * become table keys and blob names: anything else (`/`, `..`, control characters) is refused before any storage call.
 */
export const ITEM_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const itemRef = z.string().regex(ITEM_ID_PATTERN, "an item id: 1-64 letters, digits, '_' or '-'");
export const itemIdSchema = itemRef;

/** Orchestration instance ids (UUIDs here): they become URL path segments of the durable client's calls. */
const instanceRef = z.string().regex(/^[A-Za-z0-9_-]{1,100}$/, "an instance id: 1-100 letters, digits, '_' or '-'");

/** A route's `{instanceId}`: 400 naming `instanceId` unless it follows the rule. */
export function instanceIdParam(raw: string | undefined): string {
  return parseInput(z.object({ instanceId: instanceRef }), { instanceId: raw ?? "" }).instanceId;
}

/** A route's `{itemId}`: 400 naming `itemId` unless it follows the rule. */
export function itemIdParam(raw: string | undefined): string {
  return parseInput(z.object({ itemId: itemRef }), { itemId: raw ?? "" }).itemId;
}

/** A recovery plan: a name and the items in failover order, group by group (group N+1 starts when group N's VMs run). */
export const createPlanRequestSchema = z
  .object({
    name: z
      .string()
      .regex(/^[A-Za-z0-9_-](?:[A-Za-z0-9_ -]{0,62}[A-Za-z0-9_-])?$/, "1-64 letters, digits, '-', '_' or spaces; not starting or ending with a space"),
    groups: z
      .array(z.array(itemRef).min(1, "a group holds at least one item"))
      .min(1, "a plan has at least one group")
      .max(MAX_PLAN_GROUPS, `at most ${MAX_PLAN_GROUPS} groups`)
      .superRefine((groups, ctx) => {
        const total = groups.reduce((n, g) => n + g.length, 0);
        if (total > MAX_PLAN_ITEMS) ctx.addIssue({ code: "custom", path: [], message: `at most ${MAX_PLAN_ITEMS} items in a plan (got ${total})` });
        const seen = new Map<string, string>();
        groups.forEach((g, gi) =>
          g.forEach((id, ii) => {
            const first = seen.get(id);
            if (first) ctx.addIssue({ code: "custom", path: [gi, ii], message: `duplicate item '${id}' (already at ${first}): an item is in a plan once` });
            else seen.set(id, fieldPath(["groups", gi, ii]));
          }),
        );
      }),
  })
  .strict();
export type CreatePlanRequest = z.infer<typeof createPlanRequestSchema>;

/**
 * A failover: what (items, a replication group or a recovery plan), the type, and the recovery point — `latest`,
 * `latest-processed`, `latest-app-consistent` or a point id (ASR: Latest, Latest processed, Latest app-consistent, Custom).
 */
export const failoverRequestSchema = z
  .object({
    itemIds: z.array(itemRef).min(1, "select at least one item").max(MAX_PLAN_ITEMS).optional(),
    groupId: z.string().min(1).max(80).optional(),
    planId: z.string().min(1).max(80).optional(),
    type: z.enum(["test", "planned", "unplanned"]),
    /** Default: `latest` for a planned failover (its only choice), `latest-processed` otherwise (lowest RTO). */
    recoveryPoint: z.string().min(1).max(128).optional(),
    /** Test failover only: the isolated vnet in the target resource group (created, as a copy of the target vnet, when absent). */
    testNetwork: vmName.optional(),
  })
  .strict()
  // Runs even when a field is invalid (`when`), so that one 400 names every offending field; hence the defensive reads.
  .check(
    z.superRefine(
      (raw, ctx) => {
        const r = raw as Record<string, unknown>;
        const given = (["itemIds", "groupId", "planId"] as const).filter((k) => r[k] !== undefined);
        if (given.length === 0) ctx.addIssue({ code: "custom", path: ["itemIds"], message: "select what to fail over: one of itemIds, groupId or planId" });
        if (given.length > 1)
          for (const k of given) ctx.addIssue({ code: "custom", path: [k], message: `give only one of itemIds, groupId, planId (got ${given.join(", ")})` });
        const ids = Array.isArray(r.itemIds) ? (r.itemIds as unknown[]) : [];
        const twice = ids.findIndex((x, n) => ids.indexOf(x) !== n);
        if (twice >= 0) ctx.addIssue({ code: "custom", path: ["itemIds", twice], message: `item '${String(ids[twice])}' is listed twice` });
        if (r.testNetwork !== undefined && r.type !== "test")
          ctx.addIssue({ code: "custom", path: ["testNetwork"], message: "only a test failover takes a test network" });
        if (r.type === "planned" && r.recoveryPoint !== undefined && r.recoveryPoint !== "latest") {
          ctx.addIssue({
            code: "custom",
            path: ["recoveryPoint"],
            message: "a planned failover shuts the source down and fails over to everything it wrote: only 'latest'",
          });
        }
      },
      { when: (payload) => typeof payload.value === "object" && payload.value !== null },
    ),
  );
export type FailoverRequest = z.infer<typeof failoverRequestSchema>;

/** Field paths as an operator writes them: `vm.disks[1].sizeBytes`. */
export function fieldPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, p) => (typeof p === "number" ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)), "") || "(body)";
}

export function zodIssues(error: z.ZodError): FieldIssue[] {
  return error.issues.map((i) => {
    const base = fieldPath(i.path);
    if (i.code === "unrecognized_keys") {
      return { field: i.keys.map((k) => (base === "(body)" ? k : `${base}.${k}`)).join(", "), message: "unknown field" };
    }
    // zod 4 reports a missing enum as invalid_value: both are "is required" (an enum naming its choices).
    const missing = (i.code === "invalid_type" || i.code === "invalid_value") && i.input === undefined;
    const choices = i.code === "invalid_value" ? `: one of ${i.values.map((v) => JSON.stringify(v)).join(", ")}` : "";
    return { field: base, message: missing ? `is required${choices}` : i.message };
  });
}

/** Parses `input` with `schema`, or throws a 400 naming every offending field. */
export function parseInput<S extends z.ZodType>(schema: S, input: unknown): z.output<S> {
  const r = schema.safeParse(input, { reportInput: true });
  if (r.success) return r.data;
  const fields = zodIssues(r.error);
  throw new BadRequest(`invalid request: ${fields.map((f) => `${f.field} ${f.message}`).join("; ")}`, fields);
}
