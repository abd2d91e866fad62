// Queue trigger on replication-batches: applies the announced disk's cached batches in order (shared/replication/apply.ts decides everything).
import type { Services } from "./compose";
import type { QueueFunctionSpec } from "./spec";
import * as apply from "../shared/replication/apply";
import { REPLICATION_QUEUE } from "../shared/storage/names";
import { snapshotAtTag } from "../shared/recovery-points/points";

/** A short, safe rendering of whatever arrived, for the log line of a dropped message. */
export function preview(message: unknown): string {
  let text: string;
  try {
    text = typeof message === "string" ? message : JSON.stringify(message);
  } catch {
    text = String(message);
  }
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

export const applyBatches = (services: () => Services): QueueFunctionSpec => ({
  kind: "queue",
  name: "applyBatches",
  queueName: REPLICATION_QUEUE,
  connection: "AzureWebJobsStorage",
  handler: async (message, context) => {
    const parsed = apply.batchMessageSchema.safeParse(message);
    if (!parsed.success) {
      // No retry can make it valid: completing it keeps it out of the poison queue, the log says what it was.
      const problems = parsed.error.issues.map((i) => `${i.path.join(".") || "(message)"}: ${i.message}`).join("; ");
      context.error(`dropped a malformed replication message (${problems}): ${preview(message)}`);
      return;
    }
    const s = services();
    const outcome = await apply.applyBatches(
      {
        storage: s.storage,
        items: s.items,
        config: s.config,
        log: (line) => context.log(line),
        // A tag reached: snapshot the replica at exactly this batch, and seal whatever the arrival completes.
        onTagApplied: snapshotAtTag(s.points, (line) => context.log(line)),
      },
      parsed.data,
    );
    const m = parsed.data;
    context.log(
      `${m.itemId}/${m.diskId} batch ${m.seq}: ${outcome.result}` +
        (outcome.result === "ran" ? `, applied ${outcome.applied}, watermark ${outcome.watermark}, stopped: ${outcome.stop}` : ""),
    );
  },
});
