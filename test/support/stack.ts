// A whole local stack for tests: in-memory Azurite on free ports, the services, and the local host over a real socket.
import { createServices, type Services } from "../../functions/compose";
import { functionTable } from "../../functions/table";
import { LocalFunctionsHost, type LocalHostOptions } from "../../local/host";
import { type QueueSettings } from "../../local/host-json";
import { loadConfig, timerSchedules } from "../../shared/config/settings";
import { blobService, queueService, tableClient, tableService } from "../../shared/storage/clients";
import type { Fabric } from "../../shared/fabric/port";
import { ApiClient, type ApiResponse as ClientResponse } from "../../shared/contract/client";
import { startTestStorage, type LocalStorage } from "./storage";

/** A response as the tests read it: any status, the body's fields checked one by one (through the one API client). */
export type ApiResponse = ClientResponse<any>;

export interface TestStack {
  url: string;
  services: Services;
  host: LocalFunctionsHost;
  env: NodeJS.ProcessEnv;
  /** The stack's Azurite (tests of a storage outage stop it). */
  azurite: LocalStorage;
  /** Moves the stack's clock (registration expiry and the like). */
  clock: { offsetMs: number };
  api(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<ApiResponse>;
  /** Everything in the control and cache accounts: containers, blobs, queues, table rows. */
  snapshot(): Promise<string[]>;
  stop(): Promise<void>;
}

export interface TestStackOptions {
  functionKey?: string;
  fabric?: (inner: Fabric) => Fabric;
  env?: NodeJS.ProcessEnv;
  /** Shorter retries or polling for tests of queue delivery; host.json otherwise. */
  queueOverrides?: Partial<QueueSettings>;
  /** The host's log lines (invocations, handler logs); dropped by default. */
  log?: (line: string) => void;
  /** false: the host polls no queue, so a test delivers messages itself (in any order, twice, or not at all). */
  queues?: boolean;
  /** false: no timer function runs (sweeps, sealing and monitoring passes write state of their own). */
  timers?: boolean;
  /** Host names the local host accepts besides loopback names. */
  allowedHosts?: LocalHostOptions["allowedHosts"];
}

export async function startTestStack(opts: TestStackOptions = {}): Promise<TestStack> {
  const storage = await startTestStorage();
  const env: NodeJS.ProcessEnv = { AzureWebJobsStorage: storage.control, CACHE_STORAGE: storage.cache, ...opts.env };
  const config = loadConfig(env);
  const clock = { offsetMs: 0 };
  const now = () => new Date(Date.now() + clock.offsetMs);
  // Alert webhooks retry quickly in tests (the backoff is a setting of the pass, not what a test proves).
  const overrides = { now, alertRetry: { attempts: 4, baseDelayMs: 20 }, log: opts.log ?? (() => {}) };
  const base = createServices(config, overrides);
  const services = opts.fabric ? createServices(config, { ...overrides, fabric: opts.fabric(base.fabric) }) : base;
  const table = functionTable(() => services, timerSchedules(env)).filter(
    (f) => (opts.queues !== false || f.kind !== "queue") && (opts.timers !== false || f.kind !== "timer"),
  );
  const host = new LocalFunctionsHost(table, {
    port: 0,
    env,
    maxRequestBytes: config.http.maxRequestBytes,
    durable: { taskHub: config.taskHub },
    log: opts.log ?? (() => {}),
    ...(opts.queueOverrides ? { queueOverrides: opts.queueOverrides } : {}),
    ...(opts.functionKey ? { functionKey: opts.functionKey } : {}),
    ...(opts.allowedHosts ? { allowedHosts: opts.allowedHosts } : {}),
  });
  const { port } = await host.start();
  const url = `http://127.0.0.1:${port}`;

  return {
    url,
    services,
    host,
    env,
    azurite: storage,
    clock,
    api: (method, path, body, headers = {}) => new ApiClient(url).request(method, path, body, headers),
    async snapshot() {
      const out: string[] = [];
      for (const account of [config.storage.control, config.storage.cache]) {
        const blobs = blobService(account);
        for await (const c of blobs.listContainers()) {
          out.push(`${account.name} container ${c.name}`);
          for await (const b of blobs.getContainerClient(c.name).listBlobsFlat({ includeSnapshots: true })) {
            out.push(`${account.name} blob ${c.name}/${b.name}${b.snapshot ? `@${b.snapshot}` : ""} ${b.properties.contentLength}`);
          }
        }
        const queues = queueService(account);
        for await (const q of queues.listQueues()) {
          const props = await queues.getQueueClient(q.name).getProperties();
          out.push(`${account.name} queue ${q.name} ${props.approximateMessagesCount}`);
        }
        const svc = tableService(account);
        for await (const t of svc.listTables()) {
          for await (const e of tableClient(account, t.name!).listEntities()) {
            const { etag: _etag, timestamp: _ts, ...rest } = e as Record<string, unknown>;
            out.push(`${account.name} table ${t.name} ${JSON.stringify(rest)}`);
          }
        }
      }
      return out.sort();
    },
    async stop() {
      await host.stop();
      await storage.stop();
    },
  };
}
