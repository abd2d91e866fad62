// What the agent and the control plane say to each other: registration, check-in, resync manifests, the heartbeat blob.
import { z } from "zod";
import { diskIdSchema, itemIdSchema, policySchema } from "../contract/api";

/** Block size of resync manifests: the agent and the replica compare CRC32C checksums of blocks this large. */
export const RESYNC_BLOCK_BYTES = 64 * 1024;
/** The most one manifest call covers (4096 checksums). */
export const MAX_MANIFEST_RANGE = 256 * 1024 * 1024;
/** Name of the heartbeat blob in the item's cache container. */
export const HEARTBEAT_BLOB = "agent.json";

/**
 * Agent warnings the item's health shows (the check-in reports every open one): a failed pre-freeze script, and scanned
 * disks that never had a quiet pass (so no crash-consistent point can be cut from a scan).
 */
export const AGENT_WARNINGS = { appConsistencyFailed: "AppConsistencyFailed", noConsistentScan: "NoConsistentScan" } as const;

const sasEndpoints = {
  cache: z.object({ containerUrl: z.string().url(), expiresOn: z.string() }),
  queue: z.object({ url: z.string().url(), messageEncoding: z.literal("base64"), expiresOn: z.string() }),
};

/** The agent's replication group: its secret (HMAC of the barrier's hello), the coordinator, the current members. */
export const groupInfoSchema = z.object({
  name: z.string(),
  secret: z.string(),
  /** The member with the smallest item id among those that reported where they listen; null while none has. */
  coordinator: z.object({ itemId: z.string(), host: z.string(), port: z.number().int() }).nullable(),
  /** Item ids currently in the group. */
  members: z.array(z.string()),
});
export type GroupInfo = z.infer<typeof groupInfoSchema>;

export const resyncCommandSchema = z.object({
  diskId: z.string(),
  resyncId: z.string(),
  /** The replica's watermark the manifest describes; the agent's resync batches supersede everything after it. */
  baseSeq: z.number().int().nonnegative(),
  reason: z.string(),
});
export type ResyncCommand = z.infer<typeof resyncCommandSchema>;

export const registrationResponseSchema = z.object({
  itemId: z.string(),
  vmName: z.string(),
  /** The agent's credential for check-ins from now on (the registration token expires). Shown once. */
  agentKey: z.string(),
  ...sasEndpoints,
  disks: z.array(
    z.object({
      id: z.string(),
      role: z.enum(["os", "data"]),
      sizeBytes: z.number(),
      /** The first sequence number this agent may use: above everything applied or waiting in the cache. */
      nextSeq: z.number().int().positive(),
    }),
  ),
  policy: policySchema,
  /** Resyncs to run before any other job (a re-protect's seed: compare with the seeded replica instead of copying whole). */
  resync: z.array(resyncCommandSchema).optional(),
  replicationGroup: z.string().optional(),
  peers: z.array(z.string()),
  group: groupInfoSchema.optional(),
  checkinIntervalSeconds: z.number().int().positive(),
});
export type RegistrationResponse = z.infer<typeof registrationResponseSchema>;

export const checkinRequestSchema = z
  .object({
    itemId: itemIdSchema,
    agentKey: z.string().min(1).max(512),
    /** Disks where the agent lost write order (spool overflow) and ships dirty blocks instead. */
    resyncRequired: z
      .array(z.object({ diskId: diskIdSchema, resyncId: z.string().min(1).max(64), reason: z.string().max(1000) }).strict())
      .max(65)
      .optional(),
    /**
     * The agent's open warnings the item's health should show (e.g. `AppConsistencyFailed`: a pre-freeze script failed).
     * Every check-in reports all of them: a known code absent from it is cleared on the item.
     */
    warnings: z
      .array(z.object({ code: z.string().regex(/^[A-Za-z][A-Za-z0-9]{0,63}$/), message: z.string().min(1).max(1000) }).strict())
      .max(16)
      .optional(),
    /** Where this agent's group barrier listens (reported by every agent of a group; the coordinator is chosen among them). */
    groupListen: z
      .object({ host: z.string().min(1).max(255), port: z.number().int().min(1).max(65535) })
      .strict()
      .optional(),
  })
  .strict();
export type CheckinRequest = z.infer<typeof checkinRequestSchema>;

export const checkinResponseSchema = z.object({
  ...sasEndpoints,
  policy: policySchema,
  /** Differential resyncs the control plane asks for (a corrupt or lost batch halted a disk). */
  resync: z.array(resyncCommandSchema),
  group: groupInfoSchema.optional(),
  checkinIntervalSeconds: z.number().int().positive(),
  /**
   * Planned failover: the source VM is shutting down. The agent refuses new writes, waits for those in flight, cuts
   * a crash tag with this id on every disk and ships everything up to it. Absent again (a failover rolled back): writes resume.
   */
  shutdown: z.object({ tagId: z.string().min(1).max(64) }).optional(),
});
export type CheckinResponse = z.infer<typeof checkinResponseSchema>;

export const manifestRequestSchema = z
  .object({
    itemId: itemIdSchema,
    agentKey: z.string().min(1).max(512),
    diskId: diskIdSchema,
    resyncId: z.string().min(1).max(64),
    offset: z.number().int().nonnegative().multipleOf(RESYNC_BLOCK_BYTES),
    length: z.number().int().positive().multipleOf(RESYNC_BLOCK_BYTES).max(MAX_MANIFEST_RANGE),
  })
  .strict();
export type ManifestRequest = z.infer<typeof manifestRequestSchema>;

export const manifestResponseSchema = z.object({
  diskId: z.string(),
  resyncId: z.string(),
  baseSeq: z.number(),
  offset: z.number(),
  blockBytes: z.number(),
  /** CRC32C of each block of the replica in [offset, offset + length), as unsigned integers. */
  checksums: z.array(z.number()),
});
export type ManifestResponse = z.infer<typeof manifestResponseSchema>;

export const diskHeartbeatSchema = z.object({
  /** Next sequence number the agent will use. */
  nextSeq: z.number(),
  /** Batches sealed but not yet acknowledged by the cache (in the local spool). */
  spoolBatches: z.number(),
  spoolBytes: z.number(),
  /** `journal`: every write is in order in the stream; `bitmap`: the spool overflowed, dirty blocks are tracked. */
  mode: z.enum(["journal", "bitmap"]),
  dirtyBytes: z.number(),
  initialReplication: z.object({ doneBytes: z.number(), totalBytes: z.number(), complete: z.boolean() }),
  resync: z.object({ id: z.string(), doneBytes: z.number(), totalBytes: z.number() }).optional(),
});

export const heartbeatSchema = z.object({
  agentVersion: z.string(),
  /** Agent time, ISO. */
  time: z.string(),
  disks: z.record(z.string(), diskHeartbeatSchema),
  health: z.object({
    status: z.enum(["Healthy", "Warning", "Critical"]),
    issues: z.array(z.object({ code: z.string(), message: z.string(), since: z.string() })),
  }),
  /** A planned failover is shutting the VM down: writes are refused; `tagCut` once the final tag is cut on every disk. */
  shutdown: z.object({ tagId: z.string(), tagCut: z.boolean() }).optional(),
});
export type Heartbeat = z.infer<typeof heartbeatSchema>;
