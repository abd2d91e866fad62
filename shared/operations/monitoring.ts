// The monitoring pass (run by the sealing timer): samples each item's history, finds the alert conditions that hold, reconciles and delivers alerts, prunes jobs.
import type { StoragePort } from "../storage/ports";
import type { AlertCondition, Alerts } from "./alerts";
import type { HistorySample, ReplicationHistory } from "./history";
import type { ItemState, ReplicatedItem, DiskRecord } from "../protection/items";
import type { ItemStore } from "../storage/item-store";
import type { Job, Jobs } from "./jobs";
import type { RecoveryPoints } from "../recovery-points/points";
import type { Config } from "../config/settings";
import { readReplicationStatus, type ReplicationStatus } from "../replication/status";

export interface MonitoringDeps {
  config: Config;
  storage: StoragePort;
  items: ItemStore;
  points: RecoveryPoints;
  jobs: Jobs;
  alerts: Alerts;
  history: ReplicationHistory;
  now?: () => Date;
  /** Each sample as it is taken (telemetry gauges read them). */
  onSample?: (item: ReplicatedItem, sample: HistorySample) => void;
}

/** States in which an item replicates, so lag, backlog and the agent's heartbeat mean something. */
const REPLICATING: ReadonlySet<ItemState> = new Set(["InitialReplication", "Protected", "ResyncRequired", "TestFailover"]);
/** States past initial replication, in which the RPO is held to its threshold. */
const PROTECTED: ReadonlySet<ItemState> = new Set(["Protected", "ResyncRequired", "TestFailover"]);
/** The backlog (cache and agent spool) growing across this many consecutive samples: the pipeline does not keep up with the churn (and see churnAlertStands). */
export const CHURN_WINDOW_SAMPLES = 4;

/** What waits to be applied: in the cache, and still in the agent's spool. */
const waiting = (s: HistorySample) => s.backlogBytes + (s.spoolBytes ?? 0);

/** The backlog rose at every step of the window. */
export function churnBeyondCapacity(window: HistorySample[]): boolean {
  return window.length >= CHURN_WINDOW_SAMPLES && window.every((s, k) => k === 0 || waiting(s) > waiting(window[k - 1]!));
}

/**
 * Over the window the lag (age of the oldest write not yet applied) rose by at least a quarter of the time the window
 * spans, with something still waiting: writes keep arriving faster than they are applied even where the backlog holds
 * level (writers throttled by a full spool). A lag that only wobbles, or falls, does not count.
 */
export function lagClimbing(window: HistorySample[]): boolean {
  if (window.length < CHURN_WINDOW_SAMPLES) return false;
  const first = window[0]!;
  const last = window[window.length - 1]!;
  const spanSeconds = (Date.parse(last.time) - Date.parse(first.time)) / 1000;
  return waiting(last) > 0 && last.lagSeconds - first.lagSeconds >= spanSeconds / 4;
}

/**
 * Whether ChurnBeyondCapacity stands after the last sample, replayed over the history: raised when the backlog grew at
 * every step of a window, held while the lag climbs (lagClimbing), cleared otherwise — so that a throttled overload,
 * whose backlog stops growing while its lag keeps growing, does not clear it.
 */
export function churnAlertStands(samples: HistorySample[]): boolean {
  let stands = false;
  for (let end = CHURN_WINDOW_SAMPLES; end <= samples.length; end++) {
    const window = samples.slice(end - CHURN_WINDOW_SAMPLES, end);
    stands = churnBeyondCapacity(window) || (stands && lagClimbing(window));
  }
  return stands;
}

/** A failed job stays alerted until a later job of its type on the item succeeds, or for this long. */
export const JOB_FAILED_ALERT_MS = 24 * 3_600_000;

export interface MonitoringReport {
  sampled: number;
  raised: number;
  cleared: number;
  delivered: number;
  prunedJobs: number;
}

/** `95 s` under two minutes, else `12 min`: a threshold of 1 min is not "exceeded at 1 min". */
const minutes = (ms: number) => (ms < 120_000 ? `${Math.round(ms / 1000)} s` : `${Math.round(ms / 60_000)} min`);

export class Monitoring {
  private readonly now: () => Date;

  constructor(private readonly deps: MonitoringDeps) {
    this.now = deps.now ?? (() => new Date());
  }

  async pass(): Promise<MonitoringReport> {
    const { items, history, alerts, jobs } = this.deps;
    const now = this.now();
    const conditions: AlertCondition[] = [];
    let sampled = 0;
    for (const item of await items.list()) {
      if (item.state === "Disabling" || item.state === "Enabling" || item.state === "EnableFailed") continue;
      const disks = await items.listDisks(item.id);
      const replicating = REPLICATING.has(item.state);
      const status = replicating ? await readReplicationStatus(this.deps.storage, item, disks, now) : undefined;
      const summary = await this.deps.points.summary(item);
      const rpoSeconds = summary.latest ? Math.max(0, Math.round((now.getTime() - Date.parse(summary.latest.time)) / 1000)) : null;
      const recent = await history.list(item.id, now.getTime() - 2 * 3_600_000);
      let samples = recent;
      if (replicating && status) {
        const sample = this.sample(now, rpoSeconds, disks, status, recent[recent.length - 1]);
        if (sample) {
          await history.add(item.id, sample);
          await history.thin(item.id, now.getTime());
          samples = [...recent, sample];
          sampled++;
          this.deps.onSample?.(item, sample);
        }
      }
      conditions.push(...this.itemConditions(item, disks, status, rpoSeconds, samples, now));
    }
    conditions.push(...this.jobConditions(await jobs.list(), now));
    const report = await alerts.reconcile(conditions);
    const delivered = await alerts.deliver();
    const prunedJobs = await jobs.prune();
    await alerts.prune();
    return { sampled, raised: report.raised.length, cleared: report.cleared.length, delivered, prunedJobs };
  }

  /** A new sample when the last is at least HISTORY_SAMPLE_SECONDS old. */
  private sample(
    now: Date,
    rpoSeconds: number | null,
    disks: DiskRecord[],
    status: ReplicationStatus,
    last: HistorySample | undefined,
  ): HistorySample | undefined {
    const everyMs = this.deps.config.monitoring.historySampleSeconds * 1000;
    if (last && now.getTime() - Date.parse(last.time) < everyMs) return undefined;
    const perDisk = Object.values(status.disks);
    const backlogBytes = perDisk.reduce((n, d) => n + d.pendingBytes, 0);
    const spoolBytes = status.agent?.spoolBytes ?? 0;
    const appliedBytes = disks.reduce((n, d) => n + (d.appliedBytes ?? 0), 0);
    const dt = last ? (now.getTime() - Date.parse(last.time)) / 1000 : 0;
    const grown = last ? backlogBytes + spoolBytes - waiting(last) : 0;
    const churn = last && dt > 0 ? Math.max(0, (appliedBytes - last.appliedBytes + grown) / dt) : null;
    return {
      time: now.toISOString(),
      rpoSeconds,
      lagSeconds: Math.max(0, ...perDisk.map((d) => d.lagSeconds)),
      backlogBytes,
      backlogBatches: perDisk.reduce((n, d) => n + d.pendingBatches, 0),
      spoolBytes,
      appliedBytes,
      churnBytesPerSecond: churn === null ? null : Math.round(churn),
    };
  }

  private itemConditions(
    item: ReplicatedItem,
    disks: DiskRecord[],
    status: ReplicationStatus | undefined,
    rpoSeconds: number | null,
    samples: HistorySample[],
    now: Date,
  ): AlertCondition[] {
    const m = this.deps.config.monitoring;
    const out: AlertCondition[] = [];
    const add = (code: AlertCondition["code"], message: string) =>
      out.push({ itemId: item.id, vm: item.vm.name, code, message: `${item.vm.name}: ${message}` });
    const issue = (code: string) => item.health.issues.find((i) => i.code === code);

    const threshold = item.policy.rpoAlertMinutes ?? m.rpoAlertMinutes;
    if (PROTECTED.has(item.state) && rpoSeconds !== null && rpoSeconds > threshold * 60) {
      add("RpoThresholdExceeded", `RPO is ${minutes(rpoSeconds * 1000)}, above the ${threshold} min threshold`);
    }
    const noCrash = issue("NoRecentRecoveryPoint");
    if (noCrash) add("NoCrashConsistentPoint", `${noCrash.message} (more than ${this.deps.config.recoveryPoints.rpoCriticalMinutes} min; ASR 153007)`);
    const noApp = issue("AppConsistentPointOverdue");
    if (noApp) add("NoAppConsistentPoint", `${noApp.message} (ASR 153006)`);
    for (const p of item.health.issues.filter((i) => i.code === "PoisonMessage")) add("PoisonMessage", p.message);

    const resync = disks.filter((d) => d.state === "ResyncRequired");
    if (resync.length) add("DiskResyncRequired", resync.map((d) => `disk ${d.id} needs a resync: ${d.resync?.reason ?? "unknown reason"}`).join("; "));

    if (status && item.agent) {
      const beat = status.agent?.time ?? item.agent.registeredAt;
      const silentMs = now.getTime() - Date.parse(beat);
      if (silentMs > m.heartbeatLostMinutes * 60_000) {
        add(
          "AgentHeartbeatLost",
          `no heartbeat from the agent for ${minutes(silentMs)} (last ${status.agent ? status.agent.time : "never; registered " + item.agent.registeredAt})`,
        );
      }
    }

    const window = samples.slice(-CHURN_WINDOW_SAMPLES);
    if (churnAlertStands(samples)) {
      const first = window[0]!;
      const last = window[window.length - 1]!;
      const mib = (n: number) => (n / 1048576).toFixed(1);
      const where = `${mib(last.backlogBytes)} MiB in the cache, ${mib(last.spoolBytes ?? 0)} MiB in the agent's spool`;
      add(
        "ChurnBeyondCapacity",
        churnBeyondCapacity(window)
          ? `the backlog grew in each of the last ${CHURN_WINDOW_SAMPLES} samples to ${mib(waiting(last))} MiB (${where}; lag ${Math.round(last.lagSeconds)} s): writes arrive faster than they are applied`
          : `the lag grew from ${Math.round(first.lagSeconds)} to ${Math.round(last.lagSeconds)} s over the last ${CHURN_WINDOW_SAMPLES} samples with ${mib(waiting(last))} MiB waiting (${where}): writes still arrive faster than they are applied`,
      );
    }

    if (item.state === "Protected") {
      const since = item.lastDrillAt ?? item.createdAt;
      if (now.getTime() - Date.parse(since) > m.drillReminderDays * 86_400_000) {
        add(
          "DrillOverdue",
          `no test failover (with its cleanup) for more than ${m.drillReminderDays} days (${item.lastDrillAt ? `last ${item.lastDrillAt}` : "none since protection began"}): a drill is recommended`,
        );
      }
    }
    return out;
  }

  /** Per item and job type: the newest job failed, within the last day. */
  private jobConditions(newestFirst: Job[], now: Date): AlertCondition[] {
    const seen = new Set<string>();
    const out: AlertCondition[] = [];
    for (const j of newestFirst) {
      for (const itemId of j.itemIds) {
        const key = `${itemId}|${j.type}`;
        if (j.state === "InProgress" || seen.has(key)) continue;
        seen.add(key);
        if (j.state !== "Failed" || now.getTime() - Date.parse(j.endedAt ?? j.startedAt) > JOB_FAILED_ALERT_MS) continue;
        out.push({
          itemId,
          code: "JobFailed",
          subject: j.type,
          message: `${j.type} job ${j.id} failed: ${j.error?.code ?? "Error"}: ${j.error?.message ?? ""}`.trim(),
        });
      }
    }
    return out;
  }
}
