// The CLI's operator views: status (table, one item's summary, --watch), recovery-points, jobs, alerts; tables for people, --json for scripts.
import { setTimeout as sleep } from "node:timers/promises";
import { Command, InvalidArgumentError, Option } from "commander";
import type { ApiClient } from "../../shared/contract/client";
import { formatBytes, formatDuration, formatTable, formatTime, printJson, progressBar, shortId, Style, useColour } from "../format";

/** The fields of an item the views read (GET /api/replicated-items[/{id}]). */
export interface ItemView {
  id: string;
  state: string;
  direction?: string;
  health: { status: string; issues: { code: string; severity: string; message: string; since: string }[] };
  vm: { name: string; region: string };
  targetRegion: string;
  replicationGroup: string | null;
  disks: {
    id: string;
    sizeBytes: number;
    state: string;
    resync: { reason: string } | null;
    watermark?: number | null;
    pendingBatches?: number;
    pendingBytes?: number;
    lagSeconds?: number;
    initialReplication?: { percent: number; doneBytes: number; totalBytes: number };
  }[];
  rpoSeconds: number | null;
  lagSeconds?: number;
  heartbeat?: { time: string; agentVersion: string } | null;
  latestRecoveryPoint?: PointView | null;
  failover: {
    instanceId: string;
    type: string;
    startedAt: string;
    completedAt?: string;
    durationSeconds?: number;
    point?: { id: string; kind: string; time: string; scope: string };
    cleanedUpAt?: string;
    committedAt?: string;
    error?: { code: string; message: string };
  } | null;
  lastDrillAt?: string;
}

export interface PointView {
  id: string;
  kind: string;
  time: string;
  scope: string;
  disks: unknown[];
}

export interface JobView {
  id: string;
  type: string;
  itemIds: string[];
  state: string;
  startedAt: string;
  endedAt: string | null;
  durationSeconds: number | null;
  steps: { name: string; state: string }[];
  error: { code: string; message: string } | null;
  details?: Record<string, unknown>;
}

export interface AlertView {
  id: string;
  itemId: string;
  vm: string | null;
  code: string;
  severity: string;
  message: string;
  raisedAt: string;
  clearedAt: string | null;
}

const print = printJson;

/** Where the data flows: a re-protected (reverse) item replicates from the target region back to the original one. */
const route = (i: Pick<ItemView, "vm" | "targetRegion" | "direction">) =>
  i.direction === "reverse" ? `${i.targetRegion} → ${i.vm.region}` : `${i.vm.region} → ${i.targetRegion}`;
const style = () => new Style(useColour());

function positive(flag: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${flag} takes a positive number`);
    return n;
  };
}

/** The fleet as a table: one row per item. */
export function itemsTable(items: ItemView[], s: Style): string {
  if (items.length === 0) return "No protected VMs. Protect one with: site-recovery enable --help";
  return formatTable(
    ["ITEM", "VM", "ROUTE", "DIRECTION", "STATE", "HEALTH", "DISKS", "RPO", "GROUP"],
    items.map((i) => [
      shortId(i.id),
      i.vm.name,
      route(i),
      i.direction ?? "forward",
      s.status(i.state),
      s.status(i.health.status),
      String(i.disks.length),
      formatDuration(i.rpoSeconds),
      i.replicationGroup ?? "-",
    ]),
  );
}

/** One item, for a person: state, health, disks (with progress bars while copying), latest points, last failover, issues, open alerts. */
export function itemSummary(i: ItemView, points: PointView[], alerts: AlertView[], s: Style, unicode: boolean, now = new Date()): string {
  const out: string[] = [];
  const line = (label: string, value: string) => out.push(`${label.padEnd(16)}${value}`);
  out.push(`${s.paint(i.vm.name, "bold")}  ${route(i)}  (${i.direction ?? "forward"})  item ${i.id}`);
  line("State", s.status(i.state));
  line("Health", `${s.status(i.health.status)}${i.health.issues.length ? `  (${i.health.issues.length} issue${i.health.issues.length > 1 ? "s" : ""})` : ""}`);
  const latest = i.latestRecoveryPoint;
  line(
    "RPO",
    i.rpoSeconds === null
      ? "- (no recovery point yet)"
      : `${formatDuration(i.rpoSeconds)}  (newest point ${shortId(latest!.id)} ${latest!.kind}/${latest!.scope} at ${formatTime(latest!.time, now)})`,
  );
  if (i.lagSeconds !== undefined) line("Lag", formatDuration(i.lagSeconds));
  if (i.replicationGroup) line("Group", i.replicationGroup);
  const beat = i.heartbeat;
  line("Agent", beat ? `heartbeat ${formatDuration((now.getTime() - Date.parse(beat.time)) / 1000)} ago (agent ${beat.agentVersion})` : "no heartbeat yet");
  out.push("", "Disks");
  out.push(
    formatTable(
      ["  DISK", "SIZE", "STATE", "PROGRESS / BACKLOG"],
      i.disks.map((d) => {
        const ir = d.initialReplication;
        const progress =
          d.state === "InitialReplication" && ir
            ? `${progressBar(ir.percent, 20, unicode)}  ${formatBytes(ir.doneBytes)} of ${formatBytes(ir.totalBytes)}`
            : d.state === "ResyncRequired"
              ? `resync: ${d.resync?.reason ?? "reason unknown"}`
              : `watermark ${d.watermark ?? "-"}, ${d.pendingBatches ?? 0} batches (${formatBytes(d.pendingBytes ?? 0)}) waiting, lag ${formatDuration(d.lagSeconds ?? 0)}`;
        return [`  ${d.id}`, formatBytes(d.sizeBytes), s.status(d.state), progress];
      }),
    ),
  );
  out.push("", `Recovery points  ${points.length}${points.length > 5 ? " (newest 5)" : ""}`);
  if (points.length === 0) out.push("  none yet");
  else
    out.push(
      formatTable(
        ["  POINT", "KIND", "SCOPE", "TIME", "AGE"],
        points
          .slice(0, 5)
          .map((p) => [`  ${shortId(p.id)}`, p.kind, p.scope, formatTime(p.time, now), formatDuration((now.getTime() - Date.parse(p.time)) / 1000)]),
      ),
    );
  const f = i.failover;
  out.push("", "Last failover");
  if (!f) out.push("  none");
  else {
    const outcome = f.error
      ? s.status("Failed") + ` ${f.error.code}: ${f.error.message}`
      : f.completedAt
        ? s.status("Completed") + ` in ${formatDuration(f.durationSeconds)}`
        : s.status("Running");
    const after = f.committedAt ? ", committed" : f.cleanedUpAt ? ", cleaned up" : "";
    out.push(
      `  ${f.type} ${shortId(f.instanceId)} started ${formatTime(f.startedAt, now)}: ${outcome}${after}${f.point ? `; point ${shortId(f.point.id)} ${f.point.kind}/${f.point.scope} ${formatTime(f.point.time, now)}` : ""}`,
    );
  }
  if (i.health.issues.length) {
    out.push("", "Issues");
    for (const x of i.health.issues) out.push(`  ${s.status(x.severity)} ${x.code}: ${x.message}`);
  }
  const open = alerts.filter((a) => !a.clearedAt);
  if (open.length) {
    out.push("", "Open alerts");
    for (const a of open) out.push(`  ${s.status(a.severity)} ${a.code} since ${formatTime(a.raisedAt, now)}: ${a.message}`);
  }
  return out.join("\n");
}

export function jobsTable(jobs: JobView[], names: Map<string, string>, s: Style, now = new Date()): string {
  if (jobs.length === 0) return "No jobs.";
  return formatTable(
    ["JOB", "TYPE", "VMS", "STATE", "STARTED", "DURATION", "STEP / ERROR"],
    jobs.map((j) => [
      shortId(j.id),
      j.type + (typeof j.details?.failoverType === "string" ? ` (${j.details.failoverType})` : ""),
      j.itemIds.map((id) => names.get(id) ?? shortId(id)).join(","),
      s.status(j.state),
      formatTime(j.startedAt, now),
      j.state === "InProgress" ? `${formatDuration((now.getTime() - Date.parse(j.startedAt)) / 1000)}…` : formatDuration(j.durationSeconds),
      j.error ? `${j.error.code}: ${j.error.message}` : j.state === "InProgress" ? (j.steps[j.steps.length - 1]?.name ?? "") : "",
    ]),
  );
}

export function alertsTable(alerts: AlertView[], names: Map<string, string>, s: Style, now = new Date()): string {
  if (alerts.length === 0) return "No alerts.";
  return formatTable(
    ["SEVERITY", "VM", "ALERT", "RAISED", "CLEARED", "MESSAGE"],
    alerts.map((a) => [
      a.clearedAt ? s.paint(a.severity, "grey") : s.status(a.severity),
      a.vm ?? names.get(a.itemId) ?? shortId(a.itemId),
      a.code,
      formatTime(a.raisedAt, now),
      a.clearedAt ? formatTime(a.clearedAt, now) : s.paint("open", "bold"),
      a.message,
    ]),
  );
}

export function pointsTable(points: PointView[], s: Style, now = new Date()): string {
  if (points.length === 0) return "No recovery points yet.";
  return formatTable(
    ["POINT", "KIND", "SCOPE", "TIME", "AGE", "DISKS"],
    points.map((p) => [
      p.id,
      p.kind === "app" ? s.paint("app", "green") : "crash",
      p.scope,
      formatTime(p.time, now),
      formatDuration((now.getTime() - Date.parse(p.time)) / 1000),
      String(p.disks.length),
    ]),
  );
}

const names = (items: ItemView[]) => new Map(items.map((i) => [i.id, i.vm.name]));
const enc = encodeURIComponent;

/** Adds status, recovery-points, jobs and alerts to the program. */
export function operatorCommands(program: Command, client: (cmd: Command) => ApiClient): void {
  program
    .command("status")
    .description("the protected VMs as a table, or one VM in full (state, health, disks with progress, latest points, last failover)")
    .argument("[itemId]", "a replicated item")
    .option("--json", "print the API's JSON")
    .option("--watch", "redraw every --interval seconds until Ctrl-C")
    .addOption(new Option("--interval <s>", "seconds between redraws with --watch").argParser(positive("--interval")).default(2))
    .addOption(new Option("--times <n>", "with --watch: stop after n redraws").argParser(positive("--times")))
    .action(async (itemId: string | undefined, o: { json?: boolean; watch?: boolean; interval: number; times?: number }, cmd: Command) => {
      const api = client(cmd);
      const tty = Boolean(process.stdout.isTTY);
      const render = async (): Promise<string> => {
        if (!itemId) {
          const items = await api.call<ItemView[]>("GET", "replicated-items");
          return o.json ? JSON.stringify(items, null, 2) : itemsTable(items, style());
        }
        const item = await api.call<ItemView>("GET", `replicated-items/${enc(itemId)}`);
        if (o.json) return JSON.stringify(item, null, 2);
        const [points, alerts] = await Promise.all([
          api.call<PointView[]>("GET", `replicated-items/${enc(item.id)}/recovery-points`),
          api.call<AlertView[]>("GET", `alerts?itemId=${enc(item.id)}&state=open`),
        ]);
        return itemSummary(item, points, alerts, style(), useColour());
      };
      if (!o.watch) return console.log(await render());
      for (let n = 1; ; n++) {
        const text = await render();
        // On a terminal the view is redrawn in place; in a pipe or a log each refresh follows the last, with its time.
        if (tty && !o.json)
          process.stdout.write(
            `\x1b[2J\x1b[H${text}\n\n${style().paint(`every ${o.interval} s · ${new Date().toLocaleTimeString()} · Ctrl-C to stop`, "grey")}\n`,
          );
        else console.log(`${o.json ? "" : `--- ${new Date().toISOString()}\n`}${text}`);
        if (o.times !== undefined && n >= o.times) return;
        await sleep(o.interval * 1000);
      }
    });

  program
    .command("metrics")
    .description("the app's OpenTelemetry metrics as they stand: RPO, lag, backlog, applied bytes per item, failover duration")
    .option("--json", "as JSON: name, attributes, value, unit")
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const text = await client(cmd).text("GET", "metrics");
      if (!o.json) {
        process.stdout.write(text);
        return;
      }
      print(
        text
          .split("\n")
          .filter(Boolean)
          .map((l) => {
            const m = /^([^{]+)\{(.*)\} (.+?)(?: (\S+))?$/.exec(l);
            if (!m) return { line: l };
            const attributes = Object.fromEntries([...m[2]!.matchAll(/([\w.]+)="([^"]*)"/g)].map((a) => [a[1], a[2]]));
            return { name: m[1], attributes, value: /^-?[\d.]+$/.test(m[3]!) ? Number(m[3]) : m[3], unit: m[4] ?? "" };
          }),
      );
    });

  program
    .command("recovery-points")
    .description("an item's recovery points, newest first")
    .argument("<itemId>", "a replicated item")
    .option("--json", "print the API's JSON")
    .action(async (itemId: string, o: { json?: boolean }, cmd: Command) => {
      const points = await client(cmd).call<PointView[]>("GET", `replicated-items/${enc(itemId)}/recovery-points`);
      if (o.json) return print(points);
      console.log(pointsTable(points, style()));
    });

  program
    .command("jobs")
    .description("operations (enable, disable, failover, commit, cleanup, re-protect, resync), newest first")
    .option("--item <itemId>", "only this item's")
    .addOption(
      new Option("--type <type>", "only this type").choices(["enable", "disable", "failover", "commit", "test-failover-cleanup", "reprotect", "resync"]),
    )
    .addOption(new Option("--state <state>", "only in this state").choices(["InProgress", "Succeeded", "Failed"]))
    .addOption(new Option("--limit <n>", "at most n").argParser(positive("--limit")).default(20))
    .option("--json", "print the API's JSON")
    .action(async (o: { item?: string; type?: string; state?: string; limit: number; json?: boolean }, cmd: Command) => {
      const api = client(cmd);
      const q = new URLSearchParams({
        limit: String(o.limit),
        ...(o.item ? { itemId: o.item } : {}),
        ...(o.type ? { type: o.type } : {}),
        ...(o.state ? { state: o.state } : {}),
      });
      const jobs = await api.call<JobView[]>("GET", `jobs?${q}`);
      if (o.json) return print(jobs);
      console.log(jobsTable(jobs, names(await api.call<ItemView[]>("GET", "replicated-items")), style()));
    });

  program
    .command("alerts")
    .description("alerts, newest first: RPO, missing points, heartbeat, churn, poison messages, resync, failed jobs, drills")
    .option("--open", "only those still open")
    .option("--item <itemId>", "only this item's")
    .addOption(new Option("--limit <n>", "at most n").argParser(positive("--limit")).default(50))
    .option("--json", "print the API's JSON")
    .action(async (o: { open?: boolean; item?: string; limit: number; json?: boolean }, cmd: Command) => {
      const api = client(cmd);
      const q = new URLSearchParams({ limit: String(o.limit), ...(o.open ? { state: "open" } : {}), ...(o.item ? { itemId: o.item } : {}) });
      const alerts = await api.call<AlertView[]>("GET", `alerts?${q}`);
      if (o.json) return print(alerts);
      console.log(alertsTable(alerts, names(await api.call<ItemView[]>("GET", "replicated-items")), style()));
    });
}
