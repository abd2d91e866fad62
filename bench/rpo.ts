// `npm run bench -- rpo`: a replication group of two VMs (group points every 10 s) first at the pipeline's maximum
// (measured here, in this run), then at 70% of it — seal lag (tag → point sealed), the barrier's write hold, aborted
// tags — then above the maximum: the backlog and the ChurnBeyondCapacity alert must show it.
import type { PointView } from "../shared/contract/views";
import { mkdtempSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Agent } from "../agent";
import { parseConnectionString } from "../shared/config/settings";
import { blobService } from "../shared/storage/clients";
import { waitApplied } from "./churn";
import { api, machine, percentile, PidMeter, round, startBenchGroup, startBenchStack, table, writeResults } from "./harness";
import { lastSeqs, runWorkload, type Workload } from "./workload";

export interface RpoBenchOptions {
  disks: number;
  diskSizeMiB: number;
  writeKiB: number;
  crashFrequencySeconds: number;
  maxSeconds: number;
  loadSeconds: number;
  overSeconds: number;
  /** Fraction of the measured maximum for the RPO phase, and for the overload phase. */
  loadFraction: number;
  overFraction: number;
  log: (line: string) => void;
}

export async function benchRpo(o: RpoBenchOptions) {
  o.log(
    `rpo benchmark: a group of 2 VMs × ${o.disks} disks of ${o.diskSizeMiB} MiB, random ${o.writeKiB} KiB, group points every ${o.crashFrequencySeconds} s`,
  );
  // The sealing pass (and with it the monitoring pass that raises ChurnBeyondCapacity) every 5 s, history samples every 5 s.
  const stack = await startBenchStack({ AGENT_CHECKIN_SECONDS: "2", SEAL_SCHEDULE: "*/5 * * * * *", HISTORY_SAMPLE_SECONDS: "5" });
  const work = mkdtempSync(join(stack.dir, "vms-"));
  const agents: Agent[] = [];
  let aborted = 0;
  try {
    const items = await startBenchGroup(
      stack,
      o,
      work,
      {
        log: (i, line) => {
          if (/group tag .* aborted/.test(line)) {
            aborted++;
            o.log(`  agent ${i}: ${line}`);
          }
        },
      },
      agents,
    );
    const replicaService = blobService(parseConnectionString(stack.storage.control));
    const blobsOf = (i: number) => Object.fromEntries(items[i]!.disks.map((d) => [d.id, `${items[i]!.id}/${d.id}.vhd`]));
    const drive = (w: Workload) => Promise.all(agents.map((a) => runWorkload(a, o.diskSizeMiB, w))).then((b) => b.reduce((x, y) => x + y, 0));
    const applied = async () => {
      await Promise.all(agents.map((a) => a.waitIdle(900_000)));
      return Math.max(...(await Promise.all(agents.map((a, i) => waitApplied(replicaService, blobsOf(i), lastSeqs(a), 900_000)))));
    };
    const base = { writeKiB: o.writeKiB, sequential: false, maxBacklogMiB: 64, writersPerDisk: 2 };

    // 1. The sustained maximum of this pipeline on this machine now.
    o.log(`maximum: ${o.maxSeconds} s unpaced…`);
    const t0 = performance.now();
    const maxWritten = await drive({ ...base, ratePerDiskMBps: 0, seconds: o.maxSeconds });
    const maxMBps = maxWritten / 1e6 / ((((await applied()) as number) - t0) / 1000);
    const diskCount = agents.length * o.disks;
    o.log(`  sustained maximum ${round(maxMBps, 1)} MB/s over ${diskCount} disks`);

    // 2. RPO at a fraction of it.
    const loadMBps = maxMBps * o.loadFraction;
    o.log(`load: ${round(loadMBps, 1)} MB/s (${o.loadFraction} of the maximum) for ${o.loadSeconds} s…`);
    aborted = 0;
    const holdsBefore = agents.map((a) => a.groupHoldsMs().length);
    const startedAt = Date.now();
    const meter = new PidMeter([stack.host.child.pid!, stack.storage.pid]);
    const loadWritten = await drive({ ...base, ratePerDiskMBps: loadMBps / diskCount, seconds: o.loadSeconds });
    const endedAt = Date.now();
    const loadAborted = aborted;
    const holds = agents.flatMap((a, i) => a.groupHoldsMs().slice(holdsBefore[i]));
    await applied();
    const usage = meter.stop();
    let points: PointView[] = [];
    for (let tries = 0; tries < 50; tries++) {
      const res = await api(stack, "GET", `replicated-items/${items[0]!.id}/recovery-points`);
      points = (res.body as PointView[]).filter((p) => p.scope === "group" && Date.parse(p.time) >= startedAt && Date.parse(p.time) <= endedAt);
      if (points.length >= Math.floor(o.loadSeconds / o.crashFrequencySeconds) - 1) break;
      await sleep(200);
    }
    const lags = points.map((p) => (Date.parse(p.sealedAt) - Date.parse(p.time)) / 1000);

    // 3. Above the maximum: what an operator sees.
    const overMBps = maxMBps * o.overFraction;
    o.log(`overload: ${round(overMBps, 1)} MB/s (${o.overFraction} of the maximum) for ${o.overSeconds} s…`);
    const samples: { t: number; backlogMiB: number; lagSeconds: number | null; replicationLagSeconds: number | null; churnAlert: boolean }[] = [];
    const overStart = performance.now();
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const view = (await api(stack, "GET", `replicated-items/${items[0]!.id}`)).body;
        const alerts = (await api(stack, "GET", "alerts")).body as { itemId: string; code: string; clearedAt?: string | null }[];
        const backlog = (view?.disks ?? []).reduce((n: number, d: { pendingBytes?: number }) => n + (d.pendingBytes ?? 0), 0);
        samples.push({
          t: round((performance.now() - overStart) / 1000, 1),
          backlogMiB: round(backlog / 2 ** 20, 1),
          lagSeconds: view?.rpoSeconds ?? null,
          // The age of the oldest write not yet applied (what ChurnBeyondCapacity holds on while it grows).
          replicationLagSeconds: view?.lagSeconds ?? null,
          churnAlert: alerts.some((a) => a.itemId === items[0]!.id && a.code === "ChurnBeyondCapacity" && !a.clearedAt),
        });
        await sleep(5000);
      }
    })();
    const overWritten = await drive({ ...base, ratePerDiskMBps: overMBps / diskCount, seconds: o.overSeconds });
    sampling = false;
    await sampler;
    const alertAt = samples.find((s) => s.churnAlert)?.t ?? null;

    const result = {
      benchmark: "rpo",
      at: new Date().toISOString(),
      machine: machine(),
      storage: "Azurite 3.35.0, disk mode, on this machine",
      options: { ...o, log: undefined },
      maximum: { MBps: round(maxMBps, 1), writtenMB: round(maxWritten / 1e6, 1), disks: diskCount },
      load: {
        fraction: o.loadFraction,
        MBps: round(loadMBps, 1),
        writtenMB: round(loadWritten / 1e6, 1),
        groupPoints: points.length,
        sealLag: { p50s: round(percentile(lags, 50), 2), p99s: round(percentile(lags, 99), 2), maxS: round(Math.max(0, ...lags), 2) },
        writeHold: {
          samples: holds.length,
          p50ms: round(percentile(holds, 50), 2),
          p99ms: round(percentile(holds, 99), 2),
          maxMs: round(Math.max(0, ...holds), 2),
        },
        abortedTags: loadAborted,
        hostCpuPerGB: round(usage.cpuSeconds[0]! / (loadWritten / 1e9), 1),
      },
      overload: { fraction: o.overFraction, MBps: round(overMBps, 1), writtenMB: round(overWritten / 1e6, 1), samples, churnAlertAfterSeconds: alertAt },
      targets: { sealLagP99sAtMost: 5, writeHoldP99msAtMost: 20, abortedTags: 0 },
    };
    const file = writeResults("rpo", result);
    o.log(
      table(
        ["load", "MB/s", "group points", "seal lag p50 s", "seal lag p99 s", "write hold p50 ms", "write hold p99 ms", "aborted tags"],
        [
          [
            `${o.loadFraction} × maximum (${round(maxMBps, 1)} MB/s)`,
            result.load.MBps,
            points.length,
            result.load.sealLag.p50s,
            result.load.sealLag.p99s,
            result.load.writeHold.p50ms,
            result.load.writeHold.p99ms,
            loadAborted,
          ],
        ],
      ),
    );
    o.log(
      table(
        ["overload t s", "backlog MiB", "RPO s", "lag s", "ChurnBeyondCapacity"],
        samples.map((s) => [s.t, s.backlogMiB, s.lagSeconds ?? "-", s.replicationLagSeconds ?? "-", s.churnAlert ? "raised" : "-"]),
      ),
    );
    o.log(`results: ${file}`);
    return result;
  } finally {
    for (const a of agents) await a.stop().catch(() => undefined);
    await stack.stop();
  }
}
