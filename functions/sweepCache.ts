// Timer: re-announces disks whose cached batches nobody is applying (a lost queue message only delays, never loses).
import type { Services } from "./compose";
import type { TimerFunctionSpec } from "./spec";
import { sweepCache as sweep } from "../shared/replication/sweep";

/** `schedule` is the resolved SWEEP_SCHEDULE setting (see shared/config/settings.ts timerSchedules for why it is not `%SWEEP_SCHEDULE%`). */
export const sweepCache = (services: () => Services, schedule: string): TimerFunctionSpec => ({
  kind: "timer",
  name: "sweepCache",
  schedule,
  handler: async (_timer, context) => {
    const s = services();
    // The sweep logs the disks it re-announces; a quiet sweep stays quiet (it runs every 30 s).
    await sweep({ storage: s.storage, items: s.items, config: s.config, log: (line) => context.log(line) });
  },
});
