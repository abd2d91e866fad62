// Timer: items held by a re-protect whose orchestration was terminated, failed or lost are handed back (FailoverCommitted again, or the error recorded after the hand-over).
import type { DurableClientTimerFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { instanceStatus } from "./instance-status";

/** Every minute: an item stuck Reprotecting blocks failback and a new re-protect until it is released. */
export const RELEASE_REPROTECTS_SCHEDULE = "0 * * * * *";

export const releaseAbandonedReprotects = (services: () => Services, schedule = RELEASE_REPROTECTS_SCHEDULE): DurableClientTimerFunctionSpec => ({
  kind: "timer",
  name: "releaseAbandonedReprotects",
  schedule,
  durableClient: true,
  handler: async (_timer, client, context) => {
    const released = await services().reprotection.releaseAbandoned(async (instanceId) => (await instanceStatus(client, instanceId))?.runtimeStatus);
    for (const r of released) context.log(`re-protect ${r.instanceId} is ${r.status}: item ${r.itemId} released`);
  },
});
