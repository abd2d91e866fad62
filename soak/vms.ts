// The soak's four VMs, each with its agent in a process of its own and a writer whose every acknowledged write lands in a byte model: library API (a replication group of two), NBD, scanner.
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { closeSync, createWriteStream, existsSync, openSync, readSync, writeSync, type WriteStream } from "node:fs";
import { join, resolve } from "node:path";
import { rng } from "../test/support/batches";
import { RawNbdClient } from "../test/support/nbd-client";
import { DiskModel, wallNow } from "./model";
import type { WriterConfig, WriterMessage } from "./writer-process";

const CLI = resolve(__dirname, "..", "cli", "main.js");
const WRITER = join(__dirname, "writer-process.js");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export type Capture = "library" | "nbd" | "scan";

export interface VmSpec {
  name: string;
  capture: Capture;
  group?: string;
  itemId: string;
  token: string;
  /** The host the agent talks to. */
  url: string;
  diskIds: string[];
  diskBytes: number;
  dir: string;
  seed: number;
  /** Per disk. */
  bytesPerSecond: number;
  log: (line: string) => void;
  /** Told of every process started for this VM (the soak kills them all on its way out). */
  onChild?: (child: ChildProcess) => void;
  /** The agent's spool bound (`--spool-max-mb`, NBD and scanned VMs); the agent's default when not given. */
  spoolMaxMb?: number;
}

/** Reads `length` bytes of an image file at `offset`. */
function readImage(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, "r");
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** The last lines an agent printed, kept to see what a fault did (a refused SAS, a full spool, an aborted tag). */
const KEPT_LINES = 4000;

export class SoakVm {
  readonly models = new Map<string, DiskModel>();
  readonly images: Record<string, string> = {};
  /** Each re-protect runs a new agent (a new registration) with a state directory of its own. */
  stateDir: string;
  readonly sock: string;
  /** Which way the item replicates now (a re-protect turns it around). */
  direction: "forward" | "reverse" = "forward";
  proc: ChildProcess | undefined;
  starts = 0;
  /** The registration token of the next start: the item's at first, a re-protect's after one. */
  private token: string;
  private unregistered = true;
  private incarnation = 0;
  private writersStarted = false;
  private lines: string[] = [];
  private linesDropped = 0;
  private partial = "";
  private prepareHeld: (() => void) | undefined;
  /** Boosts the NBD writer's rate (a burst of writes, e.g. while uploads are blocked). */
  boost = 1;
  refused = 0;
  failures: string[] = [];
  private paused = false;
  private stopped = false;
  private writerLoops: Promise<void>[] = [];
  private pauseWaiters: (() => void)[] = [];
  private readonly logStream: WriteStream;
  private readonly next: () => number;
  /** Writes the parent issues (NBD, scan) in flight. */
  private inFlight = 0;
  private idle: (() => void)[] = [];
  private nbdClients = new Map<string, RawNbdClient>();

  constructor(readonly spec: VmSpec) {
    this.stateDir = join(spec.dir, `${spec.name}-state`);
    this.token = spec.token;
    this.sock = join(spec.dir, `${spec.name}.sock`);
    this.next = rng(spec.seed);
    for (const d of spec.diskIds) {
      this.images[d] = join(spec.dir, `${spec.name}-${d}.img`);
      const fd = openSync(this.images[d]!, "w");
      writeSync(fd, Buffer.alloc(1), 0, 1, spec.diskBytes - 1);
      closeSync(fd);
      this.models.set(d, new DiskModel(`${spec.name}/${d}`, spec.diskBytes));
    }
    this.logStream = createWriteStream(join(spec.dir, "logs", `agent-${spec.name}.log`), { flags: "a" });
  }

  get itemId(): string {
    return this.spec.itemId;
  }

  get alive(): boolean {
    return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Starts (or restarts, from its state directory) the agent; the writers start with the first start. */
  async start(): Promise<void> {
    this.starts++;
    const register = this.unregistered;
    this.unregistered = false;
    const s = this.spec;
    if (s.capture === "library") {
      const config: WriterConfig = {
        url: s.url,
        ...(register ? { token: this.token } : {}),
        stateDir: this.stateDir,
        images: this.images,
        seed: s.seed * 1000 + this.starts,
        bytesPerSecondPerDisk: s.bytesPerSecond,
        maxWrite: 32 * 1024,
        // Two host processes, four agents and Azurite share two cores: a 50 ms hold aborts most group tags here.
        groupHoldBoundMs: 1000,
      };
      const child = spawn(process.execPath, [WRITER, "--soak-writer", JSON.stringify(config)], { stdio: ["ignore", "pipe", "pipe", "ipc"] });
      this.attach(child);
      child.on("message", (m: WriterMessage) => this.onWriterMessage(m));
      await new Promise<void>((resolveP, reject) => {
        const onMsg = (m: WriterMessage) => {
          if (m.type === "ready") {
            child.off("exit", onExit);
            resolveP();
          }
        };
        const onExit = () => reject(new Error(`${s.name}: the agent exited before it was ready`));
        child.on("message", onMsg);
        child.once("exit", onExit);
      });
      if (this.paused) child.send({ type: "pause" });
      return;
    }
    const args = [
      CLI,
      "--url",
      s.url,
      "agent",
      ...(register ? ["--token", this.token] : []),
      ...s.diskIds.flatMap((d) => ["--disk", `${d}=${this.images[d]}`]),
      "--state-dir",
      this.stateDir,
      ...(s.spoolMaxMb ? ["--spool-max-mb", String(s.spoolMaxMb)] : []),
    ];
    if (s.capture === "nbd") args.push("--nbd", this.sock);
    else args.push("--scan-interval", "1");
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.attach(child);
    if (s.capture === "nbd") {
      // A re-protect's agent registers once the replicas are seeded: that may take minutes on a loaded machine.
      const deadline = Date.now() + (register && this.incarnation > 0 ? 600_000 : 60_000);
      for (;;) {
        if (!this.alive) throw new Error(`${s.name}: the agent exited (${child.exitCode ?? child.signalCode})`);
        if (existsSync(this.sock)) {
          try {
            (await RawNbdClient.open(this.sock, s.diskIds[0]!)).destroy();
            break;
          } catch {
            // not serving yet
          }
        }
        if (Date.now() > deadline) throw new Error(`${s.name}: the NBD exports did not come up`);
        await sleep(100);
      }
    }
    if (!this.writersStarted) for (const d of s.diskIds) this.writerLoops.push(s.capture === "nbd" ? this.nbdWriter(d) : this.scanWriter(d));
    this.writersStarted = true;
  }

  /** A write issued and not yet acknowledged, on any disk. */
  get writeInFlight(): boolean {
    return [...this.models.values()].some((m) => m.pending !== undefined);
  }

  private attach(child: ChildProcess): void {
    this.proc = child;
    this.spec.onChild?.(child);
    const keep = (b: Buffer) => {
      this.logStream.write(b);
      const parts = (this.partial + b.toString("utf8")).split("\n");
      this.partial = parts.pop()!;
      this.lines.push(...parts);
      if (this.lines.length > KEPT_LINES) {
        const n = this.lines.length - KEPT_LINES / 2;
        this.lines.splice(0, n);
        this.linesDropped += n;
      }
    };
    child.stdout!.on("data", keep);
    child.stderr!.on("data", keep);
    child.once("exit", (code, signal) => this.logStream.write(`--- agent exited (${signal ?? code})\n`));
  }

  /** A mark in the agent's output: `linesSince(mark)` are the lines it printed after. */
  logMark(): number {
    return this.linesDropped + this.lines.length;
  }

  linesSince(mark: number): string[] {
    return this.lines.slice(Math.max(0, mark - this.linesDropped));
  }

  private onWriterMessage(m: WriterMessage): void {
    if (m.type === "send") this.models.get(m.disk)!.send({ offset: m.offset, length: m.length, byte: m.byte, sentAt: m.at });
    else if (m.type === "ack") this.models.get(m.disk)!.ack(m.at);
    else if (m.type === "refused") {
      this.refused++;
      this.models.get(m.disk)!.drop();
    } else if (m.type === "failed") {
      this.failures.push(`${m.disk}: ${m.message}`);
      this.models.get(m.disk)!.drop();
    } else if (m.type === "paused") for (const f of this.pauseWaiters.splice(0)) f();
    else if (m.type === "prepare-held") this.prepareHeld?.();
  }

  /**
   * A group member stalled in prepare (library VMs): the agent's next group prepare is held in its hook, and the whole
   * agent process is stopped (SIGSTOP) for `ms` there, then let go. Resolves with what happened, or undefined when no
   * prepare came within `waitMs` (no group tag reached this agent).
   */
  async stallInPrepare(ms: number, waitMs: number): Promise<{ stoppedAt: number; resumedAt: number } | undefined> {
    const child = this.proc;
    if (this.spec.capture !== "library" || !child || !this.alive) return undefined;
    let onExit: () => void = () => undefined;
    const held = new Promise<boolean>((r) => {
      this.prepareHeld = () => r(true);
      setTimeout(() => r(false), waitMs).unref();
      child.once("exit", (onExit = () => r(false)));
    });
    child.send({ type: "arm-stall" });
    const got = await held;
    child.off("exit", onExit);
    this.prepareHeld = undefined;
    if (!got || !this.alive) {
      if (this.alive) child.send({ type: "disarm-stall" });
      return undefined;
    }
    const stoppedAt = Date.now();
    child.kill("SIGSTOP");
    try {
      await sleep(ms);
    } finally {
      if (this.alive) child.kill("SIGCONT");
    }
    const resumedAt = Date.now();
    if (this.alive) child.send({ type: "stall-over" });
    return { stoppedAt, resumedAt };
  }

  /**
   * After a re-protect: the VM that now runs replicates through a new agent (registered with the re-protect's token,
   * a state directory of its own). The images already hold the failover disks' bytes (the caller wrote them).
   */
  async reincarnate(token: string, direction: "forward" | "reverse"): Promise<void> {
    this.incarnation++;
    this.token = token;
    this.unregistered = true;
    this.direction = direction;
    this.stateDir = join(this.spec.dir, `${this.spec.name}-state-${this.incarnation}`);
    await this.start();
  }

  /** Writes the bytes of a failover disk (its footer stripped) into the image: the VM now runs on that disk. */
  adoptImage(diskId: string, bytes: Buffer): void {
    const fd = openSync(this.images[diskId]!, "r+");
    try {
      writeSync(fd, bytes, 0, bytes.length, 0);
    } finally {
      closeSync(fd);
    }
  }

  /** SIGKILL, as a crashed VM agent; the write in flight is then whatever its image shows. */
  async kill(): Promise<string[]> {
    const child = this.proc;
    if (child && this.alive) {
      const exited = once(child, "exit");
      child.kill("SIGKILL");
      await exited;
    }
    const outcomes: string[] = [];
    if (this.spec.capture === "library") {
      for (const [d, m] of this.models) {
        if (!m.pending) continue;
        const w = m.pending;
        outcomes.push(`${d}: write in flight ${m.resolveFromDisk(readImage(this.images[d]!, w.offset, w.length), wallNow())}`);
      }
    }
    return outcomes;
  }

  /** A graceful stop (the end of the run). */
  async stop(): Promise<void> {
    this.stopped = true;
    this.paused = false;
    for (const f of this.pauseWaiters.splice(0)) f();
    const child = this.proc;
    if (child && this.alive) {
      const exited = once(child, "exit");
      if (this.spec.capture === "library") child.send({ type: "stop" });
      else child.kill("SIGTERM");
      await Promise.race([exited, new Promise<void>((r) => setTimeout(r, 20_000).unref())]);
      if (this.alive) child.kill("SIGKILL");
    }
    await Promise.all(this.writerLoops);
    for (const c of this.nbdClients.values()) c.destroy();
    this.logStream.end();
  }

  /** No write in flight and none starts until `go`: the models are the disks now. */
  async pause(): Promise<void> {
    this.paused = true;
    if (this.spec.capture === "library") {
      if (!this.alive) return;
      const paused = new Promise<void>((r) => this.pauseWaiters.push(r));
      this.proc!.send({ type: "pause" });
      // The exit listener goes with the pause: a long run pauses a live agent many times.
      const child = this.proc!;
      let onExit: () => void = () => undefined;
      await Promise.race([paused, new Promise<void>((r) => child.once("exit", (onExit = () => r())))]);
      child.off("exit", onExit);
      return;
    }
    if (this.inFlight > 0) await new Promise<void>((r) => this.idle.push(r));
  }

  go(): void {
    this.paused = false;
    if (this.spec.capture === "library" && this.alive) this.proc!.send({ type: "go" });
  }

  private async waitWhilePaused(): Promise<void> {
    while (this.paused && !this.stopped) await sleep(50);
  }

  private done(): void {
    if (--this.inFlight === 0) for (const f of this.idle.splice(0)) f();
  }

  private async nbdClient(diskId: string): Promise<RawNbdClient | undefined> {
    let c = this.nbdClients.get(diskId);
    if (c) return c;
    try {
      c = await RawNbdClient.open(this.sock, diskId);
    } catch {
      return undefined;
    }
    this.nbdClients.set(diskId, c);
    return c;
  }

  /** One NBD client per disk, one 512-aligned write at a time; a broken connection is reopened and the write in flight read back. */
  private async nbdWriter(diskId: string): Promise<void> {
    const model = this.models.get(diskId)!;
    const sectors = this.spec.diskBytes / 512;
    while (!this.stopped) {
      await this.waitWhilePaused();
      if (this.stopped) break;
      // Counted before the first await: a pause that finds nothing in flight must mean no write starts after it.
      this.inFlight++;
      let client: RawNbdClient | undefined;
      try {
        client = await this.nbdClient(diskId);
        if (!client || this.paused) {
          if (!client) await sleep(200);
          continue;
        }
        if (model.pending) {
          const w = model.pending;
          client.request(0, w.offset, w.length);
          const r = await client.reply(w.length);
          if (r.error !== 0) throw new Error(`NBD read error ${r.error}`);
          this.spec.log(`${this.spec.name}/${diskId}: NBD write in flight when the connection broke: ${model.resolveFromDisk(r.data, wallNow())}`);
          continue;
        }
        const length = 512 * (1 + Math.floor(this.next() * 64));
        const offset = 512 * Math.floor(this.next() * (sectors - length / 512));
        const byte = Math.floor(this.next() * 256);
        model.send({ offset, length, byte, sentAt: wallNow() });
        client.request(1, offset, length, { payload: Buffer.alloc(length, byte) });
        const r = await client.reply();
        if (r.error !== 0) {
          // Refused (a planned failover's shutdown): not on the disk.
          model.drop();
          this.refused++;
          await sleep(500);
        } else model.ack(wallNow());
        await sleep(Math.max(1, (length / (this.spec.bytesPerSecond * this.boost)) * 1000));
      } catch {
        client?.destroy();
        this.nbdClients.delete(diskId);
        await sleep(200);
      } finally {
        this.done();
      }
    }
  }

  /**
   * A client that vanishes mid-write: it sends a write's header and half its payload, then closes. The write was never
   * acknowledged and must leave no trace (the model does not have it).
   */
  async nbdVanish(): Promise<string> {
    const diskId = this.spec.diskIds[Math.floor(this.next() * this.spec.diskIds.length)]!;
    const c = await RawNbdClient.open(this.sock, diskId);
    const length = 64 * 1024;
    const offset = 512 * Math.floor(this.next() * (this.spec.diskBytes / 512 - 128));
    c.request(1, offset, length);
    c.send(Buffer.alloc(length / 2, 0xee));
    await sleep(20);
    c.destroy();
    return `${this.spec.name}/${diskId} at ${offset}: 32 of 64 KiB sent`;
  }

  /**
   * Another program writes the image file (a scanned disk): bursts of writes, then a few quiet seconds so that scan
   * rounds find every disk unchanged and cut points.
   */
  private async scanWriter(diskId: string): Promise<void> {
    const model = this.models.get(diskId)!;
    const path = this.images[diskId]!;
    while (!this.stopped) {
      const burstEnd = Date.now() + 2000 + this.next() * 2000;
      while (Date.now() < burstEnd && !this.stopped && !this.paused) {
        this.inFlight++;
        try {
          const length = 1 + Math.floor(this.next() * 32 * 1024);
          const offset = Math.floor(this.next() * (this.spec.diskBytes - length));
          const byte = Math.floor(this.next() * 256);
          model.send({ offset, length, byte, sentAt: wallNow() });
          const fd = openSync(path, "r+");
          try {
            writeSync(fd, Buffer.alloc(length, byte), 0, length, offset);
          } finally {
            closeSync(fd);
          }
          model.ack(wallNow());
          await sleep(Math.max(1, (length / this.spec.bytesPerSecond) * 1000));
        } finally {
          this.done();
        }
      }
      // Quiet: scan rounds (1 s apart, 2 s after the last change) can cut a point.
      const quietEnd = Date.now() + 6000 + this.next() * 4000;
      while (Date.now() < quietEnd && !this.stopped) await sleep(100);
      await this.waitWhilePaused();
    }
  }
}
