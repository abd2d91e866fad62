// Timer: items held by a failover whose orchestration was terminated, failed or lost are handed back (unlocked, source writes resume).
import type { DurableClientTimerFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { instanceStatus } from "./instance-status";

/** Every 30 seconds: a terminated planned failover must not keep its source VM refusing writes for long. */
export const RELEASE_SCHEDULE = "*/30 * * * * *";

export const releaseAbandonedFailovers = (services: () => Services, schedule = RELEASE_SCHEDULE): DurableClientTimerFunctionSpec => ({
  kind: "timer",
  name: "releaseAbandonedFailovers",
  schedule,
  durableClient: true,
  handler: async (_timer, client, context) => {
    const released = await services().failover.releaseAbandoned(async (instanceId) => (await instanceStatus(client, instanceId))?.runtimeStatus);
    for (const r of released) context.log(`failover ${r.instanceId} is ${r.status}: item ${r.itemId} handed back to replication`);
  },
});
