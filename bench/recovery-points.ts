// `npm run bench -- recovery-points`: a replication group of two VMs under churn, crash-consistent group tags at the
import type { PointView } from "../shared/contract/views";
import { setTimeout as sleep } from "node:timers/promises";
// policy's frequency through the TCP barrier: achieved cadence, seal lag (tag time → point sealed), the barrier's write hold.
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { Agent } from "../agent";
import { api, startBenchGroup, machine, percentile, ProcessMeter, round, startBenchStack, table, writeResults } from "./harness";

const MiB = 1024 * 1024;

export interface RecoveryPointsBenchOptions {
  seconds: number;
  /** MB/s per disk on the first VM's disks (the second VM writes a tenth of it). */
  ratePerDiskMBps: number;
  disks: number;
  diskSizeMiB: number;
  writeKiB: number;
  crashFrequencySeconds: number;
  /** The barrier's hold bound (ms). */
  holdBoundMs: number;
  log: (line: string) => void;
}

/** Paced writers, two per disk, until `end`. */
async function churn(agent: Agent, diskIds: string[], o: RecoveryPointsBenchOptions, ratePerDisk: number, end: number): Promise<number> {
  const writeBytes = o.writeKiB * 1024;
  const slots = Math.floor((o.diskSizeMiB * MiB) / writeBytes);
  const payload = randomBytes(writeBytes * 16);
  const t0 = performance.now();
  let written = 0;
  const writer = async (id: string) => {
    const disk = agent.trackedDisk(id);
    let mine = 0;
    while (performance.now() < end) {
      const due = t0 + (mine / ((ratePerDisk / 2) * 1e6)) * 1000;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      const from = Math.floor(Math.random() * 15) * writeBytes;
      await disk.write(Math.floor(Math.random() * slots) * writeBytes, payload.subarray(from, from + writeBytes));
      mine += writeBytes;
      written += writeBytes;
    }
  };
  await Promise.all(diskIds.flatMap((id) => [writer(id), writer(id)]));
  return written;
}

export async function benchRecoveryPoints(o: RecoveryPointsBenchOptions) {
  o.log(
    `recovery-points benchmark: a group of 2 VMs × ${o.disks} disks of ${o.diskSizeMiB} MiB, ${o.ratePerDiskMBps} MB/s per disk on the first, ` +
      `crash-consistent every ${o.crashFrequencySeconds} s, ${o.seconds} s`,
  );
  const stack = await startBenchStack({ AGENT_CHECKIN_SECONDS: "2" });
  const work = mkdtempSync(join(stack.dir, "vms-"));
  const agents: Agent[] = [];
  let aborted = 0;
  try {
    const items = await startBenchGroup(
      stack,
      o,
      work,
      {
        groupHoldBoundMs: o.holdBoundMs,
        log: (i, line) => {
          if (/group tag .* aborted/.test(line)) aborted++;
          if (/group|tag/.test(line)) o.log(`  agent ${i}: ${line}`);
        },
      },
      agents,
    );
    const startedAt = new Date();
    aborted = 0;
    const holdsBefore = agents.map((a) => a.groupHoldsMs().length);
    const meter = new ProcessMeter();
    const end = performance.now() + o.seconds * 1000;
    o.log(`churn for ${o.seconds} s…`);
    const written = (
      await Promise.all(
        agents.map((a, i) =>
          churn(
            a,
            items[i]!.disks.map((d) => d.id),
            o,
            i === 0 ? o.ratePerDiskMBps : o.ratePerDiskMBps / 10,
            end,
          ),
        ),
      )
    ).reduce((x, y) => x + y, 0);
    const usage = meter.stop();
    const holds = agents.flatMap((a, i) => a.groupHoldsMs().slice(holdsBefore[i]));
    // Wait for the tags cut during the run to be sealed.
    await Promise.all(agents.map((a) => a.waitIdle(300_000)));
    let points: PointView[] = [];
    for (let tries = 0; tries < 100; tries++) {
      const res = await api(stack, "GET", `replicated-items/${items[0]!.id}/recovery-points`);
      points = (res.body as PointView[]).filter((p) => p.scope === "group" && Date.parse(p.time) >= startedAt.getTime());
      if (points.length > 0 && tries > 5) break;
      await sleep(200);
    }
    const times = points.map((p) => Date.parse(p.time)).sort((a, b) => a - b);
    const intervals = times.slice(1).map((t, i) => (t - times[i]!) / 1000);
    const lags = points.map((p) => (Date.parse(p.sealedAt) - Date.parse(p.time)) / 1000);
    const result = {
      benchmark: "recovery-points",
      at: new Date().toISOString(),
      machine: machine(),
      storage: "Azurite 3.35.0, disk mode, on this machine",
      options: { ...o, log: undefined },
      writtenMB: round(written / 1e6, 1),
      groupPoints: points.length,
      /** Group tags aborted (a member's prepare ack missed the hold bound): the coordinator cut a VM tag instead. */
      abortedGroupTags: aborted,
      cadence: {
        policySeconds: o.crashFrequencySeconds,
        meanSeconds: intervals.length ? round(intervals.reduce((a, b) => a + b, 0) / intervals.length, 1) : null,
        maxSeconds: intervals.length ? round(Math.max(...intervals), 1) : null,
      },
      sealLag: { p50s: round(percentile(lags, 50), 2), p99s: round(percentile(lags, 99), 2) },
      writeHold: {
        samples: holds.length,
        p50ms: round(percentile(holds, 50), 2),
        p99ms: round(percentile(holds, 99), 2),
        maxMs: round(Math.max(0, ...holds), 2),
        boundMs: o.holdBoundMs,
      },
      agentsCpuPercent: usage.cpuPercent,
      agentsPeakRssMiB: usage.peakRssMiB,
    };
    const file = writeResults("recovery-points", result);
    o.log(
      table(
        [
          "group points",
          "aborted tags",
          "cadence mean s (policy)",
          "seal lag p50 s",
          "seal lag p99 s",
          "write hold p50 ms",
          "write hold p99 ms",
          "hold bound ms",
        ],
        [
          [
            result.groupPoints,
            result.abortedGroupTags,
            `${result.cadence.meanSeconds ?? "-"} (${o.crashFrequencySeconds})`,
            result.sealLag.p50s,
            result.sealLag.p99s,
            result.writeHold.p50ms,
            result.writeHold.p99ms,
            o.holdBoundMs,
          ],
        ],
      ),
    );
    o.log(`results: ${file}`);
    return result;
  } finally {
    for (const a of agents) await a.stop().catch(() => undefined);
    await stack.stop();
    rmSync(work, { recursive: true, force: true });
  }
}
