// `npm run bench -- initial`: initial replication through the CLI agent (agent start → `Protected`) against raw page
// writes of the same bytes to the same Azurite in the same run; then a sparse disk against a dense one of its used size.
import { closeSync, ftruncateSync, mkdtempSync, openSync, writeSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { parseConnectionString } from "../shared/config/settings";
import { blobService } from "../shared/storage/clients";
import {
  enableBenchVm,
  machine,
  PidMeter,
  describeThreePass,
  rawPageWrites,
  round,
  threePassCeiling,
  spawnCliAgent,
  startBenchStack,
  table,
  waitForItem,
  writeRandomImage,
  writeResults,
  type BenchStack,
} from "./harness";

const MiB = 1024 * 1024;

export interface InitialBenchOptions {
  /** The dense random image of the first comparison. */
  diskSizeMiB: number;
  /** The sparse image of the second: this big, with `sparseUsedMiB` of random data spread over it… */
  sparseSizeMiB: number;
  sparseUsedMiB: number;
  log: (line: string) => void;
}

interface Replication {
  image: string;
  diskMiB: number;
  usedMiB: number;
  seconds: number;
  /** Used bytes ÷ seconds. */
  MBps: number;
  agentCpuSeconds: number;
  hostCpuSeconds: number;
  azuriteCpuSeconds: number;
  agentPeakRssMiB: number;
  /** CPU seconds per GB of used bytes applied. */
  agentCpuPerGB: number;
  hostCpuPerGB: number;
}

/** One VM with one disk on `image`, the CLI agent started on it: seconds from the agent's start to the item's `Protected`. */
async function replicate(stack: BenchStack, work: string, name: string, image: string, diskMiB: number, usedMiB: number, ip: string): Promise<Replication> {
  const item = await enableBenchVm(stack, { disks: 1, diskSizeMiB: diskMiB, crashFrequencySeconds: 300 }, name, ip, `${name}-group`);
  const t0 = performance.now();
  const agent = spawnCliAgent(stack, item.agentRegistration.token, { os: image }, join(work, `${name}-state`));
  const meter = new PidMeter([agent.pid, stack.host.child.pid!, stack.storage.pid]);
  try {
    // BENCH_TRACE=1: the item's progress every 100 ms, to see where the time goes.
    const trace = process.env.BENCH_TRACE === "1";
    let last = "";
    await waitForItem(
      stack,
      item.id,
      (v) => {
        if (trace) {
          const d = v?.disks?.[0];
          const line = `${d?.watermark} pending ${d?.pendingBatches} done ${d?.initialReplication?.percent}% ${v?.state}`;
          if (line !== last) console.log(`  t=${((performance.now() - t0) / 1000).toFixed(2)} ${line}`);
          last = line;
        }
        return v?.state === "Protected";
      },
      1_800_000,
      100,
    );
  } catch (e) {
    throw new Error(`${(e as Error).message}\nagent said:\n${agent.output()}`);
  }
  const seconds = (performance.now() - t0) / 1000;
  const m = meter.stop();
  await agent.stop();
  const gb = (usedMiB * MiB) / 1e9;
  return {
    image: name,
    diskMiB,
    usedMiB,
    seconds: round(seconds, 2),
    MBps: round((usedMiB * MiB) / 1e6 / seconds, 1),
    agentCpuSeconds: m.cpuSeconds[0]!,
    hostCpuSeconds: m.cpuSeconds[1]!,
    azuriteCpuSeconds: m.cpuSeconds[2]!,
    agentPeakRssMiB: m.peakRssMiB[0]!,
    agentCpuPerGB: round(m.cpuSeconds[0]! / gb, 1),
    hostCpuPerGB: round(m.cpuSeconds[1]! / gb, 1),
  };
}

/** A sparse image of `sizeMiB` with `usedMiB` of random data in 4 MiB pieces spread evenly over it. */
function writeSparseImage(path: string, sizeMiB: number, usedMiB: number): void {
  const fd = openSync(path, "w");
  try {
    ftruncateSync(fd, sizeMiB * MiB);
    const pieces = usedMiB / 4;
    for (let i = 0; i < pieces; i++) writeSync(fd, randomBytes(4 * MiB), 0, 4 * MiB, Math.floor((i * sizeMiB) / pieces / 4) * 4 * MiB);
  } finally {
    closeSync(fd);
  }
}

export async function benchInitial(o: InitialBenchOptions) {
  o.log(
    `initial replication benchmark: ${o.diskSizeMiB} MiB random image; ${o.sparseSizeMiB} MiB sparse with ${o.sparseUsedMiB} MiB used vs ${o.sparseUsedMiB} MiB dense`,
  );
  const stack = await startBenchStack({ AGENT_CHECKIN_SECONDS: "2" });
  const work = mkdtempSync(join(stack.dir, "vm-"));
  try {
    const replicaService = blobService(parseConnectionString(stack.storage.control));
    const dense = join(work, "dense.img");
    writeRandomImage(dense, o.diskSizeMiB);
    const small = join(work, "small.img");
    writeRandomImage(small, o.sparseUsedMiB);
    const sparse = join(work, "sparse.img");
    writeSparseImage(sparse, o.sparseSizeMiB, o.sparseUsedMiB);

    // Raw before and after the pipeline's run, so that a machine that got busier or quieter shows in the spread.
    const raw = (label: string, concurrency: number) =>
      rawPageWrites(replicaService, o.diskSizeMiB * MiB, o.diskSizeMiB * MiB, { writeBytes: 4 * MiB, random: false, concurrency, blobs: 1 }).then((v) => {
        o.log(`  raw 4 MiB uploadPages, ${concurrency} in flight (${label}): ${round(v, 1)} MB/s`);
        return v;
      });
    const rawBefore = await raw("before", 1);
    const rawConcurrentBefore = await raw("before", 8);
    o.log(`replicating ${o.diskSizeMiB} MiB random image…`);
    const main = await replicate(stack, work, "dense", dense, o.diskSizeMiB, o.diskSizeMiB, "10.1.0.4");
    o.log(`  ${main.seconds} s, ${main.MBps} MB/s`);
    const rawAfter = await raw("after", 1);
    const rawConcurrentAfter = await raw("after", 8);
    // The three passes a replicated byte makes through storage, each alone, 8 in flight (see threePassCeiling); after
    // raw, so that raw is measured as it always was (3 GiB more written beforehand slows the writes that follow).
    const threePass = await threePassCeiling(blobService(parseConnectionString(stack.storage.cache)), replicaService, o.diskSizeMiB * MiB, 8);
    const rawMBps = (rawBefore + rawAfter) / 2;
    const rawConcurrentMBps = (rawConcurrentBefore + rawConcurrentAfter) / 2;

    o.log(`replicating ${o.sparseUsedMiB} MiB dense image…`);
    const smallRun = await replicate(stack, work, "small", small, o.sparseUsedMiB, o.sparseUsedMiB, "10.1.0.5");
    o.log(`  ${smallRun.seconds} s`);
    o.log(`replicating ${o.sparseSizeMiB} MiB sparse image (${o.sparseUsedMiB} MiB used)…`);
    const sparseRun = await replicate(stack, work, "sparse", sparse, o.sparseSizeMiB, o.sparseUsedMiB, "10.1.0.6");
    o.log(`  ${sparseRun.seconds} s`);

    const result = {
      benchmark: "initial",
      at: new Date().toISOString(),
      machine: machine(),
      storage: "Azurite 3.35.0, disk mode, on this machine",
      options: { ...o, log: undefined },
      raw: {
        sequential4MiBMBps: { before: round(rawBefore, 1), after: round(rawAfter, 1), mean: round(rawMBps, 1) },
        concurrent8x4MiBMBps: { before: round(rawConcurrentBefore, 1), after: round(rawConcurrentAfter, 1), mean: round(rawConcurrentMBps, 1) },
        threePass8InFlightAfter: threePass,
      },
      runs: [main, smallRun, sparseRun],
      ratios: {
        initialToRaw: round(main.MBps / rawMBps, 3),
        initialToRawConcurrent: round(main.MBps / rawConcurrentMBps, 3),
        initialToThreePassCeiling: round(main.MBps / threePass.ceilingMBps, 3),
        sparseToDenseTime: round(sparseRun.seconds / smallRun.seconds, 2),
      },
      targets: { initialToRawAtLeast: 0.28, sparseToDenseTime: "about 1" },
    };
    const file = writeResults("initial", result);
    o.log(
      table(
        ["image", "disk MiB", "used MiB", "seconds", "MB/s (used)", "÷ raw", "agent CPU s/GB", "host CPU s/GB", "agent peak RSS MiB"],
        result.runs.map((r) => [
          r.image,
          r.diskMiB,
          r.usedMiB,
          r.seconds,
          r.MBps,
          round(r.MBps / rawMBps, 3),
          r.agentCpuPerGB,
          r.hostCpuPerGB,
          r.agentPeakRssMiB,
        ]),
      ),
    );
    o.log(
      `raw 4 MiB uploadPages: ${round(rawMBps, 1)} MB/s sequential (${round(rawBefore, 1)} before, ${round(rawAfter, 1)} after), ${round(rawConcurrentMBps, 1)} MB/s 8 in flight`,
    );
    o.log(`three passes, 8 in flight (after): ${describeThreePass(threePass)} (${round(threePass.ceilingMBps / rawMBps, 3)}× raw)`);
    o.log(
      `initial ÷ raw: ${result.ratios.initialToRaw} (target ≥ 0.28); initial ÷ three-pass ceiling: ${result.ratios.initialToThreePassCeiling}; sparse ÷ dense time: ${result.ratios.sparseToDenseTime}`,
    );
    o.log(`results: ${file}`);
    return result;
  } finally {
    await stack.stop();
  }
}
