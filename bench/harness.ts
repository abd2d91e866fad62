// What every benchmark shares: a local stack in child processes (Azurite, the Functions host), stats, and results files.
import { setTimeout as sleep } from "node:timers/promises";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { cpus, loadavg, setPriority, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import type { BlobServiceClient } from "@azure/storage-blob";
import { Agent, AGENT_V8_FLAGS } from "../agent";
import { startAzurite, type LocalStorage } from "../local/azurite";
import { ApiClient, type ApiResponse } from "../shared/contract/client";
import { HOST_NODE_ARGS, startHostProcess, type HostProcess } from "../local/process";

export const ROOT = resolve(__dirname, "..", "..");
export const RESULTS_DIR = join(ROOT, "bench", "results");

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export const round = (n: number, digits = 2) => Math.round(n * 10 ** digits) / 10 ** digits;

export interface BenchStack {
  url: string;
  storage: LocalStorage;
  dir: string;
  host: HostProcess;
  stop(): Promise<void>;
}

/**
 * Azurite on disk (as `npm start` runs it) and the local Functions host in its own process, so that the agent's CPU
 * and memory, measured in this process, are the agent's alone.
 */
export async function startBenchStack(env: NodeJS.ProcessEnv = {}): Promise<BenchStack> {
  const dir = mkdtempSync(join(tmpdir(), "site-recovery-bench-"));
  const storage = await startAzurite({ location: join(dir, "azurite"), silent: true });
  prioritizeStorage(storage.pid);
  const host = await startHostProcess(
    { AzureWebJobsStorage: storage.control, CACHE_STORAGE: storage.cache, ...env },
    { nodeArgs: nodeArgsFrom("BENCH_HOST_NODE_ARGS") },
  );
  return {
    url: host.url,
    storage,
    dir,
    host,
    async stop() {
      await host.stop();
      await storage.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * The niceness Azurite's threads run at in the benchmarks (BENCH_STORAGE_NICE, default -10; 0 leaves them equal to
 * everything else). In Azure the storage accounts run on machines of their own: the VM's agent, the Function App and
 * the clients never take CPU from them. Here Azurite shares two cores with all of them, so whatever the agent and apply
 * spend slows the storage they are measured against; its raw baselines are measured with the same priority. Lowering
 * a niceness needs root (or CAP_SYS_NICE): without it Azurite runs at 0 and the results say so (`machine().storageNice`).
 */
const STORAGE_NICE = Number(process.env.BENCH_STORAGE_NICE ?? -10);
let storageNice = 0;

function prioritizeStorage(pid: number): void {
  if (STORAGE_NICE === 0) return;
  try {
    // Per thread on Linux: every thread Azurite has now; those it starts later inherit from the thread that starts them.
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        setPriority(Number(tid), STORAGE_NICE);
      } catch (e) {
        // A thread that ended meanwhile needs no priority.
        if ((e as { info?: { code?: string } }).info?.code !== "ESRCH") throw e;
      }
    }
    storageNice = STORAGE_NICE;
  } catch (e) {
    storageNice = 0;
    console.warn(`benchmark: Azurite runs at the same priority as the pipeline (${(e as Error).message})`);
  }
}

export function machine() {
  return {
    /** Azurite's niceness (see prioritizeStorage). */
    storageNice,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? "unknown",
    memoryGiB: round(totalmem() / 2 ** 30, 1),
    node: process.version,
    platform: process.platform,
    /** 1, 5 and 15 minute load averages when the results were written: other work on the machine shows here. */
    loadAverage: loadavg().map((l) => round(l, 1)),
  };
}

/**
 * Writes `<name>-<time>.json` and `<name>-latest.json` under bench/results, with the node flags of the agents run in
 * processes of their own (BENCH_AGENT_NODE_ARGS) and of the host processes (HOST_NODE_ARGS, then BENCH_HOST_NODE_ARGS).
 */
export function writeResults(name: string, result: object): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const nodeArgs = {
    agent: nodeArgsFrom("BENCH_AGENT_NODE_ARGS"),
    // Set at start by agent processes (agent/heap.ts): the CLI agent (nbd, initial) and churn's agent process; agents
    // that run inside the benchmark's own process (replication, rpo, reprotect) run without them.
    agentV8Flags: [...AGENT_V8_FLAGS],
    host: [...HOST_NODE_ARGS, ...nodeArgsFrom("BENCH_HOST_NODE_ARGS")],
  };
  const body = JSON.stringify({ ...result, nodeArgs }, null, 2);
  const stamped = join(RESULTS_DIR, `${name}-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
  writeFileSync(stamped, body);
  writeFileSync(join(RESULTS_DIR, `${name}-latest.json`), body);
  return stamped;
}

/** A markdown table, as printed and as pasted into the README. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, c) => Math.max(...cells.map((r) => r[c]!.length)));
  const line = (r: string[]) => `| ${r.map((v, c) => v.padEnd(widths[c]!)).join(" | ")} |`;
  return [line(header), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...rows.map((r) => line(r.map(String)))].join("\n");
}

/** Samples this process's CPU time and peak RSS over a phase. */
export class ProcessMeter {
  private readonly cpu0 = process.cpuUsage();
  private readonly t0 = performance.now();
  private peakRss = process.memoryUsage().rss;
  private readonly timer = setInterval(() => {
    this.peakRss = Math.max(this.peakRss, process.memoryUsage().rss);
  }, 50);

  stop(): { cpuPercent: number; peakRssMiB: number } {
    clearInterval(this.timer);
    const cpu = process.cpuUsage(this.cpu0);
    const wallMs = performance.now() - this.t0;
    return {
      cpuPercent: round(((cpu.user + cpu.system) / 1000 / wallMs) * 100, 1),
      peakRssMiB: round(Math.max(this.peakRss, process.memoryUsage().rss) / 2 ** 20, 1),
    };
  }
}

/** One call to the stack's HTTP API; the body parsed when it is JSON. */
export function api<T = any>(stack: BenchStack, method: string, path: string, body?: unknown): Promise<ApiResponse<T>> {
  return new ApiClient(stack.url).request<T>(method, path, body);
}

/** The stack's API through the one typed client. */
export const client = (stack: BenchStack) => new ApiClient(stack.url);

/** Enables a benchmark VM (disks `os`, `data0`, …) in a replication group. */
export async function enableBenchVm(
  stack: BenchStack,
  o: { disks: number; diskSizeMiB: number; crashFrequencySeconds: number },
  name: string,
  ip: string,
  group: string,
): Promise<{ id: string; agentRegistration: { token: string }; disks: { id: string }[] }> {
  const MiB = 1024 * 1024;
  const res = await api(stack, "POST", "replicated-items", {
    vm: {
      name,
      region: "eastus",
      resourceGroup: "bench-rg",
      size: "Standard_D8s_v5",
      network: { vnet: "bench-vnet", subnet: "default", privateIp: ip },
      disks: Array.from({ length: o.disks }, (_, i) => ({ id: i === 0 ? "os" : `data${i - 1}`, sizeBytes: o.diskSizeMiB * MiB })),
    },
    targetRegion: "westus",
    replicationGroup: group,
    policy: { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: o.crashFrequencySeconds, appConsistentFrequencyMinutes: 240 },
  });
  if (res.status !== 201) throw new Error(`enable failed: ${JSON.stringify(res.body)}`);
  return res.body;
}

export const BENCH_GROUP = "bench-group";

/**
 * Two VMs (`bench-a`, `bench-b`) of one replication group, each with an agent in this process on sparse image files
 * under `work` (tracked disks), the barrier on loopback; resolves once both agents have shipped their initial copy
 * and the group has formed (one coordinator, one connected member).
 */
export async function startBenchGroup(
  stack: BenchStack,
  o: { disks: number; diskSizeMiB: number; crashFrequencySeconds: number },
  work: string,
  agentOptions: { groupHoldBoundMs?: number; log: (vm: number, line: string) => void },
  agents: Agent[],
): Promise<{ id: string; agentRegistration: { token: string }; disks: { id: string }[] }[]> {
  const items = [await enableBenchVm(stack, o, "bench-a", "10.1.0.4", BENCH_GROUP), await enableBenchVm(stack, o, "bench-b", "10.1.0.5", BENCH_GROUP)];
  for (const [i, item] of items.entries()) {
    agents.push(
      await Agent.start({
        url: stack.url,
        token: item.agentRegistration.token,
        stateDir: join(work, `state-${i}`),
        disks: item.disks.map((d) => ({ id: d.id, kind: "tracked" as const, path: join(work, `${i}-${d.id}.img`) })),
        groupPort: 0,
        groupHost: "127.0.0.1",
        ...(agentOptions.groupHoldBoundMs !== undefined ? { groupHoldBoundMs: agentOptions.groupHoldBoundMs } : {}),
        log: (line) => agentOptions.log(i, line),
      }),
    );
  }
  await Promise.all(agents.map((a) => a.waitIdle(600_000)));
  const deadline = Date.now() + 60_000;
  while (!agents.some((a) => a.groupRole === "coordinator" && a.groupMembersConnected().length === 1)) {
    if (Date.now() > deadline) throw new Error(`the group did not form: roles ${agents.map((a) => a.groupRole).join(", ")}`);
    await sleep(100);
  }
  return items;
}

/** CPU seconds (user + system) a process has used so far, from /proc. */
export function cpuSecondsOf(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** A process's resident set: now, and its peak since it started (VmHWM). */
export function rssMiBOf(pid: number): { now: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN);
  return { now: round(kb("VmRSS") / 1024, 1), peak: round(kb("VmHWM") / 1024, 1) };
}

/** CPU of other processes over an interval: `stop()` gives each one's CPU seconds and its peak RSS sampled meanwhile. */
export class PidMeter {
  private readonly cpu0: number[];
  private readonly t0 = performance.now();
  private readonly peak: number[];
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly pids: number[]) {
    this.cpu0 = pids.map(cpuSecondsOf);
    this.peak = pids.map((p) => rssMiBOf(p).now);
    this.timer = setInterval(() => this.sample(), 100);
  }

  private sample(): void {
    this.pids.forEach((p, i) => {
      try {
        this.peak[i] = Math.max(this.peak[i]!, rssMiBOf(p).now);
      } catch {
        // the process ended
      }
    });
  }

  stop(): { seconds: number; cpuSeconds: number[]; peakRssMiB: number[] } {
    this.sample();
    clearInterval(this.timer);
    return {
      seconds: (performance.now() - this.t0) / 1000,
      cpuSeconds: this.pids.map((p, i) => round(cpuSecondsOf(p) - this.cpu0[i]!, 2)),
      peakRssMiB: this.peak.map((v) => round(v, 1)),
    };
  }
}

/** Node flags from an environment variable (e.g. BENCH_AGENT_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof"). */
export function nodeArgsFrom(variable: string): string[] {
  return process.env[variable]?.split(" ").filter(Boolean) ?? [];
}

export interface CliAgent {
  child: ChildProcess;
  pid: number;
  output(): string;
  /** SIGTERM and wait: a graceful stop (a --cpu-prof profile is written then). */
  stop(): Promise<void>;
}

/** `site-recovery agent` in a process of its own on image files (scanned disks, or NBD with `extra`); BENCH_AGENT_NODE_ARGS go to node. */
export function spawnCliAgent(stack: BenchStack, token: string, disks: Record<string, string>, stateDir: string, extra: string[] = []): CliAgent {
  const child = spawn(
    process.execPath,
    [
      ...nodeArgsFrom("BENCH_AGENT_NODE_ARGS"),
      join(ROOT, "dist", "cli", "main.js"),
      "--url",
      stack.url,
      "agent",
      "--token",
      token,
      ...Object.entries(disks).flatMap(([id, path]) => ["--disk", `${id}=${path}`]),
      "--state-dir",
      stateDir,
      ...extra,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let out = "";
  const keep = (d: Buffer) => (out = (out + d.toString()).slice(-20_000));
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  return {
    child,
    pid: child.pid!,
    output: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}

/** Polls the item until `done(view)` holds; the view's last state when it times out is in the error. */
export async function waitForItem(stack: BenchStack, itemId: string, done: (view: any) => boolean, timeoutMs: number, everyMs = 200): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  let view: any;
  for (;;) {
    view = (await api(stack, "GET", `replicated-items/${itemId}`)).body;
    if (done(view)) return view;
    if (Date.now() > deadline) throw new Error(`timed out: item ${itemId} is ${JSON.stringify(view).slice(0, 500)}`);
    await sleep(everyMs);
  }
}

/** A file of `mib` MiB of random bytes (4 MiB at a time, never all in memory). */
export function writeRandomImage(path: string, mib: number): void {
  const fd = openSync(path, "w");
  try {
    for (let at = 0; at < mib; at += 4) writeSync(fd, randomBytes(Math.min(4, mib - at) * 1024 * 1024));
  } finally {
    closeSync(fd);
  }
}

export interface RawPattern {
  /** Bytes per uploadPages. */
  writeBytes: number;
  /** Random offsets (aligned to writeBytes) or consecutive ones. */
  random: boolean;
  /** uploadPages in flight at once, per blob. */
  concurrency: number;
  blobs: number;
}

/**
 * The storage's own limit for a pattern: `bytes` of uploadPages straight to page blobs of `blobBytes` in the same
 * account, no pipeline in between. Returns MB/s.
 */
export async function rawPageWrites(service: BlobServiceClient, bytes: number, blobBytes: number, p: RawPattern): Promise<number> {
  const container = service.getContainerClient(`bench-raw-${Math.random().toString(36).slice(2, 8)}`);
  await container.createIfNotExists();
  const data = randomBytes(p.writeBytes * 16);
  const slots = Math.floor(blobBytes / p.writeBytes);
  const perBlob = Math.ceil(bytes / p.blobs / p.writeBytes);
  const blobs = await Promise.all(
    Array.from({ length: p.blobs }, async (_, i) => {
      const b = container.getPageBlobClient(`raw-${i}.vhd`);
      await b.create(blobBytes);
      return b;
    }),
  );
  const t0 = performance.now();
  await Promise.all(
    blobs.map(async (b) => {
      let next = 0;
      const worker = async () => {
        while (next < perBlob) {
          const k = next++;
          const slot = p.random ? Math.floor(Math.random() * slots) : k % slots;
          const from = (k % 15) * p.writeBytes;
          await b.uploadPages(data.subarray(from, from + p.writeBytes), slot * p.writeBytes, p.writeBytes);
        }
      };
      await Promise.all(Array.from({ length: p.concurrency }, worker));
    }),
  );
  const s = (performance.now() - t0) / 1000;
  await container.delete();
  return (perBlob * p.blobs * p.writeBytes) / 1e6 / s;
}

export interface ThreePass {
  putBlobMBps: number;
  getBlobMBps: number;
  putPageMBps: number;
  /** 1 / (1/put + 1/get + 1/page): the storage's time per byte for the three passes added up. */
  ceilingMBps: number;
}

/**
 * The three passes every replicated byte makes through storage, each measured alone with `concurrency` 4 MiB requests
 * in flight: Put Blob into the cache account (as the agent uploads a batch), Get Blob of those blobs (apply's download),
 * Put Page into a page blob of the replica account (apply's write). Storage busy with one pass is not free for another,
 * so while each pass keeps it busy, the three together carry at most `ceilingMBps`. Where the passes cost the same, that
 * is a third of the page writes at the same concurrency; on Azurite a Put Blob costs more than a page write (it writes
 * the blob, then reads it back to compute its MD5: BlockBlobHandler.upload), so the ceiling is lower than that third.
 */
export async function threePassCeiling(cache: BlobServiceClient, replica: BlobServiceClient, bytes: number, concurrency: number): Promise<ThreePass> {
  const MiB4 = 4 * 1024 * 1024;
  const n = Math.max(concurrency, Math.ceil(bytes / MiB4));
  const data = randomBytes(MiB4 * 16);
  const piece = (i: number) => data.subarray((i % 15) * MiB4, (i % 15) * MiB4 + MiB4);
  const rate = async (op: (i: number, slot: number) => Promise<unknown>) => {
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: concurrency }, async (_, slot) => {
        while (next < n) await op(next++, slot);
      }),
    );
    return (n * MiB4) / 1e6 / ((performance.now() - t0) / 1000);
  };
  const container = cache.getContainerClient(`bench-passes-${Math.random().toString(36).slice(2, 8)}`);
  await container.createIfNotExists();
  try {
    const putBlobMBps = await rate((i) => container.getBlockBlobClient(`batch-${i}`).upload(piece(i), MiB4));
    const into = Array.from({ length: concurrency }, () => Buffer.allocUnsafe(MiB4));
    const getBlobMBps = await rate((i, slot) => container.getBlockBlobClient(`batch-${i}`).downloadToBuffer(into[slot]!, 0, MiB4));
    const putPageMBps = await rawPageWrites(replica, n * MiB4, n * MiB4, { writeBytes: MiB4, random: false, concurrency, blobs: 1 });
    return { putBlobMBps, getBlobMBps, putPageMBps, ceilingMBps: 1 / (1 / putBlobMBps + 1 / getBlobMBps + 1 / putPageMBps) };
  } finally {
    await container.delete();
  }
}

export function describeThreePass(p: ThreePass): string {
  return `Put Blob ${round(p.putBlobMBps, 1)}, Get Blob ${round(p.getBlobMBps, 1)}, Put Page ${round(p.putPageMBps, 1)} MB/s → three-pass ceiling ${round(p.ceilingMBps, 1)} MB/s`;
}
