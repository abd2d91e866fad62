// Queue trigger on replication-batches-poison: a message the host gave up on becomes a health issue the operator sees.
import type { Services } from "./compose";
import type { QueueFunctionSpec } from "./spec";
import { batchMessageSchema } from "../shared/replication/apply";
import { recordPoisonMessage } from "../shared/replication/poison";
import { REPLICATION_POISON_QUEUE } from "../shared/storage/names";
import { preview } from "./applyBatches";

export const recordPoison = (services: () => Services): QueueFunctionSpec => ({
  kind: "queue",
  name: "recordPoison",
  queueName: REPLICATION_POISON_QUEUE,
  connection: "AzureWebJobsStorage",
  handler: async (message, context) => {
    const parsed = batchMessageSchema.safeParse(message);
    if (!parsed.success) {
      context.error(`poison message is not a batch announcement; nothing to record: ${preview(message)}`);
      return;
    }
    const m = parsed.data;
    const recorded = await recordPoisonMessage({ items: services().items }, m);
    if (recorded) context.warn(`recorded PoisonMessage on ${m.itemId} for disk ${m.diskId}, batch ${m.seq}`);
    else context.log(`poison message for ${m.itemId}/${m.diskId} batch ${m.seq}: the item no longer exists`);
  },
});
