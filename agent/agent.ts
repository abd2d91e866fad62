// The agent (ASR's Mobility service): registers once, tracks or scans its disks, spools and ships batches, checks in, and reports a heartbeat. It only ever calls out.
// A planned failover shuts the VM down through it: writes are refused, one final tag is cut, and everything up to it is shipped.
// Over 500 lines: the agent's loops (check-in, heartbeat, tags, app tags, scan rounds, planned shutdown) share one
// state and one set of signals; the disks, spool, shipper, scan rounds (scan-rounds.ts), group barrier and NBD server are
// modules of their own.
import { createHash, randomUUID } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { resolve } from "node:path";
import { AGENT_WARNINGS, type CheckinResponse, type Heartbeat, type RegistrationResponse } from "../shared/protection/agent-protocol";
import type { BatchTag, TagKind } from "../shared/replication/batch";
import { BatchBuffers } from "./batch-buffers";
import { ControlPlane, ControlPlaneError } from "./control-plane";
import { DEFAULT_TUNING, type DiskContext, type DiskSpec, type DiskTuning, type ReplicatedDisk } from "./disk";
import { lockStateDir, readJsonFile, writeFileAtomic } from "./files";
import { Mutex, Signal } from "./gate";
import { Health } from "./health";
import { backoffMs, describe, sleep } from "./retry";
import { ScannedDisk } from "./scanned-disk";
import { ScanRounds, type QuietRound } from "./scan-rounds";
import { Shipper } from "./shipper";
import { Spool } from "./spool";
import { agentStateSchema, statePaths, type AgentState } from "./state";
import { TrackedDisk } from "./tracked-disk";
import { GroupLink } from "./group-link";
import type { GroupTagOutcome } from "./group";
import { APP_CONSISTENCY_FAILED, appConsistentTag, DEFAULT_FREEZE_TIMEOUT_MS, MAX_FREEZE_TIMEOUT_MS } from "./app-consistency";
import { TrackedDiskExport } from "./nbd/disk-export";
import { holdExclusively } from "./nbd/exclusive";
import { NbdServer, type NbdAddress } from "./nbd/server";
import { refuseStateDirOnExports } from "./nbd/state-dir-guard";

/** What a write started during a planned failover's shutdown is rejected with (the disk id follows). */
export const SHUTDOWN_REFUSAL = "the VM is shutting down for a planned failover: writes are refused";
/** How often the final tag is tried again while some disk cannot carry it (initial replication, resync, bitmap mode). */
const SHUTDOWN_RETRY_MS = 500;
/** How long a first start waits for a re-protect to finish seeding before it gives up (every 500 ms: 10 minutes). */
const REGISTER_WAIT_ATTEMPTS = 1200;
const REGISTER_WAIT_MS = 500;

export const AGENT_VERSION = "0.1.0";

export interface AgentDiskOption {
  /** The disk's id in the replicated item (the enable request's `vm.disks[].id`). */
  id: string;
  /** An image file or a block device. */
  path: string;
  /** `tracked`: written through `agent.trackedDisk(id).write(...)`; `scanned`: written by other programs, found by scanning. */
  kind: "tracked" | "scanned";
}

export interface AgentOptions {
  /** The site-recovery service, e.g. http://localhost:7071. */
  url: string;
  /** The registration token from enable; needed only on the first start (the state directory remembers the rest). */
  token?: string;
  /**
   * First start only: take over from an agent already registered for the item (it lost its state directory, or the VM
   * was rebuilt). Without it such a registration is refused (409 AgentAlreadyRegistered) and the other agent keeps going.
   */
  replaceRegistration?: boolean;
  /** Function key of a deployed app (the agent routes are anonymous there, so usually unneeded). */
  functionKey?: string;
  stateDir: string;
  disks: AgentDiskOption[];
  /** Scanned disks: seconds between the end of a pass and the start of the next (default 30). */
  scanIntervalSeconds?: number;
  /** The spool's bound over all disks; beyond it a disk switches to bitmap mode (default 1 GiB). */
  spoolMaxBytes?: number;
  maxBatchBytes?: number;
  sealIntervalMs?: number;
  /** Batches uploading at once (default DEFAULT_UPLOAD_CONCURRENCY). */
  uploadConcurrency?: number;
  /** Default 5 s; the heartbeat is also written soon after a change. */
  heartbeatIntervalMs?: number;
  /** Overrides the service's check-in interval (tests). */
  checkinIntervalMs?: number;
  /** Overrides the policy's crash-consistent frequency (tests). */
  tagIntervalMs?: number;
  /** Replication groups: the barrier's TCP port (default 20004; 0 = ephemeral). */
  groupPort?: number;
  /** Replication groups: the barrier's listening address (default 0.0.0.0). */
  groupHost?: string;
  /** Replication groups: the address the group's other agents reach this one at (default: groupHost, or this host's first IPv4). */
  groupAdvertiseHost?: string;
  /** Replication groups: writes are never held longer than this for a group tag (default 50 ms). */
  groupHoldBoundMs?: number;
  /** Tests: runs before this agent holds its writes for a group tag (e.g. to stall it past the bound). */
  groupBeforeHold?: () => Promise<void>;
  /** Tests: runs synchronously when this agent cuts a group tag, while its writes are still held (the disks are at the tag). */
  groupOnCut?: (tag: BatchTag) => void;
  /**
   * App-consistent tags: the command run (argv, no shell) to quiesce the workload before an `app` tag, e.g.
   * ["fsfreeze", "-f", "/data"]. Without it no app tag is cut. If it fails or outlasts the freeze bound, a crash tag is
   * cut instead and the `AppConsistencyFailed` warning is raised (the item's health shows it after the next check-in).
   */
  preFreeze?: string[];
  /** Run after every app tag whose pre-freeze succeeded, at the latest when the freeze bound ends, e.g. ["fsfreeze", "-u", "/data"]. */
  postThaw?: string[];
  /** The freeze bound (default 10 s, at most 60 s): for the pre-freeze, for the tag while frozen, and for the post-thaw. */
  freezeTimeoutMs?: number;
  /** Overrides the policy's app-consistent frequency (tests); 0 = no app tags. */
  appTagIntervalMs?: number;
  /** Tests: runs while a scan round's passes run (between its two looks), e.g. to write a disk during the pass. */
  duringScanRound?: () => Promise<void>;
  /**
   * Serve every disk as an NBD export named after its id (every disk must then be tracked): on a Unix socket (mode 0600)
   * and optionally TCP (port 0: ephemeral). While serving, the agent holds each image or device exclusively and refuses
   * a state directory on a disk it exports.
   */
  nbd?: { socketPath: string; tcp?: { host: string; port: number }; maxPayloadBytes?: number };
  log?: (line: string) => void;
}

export const DEFAULT_STATE_DIR = ".site-recovery-agent";
export const DEFAULT_SPOOL_MAX_BYTES = 1024 * 1024 * 1024;
/** Uploads in flight: each holds its batch in memory (three keep the cache busy on the churn benchmark; two did not). */
export const DEFAULT_UPLOAD_CONCURRENCY = 3;

const hashToken = (t: string) => createHash("sha256").update(t, "utf8").digest("hex");

export class Agent {
  private readonly disks = new Map<string, ReplicatedDisk>();
  private readonly checkinSignal = new Signal();
  private readonly heartbeatSignal = new Signal();
  private readonly tagSignal = new Signal();
  private readonly appTagSignal = new Signal();
  private readonly shutdownSignal = new Signal();
  private readonly scanSignal = new Signal();
  /** Scanned disks: their rounds, and when the last crash tag after a quiet round was cut. */
  private readonly scans: ScanRounds;
  private lastScanTagMs = 0;
  /** agent.json is replaced by the check-in and by the shutdown loop: one at a time (they share the temp file). */
  private readonly stateMutex = new Mutex();
  private appTagInFlight: Promise<BatchTag | undefined> | undefined;
  private lastTag: BatchTag | undefined;
  private group!: GroupLink;
  private readonly loops: Promise<void>[] = [];
  private closed = false;
  private lastCheckin: { at: string; ok: boolean } | undefined;
  private checkinsInFlight: Promise<void> | undefined;
  private nbd: NbdServer | undefined;
  /** Releases the exclusive hold on the exported images and devices. */
  private releaseExports: () => void = () => {};

  private constructor(
    private state: AgentState,
    private readonly opts: AgentOptions,
    private readonly control: ControlPlane,
    private readonly spool: Spool,
    private readonly shipper: Shipper,
    readonly health: Health,
    private readonly unlock: () => void,
    private readonly log: (line: string) => void,
  ) {
    this.scans = new ScanRounds({
      scanned: () => this.scannedDisks(),
      tracked: () => [...this.disks.values()].filter((d): d is TrackedDisk => d instanceof TrackedDisk),
      health,
      healthChanged: () => this.checkinSignal.notify(),
      ...(opts.duringScanRound ? { duringScanRound: opts.duringScanRound } : {}),
    });
  }

  /** Registers (first start) or resumes from the state directory, recovers every disk, and starts replicating. */
  static async start(opts: AgentOptions): Promise<Agent> {
    const log = opts.log ?? (() => {});
    const freeze = opts.freezeTimeoutMs ?? DEFAULT_FREEZE_TIMEOUT_MS;
    if (!(freeze > 0 && freeze <= MAX_FREEZE_TIMEOUT_MS)) throw new Error(`the freeze timeout must be above 0 and at most ${MAX_FREEZE_TIMEOUT_MS / 1000} s`);
    if (opts.preFreeze?.length === 0 || opts.postThaw?.length === 0) throw new Error("an empty pre-freeze or post-thaw command");
    const stateDir = resolve(opts.stateDir);
    const paths = statePaths(stateDir);
    await mkdir(stateDir, { recursive: true });
    const unlock = lockStateDir(paths.lock);
    let releaseExports = () => {};
    /** Set once an Agent owns the locks: its stop() releases them. */
    let owner: Agent | undefined;
    try {
      // Before anything is registered or opened: refused here, nothing is left behind. The spool on a replicated disk
      // would replicate itself (and a scanned disk holding it would never be quiet).
      refuseStateDirOnExports(
        stateDir,
        opts.disks.map((d) => ({ diskId: d.id, path: resolve(d.path) })),
      );
      if (opts.nbd) {
        // NBD serves the tracked disks; scanned ones (an OS disk beside NBD data disks) are scanned as usual.
        const exported = opts.disks.filter((d) => d.kind === "tracked").map((d) => ({ diskId: d.id, path: resolve(d.path) }));
        if (exported.length === 0) throw new Error("NBD serves tracked disks: none of the disks given is tracked");
        releaseExports = holdExclusively(exported);
      }
      const control = new ControlPlane(opts.url, opts.functionKey);
      const state = await Agent.registration(opts, stateDir, control, log);
      const tuning: DiskTuning = {
        ...DEFAULT_TUNING,
        ...(opts.maxBatchBytes ? { maxBatchBytes: opts.maxBatchBytes } : {}),
        ...(opts.sealIntervalMs ? { sealIntervalMs: opts.sealIntervalMs } : {}),
      };
      const spool = new Spool(stateDir, opts.spoolMaxBytes ?? DEFAULT_SPOOL_MAX_BYTES);
      let agent: Agent | undefined;
      const health = new Health(() => agent?.heartbeatSignal.notify());
      const shipper = new Shipper(
        {
          itemId: state.itemId,
          spool,
          health,
          concurrency: opts.uploadConcurrency ?? DEFAULT_UPLOAD_CONCURRENCY,
          onCredentialsRefused: () => agent?.checkinSignal.notify(),
          log,
        },
        { containerUrl: state.cache.containerUrl, queueUrl: state.queue.url },
      );
      agent = new Agent(state, { ...opts, stateDir }, control, spool, shipper, health, unlock, log);
      agent.releaseExports = releaseExports;
      owner = agent;
      try {
        await agent.openDisks(tuning);
      } catch (e) {
        await Promise.all([...agent.disks.values()].map((d) => d.close().catch(() => undefined)));
        throw e;
      }
      await agent.joinGroup(state);
      await agent.run(state);
      if (opts.nbd) await agent.serveNbd(opts.nbd);
      return agent;
    } catch (e) {
      if (!owner?.closed) {
        releaseExports();
        unlock();
      }
      throw e;
    }
  }

  /** The replication group's barrier; a restart during a planned shutdown keeps writes refused and the barrier left. */
  private async joinGroup(state: AgentState): Promise<void> {
    const { opts, log } = this;
    this.group = new GroupLink({
      itemId: state.itemId,
      ...(opts.groupPort !== undefined ? { port: opts.groupPort } : {}),
      ...(opts.groupHost ? { host: opts.groupHost } : {}),
      ...(opts.groupAdvertiseHost ? { advertiseHost: opts.groupAdvertiseHost } : {}),
      ...(opts.groupHoldBoundMs ? { holdBoundMs: opts.groupHoldBoundMs } : {}),
      ...(opts.groupBeforeHold ? { beforeHold: opts.groupBeforeHold } : {}),
      disks: () => this.trackedDisks(),
      onTag: (t) => {
        this.lastTag = t;
        opts.groupOnCut?.(t);
      },
      log,
    });
    if (state.shutdown) {
      this.refuseWrites();
      log(
        `planned failover in progress: writes are refused${state.shutdown.tagCut ? ` (final tag ${state.shutdown.tagId} cut already)` : `; final tag ${state.shutdown.tagId} still to cut`}`,
      );
    }
    await this.group.update(state.shutdown ? undefined : state.group);
    if (this.group.listenAddress()) this.checkinSignal.notify();
  }

  /** Starts the loops and the disks' own work. */
  private async run(state: AgentState): Promise<void> {
    this.loops.push(this.checkinLoop(), this.heartbeatLoop(), this.tagLoop());
    this.loops.push(this.appTagLoop(), this.shutdownLoop(), this.scanLoop());
    // Resyncs known at registration (a re-protect's seed) are taken before any job starts: a seeded disk compares
    // with its replica and ships what differs, it never starts a whole copy first.
    for (const cmd of state.resync ?? []) await this.disks.get(cmd.diskId)?.acceptResync(cmd);
    for (const d of this.disks.values()) d.start();
  }

  /** Serves the tracked disks over NBD; if the server cannot start, the agent stops (unlocked, released) and says why. */
  private async serveNbd(nbd: NonNullable<AgentOptions["nbd"]>): Promise<void> {
    try {
      this.nbd = await NbdServer.start({
        socketPath: resolve(nbd.socketPath),
        ...(nbd.tcp ? { tcp: nbd.tcp } : {}),
        ...(nbd.maxPayloadBytes ? { maxPayloadBytes: nbd.maxPayloadBytes } : {}),
        exports: [...this.disks.values()].filter((d): d is TrackedDisk => d instanceof TrackedDisk).map((d) => new TrackedDiskExport(d)),
        log: this.log,
      });
    } catch (e) {
      await this.stop().catch(() => undefined);
      throw e;
    }
  }

  /** The saved registration, or a new one (which needs the token). A token for another item never reuses this state. */
  private static async registration(opts: AgentOptions, stateDir: string, control: ControlPlane, log: (l: string) => void): Promise<AgentState> {
    const path = statePaths(stateDir).agent;
    const saved = await readJsonFile(path, agentStateSchema);
    if (saved) {
      if (opts.token && hashToken(opts.token) !== saved.tokenHash) {
        throw new Error(
          `${stateDir} holds the state of item ${saved.itemId}, registered with another token: use another --state-dir for another item (or delete it to start over)`,
        );
      }
      if (saved.url !== opts.url) log(`service is now ${opts.url} (registered with ${saved.url})`);
      return { ...saved, url: opts.url };
    }
    if (!opts.token) throw new Error(`${stateDir} holds no registration: the first start needs the registration token (--token) from enable`);
    const reg = await Agent.registerWhenReady(control, opts.token, opts.replaceRegistration, log);
    const state: AgentState = { ...reg, v: 1, url: opts.url, tokenHash: hashToken(opts.token), registeredAt: new Date().toISOString() };
    await writeFileAtomic(path, JSON.stringify(state, null, 2), { mode: 0o600 });
    log(`registered as the agent of ${reg.vmName} (item ${reg.itemId}), disks ${reg.disks.map((d) => d.id).join(", ")}`);
    return state;
  }

  /**
   * Registers; while the item's re-protect is still seeding its replicas (409 ReprotectInProgress) it tries again,
   * so the agent can be started with the token as soon as the re-protect answers.
   */
  private static async registerWhenReady(
    control: ControlPlane,
    token: string,
    replace: boolean | undefined,
    log: (l: string) => void,
  ): Promise<RegistrationResponse> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await control.register(token, replace);
      } catch (e) {
        if (!(e instanceof ControlPlaneError && e.code === "ReprotectInProgress") || attempt >= REGISTER_WAIT_ATTEMPTS) throw e;
        if (attempt % 10 === 0) log("the item is being re-protected (its replicas are being seeded); registering again shortly");
        await sleep(REGISTER_WAIT_MS); // seeding is a few server-side copies: ask again soon, not with a growing backoff
      }
    }
  }

  private async openDisks(tuning: DiskTuning): Promise<void> {
    const ctx: DiskContext = {
      itemId: this.state.itemId,
      stateDir: this.opts.stateDir,
      spool: this.spool,
      buffers: new BatchBuffers(tuning.maxBatchBytes, tuning.pipelineDepth),
      shipper: this.shipper,
      health: this.health,
      tuning,
      log: this.log,
      manifest: (diskId, resyncId, offset, length) =>
        this.control.manifest({ itemId: this.state.itemId, agentKey: this.state.agentKey, diskId, resyncId, offset, length }),
      changed: (o) => {
        this.heartbeatSignal.notify();
        if (o?.checkin) this.checkinSignal.notify();
      },
    };
    const seen = new Set<string>();
    for (const d of this.opts.disks) {
      const reg = this.state.disks.find((r) => r.id === d.id);
      if (!reg) throw new Error(`disk '${d.id}' is not a disk of ${this.state.vmName} (its disks: ${this.state.disks.map((r) => r.id).join(", ")})`);
      if (seen.has(d.id)) throw new Error(`disk '${d.id}' is given twice`);
      seen.add(d.id);
      const spec: DiskSpec = { id: d.id, sizeBytes: reg.sizeBytes, path: resolve(d.path), registeredNextSeq: reg.nextSeq };
      const disk = d.kind === "tracked" ? await TrackedDisk.open(ctx, spec) : await ScannedDisk.open(ctx, spec);
      const spooled = await this.spool.open(d.id, disk.heartbeat().nextSeq);
      this.disks.set(d.id, disk);
      if (disk instanceof ScannedDisk) await disk.repairFingerprints(spooled);
      for (const seq of spooled) this.shipper.add(d.id, seq);
      if (spooled.length > 0) this.log(`disk ${d.id}: ${spooled.length} batch(es) in the spool from the last run`);
    }
    const missing = this.state.disks.filter((r) => !seen.has(r.id)).map((r) => r.id);
    if (missing.length > 0) this.log(`not replicating disk(s) ${missing.join(", ")}: no --disk given for them`);
    this.spool.onChange = () => {
      for (const d of this.disks.values()) d.poke();
    };
  }

  get itemId(): string {
    return this.state.itemId;
  }

  get vmName(): string {
    return this.state.vmName;
  }

  diskIds(): string[] {
    return [...this.disks.keys()];
  }

  disk(id: string): ReplicatedDisk {
    const d = this.disks.get(id);
    if (!d) throw new Error(`the agent does not replicate a disk '${id}' (it has ${this.diskIds().join(", ")})`);
    return d;
  }

  /** Where the NBD server listens (with `nbd`), e.g. for `qemu-io -f raw 'nbd+unix:///os?socket=<socketPath>'`. */
  get nbdAddress(): NbdAddress | undefined {
    return this.nbd?.address;
  }

  /** The write API of a tracked disk: `await agent.trackedDisk("os").write(offset, bytes)`. */
  trackedDisk(id: string): TrackedDisk {
    const d = this.disk(id);
    if (!(d instanceof TrackedDisk)) throw new Error(`disk '${id}' is scanned, not tracked`);
    return d;
  }

  scannedDisk(id: string): ScannedDisk {
    const d = this.disk(id);
    if (!(d instanceof ScannedDisk)) throw new Error(`disk '${id}' is tracked, not scanned`);
    return d;
  }

  /** Every disk: everything written before the call is sealed and durable in the spool (scanned disks: a pass). */
  async flush(): Promise<void> {
    await Promise.all([...this.disks.values()].map((d) => d.flush()));
  }

  /** Every disk: everything written before the call is in the cache and announced. */
  async drain(): Promise<void> {
    await Promise.all([...this.disks.values()].map((d) => d.drain()));
  }

  /** Resolves when every disk is idle: initial replication and resyncs done, nothing dirty, the spool empty. */
  async waitIdle(timeoutMs = 0): Promise<void> {
    const all = Promise.all([...this.disks.values()].map((d) => d.waitIdle())).then(() => undefined);
    if (!timeoutMs) return all;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`agent not idle after ${timeoutMs} ms: ${JSON.stringify(this.status().disks)}`)), timeoutMs);
    });
    try {
      await Promise.race([all, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Scanned disks: a pass now; resolves when it is durable in the spool. */
  async scanNow(): Promise<void> {
    await Promise.all(this.scannedDisks().map((d) => d.scanNow()));
  }

  private scannedDisks(): ScannedDisk[] {
    return [...this.disks.values()].filter((d): d is ScannedDisk => d instanceof ScannedDisk);
  }

  /**
   * Scanned disks are scanned together, one round every scan interval. A round in which no disk changed (proved from
   * outside: see QuietProbe) is one instant of every disk; then, at most every crashConsistentFrequencySeconds, a
   * crash tag is cut on all of the VM's disks (tracked ones held at that instant). Rounds that keep seeing changes
   * raise the NoConsistentScan warning, which the item's health shows.
   */
  private async scanLoop(): Promise<void> {
    if (this.scannedDisks().length === 0) return;
    const interval = (this.opts.scanIntervalSeconds ?? 30) * 1000;
    for (let first = true; !this.closed; first = false) {
      if (!first) await this.scanSignal.wait(interval);
      // Shutting down for a planned failover: the shutdown loop runs the rounds for the final tag.
      if (this.closed || this.state.shutdown) continue;
      try {
        const round = await this.scans.round();
        if (this.closed || this.state.shutdown) continue;
        this.scans.note(round);
        const every = this.opts.tagIntervalMs ?? this.state.policy.crashConsistentFrequencySeconds * 1000;
        if (round.quiet && Date.now() - this.lastScanTagMs >= every) {
          const tag = await this.cutAfterQuietRound(round, "crash", randomUUID());
          if (tag) this.lastScanTagMs = Date.parse(tag.time);
        }
      } catch (e) {
        if (!this.closed) this.log(`scan round failed: ${describe(e)}`);
      }
    }
  }

  /** A tag after a quiet scan round (see ScanRounds.cutAfterQuiet), kept as the latest and announced in the heartbeat. */
  private async cutAfterQuietRound(round: QuietRound, kind: TagKind, id: string): Promise<BatchTag | undefined> {
    if (this.closed) return undefined;
    const cut = await this.scans.cutAfterQuiet(round, kind, id);
    if (cut) {
      this.lastTag = cut;
      this.heartbeatSignal.notify();
    }
    return cut;
  }

  /**
   * Cuts a tag on every disk at one instant (see TrackedDisk.cutTag): the replicas at the tagged batches form a
   * recovery point. `app` is for a caller that quiesced the workload first (e.g. fsfreeze). Only when every disk is a
   * tracked disk in journal mode with its initial replication done; otherwise nothing is cut and undefined is returned.
   * `id` is the recovery point's id (default: a new UUID); a planned failover names its final tag.
   */
  async cutTag(kind: TagKind = "crash", id: string = randomUUID()): Promise<BatchTag | undefined> {
    const disks = [...this.disks.values()];
    const tracked = disks.filter((d): d is TrackedDisk => d instanceof TrackedDisk);
    if (tracked.length === 0 || tracked.length !== disks.length) return undefined;
    const tag = await TrackedDisk.cutTag(tracked, { id, kind, scope: "vm" });
    if (tag) this.lastTag = tag;
    return tag;
  }

  /**
   * Crash-consistent tags at the policy's frequency (tracked disks only: a scan pass is no instant). In a replication
   * group the coordinator cuts group tags through the barrier and a connected member cuts none of its own; without a
   * coordinator (or cut off from it) the agent cuts VM tags.
   */
  private async tagLoop(): Promise<void> {
    while (!this.closed) {
      await this.tagSignal.wait(this.opts.tagIntervalMs ?? this.state.policy.crashConsistentFrequencySeconds * 1000);
      if (this.closed) break;
      // Shutting down for a planned failover: its final tag is the last one (see shutdownLoop). A VM with scanned
      // disks is tagged after its quiet scan rounds (see scanLoop).
      if (this.state.shutdown || this.scannedDisks().length > 0) continue;
      const role = this.group.role;
      if (role === "member") continue;
      if (role === "coordinator") {
        const out = await this.groupTag("crash").catch((e) => void this.log(`group tag failed: ${describe(e)}`));
        if (out?.committed) continue;
        // Aborted (a member missed the bound): this VM still gets its point at this instant.
        if (out) this.log(`group tag ${out.tagId} aborted: ${out.reason ?? "?"}`);
      }
      await this.cutTag("crash").catch((e) => this.log(`tag failed: ${describe(e)}`));
    }
  }

  /** Every disk, if all are tracked (a group tag holds them all at once). */
  private trackedDisks(): TrackedDisk[] | undefined {
    const disks = [...this.disks.values()];
    const tracked = disks.filter((d): d is TrackedDisk => d instanceof TrackedDisk);
    return tracked.length > 0 && tracked.length === disks.length ? tracked : undefined;
  }

  /** The last tag this agent cut (VM, group or final), if any since it started. */
  get latestTag(): BatchTag | undefined {
    return this.lastTag;
  }

  /** Replication groups: this agent's role now (coordinator, connected member, or none: VM tags). */
  get groupRole(): "coordinator" | "member" | "none" {
    return this.group.role;
  }

  /** Replication groups, coordinator only: the members connected to its barrier. */
  groupMembersConnected(): string[] {
    return this.group.connectedMembers();
  }

  /** Replication groups, coordinator only: one group tag through the barrier now; undefined if not the coordinator. */
  groupTag(kind: TagKind = "crash"): Promise<GroupTagOutcome | undefined> {
    return this.group.tag(kind);
  }

  /** Replication groups: how long each group tag held this agent's writes (ms), most recent last. */
  groupHoldsMs(): number[] {
    return [...this.group.participant.holds];
  }

  /** Batches (and their bytes, headers included) the cache acknowledged since this agent started. */
  get shipped(): { batches: number; bytes: number } {
    return { batches: this.shipper.shipped, bytes: this.shipper.shippedBytes };
  }

  /**
   * App-consistent tags at the policy's frequency (0 = off), when a pre-freeze command is configured: pre-freeze,
   * an `app` tag, post-thaw, the freeze bounded (see appConsistentTag). A failing pre-freeze yields a crash tag.
   */
  private async appTagLoop(): Promise<void> {
    while (!this.closed) {
      const interval = this.opts.appTagIntervalMs ?? this.state.policy.appConsistentFrequencyMinutes * 60_000;
      // Off (or no pre-freeze): look again in a minute, the policy may change at a check-in.
      const on = interval > 0 && this.opts.preFreeze !== undefined;
      await this.appTagSignal.wait(on ? interval : 60_000);
      if (this.closed || !on || this.state.shutdown) continue;
      await this.cutAppTag().catch((e) => this.log(`app-consistent tag failed: ${describe(e)}`));
    }
  }

  /**
   * One app-consistent attempt now (the app tag loop's step; tests call it directly). Needs a pre-freeze command.
   * Calls during an attempt share it: the workload is never frozen twice at once.
   */
  cutAppTag(): Promise<BatchTag | undefined> {
    this.appTagInFlight ??= this.appTagOnce().finally(() => (this.appTagInFlight = undefined));
    return this.appTagInFlight;
  }

  private async appTagOnce(): Promise<BatchTag | undefined> {
    if (!this.opts.preFreeze) throw new Error("no pre-freeze command is configured");
    // Nothing is frozen for a tag that cannot be cut (scanned disks, initial replication, resync, bitmap mode).
    const all = [...this.disks.values()];
    if (all.length === 0 || !all.every((d) => d instanceof TrackedDisk && d.canTag)) return undefined;
    const warning = () => this.health.list().find((i) => i.code === APP_CONSISTENCY_FAILED)?.message;
    const before = warning();
    const tag = await appConsistentTag({
      preFreeze: this.opts.preFreeze,
      ...(this.opts.postThaw ? { postThaw: this.opts.postThaw } : {}),
      freezeTimeoutMs: this.opts.freezeTimeoutMs ?? DEFAULT_FREEZE_TIMEOUT_MS,
      health: this.health,
      log: this.log,
      cut: async (kindAtCut) => {
        const disks = [...this.disks.values()];
        const tracked = disks.filter((d): d is TrackedDisk => d instanceof TrackedDisk);
        if (tracked.length === 0 || tracked.length !== disks.length || this.closed) return undefined;
        const tag = await TrackedDisk.cutTag(tracked, { id: randomUUID(), kind: "app", scope: "vm" }, kindAtCut);
        if (tag) this.lastTag = tag;
        return tag;
      },
    });
    // The item's health should not wait for the next interval to show (or drop) the warning.
    if (warning() !== before) this.checkinSignal.notify();
    return tag;
  }

  /** A planned failover is shutting the VM down: the final tag's id, and whether it is cut. Undefined otherwise. */
  get shuttingDown(): { tagId: string; tagCut: boolean } | undefined {
    const s = this.state.shutdown;
    return s ? { tagId: s.tagId, tagCut: s.tagCut } : undefined;
  }

  /**
   * Follows the check-in's `shutdown`. A new tag id: refuse writes at once (before the check-in resolves) and have the
   * shutdown loop cut the final tag. Absent while shutting down (the failover was rolled back): accept writes again;
   * the tag loops resume and the next group update rejoins the barrier.
   */
  private followShutdown(given: { tagId: string } | undefined): void {
    const current = this.state.shutdown;
    if (given) {
      if (current?.tagId === given.tagId) return;
      this.state.shutdown = { tagId: given.tagId, tagCut: false };
      this.refuseWrites();
      this.log(`planned failover: the VM is shutting down; writes are refused, final tag ${given.tagId} to cut`);
    } else if (current) {
      delete this.state.shutdown;
      for (const d of this.disks.values()) if (d instanceof TrackedDisk) d.acceptWrites();
      this.log(`planned failover rolled back (final tag ${current.tagId}${current.tagCut ? " was cut" : " was not cut"}): writes are accepted again`);
    } else {
      return;
    }
    this.shutdownSignal.notify();
    this.heartbeatSignal.notify();
  }

  private refuseWrites(): void {
    for (const d of this.disks.values()) if (d instanceof TrackedDisk) d.refuseWrites(SHUTDOWN_REFUSAL);
  }

  /**
   * Cuts a planned failover's final tag: once the shutdown is persisted (a restart keeps refusing writes) and every
   * write accepted before the refusal is acknowledged, one crash tag with the control plane's id on every disk at one
   * instant. While a disk cannot carry a tag (initial replication, resync, bitmap mode) it tries again every 500 ms:
   * the failover waits for this point. The shipper then carries everything up to it to the cache as usual.
   */
  private async shutdownLoop(): Promise<void> {
    let lastWhy = "";
    let saved: AgentState["shutdown"];
    while (!this.closed) {
      const s = this.state.shutdown;
      if (!s || s.tagCut) {
        lastWhy = "";
        await this.shutdownSignal.wait(60_000);
        continue;
      }
      let why: string;
      try {
        if (saved !== s) {
          await this.saveState();
          saved = s;
        }
        const tracked = this.trackedDisks();
        if (!tracked) {
          // Scanned disks: once the workload has stopped writing them, a quiet round gives the final instant.
          const held = [...this.disks.values()].filter((d): d is TrackedDisk => d instanceof TrackedDisk);
          await Promise.all(held.map((d) => d.writesSettled()));
          if (this.state.shutdown !== s || this.closed) continue;
          const round = await this.scans.round();
          const tag = round.quiet ? await this.cutAfterQuietRound(round, "crash", s.tagId) : undefined;
          if (tag && this.state.shutdown === s) {
            s.tagCut = true;
            await this.saveState();
            this.log(`planned failover: final tag ${tag.id} cut on every disk after a quiet scan; shipping everything up to it`);
            this.heartbeatSignal.notify();
            continue;
          }
          why = round.quiet ? "a disk changed at the cut" : `scanned disks are still being written (${round.why}): stop the workload`;
        } else {
          await Promise.all(tracked.map((d) => d.writesSettled()));
          // Rolled back (or another failover's tag) meanwhile: decide again.
          if (this.state.shutdown !== s || this.closed) continue;
          const tag = await this.cutTag("crash", s.tagId);
          if (tag) {
            if (this.state.shutdown === s) {
              s.tagCut = true;
              await this.saveState();
            }
            this.log(`planned failover: final tag ${tag.id} cut on every disk; shipping everything up to it`);
            this.heartbeatSignal.notify();
            continue;
          }
          why =
            tracked
              .map((d) => (d.tagBlocker ? `disk ${d.id}: ${d.tagBlocker}` : ""))
              .filter(Boolean)
              .join("; ") || "a disk overflowed at the cut";
        }
      } catch (e) {
        why = describe(e);
      }
      if (why !== lastWhy) this.log(`planned failover: cannot cut final tag ${s.tagId} yet (${why}); trying again every ${SHUTDOWN_RETRY_MS} ms`);
      lastWhy = why;
      await this.shutdownSignal.wait(SHUTDOWN_RETRY_MS);
    }
  }

  /** Replaces agent.json with the state now (mode 0600: it holds the agent key). */
  private saveState(): Promise<void> {
    return this.stateMutex.run(() => writeFileAtomic(statePaths(this.opts.stateDir).agent, JSON.stringify(this.state, null, 2), { mode: 0o600 }));
  }

  /** Stops uploading (the spool fills; past its bound disks switch to bitmap mode). For maintenance windows and tests. */
  pauseShipping(): void {
    this.shipper.pause();
  }

  resumeShipping(): void {
    this.shipper.resume();
  }

  /** What the heartbeat blob says now. */
  status(): Heartbeat {
    const disks: Heartbeat["disks"] = {};
    for (const [id, d] of this.disks) disks[id] = d.heartbeat();
    const status = this.health.status;
    return {
      agentVersion: AGENT_VERSION,
      time: new Date().toISOString(),
      disks,
      health: { status, issues: this.health.list().map(({ code, message, since }) => ({ code, message, since })) },
      ...(this.state.shutdown ? { shutdown: this.shuttingDown! } : {}),
    };
  }

  /** Checks in now (SAS renewal, overflow reports, resync commands); resolves when done, throws if it failed. */
  checkin(): Promise<void> {
    this.checkinsInFlight ??= this.checkinOnce().finally(() => (this.checkinsInFlight = undefined));
    return this.checkinsInFlight;
  }

  private async checkinOnce(): Promise<void> {
    const reports = [...this.disks.values()].map((d) => d.unreportedOverflow()).filter((r) => r !== undefined);
    // Every check-in reports every open warning the item should show (so a lost check-in loses nothing).
    const codes: string[] = Object.values(AGENT_WARNINGS);
    const warnings = this.health
      .list()
      .filter((i) => codes.includes(i.code))
      .map(({ code, message }) => ({ code, message: message.slice(0, 1000) }));
    let res: CheckinResponse;
    try {
      res = await this.control.checkin({
        itemId: this.state.itemId,
        agentKey: this.state.agentKey,
        ...(reports.length ? { resyncRequired: reports } : {}),
        warnings,
        ...this.groupListen(),
      });
    } catch (e) {
      this.lastCheckin = { at: new Date().toISOString(), ok: false };
      if (e instanceof ControlPlaneError && e.status === 401) {
        this.health.set(
          "AgentKeyRejected",
          "Critical",
          `the service refused this agent's key (${e.message}): replication was disabled, or another agent registered for ${this.state.vmName}`,
        );
      } else {
        this.health.set("ControlPlaneUnreachable", "Warning", `check-in failed: ${describe(e)}`);
      }
      throw e;
    }
    this.lastCheckin = { at: new Date().toISOString(), ok: true };
    this.health.clear("AgentKeyRejected");
    this.health.clear("ControlPlaneUnreachable");
    const hadGroup = this.group.listenAddress() !== undefined;
    this.state = { ...this.state, cache: res.cache, queue: res.queue, policy: res.policy, checkinIntervalSeconds: res.checkinIntervalSeconds };
    if (res.group) this.state.group = res.group;
    else delete this.state.group;
    // Synchronously, before any await: once this check-in resolves, a write that starts is refused (or accepted again).
    this.followShutdown(res.shutdown);
    // Shutting down, the agent leaves its group's barrier: it neither holds nor cuts for the group any more, and the
    // others go on without it (the control plane drops it as coordinator once it stops reporting where it listens).
    await this.group.update(this.state.shutdown ? undefined : res.group);
    // Just joined a group: tell the control plane where this agent listens without waiting for the next interval.
    if (!hadGroup && this.group.listenAddress()) this.checkinSignal.notify();
    this.shipper.setEndpoints({ containerUrl: res.cache.containerUrl, queueUrl: res.queue.url });
    await this.saveState();
    for (const r of reports) this.disks.get(r.diskId)?.markOverflowReported(r.resyncId);
    for (const cmd of res.resync) {
      const disk = this.disks.get(cmd.diskId);
      if (disk)
        void disk.acceptResync(cmd); // persisted in the disk's commit chain, which reports its own failures
      else this.log(`resync ${cmd.resyncId} asked for disk ${cmd.diskId}, which this agent does not replicate`);
    }
  }

  private async checkinLoop(): Promise<void> {
    for (let failures = 0; !this.closed;) {
      const interval = this.opts.checkinIntervalMs ?? this.state.checkinIntervalSeconds * 1000;
      // A freshly registered agent has fresh SAS URLs; one resuming from its state checks in at once to renew them.
      await this.checkinSignal.wait(
        failures > 0 ? Math.min(interval, backoffMs(failures - 1, 1000, 60_000)) : this.lastCheckin || this.isFresh() ? interval : 0,
      );
      if (this.closed) break;
      try {
        await this.checkin();
        failures = 0;
      } catch (e) {
        if (failures % 10 === 0) this.log(`check-in failed: ${describe(e)}`);
        failures++;
      }
    }
  }

  private groupListen(): { groupListen?: { host: string; port: number } } {
    const at = this.group.listenAddress();
    return at ? { groupListen: at } : {};
  }

  private isFresh(): boolean {
    return Date.now() - Date.parse(this.state.registeredAt) < 60_000;
  }

  private async heartbeatLoop(): Promise<void> {
    const interval = this.opts.heartbeatIntervalMs ?? 5000;
    let last = 0;
    while (!this.closed) {
      // On change, but at most every 250 ms; otherwise every interval.
      await this.heartbeatSignal.wait(Math.max(0, interval - (Date.now() - last)));
      if (this.closed) break;
      const since = Date.now() - last;
      if (since < 250) await new Promise((r) => setTimeout(r, 250 - since).unref?.());
      last = Date.now();
      await this.writeHeartbeat();
    }
  }

  private async writeHeartbeat(): Promise<boolean> {
    return this.shipper.uploadHeartbeat(JSON.stringify({ ...this.status(), lastCheckin: this.lastCheckin, lastTag: this.lastTag }));
  }

  /**
   * Stops cleanly: jobs finish their step, every tracked write is sealed into the spool (or the bitmap), uploads in
   * flight get `graceMs` to finish; what is not shipped stays in the spool for the next start.
   */
  async stop(graceMs = 5000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // The loops wait on unref'd timers (the agent does not hold its process open by itself); while stopping, it does:
    // a CLI agent would otherwise exit half-way (e.g. with the heartbeat loop in its 250 ms pause), locks left behind.
    const keepAlive = setInterval(() => {}, 60_000);
    try {
      await this.stopSteps(graceMs);
    } finally {
      clearInterval(keepAlive);
    }
  }

  private async stopSteps(graceMs: number): Promise<void> {
    // First: no client writes once the disks start closing; what clients sent is finished and answered.
    await this.nbd?.close();
    this.control.abort();
    this.checkinSignal.notify();
    this.heartbeatSignal.notify();
    this.tagSignal.notify();
    this.appTagSignal.notify();
    this.shutdownSignal.notify();
    this.scanSignal.notify();
    await this.group.close().catch(() => undefined);
    this.spool.interrupt();
    await Promise.all([...this.disks.values()].map((d) => d.close()));
    await Promise.race([this.writeHeartbeat(), new Promise((r) => setTimeout(r, 1000).unref?.())]);
    await this.shipper.stop(graceMs);
    await Promise.all(this.loops);
    this.releaseExports();
    this.unlock();
  }
}
