// The one table of functions: the Functions host registers it (index.ts) and the local host drives it.
import type { Services } from "./compose";
import type { FunctionSpec } from "./spec";
import { disableReplication } from "./disableReplication";
import { enableReplication } from "./enableReplication";
import { getReplicatedItem } from "./getReplicatedItem";
import { listReplicatedItems } from "./listReplicatedItems";
import { registerAgent } from "./registerAgent";
import { agentCheckin } from "./agentCheckin";
import { resyncManifest } from "./resyncManifest";
import { applyBatches } from "./applyBatches";
import { recordPoison } from "./recordPoison";
import { sweepCache } from "./sweepCache";
import { sealRecoveryPoints } from "./sealRecoveryPoints";
import { listRecoveryPoints } from "./listRecoveryPoints";
import { updateReplicatedItem } from "./updateReplicatedItem";
import { createRecoveryPlan } from "./createRecoveryPlan";
import { listRecoveryPlans } from "./listRecoveryPlans";
import { getRecoveryPlan } from "./getRecoveryPlan";
import { startFailover } from "./startFailover";
import { getFailover } from "./getFailover";
import { commitFailover } from "./commitFailover";
import { cleanupTestFailover } from "./cleanupTestFailover";
import { failoverFunctions } from "./failover";
import { releaseAbandonedFailovers } from "./releaseAbandonedFailovers";
import { releaseAbandonedReprotects } from "./releaseAbandonedReprotects";
import { listJobs } from "./listJobs";
import { listAlerts } from "./listAlerts";
import { getItemHistory } from "./getItemHistory";
import { dashboard, dashboardAsset } from "./dashboard";
import { getMetrics } from "./getMetrics";
import { reprotectItem } from "./reprotectItem";
import { getReprotect } from "./getReprotect";
import { resyncItem } from "./resyncItem";
import { reprotectFunctions } from "./reprotect";
import { timerSchedules, type TimerSchedules } from "../shared/config/settings";

/** `schedules` default to process.env's (the Functions host's app settings); the local host passes its own env's. */
export function functionTable(services: () => Services, schedules: TimerSchedules = timerSchedules()): FunctionSpec[] {
  return [
    enableReplication(services),
    listReplicatedItems(services),
    getReplicatedItem(services),
    updateReplicatedItem(services),
    disableReplication(services),
    listRecoveryPoints(services),
    getItemHistory(services),
    listJobs(services),
    listAlerts(services),
    getMetrics(services),
    dashboard(services),
    dashboardAsset(services),
    registerAgent(services),
    agentCheckin(services),
    resyncManifest(services),
    applyBatches(services),
    recordPoison(services),
    sweepCache(services, schedules.sweep),
    sealRecoveryPoints(services, schedules.seal),
    createRecoveryPlan(services),
    listRecoveryPlans(services),
    getRecoveryPlan(services),
    startFailover(services),
    getFailover(services),
    commitFailover(services),
    cleanupTestFailover(services),
    releaseAbandonedFailovers(services),
    ...failoverFunctions(services),
    reprotectItem(services),
    getReprotect(services),
    resyncItem(services),
    ...reprotectFunctions(services),
    releaseAbandonedReprotects(services),
  ];
}
