// The sealing pass: seal tags every disk reached, thin and prune points, expire dead arrivals, judge RPO health.
import type { ReplicatedItem } from "../protection/items";
import type { ItemStore } from "../storage/item-store";
import { clearIssues, raiseIssue } from "../protection/items";
import { RecoveryPoints, type RecoveryPoint } from "./points";

export interface SealingDeps {
  items: ItemStore;
  points: RecoveryPoints;
  /** No crash-consistent point for this long: Critical (ASR's 153007 after 60 minutes). */
  rpoCriticalMinutes: number;
  now?: () => Date;
}

const SEALING_STATES = new Set(["InitialReplication", "Protected", "ResyncRequired", "TestFailover"]);
/** A group tag whose members did not all arrive within this long will never complete. */
const ARRIVAL_EXPIRY_MS = 15 * 60_000;

export interface SealingReport {
  items: number;
  pruned: number;
  expiredArrivals: number;
}

export async function sealRecoveryPoints(deps: SealingDeps): Promise<SealingReport> {
  const now = (deps.now ?? (() => new Date()))();
  const items = (await deps.items.list()).filter((i) => SEALING_STATES.has(i.state));
  const report: SealingReport = { items: items.length, pruned: 0, expiredArrivals: 0 };
  const groups = new Map<string, ReplicatedItem>();
  const groupsFailingOver = new Set<string>();
  for (const item of items) {
    report.expiredArrivals += await deps.points.expireArrivals(item.id, now.getTime() - ARRIVAL_EXPIRY_MS);
    // A failover in progress may be copying any of the item's points: thinning waits until it has finished.
    const failingOver = item.failover !== undefined && !item.failover.completedAt && !item.failover.error;
    if (!failingOver) report.pruned += (await deps.points.prune(item, now.getTime())).length;
    else if (item.replicationGroup) groupsFailingOver.add(item.replicationGroup);
    if (item.replicationGroup) groups.set(item.replicationGroup, item);
    // RPO health means something once initial replication is over.
    if (item.state === "Protected" || item.state === "ResyncRequired") await judgeHealth(deps, item, await deps.points.listForItem(item), now);
  }
  for (const [group, member] of groups)
    if (!groupsFailingOver.has(group)) report.pruned += (await deps.points.pruneGroup(group, member.policy, now.getTime())).length;
  return report;
}

/** Critical when no crash-consistent point for rpoCriticalMinutes; Warning when app-consistent points are overdue. */
async function judgeHealth(deps: SealingDeps, item: ReplicatedItem, points: RecoveryPoint[], now: Date): Promise<void> {
  const latest = points[0];
  const latestApp = points.find((p) => p.kind === "app");
  // Until the first point, the clock starts when protection did (initial replication is not an outage).
  const since = Date.parse(latest?.time ?? item.createdAt);
  const stale = now.getTime() - since > deps.rpoCriticalMinutes * 60_000;
  const appEvery = item.policy.appConsistentFrequencyMinutes;
  const appSince = Date.parse(latestApp?.time ?? item.createdAt);
  const appOverdue = appEvery > 0 && now.getTime() - appSince > 2 * appEvery * 60_000;
  await deps.items.updateItem(item.id, (i) => {
    const before = JSON.stringify(i.health);
    const at = now.toISOString();
    if (stale) {
      raiseIssue(i, {
        code: "NoRecentRecoveryPoint",
        severity: "Critical",
        message: latest ? `no crash-consistent recovery point since ${latest.time}` : `no recovery point since protection began at ${item.createdAt}`,
        since: at,
      });
    } else clearIssues(i, (x) => x.code === "NoRecentRecoveryPoint");
    if (appOverdue) {
      raiseIssue(i, {
        code: "AppConsistentPointOverdue",
        severity: "Warning",
        message: `no app-consistent recovery point for more than twice the policy's ${appEvery} minutes`,
        since: at,
      });
    } else clearIssues(i, (x) => x.code === "AppConsistentPointOverdue");
    if (JSON.stringify(i.health) === before) return undefined;
    i.updatedAt = at;
    return i;
  });
}
