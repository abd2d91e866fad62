// `site-recovery start`: embedded Azurite (unless other storage is configured) and the local host on :7071.
import { resolve } from "node:path";
import { createServices } from "../functions/compose";
import { functionTable } from "../functions/table";
import { describeStorageAuth, loadConfig, SettingsError, timerSchedules, zodProblems } from "../shared/settings";
import { startAzurite, type LocalStorage } from "./azurite";
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
    problems.push({ setting: identityKeys[0]!, message: "the local host takes AzureWebJobsStorage as a connection string; identity-based connections are for a deployed Function App" });
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
    storage = await startAzurite({ location, blobPort: s.AZURITE_BLOB_PORT, queuePort: s.AZURITE_QUEUE_PORT, tablePort: s.AZURITE_TABLE_PORT, silent: true });
    env.AzureWebJobsStorage = storage.control;
    if (!env.CACHE_STORAGE?.trim()) env.CACHE_STORAGE = storage.cache;
  } else {
    log("AzureWebJobsStorage is set: using that storage, no Azurite started.");
  }
  try {
    const config = loadConfig(env);
    log(describeStorageAuth(config));
    const services = createServices(config);
    const host = new LocalFunctionsHost(functionTable(() => services, timerSchedules(env)), {
      port: s.FUNCTIONS_HTTP_PORT,
      maxRequestBytes: config.http.maxRequestBytes,
      durable: { taskHub: config.taskHub },
      env,
      log,
      ...(s.FUNCTIONS_KEY ? { functionKey: s.FUNCTIONS_KEY } : {}),
    });
    const { port } = await host.start();
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
    if (e instanceof SettingsError) {
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
