// The replication-group barrier: agents of a group cut the same tag at one instant, over TCP (default port 20004).
import { createHmac, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { createServer, connect, type Server, type Socket } from "node:net";
import type { TagKind } from "../shared/replication/batch";

export const GROUP_PORT = 20004;

/** What a member does at each phase; `hold` must stop new writes from being acknowledged until `release`. */
export interface BarrierParticipant {
  /**
   * Gets ready to hold without holding anything (waits out a seal in progress, spool room): so that `hold`, whose
   * time is bounded, only has to stop writes.
   */
  ready?(): Promise<void>;
  hold(): Promise<void>;
  /** Seals every disk with the tag, still holding writes. */
  cut(tag: { id: string; kind: TagKind; time: string; members: string[] }): Promise<void>;
  release(): void;
}

type Message =
  | { type: "hello"; itemId: string; nonce: string; mac: string }
  | { type: "welcome"; mac: string }
  | { type: "ready"; tagId: string }
  | { type: "readied"; tagId: string }
  | { type: "prepare"; tagId: string; kind: TagKind; holdMs: number }
  | { type: "prepared"; tagId: string }
  | { type: "commit"; tagId: string; kind: TagKind; time: string; members: string[] }
  | { type: "abort"; tagId: string; reason: string }
  | { type: "done"; tagId: string; ok: boolean };

const mac = (secret: string, ...parts: string[]) => createHmac("sha256", secret).update(parts.join("|")).digest("hex");
const sameMac = (a: string, b: string) => a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b));

/** Newline-delimited JSON over a socket. */
class Channel {
  private buffer = "";
  private readonly waiters: ((m: Message | undefined) => void)[] = [];
  private readonly queue: Message[] = [];
  private closed = false;
  private onMessage?: (m: Message) => void;

  constructor(readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      this.buffer += chunk;
      if (this.buffer.length > 1 << 20) return socket.destroy(new Error("peer message too large"));
      let nl: number;
      while ((nl = this.buffer.indexOf("\n")) >= 0) {
        const line = this.buffer.slice(0, nl);
        this.buffer = this.buffer.slice(nl + 1);
        let m: Message;
        try {
          m = JSON.parse(line) as Message;
        } catch {
          return socket.destroy(new Error("peer sent malformed JSON"));
        }
        const w = this.waiters.shift();
        if (w) w(m);
        else if (this.onMessage) this.onMessage(m);
        else this.queue.push(m);
      }
    });
    const end = () => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w(undefined);
    };
    socket.on("close", end);
    socket.on("error", end);
  }

  /**
   * From now on every message goes to `handler`, starting with those already received and not taken by `next`: the
   * first message after a handshake can arrive in the same read as the handshake's reply, before the handler is set.
   */
  listen(handler: (m: Message) => void): void {
    this.onMessage = handler;
    for (const m of this.queue.splice(0)) handler(m);
  }

  send(m: Message): void {
    if (!this.closed) this.socket.write(`${JSON.stringify(m)}\n`);
  }

  next(timeoutMs: number): Promise<Message | undefined> {
    const q = this.queue.shift();
    if (q) return Promise.resolve(q);
    if (this.closed) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(done);
        if (i >= 0) this.waiters.splice(i, 1);
        resolve(undefined);
      }, timeoutMs);
      const done = (m: Message | undefined) => {
        clearTimeout(timer);
        resolve(m);
      };
      this.waiters.push(done);
    });
  }

  /** The next message that `match`es, skipping stale ones (e.g. a late ack of an aborted tag), or undefined at the deadline. */
  async expect(match: (m: Message) => boolean, timeoutMs: number): Promise<Message | undefined> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const m = await this.next(Math.max(0, deadline - performance.now()));
      if (!m || match(m)) return m;
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

export interface GroupTagOutcome {
  tagId: string;
  committed: boolean;
  members: string[];
  /** How long writes were held on the coordinator (prepare → release), ms. */
  holdMs: number;
  reason?: string;
}

/**
 * The coordinator: listens for the group's other agents and runs the two-phase barrier.
 * Prepare: every member holds its writes and acks within `holdBoundMs`; commit: every member cuts the same tag; then release.
 */
export class GroupCoordinator {
  private server?: Server;
  private readonly members = new Map<string, Channel>();
  private running: Promise<GroupTagOutcome> | undefined;
  private allowed: Set<string> | undefined;

  constructor(
    private readonly opts: {
      itemId: string;
      secret: string;
      port?: number;
      host?: string;
      /** Writes are held at most this long (prepare → release). */
      holdBoundMs?: number;
      /** Getting ready (no writes held) may take this long before the tag is aborted. */
      readyBoundMs?: number;
      participant: BarrierParticipant;
    },
  ) {}

  get port(): number {
    const a = this.server?.address();
    return typeof a === "object" && a ? a.port : 0;
  }

  /** The group's current members (from the control plane): others are refused, and dropped if connected. */
  setMembers(ids: string[]): void {
    this.allowed = new Set(ids);
    for (const [id, ch] of this.members) if (!this.allowed.has(id)) ch.close();
  }

  memberIds(): string[] {
    return [...this.members.keys()].sort();
  }

  async listen(): Promise<number> {
    this.server = createServer((socket) => void this.accept(new Channel(socket)));
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", reject);
      this.server!.listen(this.opts.port ?? GROUP_PORT, this.opts.host ?? "0.0.0.0", () => resolve());
    });
    return this.port;
  }

  private async accept(ch: Channel): Promise<void> {
    const hello = await ch.next(5_000);
    if (hello?.type !== "hello" || !sameMac(hello.mac, mac(this.opts.secret, "hello", hello.itemId, hello.nonce))) {
      ch.close();
      return;
    }
    if (this.allowed && !this.allowed.has(hello.itemId)) {
      ch.close();
      return;
    }
    ch.send({ type: "welcome", mac: mac(this.opts.secret, "welcome", hello.itemId, hello.nonce) });
    this.members.get(hello.itemId)?.close();
    this.members.set(hello.itemId, ch);
    ch.socket.on("close", () => {
      if (this.members.get(hello.itemId) === ch) this.members.delete(hello.itemId);
    });
  }

  /** One group tag. Never overlaps itself; a member that misses the bound aborts the tag for all. */
  tag(kind: TagKind, now: () => Date = () => new Date()): Promise<GroupTagOutcome> {
    this.running ??= this.runTag(kind, now).finally(() => (this.running = undefined));
    return this.running;
  }

  private async runTag(kind: TagKind, now: () => Date): Promise<GroupTagOutcome> {
    const bound = this.opts.holdBoundMs ?? 50;
    const tagId = randomUUID();
    const peers = [...this.members.entries()];
    let started = performance.now();
    const abort = (reason: string): GroupTagOutcome => {
      for (const [, ch] of peers) ch.send({ type: "abort", tagId, reason });
      this.opts.participant.release();
      return { tagId, committed: false, members: [], holdMs: performance.now() - started, reason };
    };
    // Phase 0, unbounded by the hold bound: everyone gets ready, nobody holds writes yet.
    for (const [, ch] of peers) ch.send({ type: "ready", tagId });
    const readyBound = this.opts.readyBoundMs ?? 2_000;
    try {
      await this.opts.participant.ready?.();
    } catch (e) {
      for (const [, ch] of peers) ch.send({ type: "abort", tagId, reason: "the coordinator cannot get ready" });
      return { tagId, committed: false, members: [], holdMs: 0, reason: `the coordinator cannot get ready: ${(e as Error).message}` };
    }
    const readied = await Promise.all(peers.map(([, ch]) => ch.expect((x) => x.type === "readied" && x.tagId === tagId, readyBound)));
    const unready = peers.filter((_, i) => !readied[i]).map(([id]) => id);
    if (unready.length > 0) {
      for (const [, ch] of peers) ch.send({ type: "abort", tagId, reason: "not every member got ready" });
      return { tagId, committed: false, members: [], holdMs: 0, reason: `not ready within ${readyBound} ms: ${unready.join(", ")}` };
    }
    started = performance.now();
    for (const [, ch] of peers) ch.send({ type: "prepare", tagId, kind, holdMs: bound });
    try {
      await this.opts.participant.hold();
    } catch (e) {
      for (const [, ch] of peers) ch.send({ type: "abort", tagId, reason: "the coordinator cannot hold" });
      return { tagId, committed: false, members: [], holdMs: performance.now() - started, reason: `the coordinator cannot hold: ${(e as Error).message}` };
    }
    const acks = await Promise.all(
      peers.map(async ([id, ch]) => {
        const left = Math.max(0, bound - (performance.now() - started));
        const m = await ch.expect((x) => x.type === "prepared" && x.tagId === tagId, left);
        return m ? id : undefined;
      }),
    );
    const missing = peers.filter((_, i) => !acks[i]).map(([id]) => id);
    if (missing.length > 0) return abort(`no prepare ack within ${bound} ms from ${missing.join(", ")}`);
    if (performance.now() - started > bound) return abort(`prepare took longer than ${bound} ms`);
    const members = [this.opts.itemId, ...peers.map(([id]) => id)].sort();
    const time = now().toISOString();
    for (const [, ch] of peers) ch.send({ type: "commit", tagId, kind, time, members });
    try {
      await this.opts.participant.cut({ id: tagId, kind, time, members });
    } finally {
      this.opts.participant.release();
    }
    const holdMs = performance.now() - started;
    const done = await Promise.all(peers.map(([, ch]) => ch.expect((x) => x.type === "done" && x.tagId === tagId, 5_000)));
    const failed = peers.filter((_, i) => !(done[i]?.type === "done" && done[i].ok)).map(([id]) => id);
    // A member that did not cut the tag leaves the group point incomplete: it is never sealed, only reported.
    return { tagId, committed: true, members, holdMs, ...(failed.length ? { reason: `not cut by ${failed.join(", ")}` } : {}) };
  }

  async close(): Promise<void> {
    for (const ch of this.members.values()) ch.close();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

/** A member: connects to the coordinator, holds when asked (never longer than the bound), cuts on commit. */
export class GroupMember {
  private ch?: Channel;
  private holding: { tagId: string; timer: NodeJS.Timeout } | undefined;

  constructor(
    private readonly opts: {
      itemId: string;
      secret: string;
      host: string;
      port: number;
      participant: BarrierParticipant;
      onTag?: (o: GroupTagOutcome) => void;
      onClose?: () => void;
    },
  ) {}

  async connect(): Promise<void> {
    const socket = connect({ host: this.opts.host, port: this.opts.port });
    // An unreachable coordinator (packets dropped) fails the attempt instead of hanging it; a dead one is noticed.
    socket.setTimeout(5_000, () => socket.destroy(new Error(`no connection to ${this.opts.host}:${this.opts.port} within 5 s`)));
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", () => resolve());
      socket.once("error", reject);
    });
    socket.setTimeout(0);
    socket.setKeepAlive(true, 10_000);
    const ch = new Channel(socket);
    const nonce = randomBytes(16).toString("hex");
    ch.send({ type: "hello", itemId: this.opts.itemId, nonce, mac: mac(this.opts.secret, "hello", this.opts.itemId, nonce) });
    const welcome = await ch.next(5_000);
    if (welcome?.type !== "welcome" || !sameMac(welcome.mac, mac(this.opts.secret, "welcome", this.opts.itemId, nonce))) {
      ch.close();
      throw new Error("the group coordinator did not prove it knows the group secret");
    }
    this.ch = ch;
    ch.listen((m) => void this.handle(m));
    ch.socket.on("close", () => {
      // A lost coordinator must not leave writes held.
      if (this.holding) this.letGo(this.holding.tagId);
      this.opts.onClose?.();
    });
  }

  get connected(): boolean {
    return this.ch !== undefined && !this.ch.socket.destroyed;
  }

  private async handle(m: Message): Promise<void> {
    const ch = this.ch!;
    if (m.type === "ready") {
      try {
        await this.opts.participant.ready?.();
      } catch {
        return; // no ack: the coordinator aborts the tag
      }
      ch.send({ type: "readied", tagId: m.tagId });
    } else if (m.type === "prepare") {
      try {
        await this.opts.participant.hold();
      } catch {
        return; // no ack: the coordinator aborts the tag at its bound
      }
      // Never hold writes past the bound, whatever the coordinator does.
      const timer = setTimeout(() => this.letGo(m.tagId), m.holdMs);
      this.holding = { tagId: m.tagId, timer };
      ch.send({ type: "prepared", tagId: m.tagId });
    } else if (m.type === "commit") {
      if (this.holding?.tagId !== m.tagId) {
        ch.send({ type: "done", tagId: m.tagId, ok: false });
        this.opts.onTag?.({ tagId: m.tagId, committed: false, members: m.members, holdMs: 0, reason: "commit arrived after the hold bound" });
        return;
      }
      clearTimeout(this.holding.timer);
      this.holding = undefined;
      let ok = true;
      try {
        await this.opts.participant.cut({ id: m.tagId, kind: m.kind, time: m.time, members: m.members });
      } catch {
        ok = false;
      } finally {
        this.opts.participant.release();
      }
      ch.send({ type: "done", tagId: m.tagId, ok });
      this.opts.onTag?.({ tagId: m.tagId, committed: ok, members: m.members, holdMs: 0 });
    } else if (m.type === "abort") {
      this.letGo(m.tagId);
    }
  }

  private letGo(tagId: string): void {
    if (this.holding?.tagId !== tagId) return;
    clearTimeout(this.holding.timer);
    this.holding = undefined;
    this.opts.participant.release();
  }

  close(): void {
    if (this.holding) this.letGo(this.holding.tagId);
    this.ch?.close();
  }
}
