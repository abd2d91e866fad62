// The chaos soak: a local stack in real processes, four protected VMs under a seeded workload kept in a byte model, seeded faults, and an oracle that stops at the first divergence.
// Over 500 lines: the run's scheduler, the faults that restart or stop the stack itself (hosts, Azurite, its keys) and its
// oracle share one stack and one history; the model, the VMs, the writer process, the faults that reach into the
// product's protocols (faults.ts) and the DR cycle (cycle.ts) are modules of their own.
import { mkdirSync, mkdtempSync, rmSync, appendFileSync, writeFileSync, createWriteStream } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startAzurite, type LocalStorage } from "../local/azurite";
import { freePort, startHostProcess, type HostProcess } from "../local/process";
import { loadConfig, type Config } from "../shared/config/settings";
import { Storage, queueService } from "../shared/storage/clients";
import { REPLICATION_QUEUE } from "../shared/storage/names";
import { cacheContainerName, replicaBlobName } from "../shared/protection/items";
import { batchBlobName, seqOfBlobName } from "../shared/replication/batch";
import { rng } from "../test/support/batches";
import { percentile, round, table } from "../bench/harness";
import { firstDifference } from "./model";
import { SoakVm, type Capture } from "./vms";
import { Divergence, FINISHED, type Answer, type ApiPoint, type FailoverAnswer, type FaultRecord, type SoakContext } from "./context";
import { agentCacheSas, batchCorrupt, groupStall, spoolOverflow, trySas } from "./faults";
import { reprotectCycle } from "./cycle";

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A timer that does not keep the process alive once it has lost its race. */
const bound = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
const GROUP = "soak-tier";
/**
 * The soak's own reads of a replica, snapshot or failover disk. Late in a long run Azurite re-serialises its blob
 * metadata (every snapshot's page ranges) every 5 s, and on a loaded machine a 16 MiB read then takes tens of seconds.
 */
const READ_BOUND_MS = 120_000;
/** A scanned disk's point holds the disk as it was at one instant of its quiet round, up to this long before the tag's time. */
const SCAN_SLACK_MS = 15_000;

export const FAULT_KINDS = [
  "host-kill",
  "agent-kill",
  "storage-stall",
  "storage-restart",
  "queue-duplicate",
  "queue-delay",
  "queue-drop",
  "lease-break",
  "nbd-vanish",
  "batch-late",
  "sas-expired-early",
  "batch-corrupt",
  "group-stall",
  "spool-overflow",
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface SoakOptions {
  minutes: number;
  seed: number;
  diskMiB?: number;
  hosts?: number;
  /** Where the stack's data and logs go (kept after a divergence; removed after a clean run unless `keep`). */
  dir?: string;
  keep?: boolean;
  faults?: readonly FaultKind[];
  /** Bytes per second each writer writes to each disk (default 64 KiB/s): what the replicas must keep up with. */
  bytesPerSecond?: number;
  /** How long a convergence check may take in all before it is a divergence (default 180 s). */
  convergenceTimeoutMs?: number;
  /** How long a failover may run before it is a divergence (default 300 s). */
  failoverTimeoutMs?: number;
  /** No fault is injected in the last this-many ms of the run (default 15 s): the end checks start from a settled stack. */
  quietEndMs?: number;
  /** A convergence check every this-many faults (default 5; 0: only the final one); a test failover every this-many (default 3). */
  convergenceEvery?: number;
  testFailoverEvery?: number;
  /** Once per run, a planned failover, re-protect and failback of the NBD VM (default: runs of 5 minutes or more). */
  reprotectCycle?: boolean;
  log?: (line: string) => void;
}

export type { FaultRecord } from "./context";

/** Per fault kind: injected, seen to take effect in the product, and verified (bytes checked after it). */
export interface FaultOutcome {
  injected: number;
  took: number;
  verified: number;
}

export interface SoakReport {
  ok: boolean;
  seed: number;
  minutes: number;
  elapsedSeconds: number;
  dir: string;
  faults: Record<string, number>;
  pointsVerified: number;
  pointDisksVerified: number;
  failoversVerified: number;
  convergenceChecks: number;
  writesAcknowledged: number;
  divergences: string[];
  rpoSeconds: { p50: number; p90: number; p99: number; max: number };
  lagSeconds: { p50: number; p90: number; p99: number; max: number };
  recoverySeconds: Record<string, { count: number; p50: number; max: number }>;
  outcomes: Record<string, FaultOutcome>;
  history: FaultRecord[];
}

export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  const seed = opts.seed;
  const next = rng(seed);
  const diskBytes = (opts.diskMiB ?? 16) * MiB;
  const enabled = opts.faults ?? FAULT_KINDS;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), `site-recovery-soak-${seed}-`));
  mkdirSync(join(dir, "logs"), { recursive: true });
  const soakLog = join(dir, "logs", "soak.log");
  const t0 = Date.now();
  const log = (line: string) => {
    const l = `${((Date.now() - t0) / 1000).toFixed(1).padStart(7)}s ${line}`;
    appendFileSync(soakLog, l + "\n");
    opts.log?.(l);
  };
  const history: FaultRecord[] = [];
  const divergences: string[] = [];
  const diverge = (what: string): never => {
    divergences.push(what);
    log(`DIVERGENCE: ${what}`);
    throw new Divergence(what);
  };

  // Every child this run starts is killed on every way out: the end of the run, an error, SIGINT/SIGTERM, process exit.
  const children = new Set<{ pid?: number | undefined; exitCode: number | null; signalCode: NodeJS.Signals | null }>();
  const killChildren = () => {
    for (const c of children) {
      if (c.pid === undefined || c.exitCode !== null || c.signalCode !== null) continue;
      try {
        process.kill(c.pid, "SIGCONT");
        process.kill(c.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  };
  let azuritePid = -1;
  const killAzurite = () => {
    try {
      if (azuritePid > 0) {
        process.kill(azuritePid, "SIGCONT");
        process.kill(azuritePid, "SIGKILL");
      }
    } catch {
      // already gone
    }
  };
  const onSignal = (sig: NodeJS.Signals) => {
    log(`${sig}: killing every process of the soak; data and logs kept in ${dir}`);
    killChildren();
    killAzurite();
    process.exit(sig === "SIGINT" ? 130 : 143);
  };
  const onExit = () => {
    killChildren();
    killAzurite();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.on("exit", onExit);

  // The stack: Azurite on disk, two or three Function App instances sharing it.
  let storage: LocalStorage = await startAzurite({ location: join(dir, "azurite"), silent: true });
  azuritePid = storage.pid;
  const env: NodeJS.ProcessEnv = {
    AzureWebJobsStorage: storage.control,
    CACHE_STORAGE: storage.cache,
    AGENT_CHECKIN_SECONDS: "2",
    SWEEP_SCHEDULE: "*/2 * * * * *",
    SWEEP_STALL_SECONDS: "3",
    SEAL_SCHEDULE: "*/3 * * * * *",
  };
  // A key rotation (sas-expired-early) changes the cache account's key: the soak's own clients follow it.
  let cacheKey: string | undefined;
  let config: Config = loadConfig(env);
  let store = new Storage(config);
  const hostCount = opts.hosts ?? 2;
  const ports = await Promise.all(Array.from({ length: hostCount }, () => freePort()));
  const hosts: (HostProcess | undefined)[] = [];
  const startHost = async (i: number) => {
    const h = await startHostProcess(env, { port: ports[i]!, timeoutMs: 60_000 });
    children.add(h.child);
    const out = createWriteStream(join(dir, "logs", `host-${i}.log`), { flags: "a" });
    h.child.stdout!.on("data", (b: Buffer) => out.write(b));
    h.child.stderr!.on("data", (b: Buffer) => out.write(b));
    h.child.once("exit", (code, signal) => out.end(`--- host exited (${signal ?? code})\n`));
    hosts[i] = h;
  };
  for (let i = 0; i < hostCount; i++) await startHost(i);
  const urlOf = (i: number) => `http://127.0.0.1:${ports[i]}`;

  let apiCalls = 0;
  /** The API of whichever instance answers (one may be down). */
  // The soak reads a few fields of each answer.
  // Each call is bounded: 15 s per attempt, 45 s in all (a host restarts in a few seconds; Azurite stalls for at most 8).
  const api = async <T = Answer>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> => {
    let last: unknown;
    // Round robin, not the seeded generator: the fault schedule must not depend on how many calls were made.
    const start = apiCalls++ % hostCount;
    const deadline = Date.now() + 45_000;
    for (let attempt = 0; ; attempt++) {
      const i = (start + attempt) % hostCount;
      const left = deadline - Date.now();
      if (left <= 0) break;
      try {
        const res = await fetch(`${urlOf(i)}/api/${path}`, {
          method,
          headers: { "content-type": "application/json" },
          signal: AbortSignal.timeout(Math.min(15_000, left)),
          ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        });
        const text = await res.text();
        if (res.status >= 500 && deadline - Date.now() > 500) {
          last = new Error(`${res.status} ${text}`);
          await sleep(500);
          continue;
        }
        return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
      } catch (e) {
        last = e;
        await sleep(250);
      }
    }
    throw new Error(`no instance answered ${method} ${path} within 45 s: ${String(last)}`);
  };

  // The VMs.
  // Tags every 20 s: at 10 s a 30-minute run kept ~575 snapshots (600k page ranges) in Azurite's metadata, which it
  // re-serialises every 5 s — the emulator, not the product, then stalled for tens of seconds at a time.
  const policy = { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 20, appConsistentFrequencyMinutes: 0 };
  const layout: { name: string; capture: Capture; group?: string; ip: string; spoolMaxMb?: number }[] = [
    { name: "soak-app-1", capture: "library", group: GROUP, ip: "10.4.0.4" },
    { name: "soak-app-2", capture: "library", group: GROUP, ip: "10.4.0.5" },
    // A small spool: a burst while storage does not answer overflows it (spool-overflow).
    { name: "soak-nbd", capture: "nbd", ip: "10.4.0.6", spoolMaxMb: 4 },
    { name: "soak-scan", capture: "scan", ip: "10.4.0.7" },
  ];
  const vms: SoakVm[] = [];
  const stopAll = async () => {
    await Promise.all(vms.map((v) => v.stop().catch(() => undefined)));
    await Promise.all(hosts.filter((h) => h !== undefined).map((h) => h.stop().catch(() => undefined)));
    await storage.stop().catch(() => undefined);
  };
  let pointsVerified = 0;
  let pointDisksVerified = 0;
  let failoversVerified = 0;
  let convergenceChecks = 0;
  const rpo: number[] = [];
  const lag: number[] = [];
  const faultCounts: Record<string, number> = {};
  let ok = false;
  const failoverTimeoutMs = opts.failoverTimeoutMs ?? 300_000;
  /** The background watcher runs while this is true: every way out turns it off. */
  let background = false;
  try {
    for (const [i, l] of layout.entries()) {
      const res = await api("POST", "replicated-items", {
        vm: {
          name: l.name,
          region: "eastus",
          resourceGroup: "soak-rg",
          size: "Standard_D2s_v5",
          network: { vnet: "soak-vnet", subnet: "app", privateIp: l.ip },
          disks: [
            { id: "os", sizeBytes: diskBytes },
            { id: "data0", sizeBytes: diskBytes },
          ],
        },
        targetRegion: "westus",
        ...(l.group ? { replicationGroup: l.group } : {}),
        policy,
      });
      if (res.status !== 201) throw new Error(`enable ${l.name}: ${res.status} ${JSON.stringify(res.body)}`);
      vms.push(
        new SoakVm({
          name: l.name,
          capture: l.capture,
          ...(l.group ? { group: l.group } : {}),
          itemId: res.body.id,
          token: res.body.agentRegistration.token,
          url: urlOf(i % hostCount),
          diskIds: ["os", "data0"],
          diskBytes,
          dir,
          seed: seed * 10 + i,
          bytesPerSecond: opts.bytesPerSecond ?? 64 * 1024,
          log,
          onChild: (c) => children.add(c),
          ...(l.spoolMaxMb ? { spoolMaxMb: l.spoolMaxMb } : {}),
        }),
      );
    }
    for (const v of vms) await v.start();
    log(`stack up: Azurite ${storage.pid} on ${JSON.stringify(storage.ports)}, ${hostCount} host processes, 4 VMs; data and logs in ${dir}`);
    const waitProtected = async (what: string, timeoutMs: number) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const states = await Promise.all(vms.map(async (v) => (await api("GET", `replicated-items/${v.itemId}`)).body?.state));
        if (states.every((s) => s === "Protected")) return;
        if (Date.now() > deadline) diverge(`${what}: not every VM Protected after ${timeoutMs / 1000} s: ${states.join(", ")}`);
        await sleep(1000);
      }
    };
    await waitProtected("initial replication", 180_000);
    log("every VM Protected");

    const byId = new Map(vms.map((v) => [v.itemId, v]));
    /** A VM's replica, in the account of the direction it replicates now, through clients of the current keys. */
    const replicaOf = async (v: SoakVm, diskId: string) => (await store.replicas(v.direction)).getPageBlobClient(replicaBlobName(v.itemId, diskId));
    const cacheOf = (v: SoakVm) => store.cache(v.direction).getContainerClient(cacheContainerName(v.itemId));
    /** Bytes checked after a fault (a point cut after it, or a convergence check) make it verified. */
    const markVerified = (itemIds: string[], after: number) => {
      for (const f of history)
        if (f.verifiedAt === undefined && f.endedAt !== undefined && f.endedAt < after && f.items?.some((i) => itemIds.includes(i))) f.verifiedAt = Date.now();
    };
    const seen = new Set<string>();
    const abortedTags: SoakContext["abortedTags"] = new Map();
    /** What each item's newest point time is, for the recovery times. */
    const newestPoint = new Map<string, number>();

    const snapshotBytes = async (itemId: string, diskId: string, snapshot: string): Promise<Buffer | undefined> => {
      try {
        return await (
          await replicaOf(byId.get(itemId)!, diskId)
        )
          .withSnapshot(snapshot)
          .downloadToBuffer(0, diskBytes, { abortSignal: AbortSignal.timeout(READ_BOUND_MS) });
      } catch (e) {
        if ((e as { statusCode?: number }).statusCode === 404) return undefined; // pruned meanwhile
        throw e;
      }
    };
    const checkAt = (vm: SoakVm, diskId: string, time: string, bytes: Buffer, what: string) => {
      const m = vm.models.get(diskId)!;
      const r = m.matchesAt(Date.parse(time), bytes, vm.spec.capture === "scan" ? SCAN_SLACK_MS : 0);
      if (!r.ok)
        diverge(
          `${what} ${vm.spec.name}/${diskId} (${vm.spec.capture}) at ${time}: equals no state of the model between writes ${r.kmin} and ${r.kmax} of ${m.writes.length} (first difference at byte ${r.firstDiff})`,
        );
    };
    const verifyPoints = async () => {
      for (const owner of vms) {
        const res = await api<ApiPoint[]>("GET", `replicated-items/${owner.itemId}/recovery-points`);
        if (res.status !== 200) continue;
        for (const p of res.body) {
          const t = Date.parse(p.time);
          const members = p.scope === "group" ? vms.filter((v) => v.spec.group === GROUP) : [owner];
          for (const v of members) newestPoint.set(v.itemId, Math.max(newestPoint.get(v.itemId) ?? 0, t));
          if (seen.has(p.id)) continue;
          const given = abortedTags.get(p.id);
          if (given === "aborted" || (given && p.scope === "group"))
            diverge(`${p.scope} point ${p.id} of ${owner.spec.name} was sealed from a group tag that was ${given}`);
          // A group point is listed by every member, each with its own disks: verify it whole, once.
          const disks = p.scope === "group" ? await pointDisks(p) : p.disks.map((d) => ({ ...d, itemId: owner.itemId }));
          if (!disks) continue;
          let verified = 0;
          for (const d of disks) {
            const bytes = await snapshotBytes(d.itemId, d.diskId, d.snapshot);
            if (!bytes) continue;
            checkAt(byId.get(d.itemId)!, d.diskId, p.time, bytes, `${p.scope} point ${p.id}`);
            verified++;
          }
          seen.add(p.id);
          if (verified > 0) {
            pointsVerified++;
            pointDisksVerified += verified;
            markVerified([...new Set(disks.map((d) => d.itemId))], t);
          }
        }
      }
    };
    /** Every member's disks of a group point (each member's list shows its own). */
    const pointDisks = async (p: ApiPoint) => {
      const out: { itemId: string; diskId: string; snapshot: string }[] = [];
      for (const v of vms.filter((x) => x.spec.group === GROUP)) {
        const res = await api<ApiPoint[]>("GET", `replicated-items/${v.itemId}/recovery-points`);
        if (res.status !== 200) return undefined;
        const mine = res.body.find((x) => x.id === p.id);
        if (!mine) return undefined; // not listed by every member yet (or pruned)
        for (const d of mine.disks) out.push({ itemId: v.itemId, diskId: d.diskId, snapshot: d.snapshot });
      }
      return out;
    };

    // Background: points verified as they are sealed, RPO and lag sampled, recovery times after faults.
    background = true;
    let backgroundError: unknown;
    const watcher = (async () => {
      while (background) {
        try {
          await verifyPoints();
          for (const v of vms) {
            const res = await api("GET", `replicated-items/${v.itemId}`);
            if (res.status === 200 && res.body.state === "Protected") {
              if (typeof res.body.rpoSeconds === "number") rpo.push(res.body.rpoSeconds);
              for (const d of res.body.disks ?? []) if (typeof d.lagSeconds === "number") lag.push(d.lagSeconds);
            }
          }
          for (const f of history) {
            if (f.endedAt === undefined || f.recoveredAt !== undefined) continue;
            if (vms.every((v) => (newestPoint.get(v.itemId) ?? 0) > f.endedAt!)) f.recoveredAt = Date.now();
          }
        } catch (e) {
          if (e instanceof Divergence) {
            backgroundError = e;
            return;
          }
          log(`watcher: ${String(e)}`);
        }
        await sleep(2000);
      }
    })();
    const checkBackground = () => {
      if (backgroundError) throw backgroundError;
    };

    const record = (kind: FaultRecord["kind"], detail: string): FaultRecord => {
      const r: FaultRecord = { n: history.length + 1, kind, at: new Date().toISOString(), detail };
      history.push(r);
      faultCounts[kind] = (faultCounts[kind] ?? 0) + 1;
      log(`#${r.n} ${kind}: ${detail}`);
      return r;
    };
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!;
    const between = (lo: number, hi: number) => lo + next() * (hi - lo);

    const inject = async (kind: FaultKind): Promise<FaultRecord> => {
      // Each fault's own choices come from its own generator: how many messages a queue held must not shift the schedule.
      const next = rng(seed * 7919 + history.length);
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!;
      const between = (lo: number, hi: number) => lo + next() * (hi - lo);
      switch (kind) {
        case "host-kill": {
          const i = Math.floor(next() * hostCount);
          const down = between(1000, 5000);
          const r = record(kind, `instance ${i} SIGKILLed, restarted after ${Math.round(down)} ms`);
          await hosts[i]!.kill();
          await sleep(down);
          await startHost(i);
          return r;
        }
        case "agent-kill": {
          const v = pick(vms);
          const r = record(kind, `${v.spec.name} (${v.spec.capture}) agent SIGKILLed`);
          for (const o of await v.kill()) log(`  ${v.spec.name} ${o}`);
          await sleep(between(500, 3000));
          await v.start();
          return r;
        }
        case "storage-stall": {
          const ms = between(2000, 8000);
          const r = record(kind, `Azurite SIGSTOPped for ${Math.round(ms)} ms`);
          process.kill(storage.pid, "SIGSTOP");
          try {
            await sleep(ms);
          } finally {
            process.kill(storage.pid, "SIGCONT");
          }
          return r;
        }
        case "storage-restart": {
          const r = record(kind, "Azurite stopped (SIGTERM) and started again on the same data and ports");
          await storage.stop();
          await sleep(between(500, 2000));
          storage = await startAzurite({
            location: join(dir, "azurite"),
            silent: true,
            ...(cacheKey ? { cacheKey } : {}),
            blobPort: storage.ports.blob,
            queuePort: storage.ports.queue,
            tablePort: storage.ports.table,
          });
          azuritePid = storage.pid;
          return r;
        }
        case "queue-duplicate": {
          const q = queueService(config.storage.control).getQueueClient(REPLICATION_QUEUE);
          const peeked = (await q.peekMessages({ numberOfMessages: 32 })).peekedMessageItems;
          const dup = peeked.filter(() => next() < 0.5).slice(0, 8);
          for (const m of dup) await q.sendMessage(m.messageText);
          return record(kind, `${dup.length} of ${peeked.length} visible messages sent again`);
        }
        case "queue-delay": {
          const q = queueService(config.storage.control).getQueueClient(REPLICATION_QUEUE);
          const s = Math.round(between(5, 20));
          const got = (await q.receiveMessages({ numberOfMessages: 1 + Math.floor(next() * 8), visibilityTimeout: s })).receivedMessageItems;
          return record(kind, `${got.length} messages hidden for ${s} s`);
        }
        case "queue-drop": {
          const q = queueService(config.storage.control).getQueueClient(REPLICATION_QUEUE);
          const got = (await q.receiveMessages({ numberOfMessages: 1 + Math.floor(next() * 8), visibilityTimeout: 30 })).receivedMessageItems;
          for (const m of got) await q.deleteMessage(m.messageId, m.popReceipt);
          return record(kind, `${got.length} messages deleted`);
        }
        case "lease-break": {
          // Under a running apply: wait (a little) for a replica that is leased, and break its lease at once.
          const deadline = Date.now() + 5000;
          while (Date.now() < deadline) {
            for (const v of vms) {
              for (const d of v.spec.diskIds) {
                const blob = await replicaOf(v, d);
                if ((await blob.getProperties()).leaseState === "leased") {
                  // The run may let its lease go between the look and the break: then there is nothing to break yet.
                  const broken = await blob
                    .getBlobLeaseClient()
                    .breakLease(0)
                    .then(
                      () => true,
                      (e: unknown) => ((e as { code?: string }).code === "LeaseNotPresentWithLeaseOperation" ? false : Promise.reject(e)),
                    );
                  if (broken) return record(kind, `lease of ${v.spec.name}/${d}'s replica broken during its apply`);
                }
              }
            }
            await sleep(20);
          }
          return record(kind, "no replica was leased within 5 s: nothing broken");
        }
        case "batch-late": {
          // A batch that arrives after later ones (an upload retried, a slow path): it is taken out of the cache above
          // the watermark and put back a few seconds later. The disk must wait at the gap, never apply past it.
          // The apply keeps up and prefetches what it lists, so the batch taken is a new one, the moment it appears.
          const v = pick(vms.filter((x) => x.direction === "forward"));
          const d = pick(v.spec.diskIds);
          const cache = cacheOf(v);
          const replica = await replicaOf(v, d);
          const listed = async () => {
            const seqs: number[] = [];
            for await (const b of cache.listBlobsFlat({ prefix: `${d}/` })) {
              const seq = seqOfBlobName(b.name);
              if (seq !== undefined) seqs.push(seq);
            }
            return seqs;
          };
          const seen = Math.max((await replica.getProperties()).blobSequenceNumber ?? 0, ...(await listed()));
          const until = Date.now() + 10_000;
          while (Date.now() < until) {
            const seqs = (await listed()).filter((s) => s > seen);
            if (seqs.length === 0) {
              await sleep(10);
              continue;
            }
            const watermark = (await replica.getProperties()).blobSequenceNumber ?? 0;
            const seq = Math.min(...seqs);
            const blob = cache.getBlockBlobClient(batchBlobName(d, seq));
            let data: Buffer;
            try {
              data = await blob.downloadToBuffer(0, undefined, { abortSignal: AbortSignal.timeout(READ_BOUND_MS) });
              await blob.delete();
            } catch {
              continue; // applied and removed meanwhile
            }
            const ms = between(4000, 10_000);
            const r = record(kind, `${v.spec.name}/${d} batch ${seq} (watermark ${watermark}) held back for ${Math.round(ms)} ms while later batches arrive`);
            await sleep(ms);
            const after = (await replica.getProperties()).blobSequenceNumber ?? 0;
            await blob.upload(data, data.length);
            log(`  put back; the watermark is ${after}`);
            return r;
          }
          return record(kind, `${v.spec.name}/${d}: no batch above the watermark within 10 s`);
        }
        case "nbd-vanish": {
          const v = vms.find((x) => x.spec.capture === "nbd")!;
          return record(kind, await v.nbdVanish());
        }
        case "sas-expired-early":
          return rotateCacheKey(next);
        case "batch-corrupt":
          return batchCorrupt(ctx, { next, pick, between });
        case "group-stall":
          return groupStall(ctx, { next, pick, between });
        case "spool-overflow":
          return spoolOverflow(ctx, { stop: () => process.kill(storage.pid, "SIGSTOP"), resume: () => process.kill(storage.pid, "SIGCONT") });
      }
    };

    /**
     * A SAS that stops working before its expiry: the cache account's key is rotated (the way an operator answers a
     * leaked key), so every SAS signed with the old one is refused at once. The instances are stopped first (none may
     * sign with the old key), Azurite comes back knowing only the new key, and for a few seconds the agents can neither
     * upload nor renew; then the instances start with the new key and each agent must renew its SAS at a check-in and
     * ship everything it spooled meanwhile.
     */
    const rotateCacheKey = async (next: () => number): Promise<FaultRecord> => {
      const key = Buffer.from(Array.from({ length: 64 }, () => Math.floor(next() * 256))).toString("base64");
      const held = vms.map((v) => ({ v, sas: agentCacheSas(v) }));
      const down = Math.round(3000 + next() * 3000);
      const r = record(
        "sas-expired-early",
        `the cache account's key rotated: the agents' cache SAS (signed with the old key) stop working before their expiry; every instance down ${down} ms`,
      );
      r.items = vms.filter((v) => v.direction === "forward").map((v) => v.itemId);
      for (let i = 0; i < hostCount; i++) await hosts[i]!.kill();
      await storage.stop();
      storage = await startAzurite({
        location: join(dir, "azurite"),
        silent: true,
        blobPort: storage.ports.blob,
        queuePort: storage.ports.queue,
        tablePort: storage.ports.table,
        cacheKey: key,
      });
      azuritePid = storage.pid;
      cacheKey = key;
      env.CACHE_STORAGE = storage.cache;
      config = loadConfig(env);
      store = new Storage(config);
      // The SAS the agents hold are refused now, long before they expire.
      const refused: string[] = [];
      for (const { v, sas } of held) {
        if (!sas || v.direction !== "forward") continue;
        const status = await trySas(sas.containerUrl);
        if (status !== 403) diverge(`${v.spec.name}'s cache SAS signed with the old key answered ${status} after the key rotation, not 403`);
        refused.push(`${v.spec.name} (${Math.round((Date.parse(sas.expiresOn) - Date.now()) / 3600_000)} h before its expiry)`);
      }
      await sleep(Math.max(0, down - (Date.now() - Date.parse(r.at))));
      for (let i = 0; i < hostCount; i++) await startHost(i);
      // Every agent renews: the SAS it saves at its next check-in works.
      const deadline = Date.now() + 60_000;
      const renewed = new Set<string>();
      while (Date.now() < deadline && renewed.size < held.filter((h) => h.sas && h.v.direction === "forward").length) {
        for (const { v, sas } of held) {
          if (!sas || renewed.has(v.spec.name) || v.direction !== "forward") continue;
          const now = agentCacheSas(v);
          if (now && now.containerUrl !== sas.containerUrl && (await trySas(now.containerUrl)) === 201) renewed.add(v.spec.name);
        }
        await sleep(500);
      }
      r.effect = `refused with 403: ${refused.join(", ")}; renewed at a check-in: ${[...renewed].join(", ") || "none"}`;
      log(`  ${r.effect}`);
      if (renewed.size === 0) r.effect = undefined;
      return r;
    };

    const ctx: SoakContext = {
      vms,
      log,
      api,
      diverge,
      record,
      replica: replicaOf,
      cache: cacheOf,
      failoverDisks: (direction) => store.failover(direction),
      diskBytes,
      failoverTimeoutMs,
      abortedTags,
      convergence: () => convergence(),
    };

    const workloadPaused = async <T>(f: () => Promise<T>): Promise<T> => {
      const paused = Promise.all(vms.map((v) => v.pause()));
      const late = await Promise.race([paused.then(() => false), bound(30_000).then(() => true)]);
      if (late) {
        for (const v of vms) v.go();
        diverge(
          `the workload did not pause within 30 s (a write never acknowledged): ${vms
            .filter((v) => v.writeInFlight)
            .map((v) => v.spec.name)
            .join(", ")}`,
        );
      }
      try {
        return await f();
      } finally {
        for (const v of vms) v.go();
      }
    };

    /** Every disk shown Protected converges to its source once the workload pauses. */
    const convergence = async () => {
      await workloadPaused(async () => {
        const r = record("convergence", "workload paused; every Protected disk must reach its model");
        const limitMs = opts.convergenceTimeoutMs ?? 180_000;
        const deadline = Date.now() + limitMs;
        for (const v of vms) {
          const item = (await api("GET", `replicated-items/${v.itemId}`)).body;
          if (item?.state !== "Protected") {
            log(`  ${v.spec.name} is ${item?.state}: not checked`);
            continue;
          }
          for (const d of v.spec.diskIds) {
            const model = Buffer.from(v.models.get(d)!.current());
            const blob = await replicaOf(v, d);
            let nextNote = Date.now() + 10_000;
            for (;;) {
              const bytes = await blob.downloadToBuffer(0, diskBytes, { abortSignal: AbortSignal.timeout(READ_BOUND_MS) });
              if (bytes.equals(model)) break;
              if (Date.now() > nextNote) {
                nextNote = Date.now() + 10_000;
                const props = await blob.getProperties();
                log(
                  `  ${v.spec.name}/${d} not converged yet: first difference at byte ${firstDifference(bytes, model)}, watermark ${props.blobSequenceNumber}, ${v.models.get(d)!.writes.length} writes, pending ${JSON.stringify(v.models.get(d)!.pending ?? null)}`,
                );
              }
              if (Date.now() > deadline) {
                const props = await blob.getProperties();
                diverge(
                  `convergence: ${v.spec.name}/${d} (${v.spec.capture}) replica differs from its source ${Math.round(limitMs / 1000)} s after the workload paused (first difference at byte ${firstDifference(bytes, model)}, watermark ${props.blobSequenceNumber})`,
                );
              }
              await sleep(1000);
            }
          }
          markVerified([v.itemId], Date.parse(r.at));
        }
        r.endedAt = Date.now();
        r.detail += `: converged in ${((r.endedAt - Date.parse(r.at)) / 1000).toFixed(1)} s`;
        log(`  converged in ${((r.endedAt - Date.parse(r.at)) / 1000).toFixed(1)} s`);
        convergenceChecks++;
      });
    };

    /** A test failover to a random point, every failover disk compared with the model at its point, then cleanup. */
    const testFailover = async () => {
      const group = next() < 0.4;
      // A member of the group fails over only with the whole group (409 GroupMemberAlone): a lone VM is one outside it.
      const target = group ? undefined : pick(vms.filter((v) => v.spec.group === undefined && v.direction === "forward"));
      let recoveryPoint = "latest-processed";
      if (target && next() < 0.5) {
        const pts = (await api<ApiPoint[]>("GET", `replicated-items/${target.itemId}/recovery-points`)).body ?? [];
        const vmPts = pts.filter((p) => p.scope === "vm");
        if (vmPts.length > 0) recoveryPoint = pick(vmPts).id;
      }
      const body = group ? { groupId: GROUP, type: "test", recoveryPoint } : { itemIds: [target!.itemId], type: "test", recoveryPoint };
      const r = record("test-failover", `${group ? `group ${GROUP}` : target!.spec.name} to ${recoveryPoint}`);
      const res = await api("POST", "failovers", body);
      if (res.status === 409) {
        log(`  refused: ${JSON.stringify(res.body?.error)}`);
        return;
      }
      if (res.status !== 202) diverge(`test failover ${JSON.stringify(body)}: ${res.status} ${JSON.stringify(res.body)}`);
      const id = res.body.id;
      const deadline = Date.now() + failoverTimeoutMs;
      let st: FailoverAnswer | undefined;
      for (;;) {
        st = (await api<FailoverAnswer | undefined>("GET", `failovers/${id}`)).body;
        if (FINISHED.includes(st?.runtimeStatus ?? "")) break;
        if (Date.now() > deadline)
          diverge(`test failover ${id} still ${st?.runtimeStatus} after ${failoverTimeoutMs / 1000} s: ${JSON.stringify(st?.customStatus)}`);
        await sleep(500);
      }
      if (st?.runtimeStatus !== "Completed" || !st.output) return diverge(`test failover ${id} ${st?.runtimeStatus}: ${JSON.stringify(st?.output)}`);
      const failover = await store.failover();
      for (const out of st.output.vms) {
        const v = byId.get(out.itemId)!;
        for (const d of out.disks) {
          const bytes = await failover
            .getPageBlobClient(d.blob.replace(/^failover\//, ""))
            .downloadToBuffer(0, undefined, { abortSignal: AbortSignal.timeout(READ_BOUND_MS) });
          if (bytes.length !== diskBytes + 512) diverge(`failover disk ${d.blob}: ${bytes.length} bytes, expected the disk and a 512-byte footer`);
          checkAt(v, d.diskId, out.recoveryPoint.time, bytes.subarray(0, diskBytes), `failover disk ${d.blob} (point ${out.recoveryPoint.id})`);
        }
        failoversVerified++;
      }
      for (const out of st.output.vms) {
        const c = await api("POST", `replicated-items/${out.itemId}/test-failover-cleanup`, {});
        if (c.status >= 300) diverge(`test-failover-cleanup of ${byId.get(out.itemId)!.spec.name}: ${c.status} ${JSON.stringify(c.body)}`);
      }
      r.endedAt = Date.now();
    };

    // The schedule: a fault, a pause, now and then a test failover or a convergence check, until the time is up.
    // Faults stop a quiet while before the end, so that the last checks start from a settled stack.
    // The minutes count from every VM Protected: on a loaded machine the stack's start must not eat the faults' time.
    const endAt = Date.now() + opts.minutes * 60_000;
    const quietEndMs = opts.quietEndMs ?? 15_000;
    const failoverEvery = opts.testFailoverEvery ?? 3;
    const convergenceEvery = opts.convergenceEvery ?? 5;
    // Kinds are drawn from a shuffled bag (every enabled kind once, then again), and faults go on past the time until
    // the first bag is empty: every run, however short or slow, injects every enabled kind.
    const bag: FaultKind[] = [];
    let rounds = 0;
    const draw = (): FaultKind => {
      if (bag.length === 0) {
        rounds++;
        bag.push(...enabled);
        for (let i = bag.length - 1; i > 0; i--) {
          const j = Math.floor(next() * (i + 1));
          [bag[i], bag[j]] = [bag[j]!, bag[i]!];
        }
      }
      return bag.pop()!;
    };
    // The DR cycle runs once, a third of the way in, in runs long enough for it and the faults.
    const cycleAt = Date.now() + (opts.minutes * 60_000) / 3;
    let cycled = !(opts.reprotectCycle ?? opts.minutes >= 5);
    let cycle = 0;
    while (Date.now() < endAt - quietEndMs || rounds === 0 || (rounds === 1 && bag.length > 0)) {
      checkBackground();
      if (!cycled && Date.now() >= cycleAt) {
        cycled = true;
        const c = await reprotectCycle(
          ctx,
          vms.find((v) => v.spec.capture === "nbd")!,
          layout.find((l) => l.capture === "nbd")!.ip,
        );
        c.endedAt = Date.now();
        failoversVerified += 2; // the planned failover and the failback, each disk equal to the model (or it diverged)
        await sleep(between(3000, 8000));
        continue;
      }
      cycle++;
      const kind = draw();
      const f = await inject(kind);
      f.endedAt = Date.now();
      await sleep(between(3000, 8000));
      checkBackground();
      if (failoverEvery > 0 && cycle % failoverEvery === 0) await testFailover();
      if (convergenceEvery > 0 && cycle % convergenceEvery === 0) await convergence();
    }
    // The end: a quiet while, a last convergence check, every sealed point verified, then a planned failover of the group.
    log(`faults over (${cycle} cycles); quiet until the end`);
    await sleep(Math.max(5000, Math.min(quietEndMs, endAt - Date.now())));
    await convergence();
    await verifyPoints();
    checkBackground();
    const planned = record("planned-failover", `group ${GROUP} to latest: every acknowledged write must be on the failover disks`);
    const res = await api("POST", "failovers", { groupId: GROUP, type: "planned", recoveryPoint: "latest" });
    if (res.status !== 202) diverge(`planned failover: ${res.status} ${JSON.stringify(res.body)}`);
    let st: FailoverAnswer | undefined;
    const deadline = Date.now() + failoverTimeoutMs;
    for (;;) {
      st = (await api<FailoverAnswer | undefined>("GET", `failovers/${res.body.id}`)).body;
      if (FINISHED.includes(st?.runtimeStatus ?? "")) break;
      if (Date.now() > deadline)
        diverge(`planned failover still ${st?.runtimeStatus} after ${failoverTimeoutMs / 1000} s: ${JSON.stringify(st?.customStatus)}`);
      await sleep(500);
    }
    if (st?.runtimeStatus !== "Completed" || !st.output) return diverge(`planned failover ${st?.runtimeStatus}: ${JSON.stringify(st?.output)}`);
    // The group's writers were refused at the shutdown; what they had acknowledged is the model now.
    const members = vms.filter((v) => v.spec.group === GROUP);
    await Promise.all(members.map((v) => v.pause()));
    const failover = await store.failover();
    for (const out of st.output.vms) {
      const v = byId.get(out.itemId)!;
      for (const d of out.disks) {
        const bytes = (
          await failover
            .getPageBlobClient(d.blob.replace(/^failover\//, ""))
            .downloadToBuffer(0, undefined, { abortSignal: AbortSignal.timeout(READ_BOUND_MS) })
        ).subarray(0, diskBytes);
        const model = v.models.get(d.diskId)!.current();
        if (!bytes.equals(model))
          diverge(
            `planned failover disk ${d.blob} of ${v.spec.name}/${d.diskId} lacks acknowledged writes (first difference at byte ${firstDifference(bytes, model)})`,
          );
      }
      failoversVerified++;
    }
    planned.endedAt = Date.now();
    background = false;
    await watcher;
    checkBackground();
    ok = true;
  } catch (e) {
    if (!(e instanceof Divergence)) {
      divergences.push(`the soak itself failed: ${e instanceof Error ? e.stack : String(e)}`);
      log(`ERROR: ${e instanceof Error ? e.stack : String(e)}`);
    }
  } finally {
    background = false;
    // A graceful stop, bounded; then whatever is still running is killed.
    await Promise.race([stopAll(), bound(30_000)]);
    killChildren();
    killAzurite();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    process.off("exit", onExit);
  }

  const stats = (xs: number[]) => ({
    p50: round(percentile(xs, 50), 1),
    p90: round(percentile(xs, 90), 1),
    p99: round(percentile(xs, 99), 1),
    max: round(xs.length ? Math.max(...xs) : NaN, 1),
  });
  const recoverySeconds: SoakReport["recoverySeconds"] = {};
  for (const kind of new Set(history.map((f) => f.kind))) {
    const xs = history.filter((f) => f.kind === kind && f.recoveredAt !== undefined).map((f) => (f.recoveredAt! - f.endedAt!) / 1000);
    if (xs.length) recoverySeconds[kind] = { count: xs.length, p50: round(percentile(xs, 50), 1), max: round(Math.max(...xs), 1) };
  }
  const outcomes: Record<string, FaultOutcome> = {};
  for (const f of history) {
    if (!f.items) continue;
    const o = (outcomes[f.kind] ??= { injected: 0, took: 0, verified: 0 });
    o.injected++;
    if (f.effect) o.took++;
    if (f.effect && f.verifiedAt !== undefined) o.verified++;
  }
  const report: SoakReport = {
    ok,
    seed,
    minutes: opts.minutes,
    elapsedSeconds: round((Date.now() - t0) / 1000, 1),
    dir,
    faults: faultCounts,
    pointsVerified,
    pointDisksVerified,
    failoversVerified,
    convergenceChecks,
    writesAcknowledged: vms.reduce((n, v) => n + [...v.models.values()].reduce((m, d) => m + d.writes.filter((w) => w.ackedAt !== Infinity).length, 0), 0),
    divergences,
    rpoSeconds: stats(rpo),
    lagSeconds: stats(lag),
    recoverySeconds,
    outcomes,
    history,
  };
  writeFileSync(join(dir, "report.json"), JSON.stringify(report, null, 2));
  if (ok && !opts.keep) rmSync(dir, { recursive: true, force: true });
  return report;
}

/** The report as printed (and pasted into the README). */
export function formatReport(r: SoakReport): string {
  const lines: string[] = [];
  lines.push(`soak: seed ${r.seed}, ${r.minutes} min asked, ${r.elapsedSeconds} s run`);
  lines.push(
    table(
      ["fault", "injected", "recovery p50 s", "recovery max s"],
      Object.entries(r.faults).map(([k, n]) => [k, n, r.recoverySeconds[k]?.p50 ?? "-", r.recoverySeconds[k]?.max ?? "-"]),
    ),
  );
  lines.push(
    table(
      ["figure", "value"],
      [
        ["recovery points verified (disks)", `${r.pointsVerified} (${r.pointDisksVerified})`],
        ["failover VMs verified", r.failoversVerified],
        ["convergence checks", r.convergenceChecks],
        ["writes acknowledged", r.writesAcknowledged],
        ["RPO s p50 / p90 / p99 / max", `${r.rpoSeconds.p50} / ${r.rpoSeconds.p90} / ${r.rpoSeconds.p99} / ${r.rpoSeconds.max}`],
        ["lag s p50 / p90 / p99 / max", `${r.lagSeconds.p50} / ${r.lagSeconds.p90} / ${r.lagSeconds.p99} / ${r.lagSeconds.max}`],
        ["divergences", r.divergences.length],
      ],
    ),
  );
  if (Object.keys(r.outcomes).length > 0)
    lines.push(
      table(
        ["fault", "injected", "took effect", "verified after"],
        Object.entries(r.outcomes).map(([k, o]) => [k, o.injected, o.took, o.verified]),
      ),
    );
  if (!r.ok) {
    lines.push(`DIVERGENCE — reproduce with: npm run soak -- --minutes ${r.minutes} --seed ${r.seed}`);
    for (const d of r.divergences) lines.push(`  ${d}`);
    lines.push("fault history:");
    for (const f of r.history) lines.push(`  #${f.n} ${f.at} ${f.kind}: ${f.detail}`);
    lines.push(`the stack's data and logs are kept in ${r.dir}`);
  }
  return lines.join("\n");
}
