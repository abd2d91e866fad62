// The local host in a process of its own (`site-recovery start` against given storage): for crash tests and benchmarks.
import { setTimeout as sleep } from "node:timers/promises";
import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { resolve } from "node:path";

const CLI = resolve(__dirname, "..", "cli", "main.js");

/**
 * V8 flags the host runs with: here, in `npm start` (package.json), under `func start` (local.settings.sample.json)
 * and in the Function App (infra/app/api.bicep, languageWorkers__node__arguments). Apply streams every batch through
 * fresh socket-read buffers; V8 counts those bytes against its old-generation limit, which it sizes from a live heap
 * of 30 MB, so it marked and compacted the whole heap every 100-200 ms: a third to a half of apply's CPU (README,
 * "The apply host's collections"). A larger initial limit ends it.
 */
export const HOST_NODE_ARGS = ["--initial-heap-size=128"];

/** Listens on `port` of the loopback address (0: any) and lets go at once: the port it got, or undefined if it could not. */
function tryListen(port: number): Promise<number | undefined> {
  return new Promise((resolveP) => {
    const s = createServer();
    s.unref();
    s.once("error", () => resolveP(undefined));
    s.listen(port, "127.0.0.1", () => {
      const a = s.address();
      const got = typeof a === "object" && a ? a.port : undefined;
      s.close(() => resolveP(got));
    });
  });
}

/** A loopback port nothing listens on now (another process may take it before the caller does). */
export async function freePort(): Promise<number> {
  const port = await tryListen(0);
  if (!port) throw new Error("could not find a free port");
  return port;
}

/** Whether `port` can be listened on now on the loopback address (nothing else holds it). */
export async function portIsFree(port: number): Promise<boolean> {
  return (await tryListen(port)) !== undefined;
}

export interface HostProcess {
  url: string;
  port: number;
  child: ChildProcess;
  /** The last 20 kB the process printed. */
  output(): string;
  /** SIGKILL: no cleanup at all, as a crashed machine. */
  kill(): Promise<void>;
  /** SIGTERM: the graceful stop. */
  stop(): Promise<void>;
}

/**
 * Starts `site-recovery start` with `AzureWebJobsStorage` (and the rest) from `env`, so no Azurite of its own,
 * and resolves once its HTTP functions answer.
 */
export async function startHostProcess(
  env: NodeJS.ProcessEnv,
  opts: {
    port?: number;
    timeoutMs?: number;
    /** Flags for node itself besides HOST_NODE_ARGS (e.g. --cpu-prof, which NODE_OPTIONS refuses). */ nodeArgs?: string[];
  } = {},
): Promise<HostProcess> {
  const port = opts.port ?? (await freePort());
  const child = spawn(process.execPath, [...HOST_NODE_ARGS, ...(opts.nodeArgs ?? []), CLI, "start"], {
    env: { ...process.env, ...env, FUNCTIONS_HTTP_PORT: String(port) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const keep = (c: Buffer) => (output = (output + c.toString()).slice(-20_000));
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the local host exited: ${output}`);
    try {
      if ((await fetch(`${url}/api/replicated-items`)).status < 500) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`the local host did not start: ${output}`);
    }
    await sleep(100);
  }
  const end = async (signal: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await exited;
  };
  return { url, port, child, output: () => output, kill: () => end("SIGKILL"), stop: () => end("SIGTERM") };
}
