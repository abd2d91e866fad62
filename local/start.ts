// `site-recovery start`: embedded Azurite (unless other storage is configured) and the local host on :7071.
import { resolve } from "node:path";
import { createServices } from "../functions/compose";
import { functionTable } from "../functions/table";
import { describeStorageAuth, loadConfig, SettingsError, timerSchedules, zodProblems, type Config } from "../shared/config/settings";
import { AzuriteStartError, startAzurite, type LocalStorage } from "./azurite";
import { LocalFunctionsHost } from "./host";
import { z } from "zod";

/** The package root, where `.local/` keeps the emulator's data between runs. */
export const PACKAGE_ROOT = resolve(__dirname, "..", "..");

const port = (dflt: number) => z.preprocess((v) => (v === "" ? undefined : v), z.coerce.number().int().min(0).max(65535).default(dflt));
const localSettings = z.object({
  FUNCTIONS_HTTP_PORT: port(7071),
  AZURITE_BLOB_PORT: port(10000),
  AZURITE_QUEUE_PORT: port(10001),
  AZURITE_TABLE_PORT: port(10002),
  FUNCTIONS_KEY: z.string().optional(),
});

/** Storage named by a setting did not answer at start-up; the message says which setting, what was tried, and the fix. */
export class StorageUnreachableError extends Error {
  constructor(
    readonly problems: { setting: string; endpoint: string; reason: string }[],
    hint: string,
  ) {
    super(`storage cannot be reached:\n${problems.map((p) => `  ${p.setting}: ${p.endpoint} — ${p.reason}`).join("\n")}\n${hint}`);
    this.name = "StorageUnreachableError";
  }
}

/** A port the stack listens on is taken (another `site-recovery start`, `func start` or Azurite): which, and the fix. */
export class PortInUseError extends Error {
  override readonly name = "PortInUseError";
}

const PROBE_TIMEOUT_MS = 3000;

/** One request per endpoint, no retries: any HTTP answer (even 400 or 403) means the endpoint is there. */
async function unreachable(endpoint: string): Promise<string | undefined> {
  try {
    await fetch(endpoint, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
    return undefined;
  } catch (e) {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    if ((e as Error).name === "TimeoutError") return `no answer within ${PROBE_TIMEOUT_MS / 1000} s`;
    return cause?.code ? `${cause.code}${cause.message ? ` (${cause.message})` : ""}` : (e as Error).message;
  }
}

/**
 * Probes every storage endpoint the app will use, all at once; throws naming each setting of the target region
 * (control plane, replicas) that does not answer.
 */
export async function checkStorageReachable(env: NodeJS.ProcessEnv, config: Config, log: (line: string) => void = console.log): Promise<void> {
  const probes: { setting: string; endpoint: string }[] = [
    { setting: "AzureWebJobsStorage", endpoint: config.storage.control.tableUrl },
    { setting: "AzureWebJobsStorage", endpoint: config.storage.control.queueUrl },
    { setting: "AzureWebJobsStorage", endpoint: config.storage.control.blobUrl },
    ...(env.REPLICA_STORAGE?.trim() ? [{ setting: "REPLICA_STORAGE", endpoint: config.storage.replica.blobUrl }] : []),
    ...(env.CACHE_STORAGE?.trim() ? [{ setting: "CACHE_STORAGE", endpoint: config.storage.cache.blobUrl }] : []),
  ];
  const results = await Promise.all(probes.map(async (p) => ({ ...p, reason: await unreachable(p.endpoint) })));
  const down = results.filter((r): r is typeof r & { reason: string } => r.reason !== undefined);
  // The source region's cache may be down (that is what DR is for): the control plane starts, and says so.
  for (const c of down.filter((r) => r.setting === "CACHE_STORAGE"))
    log(`warning: CACHE_STORAGE (${c.endpoint}) does not answer: ${c.reason}; starting anyway`);
  const problems = down.filter((r) => r.setting !== "CACHE_STORAGE");
  if (problems.length === 0) return;
  const dev = /usedevelopmentstorage=true/i.test(env.AzureWebJobsStorage ?? "");
  const hint = dev
    ? "UseDevelopmentStorage=true expects an emulator on 127.0.0.1:10000-10002: start Azurite, or leave AzureWebJobsStorage unset so that `site-recovery start` runs its embedded Azurite."
    : "Check the connection string's endpoints (BlobEndpoint/QueueEndpoint/TableEndpoint, or AccountName and EndpointSuffix) and that the account is reachable from here; or leave AzureWebJobsStorage unset to use the embedded Azurite.";
  throw new StorageUnreachableError(problems, hint);
}

export interface LocalStack {
  url: string;
  storage?: LocalStorage;
  host: LocalFunctionsHost;
  stop(): Promise<void>;
}

export async function startLocalStack(env: NodeJS.ProcessEnv = process.env, log: (line: string) => void = console.log): Promise<LocalStack> {
  // Every bad setting, the host's and the app's, is reported at once, before anything starts.
  const local = localSettings.safeParse(env, { reportInput: true });
  const problems = local.success ? [] : zodProblems(local.error);
  // The local host keeps durable state and polls queues through a connection string, as `func start` with Azurite does.
  const identityKeys = Object.keys(env).filter((k) => k.startsWith("AzureWebJobsStorage__") && env[k]?.trim());
  if (identityKeys.length > 0) {
    problems.push({
      setting: identityKeys[0]!,
      message: "the local host takes AzureWebJobsStorage as a connection string; identity-based connections are for a deployed Function App",
    });
  }
  try {
    loadConfig({ ...env, AzureWebJobsStorage: env.AzureWebJobsStorage?.trim() || "UseDevelopmentStorage=true" });
  } catch (e) {
    if (!(e instanceof SettingsError)) throw e;
    problems.push(...e.problems);
  }
  if (!local.success || problems.length > 0) throw new SettingsError(problems);
  const s = local.data;
  let storage: LocalStorage | undefined;
  if (!env.AzureWebJobsStorage?.trim()) {
    const location = resolve(PACKAGE_ROOT, ".local", "azurite");
    log(`Starting Azurite (data in ${location}) on ports ${s.AZURITE_BLOB_PORT}/${s.AZURITE_QUEUE_PORT}/${s.AZURITE_TABLE_PORT}…`);
    storage = await startAzurite({
      location,
      blobPort: s.AZURITE_BLOB_PORT,
      queuePort: s.AZURITE_QUEUE_PORT,
      tablePort: s.AZURITE_TABLE_PORT,
      silent: true,
    }).catch((e: unknown) => {
      if (!(e instanceof AzuriteStartError && e.addressInUse)) throw e;
      throw new PortInUseError(
        `Azurite's ports ${s.AZURITE_BLOB_PORT}/${s.AZURITE_QUEUE_PORT}/${s.AZURITE_TABLE_PORT} are already in use: is another Azurite or ` +
          "`site-recovery start` running? Stop it, set AZURITE_BLOB_PORT, AZURITE_QUEUE_PORT and AZURITE_TABLE_PORT to free ports, " +
          "or set AzureWebJobsStorage to the running emulator's connection string.",
      );
    });
    env.AzureWebJobsStorage = storage.control;
    if (!env.CACHE_STORAGE?.trim()) env.CACHE_STORAGE = storage.cache;
  } else {
    log("AzureWebJobsStorage is set: using that storage, no Azurite started.");
  }
  try {
    const config = loadConfig(env);
    log(describeStorageAuth(config));
    // Storage that is not there fails the start with the setting named, rather than an SDK stack trace later.
    await checkStorageReachable(env, config, log);
    const services = createServices(config, { log });
    const host = new LocalFunctionsHost(
      functionTable(() => services, timerSchedules(env)),
      {
        port: s.FUNCTIONS_HTTP_PORT,
        maxRequestBytes: config.http.maxRequestBytes,
        durable: { taskHub: config.taskHub },
        env,
        log,
        ...(s.FUNCTIONS_KEY ? { functionKey: s.FUNCTIONS_KEY } : {}),
      },
    );
    const { port } = await host.start().catch((e: NodeJS.ErrnoException) => {
      if (e.code !== "EADDRINUSE") throw e;
      throw new PortInUseError(
        `port ${s.FUNCTIONS_HTTP_PORT} is already in use: is another \`site-recovery start\` or \`func start\` running? ` +
          "Stop it, or set FUNCTIONS_HTTP_PORT to a free port.",
      );
    });
    const url = `http://localhost:${port}`;
    log(host.describe(url));
    log(s.FUNCTIONS_KEY ? "Function key required (x-functions-key header or ?code=)." : "No FUNCTIONS_KEY set: HTTP functions accept anonymous calls.");
    return {
      url,
      host,
      ...(storage ? { storage } : {}),
      async stop() {
        await host.stop();
        await storage?.stop();
      },
    };
  } catch (e) {
    await storage?.stop();
    throw e;
  }
}

/** Runs the stack until Ctrl-C, then stops the host and Azurite cleanly. */
export async function runLocalStack(): Promise<void> {
  let stack: LocalStack;
  try {
    stack = await startLocalStack();
  } catch (e) {
    // Bad settings, storage that does not answer and a port taken end the start with what to fix (a supervisor may restart it).
    if (e instanceof SettingsError || e instanceof StorageUnreachableError || e instanceof PortInUseError) {
      console.error(e.message);
      process.exit(1);
    }
    throw e;
  }
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`\n${signal}: stopping the local host and Azurite…`);
    await stack.stop();
    console.log("Stopped.");
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
}
