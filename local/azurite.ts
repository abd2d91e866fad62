// Runs Azurite from node_modules as a child process with two accounts (control plane and source cache) and hands back their connection strings.
import { setTimeout as sleep } from "node:timers/promises";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir } from "node:fs/promises";
import { connect } from "node:net";
import { resolve as resolvePath } from "node:path";
import { DEV_ACCOUNT, DEV_KEY } from "../shared/config/settings";
import { freePort, portIsFree } from "./process";

/** The second account stands in for the source-region cache; its key is fixed so connection strings stay stable across restarts. */
export const CACHE_ACCOUNT = "sourcecache";
export const CACHE_KEY = "2Auz5hUpFSjgHPSkjVbeZmxIKLRsMamb2QEDYMsTVJGlsHfHVcZ7ioSe0FdBxHaPT0lMX8uuAhykz9uulgt3Nw==";

export interface AzuriteOptions {
  /** Data folder (disk mode; created if missing). Ignored when `inMemory` is set. */
  location?: string;
  inMemory?: boolean;
  /** 0 or undefined: a free port is picked. */
  blobPort?: number;
  queuePort?: number;
  tablePort?: number;
  /** Suppress Azurite's access log (it is otherwise forwarded to stdout). */
  silent?: boolean;
  /** How long to wait for all three services to accept connections. Default 60 s (slow, loaded machines). */
  startTimeoutMs?: number;
  /** The cache account's key (default CACHE_KEY): restarting with another one is a key rotation (the chaos soak's). */
  cacheKey?: string;
}

export interface AzurePorts {
  blob: number;
  queue: number;
  table: number;
}

export interface LocalStorage {
  /** Connection string of devstoreaccount1 (control plane and replicas). */
  control: string;
  /** Connection string of the "sourcecache" account (the agents' cache). */
  cache: string;
  ports: AzurePorts;
  /** The child's pid, for diagnostics. */
  pid: number;
  /** SIGTERM, then wait for exit (Azurite flushes its metadata on a graceful stop). */
  stop(): Promise<void>;
}

const HOST = "127.0.0.1";
const AUTO_PORT_ATTEMPTS = 5;
const STOP_GRACE_MS = 15_000;
const TAIL_CHARS = 8_000;

/** An explicit shared-key connection string; `UseDevelopmentStorage=true` cannot name a second account or a non-default port. */
export function azuriteConnectionString(account: string, key: string, ports: AzurePorts): string {
  return [
    "DefaultEndpointsProtocol=http",
    `AccountName=${account}`,
    `AccountKey=${key}`,
    `BlobEndpoint=http://${HOST}:${ports.blob}/${account}`,
    `QueueEndpoint=http://${HOST}:${ports.queue}/${account}`,
    `TableEndpoint=http://${HOST}:${ports.table}/${account}`,
    "",
  ].join(";");
}

/** Starts Azurite and resolves once blob, queue and table all accept connections. */
export async function startAzurite(opts: AzuriteOptions = {}): Promise<LocalStorage> {
  const explicit = Boolean(opts.blobPort || opts.queuePort || opts.tablePort);
  let location: string | undefined;
  if (!opts.inMemory) {
    location = resolvePath(opts.location ?? ".local/azurite");
    await mkdir(location, { recursive: true });
  }
  for (let attempt = 1; ; attempt++) {
    const ports = await choosePorts(opts);
    try {
      return await launch(opts, ports, location);
    } catch (e) {
      // Free ports are found by binding and releasing them, so another process can take one in between: pick again.
      const retry = !explicit && e instanceof AzuriteStartError && e.addressInUse && attempt < AUTO_PORT_ATTEMPTS;
      if (!retry) throw e;
    }
  }
}

export class AzuriteStartError extends Error {
  constructor(
    message: string,
    readonly addressInUse: boolean,
  ) {
    super(message);
    this.name = "AzuriteStartError";
  }
}

async function choosePorts(opts: AzuriteOptions): Promise<AzurePorts> {
  const taken = new Set<number>();
  const pick = async (wanted: number | undefined): Promise<number> => {
    if (wanted) return wanted;
    for (;;) {
      const p = await freePort();
      if (!taken.has(p)) {
        taken.add(p);
        return p;
      }
    }
  };
  // Explicit ports first, so a picked port never duplicates one the caller asked for.
  for (const p of [opts.blobPort, opts.queuePort, opts.tablePort]) if (p) taken.add(p);
  return { blob: await pick(opts.blobPort), queue: await pick(opts.queuePort), table: await pick(opts.tablePort) };
}

/**
 * Runs inside the child before Azurite: when the parent dies in any way (even SIGKILL) the stdin pipe
 * reaches EOF and the child stops itself gracefully, so no orphan keeps the ports or loses acknowledged writes.
 * With `node -e code -- script ...flags`, process.argv is [node, script, ...flags]: what Azurite's parser expects.
 */
const WATCHDOG = `
const azurite = process.argv[1];
process.stdin.on("error", () => {});
process.stdin.on("end", () => process.kill(process.pid, "SIGTERM"));
process.once("SIGTERM", () => process.stdin.destroy());
process.once("SIGINT", () => process.stdin.destroy());
process.stdin.resume();
require(azurite);
`;

async function launch(opts: AzuriteOptions, ports: AzurePorts, location: string | undefined): Promise<LocalStorage> {
  // A port held by another process would answer the readiness check below while Azurite itself fails to listen on it
  // and exits: the stack would then start against whatever holds the port. Checked before Azurite starts.
  const held: number[] = [];
  for (const p of [ports.blob, ports.queue, ports.table]) if (!(await portIsFree(p))) held.push(p);
  if (held.length > 0)
    throw new AzuriteStartError(`Azurite cannot listen on port(s) ${held.join(", ")} of ${ports.blob}/${ports.queue}/${ports.table}: EADDRINUSE`, true);
  const script = require.resolve("azurite/dist/src/azurite.js");
  const flags = [
    "--skipApiVersionCheck",
    "--disableTelemetry",
    "--loose",
    "--blobHost",
    HOST,
    "--queueHost",
    HOST,
    "--tableHost",
    HOST,
    "--blobPort",
    String(ports.blob),
    "--queuePort",
    String(ports.queue),
    "--tablePort",
    String(ports.table),
    ...(location ? ["--location", location] : ["--inMemoryPersistence"]),
    ...(opts.silent ? ["--silent"] : []),
  ];
  const child = spawn(process.execPath, ["-e", WATCHDOG, "--", script, ...flags], {
    env: { ...process.env, AZURITE_ACCOUNTS: `${DEV_ACCOUNT}:${DEV_KEY};${CACHE_ACCOUNT}:${opts.cacheKey ?? CACHE_KEY}` },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let tail = "";
  const remember = (chunk: Buffer) => {
    tail = (tail + chunk.toString("utf8")).slice(-TAIL_CHARS);
  };
  child.stderr?.on("data", remember);
  child.stdout?.on("data", (chunk: Buffer) => {
    remember(chunk);
    if (!opts.silent) process.stdout.write(chunk);
  });
  // The stdin pipe is the child's lifeline (see WATCHDOG); it must not keep this process alive on its own.
  unrefStreams(child);

  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  const onParentExit = () => child.kill("SIGTERM");
  process.once("exit", onParentExit);
  void exited.then(() => process.removeListener("exit", onParentExit));

  const ready = waitForPorts([ports.blob, ports.queue, ports.table], opts.startTimeoutMs ?? 60_000);
  const early = exited.then(({ code, signal }) => {
    throw new AzuriteStartError(
      `Azurite exited during start (code ${code}, signal ${signal}) on ports ${ports.blob}/${ports.queue}/${ports.table}:\n${tail.trim()}`,
      /EADDRINUSE/.test(tail),
    );
  });
  try {
    await Promise.race([ready, early]);
  } catch (e) {
    child.kill("SIGKILL");
    if (e instanceof AzuriteStartError) throw e;
    throw new AzuriteStartError(`${(e as Error).message}\nAzurite output:\n${tail.trim()}`, /EADDRINUSE/.test(tail));
  }
  early.catch(() => undefined);

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      // Keep this process alive until Azurite has flushed and exited.
      child.ref();
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
      await exited;
      clearTimeout(timer);
    })();
    return stopping;
  };

  return {
    control: azuriteConnectionString(DEV_ACCOUNT, DEV_KEY, ports),
    cache: azuriteConnectionString(CACHE_ACCOUNT, opts.cacheKey ?? CACHE_KEY, ports),
    ports,
    pid: child.pid ?? -1,
    stop,
  };
}

/** Unreferences the child's pipes and handle so an idle Azurite never keeps the parent's event loop alive. */
function unrefStreams(child: ChildProcess): void {
  for (const s of [child.stdin, child.stdout, child.stderr]) {
    const handle = s as unknown as { unref?: () => void } | null;
    handle?.unref?.();
  }
  child.unref();
}

async function waitForPorts(ports: number[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const pending = new Set(ports);
  while (pending.size) {
    for (const p of [...pending]) if (await accepts(p)) pending.delete(p);
    if (!pending.size) return;
    if (Date.now() > deadline) {
      throw new Error(`Azurite did not accept connections on port(s) ${[...pending].join(", ")} within ${timeoutMs} ms`);
    }
    await sleep(100);
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: HOST, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1_000, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}
