// The NBD server: listens on a Unix socket (mode 0600) and optionally TCP, runs one NbdConnection per client, and stops gracefully.
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import { connect, createServer, isIP, type Server, type Socket } from "node:net";
import { NbdConnection } from "./connection";
import { ByteBudget, PayloadPool } from "./payload-pool";
import type { NbdExport } from "./disk-export";

export const DEFAULT_MAX_PAYLOAD_BYTES = 32 * 1024 * 1024;
/**
 * Payload bytes held by all connections at once, and kept idle for reuse: 8 MiB is eight 1 MiB writes in flight (what
 * `qemu-img bench -d 8` and a kernel client's queue send), or 32 of nbdcopy's 256 KiB. Writes are applied one core's
 * worth at a time whatever the depth; each MiB more is a MiB of the agent's memory.
 */
const PAYLOAD_BUDGET_BYTES = 8 * 1024 * 1024;

export interface NbdServerOptions {
  socketPath: string;
  /** Also on TCP (no authentication: anyone who reaches it reads and writes the disks — keep it on loopback). */
  tcp?: { host: string; port: number };
  exports: NbdExport[];
  /** Largest READ/WRITE payload (default and the spec's recommended maximum: 32 MiB). */
  maxPayloadBytes?: number;
  log?: (line: string) => void;
}

export interface NbdAddress {
  socketPath: string;
  tcp?: { host: string; port: number };
}

export class NbdServer {
  private readonly connections = new Set<NbdConnection>();
  /** WRITE payload buffers kept for reuse across connections (idle ones up to the budget: a steady load allocates none). */
  private readonly payloads = new PayloadPool(PAYLOAD_BUDGET_BYTES);
  /** Payload bytes all connections hold at once (a single larger request still goes through on its own). */
  private readonly budget = new ByteBudget(PAYLOAD_BUDGET_BYTES);
  private closing: Promise<void> | undefined;
  private socketIno = 0;
  private tcpAddress: { host: string; port: number } | undefined;
  private peers = 0;

  private constructor(
    private readonly opts: NbdServerOptions,
    private readonly byName: ReadonlyMap<string, NbdExport>,
    private readonly unix: Server,
    private readonly tcp: Server | undefined,
  ) {}

  static async start(opts: NbdServerOptions): Promise<NbdServer> {
    const byName = new Map(opts.exports.map((e) => [e.name, e]));
    if (byName.size !== opts.exports.length) throw new Error("two NBD exports with the same name");
    await clearStaleSocket(opts.socketPath);
    // Paused: a connection's socket is re-wrapped to read into the server's buffers before anything is read (ByteReader.adopt).
    const unix = createServer({ pauseOnConnect: true });
    const tcp = opts.tcp ? createServer({ pauseOnConnect: true }) : undefined;
    const server = new NbdServer(opts, byName, unix, tcp);
    unix.on("connection", (s) => server.accept(s, "unix"));
    tcp?.on("connection", (s) => server.accept(s, `tcp ${s.remoteAddress}:${s.remotePort}`, true));
    // The socket is created 0600 (umask for the synchronous bind), so no other user can ever connect to it.
    const umask = process.umask(0o177);
    try {
      await listen(unix, () => unix.listen(opts.socketPath));
    } finally {
      process.umask(umask);
    }
    try {
      chmodSync(opts.socketPath, 0o600);
      server.socketIno = lstatSync(opts.socketPath).ino;
      if (tcp && opts.tcp) {
        await listen(tcp, () => tcp.listen(opts.tcp!.port, opts.tcp!.host));
        const at = tcp.address();
        if (at && typeof at === "object") server.tcpAddress = { host: opts.tcp.host, port: at.port };
      }
    } catch (e) {
      await server.close();
      throw e;
    }
    return server;
  }

  get address(): NbdAddress {
    return { socketPath: this.opts.socketPath, ...(this.tcpAddress ? { tcp: this.tcpAddress } : {}) };
  }

  exportNames(): string[] {
    return [...this.byName.keys()];
  }

  /** Clients connected now. */
  get connectionCount(): number {
    return this.connections.size;
  }

  private accept(socket: Socket, how: string, noDelay = false): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const conn = new NbdConnection(
      socket,
      this.byName,
      {
        maxPayloadBytes: this.opts.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES,
        maxInFlight: 64,
        maxBytesInFlight: 64 * 1024 * 1024,
        payloads: this.payloads,
        budget: this.budget,
        log: this.opts.log ?? (() => {}),
      },
      `#${++this.peers} ${how}`,
    );
    if (noDelay) conn.setNoDelay();
    this.connections.add(conn);
    void conn.done.finally(() => this.connections.delete(conn));
  }

  /** Stops listening, lets every connection finish what it accepted and closes it, removes the socket file. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const stopped = [closeServer(this.unix), ...(this.tcp?.listening ? [closeServer(this.tcp)] : [])];
      await Promise.all([...this.connections].map((c) => c.close()));
      await Promise.all(stopped);
      try {
        // Only the socket this server made: another may have replaced it meanwhile.
        if (this.socketIno && lstatSync(this.opts.socketPath).ino === this.socketIno) unlinkSync(this.opts.socketPath);
      } catch {
        // already gone
      }
    })();
    return this.closing;
  }
}

function listen(server: Server, start: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.once("listening", () => {
      server.off("error", reject);
      resolve();
    });
    start();
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/**
 * A socket file left by an agent that died is removed; one a live server answers on, or a path that is not a socket,
 * is an error naming it (the agent never deletes what it did not make).
 */
async function clearStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket: choose another --nbd path`);
  const live = await new Promise<boolean>((resolve) => {
    const c = connect(path);
    c.once("connect", () => {
      c.destroy();
      resolve(true);
    });
    c.once("error", () => resolve(false));
  });
  if (live) throw new Error(`something is already serving on ${path} (another agent?): stop it or choose another --nbd path`);
  unlinkSync(path);
}

/** `10809` → 127.0.0.1:10809; `host:port`; `[::1]:10809`. */
export function parseTcpAddress(value: string): { host: string; port: number } {
  const m = /^(?:(\[[^\]]+\]|[^:]+):)?(\d{1,5})$/.exec(value.trim());
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new Error(`expected <port> or <host>:<port>, e.g. 10809 or 127.0.0.1:10809 (got '${value}')`);
  const host = m[1] ? m[1].replace(/^\[|\]$/g, "") : "127.0.0.1";
  return { host, port };
}

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  if (host === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  return host === "::1";
}
