// `npm run bench -- failover`: the RTO of a replication group of two VMs under a live workload, through the HTTP API:
import { setTimeout as sleep } from "node:timers/promises";
// repeated test failovers to the latest processed point and to latest (cache drained first), each cleaned up, then one
// unplanned failover; wall RTO, the orchestration's own RTO, per-step durations, the backlog `latest` drained.
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { Agent } from "../agent";
import { parseConnectionString } from "../shared/config/settings";
import { blobService } from "../shared/storage/clients";
import { api, BENCH_GROUP, startBenchGroup, machine, percentile, round, startBenchStack, table, writeResults } from "./harness";

const MiB = 1024 * 1024;
const POLL_MS = 100;

export interface FailoverBenchOptions {
  /** Test failovers per recovery-point choice. */
  runs: number;
  /** Disks per VM (two VMs). */
  disks: number;
  diskSizeMiB: number;
  /** The live workload: MB/s per disk, random writes of this size. */
  ratePerDiskMBps: number;
  writeKiB: number;
  /** The policy's crash-consistent frequency: the group's tag cadence. */
  crashFrequencySeconds: number;
  /** Group points to see sealed under the workload before the first failover. */
  warmupPoints: number;
  /** Pause between two failovers (the workload refills the cache). */
  pauseSeconds: number;
  targetSeconds: number;
  log: (line: string) => void;
}

type Choice = "latest-processed" | "latest";
type FailoverType = "test" | "unplanned";

/** The custom status steps, in the order the orchestration shows them (functions/failover.ts). */
const STEP_ORDER = [
  "validating",
  "draining the cache and cutting the latest point",
  "choosing recovery points",
  "copying disks",
  "creating network interfaces",
  "creating VMs",
  "starting VMs",
  "completed",
];
/** The items' failover timeline marks (shared/failover/steps.ts), in order. */
const MARKS = ["recovery point chosen", "disk copies started", "network interface created", "VM created", "VM running"];
/** Server-side phases: from one mark (the failover's acceptance first) to the next, slowest VM of the group. */
const PHASES: [string, string, string][] = [
  ["accepted → point chosen (validate, drain, plan)", "accepted", "recovery point chosen"],
  ["point chosen → copies started", "recovery point chosen", "disk copies started"],
  ["copies started → NIC created (copy, NIC)", "disk copies started", "network interface created"],
  ["NIC created → VM created", "network interface created", "VM created"],
  ["VM created → VM running", "VM created", "VM running"],
  ["VM running → orchestration done", "VM running", "completed"],
];

interface RunResult {
  n: number;
  type: FailoverType;
  recoveryPoint: Choice;
  instanceId: string;
  runtimeStatus: string;
  /** POST → Completed seen by polling every 100 ms. */
  wallRtoSeconds: number;
  /** The orchestration's output.rtoSeconds (acceptance → last VM running, orchestration time). */
  rtoSeconds: number | null;
  /** Per custom-status step: seconds from the POST until first seen, and how long it was the newest seen. */
  steps: { step: string; firstSeenSeconds: number; seconds: number }[];
  /** Server-side phases from the items' failover timelines (slowest VM). */
  phases: Record<string, number>;
  /** What waited in the cache of both VMs just before the POST (what `latest` drains). */
  backlog: { batches: number; bytes: number };
  points: { vm: string; id: string; scope: string; dataLossWindowSeconds: number; failoverDurationSeconds: number }[];
  cleanupSeconds?: number;
  error?: unknown;
}

/** A paced random-write workload, two writers per disk, until stopped. */
class Churn {
  private stopped = false;
  private readonly done: Promise<void>;
  written = 0;
  refused = 0;

  constructor(agents: Agent[], diskIds: string[][], o: FailoverBenchOptions) {
    const writeBytes = o.writeKiB * 1024;
    const slots = Math.floor((o.diskSizeMiB * MiB) / writeBytes);
    const payload = randomBytes(writeBytes * 16);
    const t0 = performance.now();
    const writer = async (agent: Agent, id: string) => {
      const disk = agent.trackedDisk(id);
      let mine = 0;
      while (!this.stopped) {
        const due = t0 + (mine / ((o.ratePerDiskMBps / 2) * 1e6)) * 1000;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
        const from = Math.floor(Math.random() * 15) * writeBytes;
        try {
          await disk.write(Math.floor(Math.random() * slots) * writeBytes, payload.subarray(from, from + writeBytes));
          this.written += writeBytes;
        } catch {
          this.refused++;
          await sleep(100);
        }
        mine += writeBytes;
      }
    };
    this.done = Promise.all(agents.flatMap((a, i) => diskIds[i]!.flatMap((id) => [writer(a, id), writer(a, id)]))).then(() => undefined);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
}

function stats(values: number[]) {
  return {
    median: round(percentile(values, 50), 2),
    p90: round(percentile(values, 90), 2),
    min: round(Math.min(...values), 2),
    max: round(Math.max(...values), 2),
  };
}

export async function benchFailover(o: FailoverBenchOptions) {
  o.log(
    `failover benchmark: a group of 2 VMs × ${o.disks} disks of ${o.diskSizeMiB} MiB, ${o.ratePerDiskMBps} MB/s of random ${o.writeKiB} KiB writes per disk, ` +
      `group points every ${o.crashFrequencySeconds} s; ${o.runs} test failovers to latest-processed and ${o.runs} to latest, then one unplanned`,
  );
  const stack = await startBenchStack({ AGENT_CHECKIN_SECONDS: "1" });
  const work = mkdtempSync(join(stack.dir, "vms-"));
  const agents: Agent[] = [];
  const group = BENCH_GROUP;
  let churn: Churn | undefined;
  try {
    const t0 = performance.now();
    o.log("initial replication…");
    const items = await startBenchGroup(stack, o, work, { log: (i, line) => /aborted|failed|error/i.test(line) && o.log(`  agent ${i}: ${line}`) }, agents);
    for (const item of items) {
      const deadline = Date.now() + 300_000;
      for (;;) {
        const res = await api(stack, "GET", `replicated-items/${item.id}`);
        if (res.body?.state === "Protected") break;
        if (Date.now() > deadline) throw new Error(`item ${item.id} not Protected: ${JSON.stringify(res.body?.state)}`);
        await sleep(200);
      }
    }
    const initialSeconds = round((performance.now() - t0) / 1000, 1);
    o.log(`both items Protected after ${initialSeconds} s; the group formed; workload on, waiting for ${o.warmupPoints} group points…`);

    churn = new Churn(
      agents,
      items.map((i) => i.disks.map((d) => d.id)),
      o,
    );
    const churnFrom = Date.now();
    const groupPoints = async () =>
      (
        (await api(stack, "GET", `replicated-items/${items[0]!.id}/recovery-points`)).body as {
          id: string;
          scope: string;
          time: string;
          disks: { diskId: string; snapshot: string }[];
        }[]
      ).filter((p) => p.scope === "group");
    const warmDeadline = Date.now() + (o.warmupPoints + 6) * o.crashFrequencySeconds * 1000;
    for (;;) {
      const sealed = (await groupPoints()).filter((p) => Date.parse(p.time) >= churnFrom).length;
      if (sealed >= o.warmupPoints) break;
      if (Date.now() > warmDeadline) throw new Error(`only ${sealed} group points sealed under the workload in ${(Date.now() - churnFrom) / 1000} s`);
      await sleep(500);
    }
    o.log(`warm: ${o.warmupPoints} group points sealed in ${round((Date.now() - churnFrom) / 1000, 1)} s`);

    const backlog = async () => {
      let batches = 0;
      let bytes = 0;
      for (const item of items) {
        for (const d of (await api(stack, "GET", `replicated-items/${item.id}`)).body.disks as { pendingBatches: number; pendingBytes: number }[]) {
          batches += d.pendingBatches ?? 0;
          bytes += d.pendingBytes ?? 0;
        }
      }
      return { batches, bytes };
    };

    const runs: RunResult[] = [];
    const failover = async (n: number, type: FailoverType, recoveryPoint: Choice): Promise<RunResult> => {
      const before = await backlog();
      const request = { groupId: group, type, recoveryPoint };
      const postAt = performance.now();
      const started = await api(stack, "POST", "failovers", request);
      if (started.status !== 202 || !started.body?.id) {
        throw new Error(`POST /api/failovers ${JSON.stringify(request)} → ${started.status} ${JSON.stringify(started.body)}`);
      }
      const id = started.body.id as string;
      const seen = new Map<string, number>();
      let last: any;
      for (;;) {
        const res = await api(stack, "GET", `failovers/${id}`);
        const at = (performance.now() - postAt) / 1000;
        if (res.status !== 200) throw new Error(`GET /api/failovers/${id} → ${res.status} ${JSON.stringify(res.body)}`);
        last = res.body;
        const step = last.customStatus?.step as string | undefined;
        if (step && !seen.has(step)) seen.set(step, at);
        if (["Completed", "Failed", "Terminated"].includes(last.runtimeStatus)) break;
        if (at > 600) throw new Error(`failover ${id} still ${last.runtimeStatus} after 600 s: ${JSON.stringify(last.customStatus)}`);
        await sleep(POLL_MS);
      }
      const wall = (performance.now() - postAt) / 1000;
      const ordered = [...seen.entries()].sort((a, b) => a[1] - b[1]);
      const steps = [
        { step: "POST → first status", firstSeenSeconds: 0, seconds: round(ordered[0]?.[1] ?? wall, 3) },
        ...ordered.map(([step, at], k) => ({ step, firstSeenSeconds: round(at, 3), seconds: round((ordered[k + 1]?.[1] ?? wall) - at, 3) })),
      ];
      const run: RunResult = {
        n,
        type,
        recoveryPoint,
        instanceId: id,
        runtimeStatus: last.runtimeStatus,
        wallRtoSeconds: round(wall, 3),
        rtoSeconds: last.output?.rtoSeconds ?? null,
        steps,
        phases: {},
        backlog: before,
        points: ((last.output?.vms ?? []) as any[]).map((v) => ({
          vm: v.vm,
          id: v.recoveryPoint?.id,
          scope: v.recoveryPoint?.scope,
          dataLossWindowSeconds: v.dataLossWindowSeconds,
          failoverDurationSeconds: v.failoverDurationSeconds,
        })),
      };
      if (last.runtimeStatus !== "Completed") {
        run.error = { request, response: started.body, status: last, hostOutputTail: stack.host.output().slice(-4000) };
        o.log(`  ${type} → ${recoveryPoint} #${n}: ${last.runtimeStatus}: ${JSON.stringify(last.customStatus)} ${JSON.stringify(last.output)}`);
        return run;
      }
      // Server-side phases from the items' timelines (slowest VM), from the failover's acceptance.
      const at: Record<string, number> = { completed: Date.parse(last.output.completedAt) };
      let accepted = Date.parse(last.output.startedAt);
      for (const item of items) {
        const f = (await api(stack, "GET", `replicated-items/${item.id}`)).body.failover;
        accepted = Math.min(accepted, Date.parse(f?.startedAt ?? last.output.startedAt));
        for (const t of (f?.timeline ?? []) as { step: string; at: string }[])
          if (MARKS.includes(t.step)) at[t.step] = Math.max(at[t.step] ?? 0, Date.parse(t.at));
      }
      at.accepted = accepted;
      for (const [name, from, to] of PHASES) if (at[from] !== undefined && at[to] !== undefined) run.phases[name] = round((at[to]! - at[from]!) / 1000, 3);
      o.log(
        `  ${type} → ${recoveryPoint} #${n}: wall ${run.wallRtoSeconds} s, orchestration ${run.rtoSeconds} s, backlog ${before.batches} batches / ${round(before.bytes / 1e6, 1)} MB, ` +
          `point ${run.points[0]?.id} (${run.points[0]?.scope}), steps ${steps.map((s) => `${s.step} ${s.seconds}`).join(", ")}`,
      );
      return run;
    };

    const cleanup = async (run: RunResult) => {
      const c0 = performance.now();
      for (const item of items) {
        const res = await api(stack, "POST", `replicated-items/${item.id}/test-failover-cleanup`);
        if (res.status !== 200) throw new Error(`POST /api/replicated-items/${item.id}/test-failover-cleanup → ${res.status} ${JSON.stringify(res.body)}`);
      }
      run.cleanupSeconds = round((performance.now() - c0) / 1000, 3);
    };

    // Interleaved, so both choices see the same conditions over the run. A choice that failed once is not repeated
    // (a failed failover has retried its steps with backoff and rolled back: minutes, and the same again next time).
    const failed = new Set<Choice>();
    for (let n = 1; n <= o.runs; n++) {
      for (const choice of ["latest-processed", "latest"] as const) {
        if (failed.has(choice)) continue;
        const run = await failover(n, "test", choice);
        runs.push(run);
        if (run.runtimeStatus === "Completed") await cleanup(run);
        else failed.add(choice);
        await sleep(o.pauseSeconds * 1000);
      }
    }

    // The storage floor: server-side copies of the newest group point's snapshots, all at once, straight to storage,
    // the way the copy step makes them (same account, plain URL, shared key).
    const newest = (await groupPoints())[0]!;
    const service = blobService(parseConnectionString(stack.storage.control));
    const replicas = service.getContainerClient("replicas");
    const scratch = service.getContainerClient("bench-raw-copy");
    await scratch.createIfNotExists();
    const sources = (
      await Promise.all(
        items.map(async (item) => {
          const p = (await api(stack, "GET", `replicated-items/${item.id}/recovery-points`)).body.find((x: any) => x.id === newest.id) as {
            disks: { diskId: string; snapshot: string }[];
          };
          return p.disks.map((d) => replicas.getPageBlobClient(`${item.id}/${d.diskId}.vhd`).withSnapshot(d.snapshot));
        }),
      )
    ).flat();
    const rawCopy = async (): Promise<number | string> => {
      const r0 = performance.now();
      try {
        await Promise.all(
          sources.map(async (source, k) => {
            const poller = await scratch.getPageBlobClient(`raw-${k}.vhd`).beginCopyFromURL(source.url, { intervalInMs: 50 });
            await poller.pollUntilDone();
          }),
        );
        return round((performance.now() - r0) / 1000, 3);
      } catch (e) {
        return `failed after ${round((performance.now() - r0) / 1000, 1)} s: ${(e as { statusCode?: number }).statusCode ?? ""} ${(e as Error).message}`.trim();
      }
    };
    const rawCopySeconds = await rawCopy();
    await scratch.delete();
    o.log(`raw server-side copy of the ${sources.length} snapshots: ${rawCopySeconds} s`);

    // The real thing, once: replication of the items ends (FailedOver).
    if (failed.size < 2) runs.push(await failover(1, "unplanned", "latest-processed"));
    await churn.stop();
    const written = churn.written;
    churn = undefined;

    const completed = (type: FailoverType, choice: Choice) =>
      runs.filter((r) => r.type === type && r.recoveryPoint === choice && r.runtimeStatus === "Completed");
    const summarize = (type: FailoverType, choice: Choice) => {
      const ok = completed(type, choice);
      const all = runs.filter((r) => r.type === type && r.recoveryPoint === choice);
      if (ok.length === 0) return { type, recoveryPoint: choice, runs: all.length, completed: 0 };
      const wall = stats(ok.map((r) => r.wallRtoSeconds));
      const stepNames = STEP_ORDER.filter((s) => ok.some((r) => r.steps.some((x) => x.step === s)));
      return {
        type,
        recoveryPoint: choice,
        runs: all.length,
        completed: ok.length,
        wallRtoSeconds: wall,
        orchestrationRtoSeconds: stats(ok.map((r) => r.rtoSeconds ?? NaN)),
        backlog: {
          medianBatches: percentile(
            ok.map((r) => r.backlog.batches),
            50,
          ),
          medianMB: round(
            percentile(
              ok.map((r) => r.backlog.bytes),
              50,
            ) / 1e6,
            2,
          ),
          maxMB: round(Math.max(...ok.map((r) => r.backlog.bytes)) / 1e6, 2),
        },
        dataLossWindowSeconds: stats(ok.flatMap((r) => r.points.map((p) => p.dataLossWindowSeconds))),
        /** Median over the runs whose polling saw the step (a step shorter than a poll may go unseen: its time is in the one before). */
        stepsMedianSeconds: Object.fromEntries(
          ["POST → first status", ...stepNames].map((s) => {
            const seen = ok.flatMap((r) => r.steps.filter((x) => x.step === s).map((x) => x.seconds));
            return [s, seen.length === ok.length ? round(percentile(seen, 50), 3) : `${round(percentile(seen, 50), 3)} (seen ${seen.length}/${ok.length})`];
          }),
        ),
        phasesMedianSeconds: Object.fromEntries(
          PHASES.map(([name]) => [name, round(percentile(ok.map((r) => r.phases[name] ?? NaN).filter(Number.isFinite), 50), 3)]),
        ),
        cleanupMedianSeconds: type === "test" ? round(percentile(ok.map((r) => r.cleanupSeconds ?? NaN).filter(Number.isFinite), 50), 3) : null,
        targetMet: wall.median <= o.targetSeconds,
      };
    };
    const summaries = [summarize("test", "latest-processed"), summarize("test", "latest"), summarize("unplanned", "latest-processed")];
    const lp = summaries[0] as any;
    const lt = summaries[1] as any;
    const result = {
      benchmark: "failover",
      at: new Date().toISOString(),
      machine: machine(),
      storage: "Azurite 3.35.0, disk mode, on this machine",
      options: { ...o, log: undefined },
      initialReplicationSeconds: initialSeconds,
      workloadWrittenMB: round(written / 1e6, 1),
      targetSeconds: o.targetSeconds,
      summaries,
      ratios: {
        latestOverLatestProcessed: lp.wallRtoSeconds && lt.wallRtoSeconds ? round(lt.wallRtoSeconds.median / lp.wallRtoSeconds.median, 2) : null,
        /** Against the same four copies straight to storage (the copy step's floor). */
        latestProcessedOverRawCopy: lp.wallRtoSeconds && typeof rawCopySeconds === "number" ? round(lp.wallRtoSeconds.median / rawCopySeconds, 1) : null,
      },
      rawCopySeconds,
      runs,
    };
    const file = writeResults("failover", result);
    const label = (s: any) => `${s.type} → ${s.recoveryPoint}`;
    o.log(
      table(
        [
          "failover",
          "runs",
          "RTO median s",
          "p90 s",
          "min s",
          "max s",
          "orchestration RTO median s",
          "backlog drained median MB (max)",
          "data-loss window median s",
          `≤ ${o.targetSeconds} s`,
        ],
        summaries.map((s: any) =>
          s.completed === 0
            ? [label(s), s.runs === 0 ? "not run" : `0 of ${s.runs} completed`, "-", "-", "-", "-", "-", "-", "-", s.runs === 0 ? "-" : "not met"]
            : [
                label(s),
                s.completed === s.runs ? s.runs : `${s.completed} of ${s.runs}`,
                s.wallRtoSeconds.median,
                s.wallRtoSeconds.p90,
                s.wallRtoSeconds.min,
                s.wallRtoSeconds.max,
                s.orchestrationRtoSeconds.median,
                s.recoveryPoint === "latest" ? `${s.backlog.medianMB} (${s.backlog.maxMB})` : "-",
                s.dataLossWindowSeconds.median,
                s.targetMet ? "met" : "not met",
              ],
        ),
      ),
    );
    o.log(
      `RTO latest ÷ latest-processed (medians): ${result.ratios.latestOverLatestProcessed}; latest-processed ÷ raw copies of the disks: ${result.ratios.latestProcessedOverRawCopy}`,
    );
    const ok = summaries.filter((s: any) => s.completed > 0) as any[];
    if (ok.length === 0) {
      o.log(`no failover completed; the runs' errors (request, response, last status, the host's output) are in ${file}`);
      return result;
    }
    const stepRows = ["POST → first status", ...STEP_ORDER].filter((s) => ok.some((x) => x.stepsMedianSeconds[s] !== undefined));
    o.log(
      table(
        ["step (custom status, first seen, median s)", ...ok.map(label)],
        stepRows.map((s) => [s, ...ok.map((x) => x.stepsMedianSeconds[s] ?? "-")]),
      ),
    );
    o.log(
      table(
        ["phase (item timelines, slowest VM, median s)", ...ok.map(label)],
        PHASES.map(([name]) => [name, ...ok.map((x) => x.phasesMedianSeconds[name] ?? "-")]),
      ),
    );
    o.log(`results: ${file}`);
    return result;
  } finally {
    await churn?.stop().catch(() => undefined);
    for (const a of agents) await a.stop().catch(() => undefined);
    await stack.stop();
    rmSync(work, { recursive: true, force: true });
  }
}
