// Timer: thins and prunes recovery points, expires tags that can no longer complete, judges RPO health, then runs the monitoring pass (history, alerts, jobs).
import type { Services } from "./compose";
import type { TimerFunctionSpec } from "./spec";
import { sealRecoveryPoints as seal } from "../shared/recovery-points/sealing";

/** `schedule` is the resolved SEAL_SCHEDULE setting (see shared/config/settings.ts timerSchedules). */
export const sealRecoveryPoints = (services: () => Services, schedule: string): TimerFunctionSpec => ({
  kind: "timer",
  name: "sealRecoveryPoints",
  schedule,
  handler: async (_timer, context) => {
    const s = services();
    const report = await seal({ items: s.items, points: s.points, rpoCriticalMinutes: s.config.recoveryPoints.rpoCriticalMinutes, now: s.now });
    if (report.pruned || report.expiredArrivals) context.log(`pruned ${report.pruned} recovery point(s), expired ${report.expiredArrivals} tag arrival(s)`);
    // After the sealing, so that the health it judged is what the alerts see.
    const m = await s.monitoring.pass();
    if (m.raised || m.cleared) context.log(`alerts: ${m.raised} raised, ${m.cleared} cleared, ${m.delivered} delivered to the webhook`);
  },
});
