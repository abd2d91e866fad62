// The agent's part in its replication group: listens for the group's barrier, and is its coordinator or a member
// connected to the coordinator, as the control plane says at each check-in.
import { networkInterfaces } from "node:os";
import type { GroupInfo } from "../shared/protection/agent-protocol";
import type { BatchTag, TagKind } from "../shared/replication/batch";
import { GROUP_PORT, GroupCoordinator, GroupMember, type BarrierParticipant, type GroupTagOutcome } from "./group";
import { backoffMs, describe } from "./retry";
import { TrackedDisk, type DiskHold } from "./tracked-disk";

export const DEFAULT_GROUP_HOLD_BOUND_MS = 50;

export interface GroupLinkOptions {
  itemId: string;
  /** Listening port (default 20004; 0 = ephemeral). */
  port?: number;
  /** Listening address (default 0.0.0.0). */
  host?: string;
  /** The address other agents reach this one at (default: the listening address, or this host's first IPv4 address). */
  advertiseHost?: string;
  /** Writes are never held longer than this (default 50 ms). */
  holdBoundMs?: number;
  /** The tracked disks (all of the agent's disks), or undefined if some disk cannot be held (scanned). */
  disks: () => TrackedDisk[] | undefined;
  /** A test hook: runs before the disks are held at a prepare (e.g. to stall a member). */
  beforeHold?: () => Promise<void>;
  onTag?: (tag: BatchTag) => void;
  log: (line: string) => void;
}

/** Holds every disk of the agent for the barrier; `cut` seals them with the group tag. */
class DisksParticipant implements BarrierParticipant {
  private held: DiskHold | undefined;
  /** Hold durations (ms), for the benchmark. */
  readonly holds: number[] = [];
  private heldAt = 0;

  constructor(private readonly link: GroupLink) {}

  /** Waits out seals in progress and spool room on every disk, holding nothing, so that `hold` only stops writes. */
  async ready(): Promise<void> {
    const disks = this.link.opts.disks();
    if (!disks) throw new Error("some disk is scanned: no instant to cut");
    await TrackedDisk.ready(disks);
  }

  async hold(): Promise<void> {
    await this.link.opts.beforeHold?.();
    const disks = this.link.opts.disks();
    if (!disks) throw new Error("some disk is scanned: no instant to cut");
    if (this.held) this.release();
    const h = await TrackedDisk.hold(disks);
    if (!h.canTag()) {
      h.release();
      throw new Error("a disk cannot carry a tag yet (initial replication, resync or spool overflow)");
    }
    this.held = h;
    this.heldAt = performance.now();
  }

  async cut(tag: { id: string; kind: TagKind; time: string; members: string[] }): Promise<void> {
    const h = this.held;
    if (!h) throw new Error("not holding");
    const full: BatchTag = { id: tag.id, kind: tag.kind, time: tag.time, scope: "group", group: this.link.groupName!, members: tag.members };
    const cut = h.cut(full);
    if (!cut) throw new Error("a disk could not carry the tag");
    this.link.opts.onTag?.(cut);
  }

  release(): void {
    const h = this.held;
    if (!h) return;
    this.held = undefined;
    h.release();
    this.holds.push(performance.now() - this.heldAt);
    if (this.holds.length > 10_000) this.holds.splice(0, 5_000);
    h.done.catch((e) => this.link.opts.log(`group tag: sealing failed: ${describe(e)}`));
  }
}

export class GroupLink {
  private info: GroupInfo | undefined;
  private server: GroupCoordinator | undefined;
  private serverKey = "";
  private member: GroupMember | undefined;
  private memberKey = "";
  private reconnects = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private closed = false;
  readonly participant: DisksParticipant;

  constructor(readonly opts: GroupLinkOptions) {
    this.participant = new DisksParticipant(this);
  }

  get groupName(): string | undefined {
    return this.info?.name;
  }

  /** coordinator: this agent cuts the group's tags; member: connected to the coordinator; none: VM tags. */
  get role(): "coordinator" | "member" | "none" {
    if (!this.info || !this.server) return "none";
    if (this.info.coordinator?.itemId === this.opts.itemId) return "coordinator";
    return this.member?.connected ? "member" : "none";
  }

  /** Where to tell the control plane this agent listens, once listening. */
  listenAddress(): { host: string; port: number } | undefined {
    if (!this.server || !this.info) return undefined;
    const bind = this.opts.host ?? "0.0.0.0";
    const host = this.opts.advertiseHost ?? (bind === "0.0.0.0" || bind === "::" ? firstAddress() : bind);
    return { host, port: this.server.port };
  }

  /** What the control plane says now (registration or check-in): start, switch or stop roles. */
  async update(given: GroupInfo | undefined): Promise<void> {
    if (this.closed) return;
    // An agent with a scanned disk has no instant to cut: it stays out of the barrier (neither listens nor joins), so
    // it never holds up the others' group tags; it is simply not among their members.
    const info = given && this.opts.disks() ? given : undefined;
    this.info = info;
    const serverKey = info ? `${info.name}|${info.secret}` : "";
    if (serverKey !== this.serverKey) {
      await this.server?.close();
      this.server = undefined;
      this.serverKey = serverKey;
      if (info) {
        const server = new GroupCoordinator({
          itemId: this.opts.itemId,
          secret: info.secret,
          port: this.opts.port ?? GROUP_PORT,
          host: this.opts.host ?? "0.0.0.0",
          holdBoundMs: this.opts.holdBoundMs ?? DEFAULT_GROUP_HOLD_BOUND_MS,
          participant: this.participant,
        });
        try {
          await server.listen();
          this.server = server;
        } catch (e) {
          this.serverKey = "";
          this.opts.log(`group ${info.name}: cannot listen on port ${this.opts.port ?? GROUP_PORT}: ${describe(e)}`);
        }
      }
    }
    this.server?.setMembers(info?.members ?? []);
    const c = info?.coordinator;
    const memberKey =
      info && c && c.itemId !== this.opts.itemId && info.members.includes(this.opts.itemId) ? `${serverKey}|${c.itemId}|${c.host}|${c.port}` : "";
    if (memberKey !== this.memberKey) {
      this.dropMember();
      this.memberKey = memberKey;
      this.reconnects = 0;
      if (memberKey) this.connect();
    }
  }

  private dropMember(): void {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const m = this.member;
    this.member = undefined;
    m?.close();
  }

  /** Connects to the coordinator; reconnects with backoff while it is the same coordinator. */
  private connect(): void {
    const key = this.memberKey;
    const info = this.info!;
    const c = info.coordinator!;
    const member = new GroupMember({
      itemId: this.opts.itemId,
      secret: info.secret,
      host: c.host,
      port: c.port,
      participant: this.participant,
      onTag: (o) => {
        if (!o.committed) this.opts.log(`group tag ${o.tagId} not cut here: ${o.reason ?? "?"}`);
      },
      onClose: () => {
        if (this.member === member) this.retry(key);
      },
    });
    this.member = member;
    member.connect().then(
      () => {
        this.reconnects = 0;
      },
      (e) => {
        if (this.reconnects % 10 === 0) this.opts.log(`group ${info.name}: cannot reach coordinator ${c.itemId} at ${c.host}:${c.port}: ${describe(e)}`);
        if (this.member === member) this.retry(key);
      },
    );
  }

  private retry(key: string): void {
    if (this.closed || key !== this.memberKey || this.reconnectTimer) return;
    this.member = undefined;
    this.reconnectTimer = setTimeout(
      () => {
        this.reconnectTimer = undefined;
        if (!this.closed && key === this.memberKey) this.connect();
      },
      backoffMs(this.reconnects++, 100, 10_000),
    );
    this.reconnectTimer.unref();
  }

  /** One group tag through the barrier (coordinator only); undefined when this agent is not the coordinator. */
  async tag(kind: TagKind = "crash"): Promise<GroupTagOutcome | undefined> {
    if (this.role !== "coordinator") return undefined;
    return this.server!.tag(kind);
  }

  /** Members connected to this agent's barrier (when coordinator). */
  connectedMembers(): string[] {
    return this.server?.memberIds() ?? [];
  }

  async close(): Promise<void> {
    this.closed = true;
    this.dropMember();
    this.participant.release();
    await this.server?.close();
    this.server = undefined;
  }
}

function firstAddress(): string {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === "IPv4" && !a.internal) return a.address;
  }
  return "127.0.0.1";
}
