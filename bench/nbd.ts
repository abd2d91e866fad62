// `npm run bench -- nbd`: the agent's NBD front end against nbdkit's file plugin on the same storage in the same run — bulk copy, 1 MiB writes, random 4 KiB and 64 KiB FUA writes — with replication running.
import { setTimeout as sleep } from "node:timers/promises";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, writeSync } from "node:fs";
import { open, rm, type FileHandle } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { cpus } from "node:os";
import { QemuIo } from "../cli/qemu-io";
import { api, enableBenchVm, machine, percentile, round, ROOT, startBenchStack, table, writeResults } from "./harness";

const MiB = 1024 * 1024;

export interface NbdBenchOptions {
  diskSizeMiB: number;
  /** Writes per random FUA phase. */
  randomWrites: number;
  /**
   * The VM's side (agent, nbdkit, the clients) on CPU 0 and the storage's side (Azurite, the Functions host) on CPU 1
   * (BENCH_PIN=0: unpinned). See benchNbd.
   */
  pin: boolean;
  /** Every phase is run this many times on both servers, the order of the two alternating (BENCH_ROUNDS); ratios are medians. */
  rounds: number;
  log: (line: string) => void;
}

interface Target {
  name: "agent" | "nbdkit";
  url: string;
  /** The process serving the export (its CPU and peak RSS are measured). */
  pid: number;
}

interface PhaseResult {
  phase: string;
  round: number;
  target: Target["name"];
  seconds: number;
  MBps: number;
  iops?: number;
  latencyP50ms?: number;
  latencyP99ms?: number;
  serverCpuPercent: number;
}

/** CPU seconds (user + system) a process has used, from /proc. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function peakRssMiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? round(Number(m[1]) / 1024, 1) : NaN;
}

/**
 * What a durable copy of every write costs on this storage: `bytes` written as 4 MiB batches into kept files (one per
 * batch, as the spool's are once it has run: agent/spool.ts), each made durable (fdatasync) before its buffer is used
 * again, two at a time. The spool's work for a stream of writes alone, without the image, the checksum, the upload or
 * NBD. MB/s.
 */
async function durableBatchWrites(dir: string, bytes: number): Promise<number> {
  const batch = 4 * MiB;
  const n = Math.ceil(bytes / batch);
  const data = [randomBytes(batch), randomBytes(batch)];
  const path = (i: number) => join(dir, `durable-${i}.bin`);
  const files: FileHandle[] = [];
  try {
    // Untimed: the files are made first, so that the timed writes overwrite blocks that exist, as in a kept file.
    for (let i = 0; i < n; i++) {
      const f = await open(path(i), "w+");
      files.push(f);
      await f.write(data[0]!, 0, batch, 0);
      await f.datasync();
    }
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      [0, 1].map(async (w) => {
        while (next < n) {
          const f = files[next++]!;
          await f.write(data[w]!, 0, batch, 0);
          await f.datasync();
        }
      }),
    );
    return (n * batch) / 1e6 / ((performance.now() - t0) / 1000);
  } finally {
    await Promise.all(files.map((f) => f.close()));
    await Promise.all(files.map((_, i) => rm(path(i), { force: true })));
  }
}

async function measure(target: Target, phase: string, pass: number, bytes: number, work: () => Promise<number[] | void>): Promise<PhaseResult> {
  const cpu0 = cpuSeconds(target.pid);
  const t0 = performance.now();
  const latencies = (await work()) ?? [];
  const seconds = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds(target.pid) - cpu0;
  return {
    phase,
    round: pass,
    target: target.name,
    seconds: round(seconds, 2),
    MBps: round(bytes / 1e6 / seconds, 1),
    ...(latencies.length > 0
      ? { iops: round(latencies.length / seconds, 0), latencyP50ms: round(percentile(latencies, 50), 3), latencyP99ms: round(percentile(latencies, 99), 3) }
      : {}),
    serverCpuPercent: round((cpu / seconds) * 100, 1),
  };
}

/** Every thread of `pid` on `cpu` alone. */
function taskset(pid: number, cpu: number): void {
  run("taskset", ["-a", "-p", "-c", String(cpu), String(pid)]);
}

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  if (r.error) throw new Error(`${cmd}: ${r.error.message} (apt-get install qemu-utils libnbd-bin nbdkit)`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`);
}

/**
 * A client run while the benchmark's event loop keeps going: blocked for seconds (spawnSync), it would miss the local
 * host closing the idle keep-alive connection of its last API call, and the next call on it would fail ("fetch failed").
 */
function runClient(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", (e) => reject(new Error(`${cmd}: ${e.message} (apt-get install qemu-utils libnbd-bin nbdkit)`)));
    child.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(" ")}: exit ${code}: ${stderr}`))));
  });
}

/** Random FUA writes of `size` bytes at aligned random offsets, one at a time (queue depth 1): their latencies in ms. */
async function randomFua(url: string, diskBytes: number, size: number, count: number): Promise<number[]> {
  const io = QemuIo.open(url, { cache: "writeback" });
  const lat: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const offset = size * Math.floor(Math.random() * (diskBytes / size));
      const t = performance.now();
      await io.write(offset, size, 1 + (i % 255), { fua: true });
      lat.push(performance.now() - t);
    }
  } finally {
    await io.close();
  }
  return lat;
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

export async function benchNbd(o: NbdBenchOptions): Promise<unknown> {
  const stack = await startBenchStack();
  // In Azure the storage and the Function App do not run on the VM's cores; here all share two. Unpinned, the agent's
  // run also pays for Azurite ingesting its batches and the host applying them, while nbdkit's runs on an idle machine.
  // Pinned, both servers (and their clients) get the same one core, and replication's storage side runs beside them.
  const pinned = o.pin && cpus().length >= 2;
  if (pinned) {
    for (const pid of [stack.storage.pid, stack.host.child.pid!]) taskset(pid, 1);
    // Children started from here on (the agent, nbdkit, qemu-img, qemu-io, nbdcopy) inherit it.
    taskset(process.pid, 0);
  }
  const diskBytes = o.diskSizeMiB * MiB;
  const children: ChildProcess[] = [];
  try {
    const item = await enableBenchVm(stack, { disks: 1, diskSizeMiB: o.diskSizeMiB, crashFrequencySeconds: 10 }, "nbd-bench", "10.1.0.4", "nbd-bench-group");
    // The same storage for both servers: images side by side in the bench directory.
    const agentImage = join(stack.dir, "agent-os.img");
    const peerImage = join(stack.dir, "peer-os.img");
    const source = join(stack.dir, "source.img");
    for (const p of [agentImage, peerImage]) closeSync(openSync(p, "w"));
    run("truncate", ["-s", String(diskBytes), peerImage]);
    const fd = openSync(source, "w");
    for (let at = 0; at < diskBytes; at += 4 * MiB) writeSync(fd, randomBytes(4 * MiB));
    closeSync(fd);

    const agentSock = join(stack.dir, "agent.sock");
    // BENCH_AGENT_NODE_ARGS: extra node flags for the agent alone (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof").
    const nodeArgs = process.env.BENCH_AGENT_NODE_ARGS?.split(" ").filter(Boolean) ?? [];
    const agent = spawn(
      process.execPath,
      [
        ...nodeArgs,
        join(ROOT, "dist", "cli", "main.js"),
        "--url",
        stack.url,
        "agent",
        "--token",
        item.agentRegistration.token,
        "--disk",
        `os=${agentImage}`,
        "--state-dir",
        join(stack.dir, "agent-state"),
        "--nbd",
        agentSock,
      ],
      {
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    children.push(agent);
    let agentOut = "";
    agent.stdout!.on("data", (d: Buffer) => (agentOut += d.toString()));
    agent.stderr!.on("data", (d: Buffer) => (agentOut += d.toString()));
    const peerSock = join(stack.dir, "peer.sock");
    const peer = spawn("nbdkit", ["-f", "--unix", peerSock, "--exportname=os", "file", peerImage], { stdio: "ignore" });
    children.push(peer);
    await waitFor("the agent's socket", () => existsSync(agentSock) || agent.exitCode !== null, 60_000).catch(() => undefined);
    if (!existsSync(agentSock)) throw new Error(`the agent did not serve NBD:\n${agentOut}`);
    await waitFor("nbdkit's socket", () => existsSync(peerSock), 10_000);
    await waitFor("initial replication", async () => (await api(stack, "GET", `replicated-items/${item.id}`)).body?.state === "Protected", 600_000);
    o.log(`agent serving ${agentSock}, nbdkit serving ${peerSock}; ${o.diskSizeMiB} MiB disks; replication Protected`);

    const targets: Target[] = [
      { name: "nbdkit", url: `nbd+unix:///os?socket=${peerSock}`, pid: peer.pid! },
      { name: "agent", url: `nbd+unix:///os?socket=${agentSock}`, pid: agent.pid! },
    ];
    const results: PhaseResult[] = [];
    const spoolDir = join(stack.dir, "agent-state", "spool", "os");
    const caughtUp = () =>
      waitFor(
        "the agent's spool to empty and the replica to catch up",
        async () => {
          if (existsSync(spoolDir) && readdirSync(spoolDir).some((f) => f.endsWith(".batch"))) return false;
          const view = (await api(stack, "GET", `replicated-items/${item.id}`)).body;
          return view?.state === "Protected" && (view?.disks?.every((d: { pendingBatches?: number }) => (d.pendingBatches ?? 0) === 0) ?? false);
        },
        600_000,
      );
    const phases: { name: string; bytes: number; work: (t: Target) => Promise<number[] | void> }[] = [
      { name: `nbdcopy ${o.diskSizeMiB} MiB image`, bytes: diskBytes, work: (t) => runClient("nbdcopy", [source, t.url]) },
      {
        name: "1 MiB writes, 8 in flight",
        bytes: diskBytes,
        work: (t) => runClient("qemu-img", ["bench", "-w", "-t", "none", "-f", "raw", "-s", "1M", "-c", String(o.diskSizeMiB), "-d", "8", t.url]),
      },
      { name: "random 4 KiB FUA writes", bytes: o.randomWrites * 4096, work: (t) => randomFua(t.url, diskBytes, 4096, o.randomWrites) },
      { name: "random 64 KiB FUA writes", bytes: (o.randomWrites / 2) * 65536, work: (t) => randomFua(t.url, diskBytes, 65536, o.randomWrites / 2) },
    ];
    // On a noisy machine one pair says little: each round runs every phase on both servers, the one going first
    // alternating, so that neither always meets the other's leftover writeback or the agent's replication backlog.
    const durable: number[] = [];
    for (let pass = 1; pass <= o.rounds; pass++) {
      // The agent keeps a durable copy of every write in its spool until it is uploaded (nbdkit's file plugin writes
      // into the page cache): the storage's rate for that work alone, in this round, is what durability would allow.
      await caughtUp();
      durable.push(round(await durableBatchWrites(stack.dir, diskBytes), 1));
      o.log(`${o.rounds > 1 ? `round ${pass} ` : ""}durable 4 MiB batch writes (the spool's work alone): ${durable[durable.length - 1]} MB/s`);
      for (const phase of phases) {
        for (const t of pass % 2 === 1 ? targets : [...targets].reverse()) {
          // Each measurement starts with the agent's backlog shipped and applied (its own writes then replicate while it
          // runs): a backlog carried over would push the next phase's writes past the spool into bitmap mode.
          await caughtUp();
          const r = await measure(t, phase.name, pass, phase.bytes, () => phase.work(t));
          results.push(r);
          o.log(
            `${o.rounds > 1 ? `round ${pass} ` : ""}${phase.name.padEnd(28)} ${t.name.padEnd(7)} ${r.MBps} MB/s${r.latencyP99ms !== undefined ? `, p50 ${r.latencyP50ms} ms, p99 ${r.latencyP99ms} ms` : ""}, server CPU ${r.serverCpuPercent}%`,
          );
        }
      }
    }
    const agentPeakRssMiB = peakRssMiB(agent.pid!);
    // Replication kept up: the replica reaches the image once the writes stop.
    await caughtUp().catch(() => o.log("note: the replica had not caught up within 10 minutes"));

    // A ratio per round (agent ÷ nbdkit in the same round), and their median.
    const ratios = (phase: string, field: "MBps" | "latencyP99ms") => {
      const of = (pass: number, target: Target["name"]) => results.find((r) => r.phase === phase && r.round === pass && r.target === target)![field]!;
      return Array.from({ length: o.rounds }, (_, i) => round(of(i + 1, "agent") / of(i + 1, "nbdkit"), 2));
    };
    const median = (xs: number[]) => round(percentile(xs, 50), 2);
    const ratio = (phase: string, field: "MBps" | "latencyP99ms") => median(ratios(phase, field));
    const nbdkit1MiB = results.filter((r) => r.phase === phases[1]!.name && r.target === "nbdkit").map((r) => r.MBps);
    const durableToNbdkit1MiB = durable.map((d, i) => round(d / nbdkit1MiB[i]!, 2));
    const agentFua4KiBP99 = results.filter((r) => r.phase === phases[2]!.name && r.target === "agent").map((r) => r.latencyP99ms!);
    const summary = {
      copyRatio: ratio(phases[0]!.name, "MBps"),
      writes1MiBRatio: ratio(phases[1]!.name, "MBps"),
      writes1MiBRatioPerRound: ratios(phases[1]!.name, "MBps"),
      fua4KiBP99ms: median(agentFua4KiBP99),
      fua4KiBP99msPerRound: agentFua4KiBP99,
      fua4KiBP99Ratio: ratio(phases[2]!.name, "latencyP99ms"),
      durableBatchMBpsPerRound: durable,
      durableToNbdkit1MiBPerRound: durableToNbdkit1MiB,
      agentPeakRssMiB,
      targets: { writes1MiBRatioAtLeast: 0.5, fua4KiBP99msAtMost: 5 },
    };
    const out = {
      benchmark: "nbd",
      at: new Date().toISOString(),
      machine: machine(),
      options: { diskSizeMiB: o.diskSizeMiB, randomWrites: o.randomWrites, rounds: o.rounds, pinned },
      results,
      summary,
    };
    const file = writeResults("nbd", out);
    o.log(
      "\n" +
        table(
          ["round", "workload", "server", "MB/s", "IOPS", "p50 ms", "p99 ms", "server CPU %"],
          results.map((r) => [r.round, r.phase, r.target, r.MBps, r.iops ?? "", r.latencyP50ms ?? "", r.latencyP99ms ?? "", r.serverCpuPercent]),
        ),
    );
    o.log(
      `\nagent ÷ nbdkit${o.rounds > 1 ? ` (medians of ${o.rounds} rounds; 1 MiB writes per round ${summary.writes1MiBRatioPerRound.join(", ")})` : ""}: copy ${summary.copyRatio}×, 1 MiB writes ${summary.writes1MiBRatio}× (target ≥ 0.5), 4 KiB FUA p99 ${summary.fua4KiBP99ms} ms (target ≤ 5 ms; ${summary.fua4KiBP99Ratio}× nbdkit's); agent peak RSS ${agentPeakRssMiB} MiB\ndurable 4 MiB batch writes (the spool's work alone) per round: ${durable.join(", ")} MB/s = ${durableToNbdkit1MiB.join(", ")}× nbdkit's 1 MiB writes\n${file}`,
    );
    return out;
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill("SIGTERM");
    await Promise.all(children.map((c) => (c.exitCode === null ? new Promise((r) => c.once("exit", r)) : Promise.resolve())));
    await stack.stop();
  }
}
