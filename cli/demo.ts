// `site-recovery demo`: a complete DR drill on a throwaway local stack — two VMs in one replication group, a live workload, a test failover, an unplanned failover, every failed-over disk checked block by block against its source at the recovery point.
import { setTimeout as sleep } from "node:timers/promises";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { Agent } from "../agent";
import { loadConfig, timerSchedules } from "../shared/config/settings";
import { createServices } from "../functions/compose";
import { functionTable } from "../functions/table";
import { startAzurite, type LocalStorage } from "../local/azurite";
import { LocalFunctionsHost } from "../local/host";
import { freePort } from "../local/process";
import { PACKAGE_ROOT } from "../local/start";
import { ApiCallError, ApiClient } from "../shared/contract/client";
import { CutFingerprints, DiskTarget, Workload } from "./demo-workload";
import { enableBody, failoverSummary, percent, printReport, runFailover, verifyRun, waitForFingerprintedPoint, waitForGroup, writeImage } from "./demo-checks";
import { DISK_IDS, GROUP, MiB, TAG_SECONDS, VMS } from "./demo-model";
import { DemoError, DemoReport } from "./demo-model";
import { DemoVm, clock, mb, secs, short } from "./demo-model";

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

// ---------------------------------------------------------------------------------------------
// The drill

/** The drill's shared state; each step of `run` is one method, in the order the README's output shows them. */
class Drill {
  readonly print: (line: string) => void;
  private readonly t0 = performance.now();
  private readonly logTail: string[] = [];
  readonly report: DemoReport;
  private readonly diskBytes: number;
  private readonly dir = mkdtempSync(join(tmpdir(), "site-recovery-demo-"));
  private storage: LocalStorage | undefined;
  private host: LocalFunctionsHost | undefined;
  private workload: Workload | undefined;
  private readonly vms: DemoVm[] = [];
  private groupTags = 0;
  private cleaned: Promise<void> | undefined;
  private readonly fingerprints = new CutFingerprints();
  private api!: ApiClient;
  private replicaAccount!: ReturnType<typeof loadConfig>["storage"]["replica"];
  private workloadStart = 0;

  constructor(private readonly opts: DemoOptions) {
    this.print = opts.print ?? ((l: string) => console.log(l));
    this.diskBytes = opts.diskMiB * MiB;
    this.report = {
      ok: false,
      startedAt: new Date().toISOString(),
      settings: {
        vms: VMS.length,
        disksPerVm: DISK_IDS.length,
        diskMiB: opts.diskMiB,
        seconds: opts.seconds,
        mbps: opts.mbps,
        replicationGroup: GROUP,
        crashConsistentFrequencySeconds: TAG_SECONDS,
      },
      workload: { seconds: 0, writes: 0, bytesWritten: 0 },
      replication: { batchesShipped: 0, bytesShipped: 0, initialReplicationSeconds: 0 },
      groupTags: { cut: 0, maxWriteHoldMs: 0 },
      vms: [],
      failovers: [],
      disks: [],
    };
  }

  private readonly status = (line: string) => this.print(`${`${Math.round((performance.now() - this.t0) / 1000)}s`.padStart(5)}  ${line}`);

  private logLine(who: string) {
    return (line: string) => {
      const l = `[${who}] ${line}`;
      this.logTail.push(l);
      if (this.logTail.length > 40) this.logTail.shift();
      if (this.opts.verbose) this.print(`        ${l}`);
    };
  }

  /** Stops what runs and removes the temp directory (once, whoever asks first: the end of the drill or Ctrl-C). */
  readonly cleanup = () =>
    (this.cleaned ??= (async () => {
      await this.workload?.stop().catch(() => undefined);
      await Promise.all(this.vms.map((v) => v.agent?.stop(2000).catch(() => undefined) ?? Promise.resolve()));
      await this.host?.stop().catch(() => undefined);
      await this.storage?.stop().catch(() => undefined);
      rmSync(this.dir, { recursive: true, force: true });
    })());

  async run(): Promise<DemoReport> {
    const { opts, print } = this;
    // Ctrl-C: the temp directory and Azurite go too.
    const onSignal = (signal: NodeJS.Signals) => {
      print(`\n${signal}: stopping the drill and removing ${this.dir}…`);
      void this.cleanup().finally(() => process.exit(130));
    };
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
    print(
      `site-recovery demo: a DR drill on a throwaway local stack — ${VMS.length} VMs × ${DISK_IDS.length} disks of ${opts.diskMiB} MiB in replication group ${GROUP}, ` +
        `${opts.seconds} s of live writes at ${opts.mbps} MB/s`,
    );
    try {
      await this.startStack();
      await this.protect();
      await this.initialReplication();
      await this.liveWorkload();
      await this.testFailover();
      await this.disaster();
    } catch (e) {
      this.report.error =
        e instanceof DemoError
          ? e.message
          : e instanceof ApiCallError
            ? `the API answered ${e.status} ${e.code}: ${e.message}`
            : `${(e as Error).name}: ${(e as Error).message}`;
    } finally {
      this.collect();
      print(`\n      stopping agents, host and Azurite; removing ${this.dir}`);
      await this.cleanup();
      process.removeListener("SIGINT", onSignal);
      process.removeListener("SIGTERM", onSignal);
    }
    return this.finish();
  }

  /** 1. The stack: Azurite on free ports in the temp directory, the Functions host in this process. */
  private async startStack(): Promise<void> {
    const { print } = this;
    print(`\n[1/6] Local stack (everything under ${this.dir}, removed at the end)`);
    this.storage = await startAzurite({ location: join(this.dir, "azurite"), silent: true });
    const storage = this.storage;
    print(
      `      Azurite on 127.0.0.1 ports ${storage.ports.blob}/${storage.ports.queue}/${storage.ports.table} (accounts devstoreaccount1 = target region, sourcecache = source-region cache)`,
    );
    const env: NodeJS.ProcessEnv = {
      AzureWebJobsStorage: storage.control,
      CACHE_STORAGE: storage.cache,
      // A snappy drill: agents check in every second, the sealing pass runs every 5 s.
      AGENT_CHECKIN_SECONDS: "1",
      SEAL_SCHEDULE: "*/5 * * * * *",
    };
    const config = loadConfig(env);
    this.replicaAccount = config.storage.replica;
    const services = createServices(config, { log: this.logLine("host") });
    this.host = new LocalFunctionsHost(
      functionTable(() => services, timerSchedules(env)),
      {
        port: await freePort(),
        env,
        maxRequestBytes: config.http.maxRequestBytes,
        durable: { taskHub: config.taskHub },
        log: this.logLine("host"),
      },
    );
    const { port } = await this.host.start();
    const url = `http://127.0.0.1:${port}`;
    this.api = new ApiClient(url);
    print(`      Functions host on ${url}  (try: curl ${url}/api/replicated-items)`);
  }

  /** 2. Protect two VMs as one replication group; agents on image files with some data for the initial copy. */
  private async protect(): Promise<void> {
    const { print, opts } = this;
    print(
      `\n[2/6] Protect ${VMS.map((v) => v.name).join(" and ")} (eastus → westus) as replication group ${GROUP}, crash-consistent points every ${TAG_SECONDS} s`,
    );
    for (const spec of VMS) {
      const item = await this.api.enable(enableBody(spec.name, spec.privateIp, this.diskBytes));
      const vmDir = join(this.dir, spec.name);
      mkdirSync(vmDir);
      const vm: DemoVm = {
        name: spec.name,
        itemId: item.id,
        disks: DISK_IDS.map((id) => ({ id, path: join(vmDir, `${id}.img`), sizeBytes: this.diskBytes })),
        rpo: {},
      };
      for (const d of vm.disks) writeImage(d.path, d.sizeBytes);
      this.vms.push(vm);
      print(
        `      ${spec.name.padEnd(9)} item ${item.id}  disks ${DISK_IDS.join(", ")}: ${opts.diskMiB} MiB image files, ${opts.diskMiB / 8} MiB of data each`,
      );
      vm.agent = await Agent.start({
        url: this.api.baseUrl,
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
          if (!this.fingerprints.has(tag.id)) this.groupTags++;
          this.fingerprints.record(vm.itemId, tag, vm.disks);
        },
        log: this.logLine(spec.name),
      });
    }
    print(`      agents started, each serving its disks over NBD (nbd+unix:///<disk>?socket=…/nbd.sock): every write goes through the agent, in order`);
  }

  /** Until both VMs are Protected (a stall of 120 s is an error), then until the group barrier has formed. */
  private async initialReplication(): Promise<void> {
    const { vms } = this;
    const initialStart = performance.now();
    let lastProgress = -1;
    let progressAt = performance.now();
    for (;;) {
      const views = await Promise.all(vms.map((v) => this.api.item(v.itemId)));
      const done = views.reduce((n, v) => n + v.disks.reduce((m, d) => m + (d.initialReplication?.doneBytes ?? 0), 0), 0);
      const line = views.map((v, i) => `${vms[i]!.name} ${percent(v).padStart(6)} ${v.state}`).join(" · ");
      this.status(`initial replication  ${line}`);
      if (views.every((v) => v.state === "Protected")) break;
      if (done !== lastProgress) {
        lastProgress = done;
        progressAt = performance.now();
      } else if (performance.now() - progressAt > 120_000) {
        throw new DemoError(`initial replication made no progress for 120 s: ${line}`);
      }
      await sleep(1000);
    }
    this.report.replication.initialReplicationSeconds = Math.round((performance.now() - initialStart) / 100) / 10;
    const coordinator = await waitForGroup(vms);
    this.print(
      `      both VMs Protected after ${secs(this.report.replication.initialReplicationSeconds)}; group barrier: ${coordinator.name} coordinates, ${vms.length - 1} member connected`,
    );
  }

  /** Each VM's state, RPO and group points, as one status line (RPO extremes kept for the report). */
  private async sample(): Promise<string> {
    const parts = await Promise.all(
      this.vms.map(async (v) => {
        const [item, points] = await Promise.all([this.api.item(v.itemId), this.api.points(v.itemId)]);
        if (item.rpoSeconds !== null) {
          v.rpo.last = item.rpoSeconds;
          v.rpo.max = Math.max(v.rpo.max ?? 0, item.rpoSeconds);
        }
        const n = points.filter((p) => p.scope === "group").length;
        return `${v.name} ${item.state} RPO ${item.rpoSeconds === null ? "-" : `${item.rpoSeconds}s`} ${n} point${n === 1 ? "" : "s"}`;
      }),
    );
    return parts.join(" · ");
  }

  /** 3. A live workload; the coordinator cuts group tags meanwhile, each fingerprinted at the cut. */
  private async liveWorkload(): Promise<void> {
    const { opts, vms, print } = this;
    print(
      `\n[3/6] Live workload: qemu-io writes random 4–64 KiB through the NBD exports, ${opts.mbps} MB/s over ${vms.length * DISK_IDS.length} disks, ${opts.seconds} s`,
    );
    const targets: DiskTarget[] = vms.flatMap((v) =>
      v.disks.map((d) => ({ vm: v.name, itemId: v.itemId, diskId: d.id, socket: join(this.dir, v.name, "nbd.sock"), sizeBytes: d.sizeBytes })),
    );
    this.workloadStart = performance.now();
    const workload = (this.workload = new Workload(targets, opts.mbps * 1e6));
    const workloadEnd = this.workloadStart + opts.seconds * 1000;
    while (performance.now() < workloadEnd) {
      await sleep(Math.min(2000, Math.max(0, workloadEnd - performance.now())));
      if (workload.failure) throw workload.failure;
      this.status(`written ${mb(workload.bytes).padStart(8)} · ${await this.sample()} · group tags ${this.groupTags}`);
    }
    // The failover needs a sealed group point that was fingerprinted at its cut.
    const newest = await waitForFingerprintedPoint(this.api, vms[0]!, this.fingerprints, (line) => this.status(`${line} · written ${mb(workload.bytes)}`));
    print(`      newest group point ${short(newest.id)} (${newest.kind}, ${clock(newest.time)}Z); the workload keeps writing`);
  }

  /** 4. Test failover of the group while the workload runs; verify; clean up. */
  private async testFailover(): Promise<void> {
    const { print, api } = this;
    print(`\n[4/6] Test failover of ${GROUP} to latest-processed (replication keeps running; the workload too)`);
    const test = await runFailover(api, { groupId: GROUP, type: "test", recoveryPoint: "latest-processed" }, "test", this.status);
    this.report.failovers.push(failoverSummary(test));
    this.report.disks.push(...(await verifyRun(this.replicaAccount, test, this.vms, this.fingerprints, print)));
    for (const v of this.vms) {
      const cleaned = await api.cleanupTestFailover(v.itemId);
      print(`      ${v.name}: test failover cleaned up (${cleaned.removed.length} resources removed), state ${cleaned.state}`);
      if (cleaned.state !== "Protected") throw new DemoError(`${v.name} is ${cleaned.state} after the test-failover cleanup, not Protected`);
    }
    this.status(`after the test failover: written ${mb(this.workload!.bytes)} · ${await this.sample()}`);
  }

  /** 5. The source region is lost: writers stop (the agents keep running), unplanned failover. */
  private async disaster(): Promise<void> {
    const workload = this.workload!;
    await workload.stop();
    if (workload.failure) throw workload.failure;
    this.report.workload = { seconds: Math.round((performance.now() - this.workloadStart) / 100) / 10, writes: workload.writes, bytesWritten: workload.bytes };
    this.print(
      `\n[5/6] Disaster: the writers stop (${mb(workload.bytes)} acknowledged in ${workload.writes} writes); unplanned failover of ${GROUP} to latest-processed`,
    );
    const unplanned = await runFailover(this.api, { groupId: GROUP, type: "unplanned", recoveryPoint: "latest-processed" }, "unplanned", this.status);
    this.report.failovers.push(failoverSummary(unplanned));
    this.report.disks.push(...(await verifyRun(this.replicaAccount, unplanned, this.vms, this.fingerprints, this.print)));
    for (const v of this.vms) this.print(`      ${v.name}: ${(await this.api.item(v.itemId)).state}`);
  }

  /** What the agents say of shipping and group holds, into the report. */
  private collect(): void {
    const { report } = this;
    for (const v of this.vms) report.vms.push({ vm: v.name, itemId: v.itemId, rpoSecondsMax: v.rpo.max ?? null, rpoSecondsLast: v.rpo.last ?? null });
    for (const v of this.vms) {
      const s = v.agent?.shipped;
      report.replication.batchesShipped += s?.batches ?? 0;
      report.replication.bytesShipped += s?.bytes ?? 0;
      report.groupTags.maxWriteHoldMs = Math.max(report.groupTags.maxWriteHoldMs, Math.round(Math.max(0, ...(v.agent?.groupHoldsMs() ?? []))));
    }
    report.groupTags.cut = this.groupTags;
    const workload = this.workload;
    if (workload && report.workload.writes === 0) report.workload = { seconds: this.opts.seconds, writes: workload.writes, bytesWritten: workload.bytes };
  }

  /** 6. The verdict, the report printed and written. */
  private finish(): DemoReport {
    const { report, print, opts } = this;
    report.ok = !report.error && report.disks.length === VMS.length * DISK_IDS.length * 2 && report.disks.every((d) => d.matched);
    printReport(report, print);
    if (report.error && this.logTail.length > 0 && !opts.verbose) {
      print(`\nlast log lines of the host and agents:`);
      for (const l of this.logTail.slice(-15)) print(`  ${l}`);
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
}

export function runDemo(opts: DemoOptions): Promise<DemoReport> {
  return new Drill(opts).run();
}
