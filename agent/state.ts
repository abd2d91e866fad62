// The agent's state directory: what it holds, where, and the schemas of its JSON files.
import { join } from "node:path";
import { z } from "zod";
import { registrationResponseSchema } from "../shared/protection/agent-protocol";

/**
 * Layout (every JSON file replaced atomically: temp file + rename):
 *   agent.json                    registration: item, agent key, SAS URLs, disks, policy (mode 0600: holds the key); a planned shutdown
 *   agent.lock                    pid of the agent using the directory
 *   disks/<disk>/disk.json        next sequence number, source, initial-replication and resync progress, mode
 *   disks/<disk>/dirty.<gen>.log  write-ahead dirty ranges of the open batch (tracked disks)
 *   disks/<disk>/bitmap.bin       dirty 16 KiB blocks while the spool is full (bitmap mode)
 *   disks/<disk>/fingerprints.bin CRC32C per 64 KiB block as last shipped (scanned disks)
 *   disks/<disk>/resync.manifest  CRC32C per 64 KiB block of the replica at a resync's base, fetched before the resync starts
 *   spool/<disk>/<seq>.batch      sealed batches not yet acknowledged by the cache
 */
export const statePaths = (dir: string) => ({
  agent: join(dir, "agent.json"),
  lock: join(dir, "agent.lock"),
  disk: (id: string) => join(dir, "disks", id),
  diskState: (id: string) => join(dir, "disks", id, "disk.json"),
  bitmap: (id: string) => join(dir, "disks", id, "bitmap.bin"),
  fingerprints: (id: string) => join(dir, "disks", id, "fingerprints.bin"),
  resyncManifest: (id: string) => join(dir, "disks", id, "resync.manifest"),
  spool: (id: string) => join(dir, "spool", id),
});

export const agentStateSchema = registrationResponseSchema.extend({
  v: z.literal(1),
  /** The service the agent registered with. */
  url: z.string(),
  /** SHA-256 of the registration token: a different token means a different item, never this state. */
  tokenHash: z.string(),
  registeredAt: z.string(),
  /**
   * A planned failover shuts the VM down (a check-in said so): writes are refused, and the final tag with this id is
   * cut once (`tagCut`). Kept here so that a restarted agent keeps refusing writes and never cuts the tag twice.
   */
  shutdown: z.object({ tagId: z.string().min(1), tagCut: z.boolean() }).optional(),
});
export type AgentState = z.infer<typeof agentStateSchema>;

const progress = z.object({ doneBytes: z.number().int().nonnegative(), totalBytes: z.number().int().nonnegative(), complete: z.boolean() });

export const diskStateSchema = z.object({
  v: z.literal(1),
  id: z.string(),
  sizeBytes: z.number().int().positive(),
  source: z.object({ path: z.string(), kind: z.enum(["tracked", "scanned"]) }),
  /** The next sequence number; batches below it are durable in the spool or acknowledged by the cache. */
  nextSeq: z.number().int().positive(),
  /** The replica was all zeros when this disk's replication started: initial replication skips zero regions. */
  freshReplica: z.boolean(),
  initial: progress,
  mode: z.enum(["journal", "bitmap"]),
  /** The spool overflowed: write order is lost until the dirty blocks are shipped under this resync id. */
  overflow: z.object({ resyncId: z.string(), reason: z.string(), since: z.string(), reported: z.boolean() }).optional(),
  /**
   * A differential resync the control plane asked for: the replica's checksums are fetched first (`fetchedBytes`, into
   * resync.manifest, while the replica still sits at `baseSeq`), then the first batch names it (`started`), then the
   * blocks that differ are shipped (`doneBytes`).
   */
  resync: z
    .object({
      id: z.string(),
      baseSeq: z.number().int().nonnegative(),
      reason: z.string(),
      fetchedBytes: z.number().int().nonnegative(),
      started: z.boolean(),
      doneBytes: z.number().int().nonnegative(),
      totalBytes: z.number().int(),
    })
    .optional(),
  /** Resync ids already done (the newest few): a command repeated by a later check-in is not run twice. */
  resyncsDone: z.array(z.string()),
  /** Scanned disks: whether fingerprints.bin describes what the replica holds. */
  scan: z.object({ blockBytes: z.number().int().positive(), baseline: z.boolean(), passes: z.number().int().nonnegative() }).optional(),
});
export type DiskState = z.infer<typeof diskStateSchema>;

/** How many done resync ids a disk remembers. */
export const RESYNCS_REMEMBERED = 16;
