// `site-recovery demo`: a complete DR drill on a throwaway local stack — two VMs in one replication group, a live workload, a test failover, an unplanned failover, every failed-over disk checked block by block against its source at the recovery point.
import { randomBytes } from "node:crypto";
import { closeSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { crc32c } from "@node-rs/crc32";
import type { ContainerClient } from "@azure/storage-blob";
import { Agent } from "../agent";
import type { BatchTag } from "../shared/replication/batch";
import { loadConfig, timerSchedules } from "../shared/config/settings";
import { blobService, FAILOVER_CONTAINER } from "../shared/storage/clients";
import { createServices } from "../functions/compose";
import { functionTable } from "../functions/table";
import type { FailoverOutput } from "../shared/contract/responses";
import { startAzurite, type LocalStorage } from "../local/azurite";
import { LocalFunctionsHost } from "../local/host";
import { freePort } from "../local/process";
import { PACKAGE_ROOT } from "../local/start";
import { ApiCallError, ApiClient } from "../shared/contract/client";
import { followFailover } from "./follow-failover";
import { QemuIo } from "./qemu-io";
import { formatTable } from "./format";

const MiB = 1024 * 1024;
/** Fingerprint granularity: the CRC32C of every 64 KiB block (what a differential resync compares too). */
const BLOCK = 64 * 1024;
const GROUP = "demo-tier";
const DISK_IDS = ["os", "data0"] as const;
const VMS = [
  { name: "demo-web", privateIp: "10.2.0.4" },
  { name: "demo-db", privateIp: "10.2.0.5" },
];
/** Fingerprints of this many group tags are kept (the newest sealed point is always among them). */
const KEEP_TAGS = 12;
/** The policy's crash-consistent cadence: the shortest it allows. */
const TAG_SECONDS = 10;

export interface DemoOptions {
  diskMiB: number;
  seconds: number;
  /** Workload rate over all disks, MB/s. */
  mbps: number;
  /** Where the JSON report goes. */
  reportPath: string;
  /** Stream the host's and the agents' log lines. */
  verbose: boolean;
  print?: (line: string) => void;
}

export const DEFAULT_REPORT_PATH = join(PACKAGE_ROOT, ".local", "demo-report.json");

/** A failure that ends the drill with a clear message (not a mismatch: those are reported as results). */
export class DemoError extends Error {
  override name = "DemoError";
}

// ---------------------------------------------------------------------------------------------
// What the drill reads over the API (the fields it uses of each response)

interface ItemView {
  id: string;
  state: string;
  health: { status: string };
  rpoSeconds: number | null;
  disks: { id: string; sizeBytes: number; initialReplication?: { percent: number; doneBytes: number; totalBytes: number } }[];
}

type VmOutcome = FailoverOutput["vms"][number];

// ---------------------------------------------------------------------------------------------
// Fingerprints: each disk as it is at a group cut, 4 bytes per 64 KiB block

const readBuffer = Buffer.alloc(4 * MiB);

/** CRC32C of every 64 KiB block of an image file, read now (synchronously: it runs at the cut, writes held). */
export function fingerprintFile(path: string, sizeBytes: number): Uint32Array {
  const out = new Uint32Array(Math.ceil(sizeBytes / BLOCK));
  const fd = openSync(path, "r");
  try {
    for (let at = 0; at < sizeBytes; at += readBuffer.length) {
      const n = Math.min(readBuffer.length, sizeBytes - at);
      let got = 0;
      while (got < n) {
        const r = readSync(fd, readBuffer, got, n - got, at + got);
        if (r === 0) break;
        got += r;
      }
      readBuffer.fill(0, got, n); // past the end of a short image: zeros
      for (let b = 0; b < n; b += BLOCK) out[(at + b) / BLOCK] = crc32c(readBuffer.subarray(b, Math.min(n, b + BLOCK)));
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** Per group tag, each VM's disks at the cut (keyed `<itemId>/<diskId>`); only the newest KEEP_TAGS tags. */
class CutFingerprints {
  private readonly tags = new Map<string, { time: string; disks: Map<string, Uint32Array> }>();

  record(itemId: string, tag: BatchTag, disks: { id: string; path: string; sizeBytes: number }[]): void {
    let entry = this.tags.get(tag.id);
    if (!entry) {
      entry = { time: tag.time, disks: new Map() };
      this.tags.set(tag.id, entry);
      for (const old of [...this.tags.keys()].slice(0, Math.max(0, this.tags.size - KEEP_TAGS))) this.tags.delete(old);
    }
    for (const d of disks) entry.disks.set(`${itemId}/${d.id}`, fingerprintFile(d.path, d.sizeBytes));
  }

  get(tagId: string, itemId: string, diskId: string): Uint32Array | undefined {
    return this.tags.get(tagId)?.disks.get(`${itemId}/${diskId}`);
  }

  has(tagId: string): boolean {
    return this.tags.has(tagId);
  }
}

// ---------------------------------------------------------------------------------------------
// The workload: random 4 KiB-aligned writes by a real NBD client (qemu-io) through the agent's exports, each awaited, paced to a rate

interface DiskTarget {
  vm: string;
  itemId: string;
  diskId: string;
  /** The agent's NBD socket: the disk is the export named after its id. */
  socket: string;
  sizeBytes: number;
}

class Workload {
  /** The acknowledged writes per disk (`<vm>/<diskId>`): what the workload knows reached its disk. */
  readonly acknowledged = new Map<string, { writes: number; bytes: number }>();
  failure: Error | undefined;
  private running = true;
  private readonly loops: Promise<void>[];

  constructor(targets: DiskTarget[], bytesPerSecond: number) {
    const perDisk = bytesPerSecond / targets.length;
    this.loops = targets.map((t) => this.writer(t, perDisk));
  }

  get bytes(): number {
    let n = 0;
    for (const a of this.acknowledged.values()) n += a.bytes;
    return n;
  }

  get writes(): number {
    let n = 0;
    for (const a of this.acknowledged.values()) n += a.writes;
    return n;
  }

  private async writer(t: DiskTarget, bytesPerSecond: number): Promise<void> {
    const io = QemuIo.open(`nbd+unix:///${t.diskId}?socket=${t.socket}`);
    try {
      await this.write(t, io, bytesPerSecond);
    } finally {
      await io.close();
    }
  }

  private async write(t: DiskTarget, io: QemuIo, bytesPerSecond: number): Promise<void> {
    const acked = { writes: 0, bytes: 0 };
    this.acknowledged.set(`${t.vm}/${t.diskId}`, acked);
    const pages = t.sizeBytes / 4096;
    const started = performance.now();
    while (this.running) {
      const len = 4096 * (1 + Math.floor(Math.random() * 16));
      const offset = 4096 * Math.floor(Math.random() * (pages - len / 4096 + 1));
      try {
        // Each write its own byte value: a write lost or applied out of order shows in the fingerprints.
        await io.write(offset, len, 1 + (acked.writes % 255));
      } catch (e) {
        this.failure ??= new DemoError(`a write to ${t.vm}/${t.diskId} failed: ${(e as Error).message}`);
        return;
      }
      acked.writes++;
      acked.bytes += len;
      const due = started + (acked.bytes / bytesPerSecond) * 1000;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }
}

// ---------------------------------------------------------------------------------------------
// The drill

interface DemoVm {
  name: string;
  itemId: string;
  agent?: Agent;
  disks: { id: string; path: string; sizeBytes: number }[];
  rpo: { max?: number; last?: number };
}

export interface DiskCheck {
  phase: "test" | "unplanned";
  vm: string;
  diskId: string;
  blob: string;
  pointId: string;
  blocks: number;
  mismatchedBlocks: number;
  /** Byte offset of the first 64 KiB block that differs. */
  firstMismatchAt?: number;
  problem?: string;
  matched: boolean;
}

interface FailoverRun {
  phase: "test" | "unplanned";
  instanceId: string;
  output: FailoverOutput;
  wallSeconds: number;
}

export interface DemoReport {
  ok: boolean;
  startedAt: string;
  settings: { vms: number; disksPerVm: number; diskMiB: number; seconds: number; mbps: number; replicationGroup: string; crashConsistentFrequencySeconds: number };
  workload: { seconds: number; writes: number; bytesWritten: number };
  replication: { batchesShipped: number; bytesShipped: number; initialReplicationSeconds: number };
  /** Group tags cut while the drill watched, and the longest a cut held a VM's writes (fingerprinting included). */
  groupTags: { cut: number; maxWriteHoldMs: number };
  vms: { vm: string; itemId: string; rpoSecondsMax: number | null; rpoSecondsLast: number | null }[];
  failovers: {
    phase: "test" | "unplanned";
    instanceId: string;
    rtoSeconds: number;
    wallSeconds: number;
    vms: { vm: string; recoveryPoint: VmOutcome["recoveryPoint"]; dataLossWindowSeconds: number; failoverDurationSeconds: number }[];
  }[];
  disks: DiskCheck[];
  error?: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;
const secs = (s: number) => `${s.toFixed(1)} s`;
const short = (id: string) => (id.length > 12 ? id.slice(0, 8) : id);
const clock = (iso: string) => iso.slice(11, 19);

export async function runDemo(opts: DemoOptions): Promise<DemoReport> {
  const print = opts.print ?? ((l: string) => console.log(l));
  const t0 = performance.now();
  const elapsed = () => `${Math.round((performance.now() - t0) / 1000)}s`.padStart(5);
  const status = (line: string) => print(`${elapsed()}  ${line}`);
  const logTail: string[] = [];
  const logLine = (who: string) => (line: string) => {
    const l = `[${who}] ${line}`;
    logTail.push(l);
    if (logTail.length > 40) logTail.shift();
    if (opts.verbose) print(`        ${l}`);
  };

  const diskBytes = opts.diskMiB * MiB;
  const report: DemoReport = {
    ok: false,
    startedAt: new Date().toISOString(),
    settings: { vms: VMS.length, disksPerVm: DISK_IDS.length, diskMiB: opts.diskMiB, seconds: opts.seconds, mbps: opts.mbps, replicationGroup: GROUP, crashConsistentFrequencySeconds: TAG_SECONDS },
    workload: { seconds: 0, writes: 0, bytesWritten: 0 },
    replication: { batchesShipped: 0, bytesShipped: 0, initialReplicationSeconds: 0 },
    groupTags: { cut: 0, maxWriteHoldMs: 0 },
    vms: [],
    failovers: [],
    disks: [],
  };

  const dir = mkdtempSync(join(tmpdir(), "site-recovery-demo-"));
  let storage: LocalStorage | undefined;
  let host: LocalFunctionsHost | undefined;
  let workload: Workload | undefined;
  const vms: DemoVm[] = [];
  let groupTags = 0;
  let cleaned: Promise<void> | undefined;
  const cleanup = () =>
    (cleaned ??= (async () => {
      await workload?.stop().catch(() => undefined);
      await Promise.all(vms.map((v) => v.agent?.stop(2000).catch(() => undefined) ?? Promise.resolve()));
      await host?.stop().catch(() => undefined);
      await storage?.stop().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    })());
  // Ctrl-C: the temp directory and Azurite go too.
  const onSignal = (signal: NodeJS.Signals) => {
    print(`\n${signal}: stopping the drill and removing ${dir}…`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  print(
    `site-recovery demo: a DR drill on a throwaway local stack — ${VMS.length} VMs × ${DISK_IDS.length} disks of ${opts.diskMiB} MiB in replication group ${GROUP}, ` +
      `${opts.seconds} s of live writes at ${opts.mbps} MB/s`,
  );
  try {
    // 1. The stack: Azurite on free ports in the temp directory, the Functions host in this process.
    print(`\n[1/6] Local stack (everything under ${dir}, removed at the end)`);
    storage = await startAzurite({ location: join(dir, "azurite"), silent: true });
    print(`      Azurite on 127.0.0.1 ports ${storage.ports.blob}/${storage.ports.queue}/${storage.ports.table} (accounts devstoreaccount1 = target region, sourcecache = source-region cache)`);
    const env: NodeJS.ProcessEnv = {
      AzureWebJobsStorage: storage.control,
      CACHE_STORAGE: storage.cache,
      // A snappy drill: agents check in every second, the sealing pass runs every 5 s.
      AGENT_CHECKIN_SECONDS: "1",
      SEAL_SCHEDULE: "*/5 * * * * *",
    };
    const config = loadConfig(env);
    const services = createServices(config, { log: logLine("host") });
    host = new LocalFunctionsHost(functionTable(() => services, timerSchedules(env)), {
      port: await freePort(),
      env,
      maxRequestBytes: config.http.maxRequestBytes,
      durable: { taskHub: config.taskHub },
      log: logLine("host"),
    });
    const { port } = await host.start();
    const url = `http://127.0.0.1:${port}`;
    const api = new ApiClient(url);
    print(`      Functions host on ${url}  (try: curl ${url}/api/replicated-items)`);

    // 2. Protect two VMs as one replication group; agents on image files with some data for the initial copy.
    print(`\n[2/6] Protect ${VMS.map((v) => v.name).join(" and ")} (eastus → westus) as replication group ${GROUP}, crash-consistent points every ${TAG_SECONDS} s`);
    const fingerprints = new CutFingerprints();
    for (const spec of VMS) {
      const item = await api.call<{ id: string; agentRegistration: { token: string } }>("POST", "replicated-items", enableBody(spec.name, spec.privateIp, diskBytes));
      const vmDir = join(dir, spec.name);
      mkdirSync(vmDir);
      const vm: DemoVm = {
        name: spec.name,
        itemId: item.id,
        disks: DISK_IDS.map((id) => ({ id, path: join(vmDir, `${id}.img`), sizeBytes: diskBytes })),
        rpo: {},
      };
      for (const d of vm.disks) writeImage(d.path, d.sizeBytes);
      vms.push(vm);
      print(`      ${spec.name.padEnd(9)} item ${item.id}  disks ${DISK_IDS.join(", ")}: ${opts.diskMiB} MiB image files, ${opts.diskMiB / 8} MiB of data each`);
      vm.agent = await Agent.start({
        url,
        token: item.agentRegistration.token,
        stateDir: join(vmDir, "agent-state"),
        disks: vm.disks.map((d) => ({ id: d.id, path: d.path, kind: "tracked" as const })),
        // Every disk an NBD export on this socket, as `site-recovery agent --nbd` serves them.
        nbd: { socketPath: join(vmDir, "nbd.sock") },
        groupPort: 0,
        groupHost: "127.0.0.1",
        // Both agents live in this process and fingerprint their disks at each cut: allow for that in the hold.
        groupHoldBoundMs: 5000,
        groupOnCut: (tag) => {
          if (!fingerprints.has(tag.id)) groupTags++;
          fingerprints.record(vm.itemId, tag, vm.disks);
        },
        log: logLine(spec.name),
      });
    }
    print(`      agents started, each serving its disks over NBD (nbd+unix:///<disk>?socket=…/nbd.sock): every write goes through the agent, in order`);

    const initialStart = performance.now();
    let lastProgress = -1;
    let progressAt = performance.now();
    for (;;) {
      const views = await Promise.all(vms.map((v) => api.call<ItemView>("GET", `replicated-items/${v.itemId}`)));
      const done = views.reduce((n, v) => n + v.disks.reduce((m, d) => m + (d.initialReplication?.doneBytes ?? 0), 0), 0);
      const line = views.map((v, i) => `${vms[i]!.name} ${percent(v).padStart(6)} ${v.state}`).join(" · ");
      status(`initial replication  ${line}`);
      if (views.every((v) => v.state === "Protected")) break;
      if (done !== lastProgress) {
        lastProgress = done;
        progressAt = performance.now();
      } else if (performance.now() - progressAt > 120_000) {
        throw new DemoError(`initial replication made no progress for 120 s: ${line}`);
      }
      await sleep(1000);
    }
    report.replication.initialReplicationSeconds = Math.round((performance.now() - initialStart) / 100) / 10;
    const coordinator = await waitForGroup(vms);
    print(`      both VMs Protected after ${secs(report.replication.initialReplicationSeconds)}; group barrier: ${coordinator.name} coordinates, ${vms.length - 1} member connected`);

    // 3. A live workload; the coordinator cuts group tags meanwhile, each fingerprinted at the cut.
    print(`\n[3/6] Live workload: qemu-io writes random 4–64 KiB through the NBD exports, ${opts.mbps} MB/s over ${vms.length * DISK_IDS.length} disks, ${opts.seconds} s`);
    const targets: DiskTarget[] = vms.flatMap((v) => v.disks.map((d) => ({ vm: v.name, itemId: v.itemId, diskId: d.id, socket: join(dir, v.name, "nbd.sock"), sizeBytes: d.sizeBytes })));
    const workloadStart = performance.now();
    workload = new Workload(targets, opts.mbps * 1e6);
    const sample = async (): Promise<string> => {
      const parts = await Promise.all(
        vms.map(async (v) => {
          const [item, points] = await Promise.all([
            api.call<ItemView>("GET", `replicated-items/${v.itemId}`),
            api.call<{ scope: string }[]>("GET", `replicated-items/${v.itemId}/recovery-points`),
          ]);
          if (item.rpoSeconds !== null) {
            v.rpo.last = item.rpoSeconds;
            v.rpo.max = Math.max(v.rpo.max ?? 0, item.rpoSeconds);
          }
          const n = points.filter((p) => p.scope === "group").length;
          return `${v.name} ${item.state} RPO ${item.rpoSeconds === null ? "-" : `${item.rpoSeconds}s`} ${n} point${n === 1 ? "" : "s"}`;
        }),
      );
      return parts.join(" · ");
    };
    const workloadEnd = workloadStart + opts.seconds * 1000;
    while (performance.now() < workloadEnd) {
      await sleep(Math.min(2000, Math.max(0, workloadEnd - performance.now())));
      if (workload.failure) throw workload.failure;
      status(`written ${mb(workload.bytes).padStart(8)} · ${await sample()} · group tags ${groupTags}`);
    }
    // The failover needs a sealed group point that was fingerprinted at its cut.
    const newest = await waitForFingerprintedPoint(api, vms[0]!, fingerprints, (line) => status(`${line} · written ${mb(workload!.bytes)}`));
    print(`      newest group point ${short(newest.id)} (${newest.kind}, ${clock(newest.time)}Z); the workload keeps writing`);

    // 4. Test failover of the group while the workload runs; verify; clean up.
    print(`\n[4/6] Test failover of ${GROUP} to latest-processed (replication keeps running; the workload too)`);
    const test = await runFailover(api, { groupId: GROUP, type: "test", recoveryPoint: "latest-processed" }, "test", status);
    report.failovers.push(failoverSummary(test));
    report.disks.push(...(await verifyRun(config.storage.replica, test, vms, fingerprints, print)));
    for (const v of vms) {
      const cleaned = await api.call<{ state: string; removed: string[] }>("POST", `replicated-items/${v.itemId}/test-failover-cleanup`);
      print(`      ${v.name}: test failover cleaned up (${cleaned.removed.length} resources removed), state ${cleaned.state}`);
      if (cleaned.state !== "Protected") throw new DemoError(`${v.name} is ${cleaned.state} after the test-failover cleanup, not Protected`);
    }
    status(`after the test failover: written ${mb(workload.bytes)} · ${await sample()}`);

    // 5. The source region is lost: writers stop (the agents keep running), unplanned failover.
    await workload.stop();
    if (workload.failure) throw workload.failure;
    report.workload = { seconds: Math.round((performance.now() - workloadStart) / 100) / 10, writes: workload.writes, bytesWritten: workload.bytes };
    print(`\n[5/6] Disaster: the writers stop (${mb(workload.bytes)} acknowledged in ${workload.writes} writes); unplanned failover of ${GROUP} to latest-processed`);
    const unplanned = await runFailover(api, { groupId: GROUP, type: "unplanned", recoveryPoint: "latest-processed" }, "unplanned", status);
    report.failovers.push(failoverSummary(unplanned));
    report.disks.push(...(await verifyRun(config.storage.replica, unplanned, vms, fingerprints, print)));
    for (const v of vms) {
      const item = await api.call<ItemView>("GET", `replicated-items/${v.itemId}`);
      print(`      ${v.name}: ${item.state}`);
    }
  } catch (e) {
    report.error =
      e instanceof DemoError ? e.message : e instanceof ApiCallError ? `the API answered ${e.status} ${e.code}: ${e.message}` : `${(e as Error).name}: ${(e as Error).message}`;
  } finally {
    for (const v of vms) report.vms.push({ vm: v.name, itemId: v.itemId, rpoSecondsMax: v.rpo.max ?? null, rpoSecondsLast: v.rpo.last ?? null });
    for (const v of vms) {
      const s = v.agent?.shipped;
      report.replication.batchesShipped += s?.batches ?? 0;
      report.replication.bytesShipped += s?.bytes ?? 0;
      report.groupTags.maxWriteHoldMs = Math.max(report.groupTags.maxWriteHoldMs, Math.round(Math.max(0, ...(v.agent?.groupHoldsMs() ?? []))));
    }
    report.groupTags.cut = groupTags;
    if (workload && report.workload.writes === 0) report.workload = { seconds: opts.seconds, writes: workload.writes, bytesWritten: workload.bytes };
    print(`\n      stopping agents, host and Azurite; removing ${dir}`);
    await cleanup();
    process.removeListener("SIGINT", onSignal);
    process.removeListener("SIGTERM", onSignal);
  }

  report.ok = !report.error && report.disks.length === VMS.length * DISK_IDS.length * 2 && report.disks.every((d) => d.matched);
  printReport(report, print);
  if (report.error && logTail.length > 0 && !opts.verbose) {
    print(`\nlast log lines of the host and agents:`);
    for (const l of logTail.slice(-15)) print(`  ${l}`);
  }
  try {
    mkdirSync(dirname(resolve(opts.reportPath)), { recursive: true });
    writeFileSync(opts.reportPath, JSON.stringify(report, null, 2));
    print(`\nreport written to ${opts.reportPath}`);
  } catch (e) {
    print(`\ncould not write the report to ${opts.reportPath}: ${(e as Error).message}`);
  }
  return report;
}

// ---------------------------------------------------------------------------------------------
// Steps

function enableBody(name: string, privateIp: string, diskBytes: number) {
  return {
    vm: {
      name,
      region: "eastus",
      resourceGroup: "demo-rg",
      size: "Standard_D2s_v5",
      network: { vnet: "demo-vnet", subnet: "app", privateIp },
      disks: DISK_IDS.map((id) => ({ id, sizeBytes: diskBytes })),
    },
    targetRegion: "westus",
    replicationGroup: GROUP,
    policy: { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: TAG_SECONDS, appConsistentFrequencyMinutes: 0 },
  };
}

/** A sparse image of the disk's size with random data in one eighth of its 64 KiB blocks: work for the initial copy. */
function writeImage(path: string, sizeBytes: number): void {
  const fd = openSync(path, "w");
  try {
    ftruncateSync(fd, sizeBytes);
    const blocks = sizeBytes / BLOCK;
    const picked = new Set<number>();
    while (picked.size < Math.max(1, Math.floor(blocks / 8))) picked.add(Math.floor(Math.random() * blocks));
    for (const b of picked) writeSync(fd, randomBytes(BLOCK), 0, BLOCK, b * BLOCK);
  } finally {
    closeSync(fd);
  }
}

function percent(v: ItemView): string {
  const total = v.disks.reduce((n, d) => n + (d.initialReplication?.totalBytes ?? d.sizeBytes), 0);
  const done = v.disks.reduce((n, d) => n + (d.initialReplication?.doneBytes ?? 0), 0);
  return `${total ? ((done / total) * 100).toFixed(1) : "0.0"}%`;
}

/** The group's barrier is up: one agent coordinates and every other one is connected to it. */
async function waitForGroup(vms: DemoVm[], timeoutMs = 60_000): Promise<DemoVm> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const c = vms.find((v) => v.agent!.groupRole === "coordinator");
    if (c && c.agent!.groupMembersConnected().length >= vms.length - 1) return c;
    if (Date.now() > deadline) {
      throw new DemoError(`the replication group's barrier did not form within ${timeoutMs / 1000} s (roles: ${vms.map((v) => `${v.name} ${v.agent!.groupRole}`).join(", ")})`);
    }
    await sleep(200);
  }
}

/** Waits until the newest sealed group point is one whose cut this drill fingerprinted. */
async function waitForFingerprintedPoint(
  api: ApiClient,
  vm: DemoVm,
  fingerprints: CutFingerprints,
  status: (line: string) => void,
  timeoutMs = (TAG_SECONDS * 3 + 60) * 1000,
): Promise<{ id: string; kind: string; time: string }> {
  const deadline = Date.now() + timeoutMs;
  let said = 0;
  for (;;) {
    const points = await api.call<{ id: string; kind: string; time: string; scope: string }[]>("GET", `replicated-items/${vm.itemId}/recovery-points`);
    const newest = points.find((p) => p.scope === "group");
    if (newest && fingerprints.has(newest.id)) return newest;
    if (Date.now() > deadline) throw new DemoError(`no group recovery point was sealed within ${timeoutMs / 1000} s`);
    if (Date.now() - said > 2000) {
      status(`waiting for a group recovery point (one every ${TAG_SECONDS} s)`);
      said = Date.now();
    }
    await sleep(500);
  }
}

/** Starts a failover, shows its progress (custom status) until it ends, and returns its output. */
async function runFailover(api: ApiClient, body: unknown, phase: "test" | "unplanned", status: (line: string) => void): Promise<FailoverRun> {
  const started = performance.now();
  const { id } = await api.call<{ id: string }>("POST", "failovers", body);
  status(`failover ${id} accepted (202)`);
  const st = await followFailover(api, id, (line, s) => status(`${phase} failover ${s.runtimeStatus}: ${line}`), { repeatMs: 2000, timeoutMs: 300_000 }).catch((e: Error) => {
    throw e instanceof ApiCallError ? e : new DemoError(`the ${phase} failover: ${e.message}`);
  });
  if (st.runtimeStatus !== "Completed") {
    const why = st.customStatus?.error ?? (typeof st.output === "string" ? st.output : JSON.stringify(st.output));
    throw new DemoError(`the ${phase} failover ${id} ended ${st.runtimeStatus}: ${why}`);
  }
  if (!st.output || typeof st.output === "string") throw new DemoError(`failover ${id} completed without an output`);
  return { phase, instanceId: id, output: st.output, wallSeconds: Math.round((performance.now() - started) / 100) / 10 };
}

function failoverSummary(run: FailoverRun): DemoReport["failovers"][number] {
  return {
    phase: run.phase,
    instanceId: run.instanceId,
    rtoSeconds: run.output.rtoSeconds,
    wallSeconds: run.wallSeconds,
    vms: run.output.vms.map((v) => ({ vm: v.vm, recoveryPoint: v.recoveryPoint, dataLossWindowSeconds: v.dataLossWindowSeconds, failoverDurationSeconds: v.failoverDurationSeconds })),
  };
}

/** Every failover disk of the run against the fingerprint of its VM's disk at the point's cut, 64 KiB block by block. */
async function verifyRun(
  replica: Parameters<typeof blobService>[0],
  run: FailoverRun,
  vms: DemoVm[],
  fingerprints: CutFingerprints,
  print: (line: string) => void,
): Promise<DiskCheck[]> {
  const o = run.output;
  print(`      ${run.phase} failover completed: RTO ${secs(o.rtoSeconds)} (orchestration), ${secs(run.wallSeconds)} from POST to Completed`);
  const container = blobService(replica).getContainerClient(FAILOVER_CONTAINER);
  const checks: DiskCheck[] = [];
  for (const v of o.vms) {
    const vm = vms.find((x) => x.itemId === v.itemId);
    const p = v.recoveryPoint;
    print(
      `      ${v.vm.padEnd(9)} → ${v.targetVm.name} (${v.targetVm.powerState}, ${v.targetVm.privateIp}) from point ${short(p.id)} (${p.kind}, ${p.scope}, ${clock(p.time)}Z), ` +
        `data-loss window ${v.dataLossWindowSeconds} s`,
    );
    if (v.disks.length !== DISK_IDS.length) print(`        expected ${DISK_IDS.length} disks, the output lists ${v.disks.length}`);
    for (const d of v.disks) {
      const size = vm?.disks.find((x) => x.id === d.diskId)?.sizeBytes ?? 0;
      const check = await verifyDisk(container, d.blob, size, fingerprints.get(p.id, v.itemId, d.diskId));
      const c: DiskCheck = { phase: run.phase, vm: v.vm, diskId: d.diskId, pointId: p.id, ...check };
      checks.push(c);
      print(
        `        ${d.diskId.padEnd(6)} ${d.blob}: ` +
          (c.matched
            ? `${c.blocks}/${c.blocks} blocks match the source at the point`
            : `MISMATCH — ${c.problem ?? `${c.mismatchedBlocks} of ${c.blocks} blocks differ, the first at byte ${c.firstMismatchAt}`}`),
      );
    }
  }
  return checks;
}

async function verifyDisk(
  container: ContainerClient,
  blobPath: string,
  sizeBytes: number,
  expected: Uint32Array | undefined,
): Promise<Omit<DiskCheck, "phase" | "vm" | "diskId" | "pointId">> {
  const base = { blob: blobPath, blocks: expected?.length ?? Math.ceil(sizeBytes / BLOCK), mismatchedBlocks: 0 };
  if (!expected) return { ...base, matched: false, problem: "no fingerprint of this point: its cut was not seen by the drill" };
  const prefix = `${FAILOVER_CONTAINER}/`;
  if (!blobPath.startsWith(prefix)) return { ...base, matched: false, problem: `not a blob of the ${FAILOVER_CONTAINER} container` };
  const blob = container.getPageBlobClient(blobPath.slice(prefix.length));
  const length = (await blob.getProperties()).contentLength ?? 0;
  if (length !== sizeBytes + 512) return { ...base, matched: false, problem: `${length} bytes, expected the disk's ${sizeBytes} + a 512-byte VHD footer` };
  const footer = await blob.downloadToBuffer(sizeBytes, 512);
  if (footer.subarray(0, 8).toString("latin1") !== "conectix") return { ...base, matched: false, problem: "the last 512 bytes are not a VHD footer" };
  let mismatchedBlocks = 0;
  let firstMismatchAt: number | undefined;
  for (let at = 0; at < sizeBytes; at += 4 * MiB) {
    const chunk = await blob.downloadToBuffer(at, Math.min(4 * MiB, sizeBytes - at));
    for (let b = 0; b < chunk.length; b += BLOCK) {
      const index = (at + b) / BLOCK;
      if (crc32c(chunk.subarray(b, Math.min(chunk.length, b + BLOCK))) !== expected[index]) {
        mismatchedBlocks++;
        firstMismatchAt ??= at + b;
      }
    }
  }
  return { ...base, mismatchedBlocks, ...(firstMismatchAt !== undefined ? { firstMismatchAt } : {}), matched: mismatchedBlocks === 0 };
}

// ---------------------------------------------------------------------------------------------
// The report

function printReport(r: DemoReport, print: (line: string) => void): void {
  print(`\n[6/6] Report`);
  const rows: string[][] = [];
  for (const f of r.failovers) {
    for (const v of f.vms) {
      const disks = r.disks.filter((d) => d.phase === f.phase && d.vm === v.vm);
      rows.push([
        f.phase,
        v.vm,
        `${short(v.recoveryPoint.id)} ${v.recoveryPoint.kind}/${v.recoveryPoint.scope}`,
        `${clock(v.recoveryPoint.time)}Z`,
        `${v.dataLossWindowSeconds} s`,
        secs(f.rtoSeconds),
        secs(f.wallSeconds),
        `${disks.filter((d) => d.matched).length}/${disks.length} match`,
      ]);
    }
  }
  if (rows.length > 0) {
    const table = formatTable(["FAILOVER", "VM", "RECOVERY POINT", "POINT TIME", "DATA LOSS", "RTO", "POST→DONE", "DISKS"], rows);
    for (const l of table.split("\n")) print(`  ${l}`);
    print("");
  }
  const rpo = r.vms.map((v) => `${v.vm} max ${v.rpoSecondsMax ?? "-"} s, last ${v.rpoSecondsLast ?? "-"} s`).join(" · ");
  print(`  RPO during the run      ${rpo}`);
  print(`  group tags              ${r.groupTags.cut} cut, every ${r.settings.crashConsistentFrequencySeconds} s; writes held at most ${r.groupTags.maxWriteHoldMs} ms per cut (the drill's fingerprinting included)`);
  print(`  workload                ${mb(r.workload.bytesWritten)} acknowledged in ${r.workload.writes} writes over ${secs(r.workload.seconds)}`);
  print(`  replicated              ${mb(r.replication.bytesShipped)} shipped to the cache in ${r.replication.batchesShipped} batches (initial copy included, done in ${secs(r.replication.initialReplicationSeconds)})`);
  const expected = r.settings.vms * r.settings.disksPerVm * 2;
  const matched = r.disks.filter((d) => d.matched).length;
  print(`  disks verified          ${matched}/${expected} (test and unplanned failover disks, CRC32C of every 64 KiB block against the source at the point's cut)`);
  if (r.ok) {
    print(`\nRESULT: PASS — all ${matched}/${expected} failed-over disks matched their recovery points block for block.`);
    return;
  }
  const bad = r.disks.filter((d) => !d.matched);
  for (const d of bad) {
    print(`  MISMATCH ${d.phase} ${d.vm}/${d.diskId} (${d.blob}, point ${d.pointId}): ${d.problem ?? `${d.mismatchedBlocks} of ${d.blocks} blocks differ, first at byte ${d.firstMismatchAt}`}`);
  }
  const why = r.error ? `the drill failed: ${r.error}` : `${bad.length} of ${expected} failed-over disks do not match their recovery points (${matched} matched)`;
  print(`\nRESULT: FAIL — ${why}`);
}
