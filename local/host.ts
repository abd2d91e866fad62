// Stands in for `func start`: serves the table's HTTP functions, polls its storage queues, fires its timers and runs its durable orchestrations the way the Functions host does, with no business logic.
import { createHash, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as NodeReadableStream } from "node:stream/web";
import { format } from "node:util";
import {
  HttpRequest,
  HttpResponse,
  InvocationContext,
  type Cookie,
  type FunctionInput,
  type HttpResponseInit,
  type LogHandler,
  type LogLevel,
  type Timer,
} from "@azure/functions";
import { QueueClient, type ReceivedMessageItem } from "@azure/storage-queue";
import { Cron } from "croner";
import * as df from "durable-functions";
import type {
  ActivityFunctionSpec,
  FunctionSpec,
  HttpFunctionSpec,
  OrchestrationFunctionSpec,
  QueueFunctionSpec,
  TimerFunctionSpec,
} from "../functions/spec";
import { durableBase, DurableHttpApi, RPC_BASE, type DurableApiResponse } from "./durableHttp";
import { isStorageUnavailable, STORAGE_RETRY_AFTER_SECONDS } from "../shared/contract/errors";
import { DurableRuntime } from "./durableRuntime";
import { DurableStore } from "./durableStore";

// ---------------------------------------------------------------------------------------------
// host.json: the single source of the trigger settings, shared with Azure.

/** The subset of host.json this host honours. */
export interface HostJson {
  extensions?: {
    http?: { routePrefix?: string };
    queues?: {
      messageEncoding?: string;
      maxDequeueCount?: number;
      visibilityTimeout?: string;
      batchSize?: number;
      newBatchThreshold?: number;
      maxPollingInterval?: string;
    };
    durableTask?: {
      hubName?: string;
      maxConcurrentActivityFunctions?: number;
      maxConcurrentOrchestratorFunctions?: number;
    };
  };
}

/** Queue-trigger behaviour, in milliseconds where host.json uses TimeSpans. */
export interface QueueSettings {
  messageEncoding: "base64" | "none";
  maxDequeueCount: number;
  /** How long a failed message stays invisible before its retry (host.json `visibilityTimeout`). */
  visibilityTimeoutMs: number;
  batchSize: number;
  /** A new batch is fetched once in-flight messages drop to this many. */
  newBatchThreshold: number;
  maxPollingIntervalMs: number;
  /** Invisibility taken on receive and renewed at half-time while the handler runs (the host's fixed 10 minutes). */
  messageLeaseMs: number;
}

/** The host's floor for queue polling (QueuePollingIntervals.Minimum). */
const MIN_POLL_MS = 100;
const HOST_MESSAGE_LEASE_MS = 10 * 60_000;

/** host.json sits at the repo root; this file runs from dist/local/host.js. */
export function loadHostJson(path = join(__dirname, "..", "..", "host.json")): HostJson {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as HostJson;
  } catch (e) {
    throw new Error(`cannot read host.json at ${path}: ${(e as Error).message}`);
  }
}

/** Host defaults where host.json is silent, as documented for the Storage extension 5.x. */
export function queueSettingsFrom(hostJson: HostJson): QueueSettings {
  const q = hostJson.extensions?.queues ?? {};
  const batchSize = q.batchSize ?? 16;
  const encoding = (q.messageEncoding ?? "base64").toLowerCase();
  if (encoding !== "base64" && encoding !== "none") throw new Error(`host.json: unknown queues.messageEncoding '${q.messageEncoding}'`);
  return {
    messageEncoding: encoding,
    maxDequeueCount: q.maxDequeueCount ?? 5,
    visibilityTimeoutMs: q.visibilityTimeout ? parseTimeSpan(q.visibilityTimeout) : 0,
    batchSize,
    newBatchThreshold: q.newBatchThreshold ?? Math.floor(batchSize / 2),
    maxPollingIntervalMs: q.maxPollingInterval ? parseTimeSpan(q.maxPollingInterval) : 60_000,
    messageLeaseMs: HOST_MESSAGE_LEASE_MS,
  };
}

/** .NET TimeSpan text: `[d.]hh:mm:ss[.fff]`. */
export function parseTimeSpan(text: string): number {
  const m = /^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,7}))?$/.exec(text.trim());
  if (!m) throw new Error(`not a TimeSpan (d.hh:mm:ss): '${text}'`);
  const [, d, h, min, s, frac] = m;
  const ms = frac ? Math.round(Number(`0.${frac}`) * 1000) : 0;
  return ((Number(d ?? 0) * 24 + Number(h)) * 60 + Number(min)) * 60_000 + Number(s) * 1000 + ms;
}

// ---------------------------------------------------------------------------------------------

export interface LocalHostOptions {
  /** 0: an ephemeral port (see the value `start()` returns). */
  port: number;
  /** Interface to bind; default 127.0.0.1. */
  host?: string;
  /** When set, `function`/`admin` routes and the durable endpoints need it as `x-functions-key` or `?code=`. */
  functionKey?: string;
  /**
   * Host names (without port) accepted in the Host header besides loopback names; anything else is refused (DNS
   * rebinding). Default: FUNCTIONS_ALLOWED_HOSTS from `env`, comma-separated.
   */
  allowedHosts?: string[];
  /** Default 1 MiB. */
  maxRequestBytes?: number;
  /** App settings: queue connections and `%NAME%` schedules are resolved here. Default process.env. */
  env?: NodeJS.ProcessEnv;
  /** One line per invocation and per handler log call. Default console.log. */
  log?: (line: string) => void;
  /** Tests only: shorten retries or polling; everything else comes from host.json. */
  queueOverrides?: Partial<QueueSettings>;
  /** Tests only: another host.json. */
  hostJsonPath?: string;
  /** Durable runtime settings (used when the table has orchestrations, activities or durable-client functions). */
  durable?: DurableHostOptions;
}

export interface DurableHostOptions {
  /** Task hub; default host.json `durableTask.hubName` with `%SETTING%` resolved from `env`. */
  taskHub?: string;
  /** App setting naming the storage for durable state; default AzureWebJobsStorage. */
  connection?: string;
  /** Default host.json `maxConcurrentActivityFunctions`, else 10. */
  maxConcurrentActivities?: number;
  /** Default host.json `maxConcurrentOrchestratorFunctions`, else 10. */
  maxConcurrentOrchestrations?: number;
  /** Compare timer times and inputs on replay too (default true). */
  strictReplayCheck?: boolean;
}

type ErrorCode = "NotFound" | "MethodNotAllowed" | "PayloadTooLarge" | "Unauthorized" | "InternalError" | "InvalidHost" | "StorageUnavailable";

class HttpFailure extends Error {
  constructor(
    readonly status: number,
    readonly code: ErrorCode,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024;
/** Node's default, stated: a larger header block is answered 431. */
const MAX_HEADER_BYTES = 16 * 1024;
/** Names that reach this machine only (the Host allow-list always holds them). */
const LOOPBACK_NAMES: ReadonlySet<string> = new Set(["localhost", "127.0.0.1", "[::1]"]);
/** What the Durable extension calls a task hub it was given no name for, when running locally. */
const DEFAULT_TASK_HUB = "TestHubName";
const DRAIN_POLL_MS = 50;

export class LocalFunctionsHost {
  readonly queueSettings: QueueSettings;
  readonly routePrefix: string;
  private readonly log: (line: string) => void;
  private readonly env: NodeJS.ProcessEnv;
  private readonly maxRequestBytes: number;
  private readonly routes: CompiledRoute[];
  private readonly listeners: QueueListener[];
  private readonly timers: TimerRunner[];
  private readonly inFlight = new Set<Promise<unknown>>();
  private server: Server | undefined;
  private port = 0;
  private started = false;
  private readonly hostJson: HostJson;
  private readonly durableTable: { orchestrations: OrchestrationFunctionSpec[]; activities: ActivityFunctionSpec[]; clients: number };
  private durable: { runtime: DurableRuntime; api: DurableHttpApi } | undefined;
  /** Host names accepted besides loopback names (lowercase). */
  private readonly allowedHosts: ReadonlySet<string>;
  /** The secret path segment of this host's own durable client (see serveDurable). */
  private readonly rpcSecret = randomBytes(24).toString("base64url");
  /** WEBSITE_HOSTNAME as it was before start() set it, to restore on stop(). */
  private savedHostname: { value: string | undefined } | undefined;

  constructor(
    private readonly table: FunctionSpec[],
    private readonly options: LocalHostOptions,
  ) {
    const names = new Set<string>();
    for (const f of table) {
      if (names.has(f.name.toLowerCase())) throw new Error(`duplicate function name '${f.name}'`);
      names.add(f.name.toLowerCase());
    }
    const hostJson = loadHostJson(options.hostJsonPath);
    this.hostJson = hostJson;
    this.durableTable = {
      orchestrations: table.filter((f): f is OrchestrationFunctionSpec => f.kind === "orchestration"),
      activities: table.filter((f): f is ActivityFunctionSpec => f.kind === "activity"),
      clients: table.filter((f) => (f.kind === "http" || f.kind === "timer") && f.durableClient).length,
    };
    this.queueSettings = { ...queueSettingsFrom(hostJson), ...options.queueOverrides };
    this.routePrefix = (hostJson.extensions?.http?.routePrefix ?? "api").replace(/^\/+|\/+$/g, "");
    this.log = options.log ?? ((line) => console.log(line));
    this.env = options.env ?? process.env;
    this.maxRequestBytes = options.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES;
    const configured = options.allowedHosts ?? (this.env.FUNCTIONS_ALLOWED_HOSTS ?? "").split(",");
    const bound = options.host && !["0.0.0.0", "::"].includes(options.host) ? [options.host] : [];
    this.allowedHosts = new Set([...configured, ...bound].map((h) => h.trim().toLowerCase()).filter(Boolean));
    this.routes = table.filter((f): f is HttpFunctionSpec => f.kind === "http").map((spec) => compileRoute(spec, this.routePrefix));
    this.listeners = table
      .filter((f): f is QueueFunctionSpec => f.kind === "queue")
      .map((spec) => new QueueListener(spec, this.queueSettings, this.env, (run, meta) => this.invoke(spec.name, run, meta), this.log));
    this.timers = table
      .filter((f): f is TimerFunctionSpec => f.kind === "timer")
      .map(
        (spec) =>
          new TimerRunner(
            spec,
            this.env,
            (run) =>
              this.invoke(spec.name, run, undefined, spec.durableClient ? [[df.input.durableClient(), this.durable!.api.bindingData(this.ownOrigin(), this.clientRpcBase())]] : []),
            this.log,
          ),
      );
  }

  /** Starts HTTP, queue listeners and timers; resolves with the bound port. */
  async start(): Promise<{ port: number }> {
    if (this.started) throw new Error("host already started");
    // Resolve everything that can be misconfigured before binding anything, so a bad setting fails fast.
    for (const l of this.listeners) l.connect();
    for (const t of this.timers) t.prepare();
    this.prepareDurable();
    const server = createServer({ maxHeaderSize: MAX_HEADER_BYTES }, (req, res) => {
      const p = this.serve(req, res);
      this.track(p);
    });
    // Requests Node cannot parse are answered (400/413/431/501 with the envelope), not dropped with a closed socket.
    server.on("clientError", (err: NodeJS.ErrnoException, socket: Duplex) => answerClientError(err, socket));
    // `Expect: 100-continue`: a body over the limit is refused before the client sends it.
    server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => {
      const declared = Number(req.headers["content-length"]);
      if (Number.isFinite(declared) && declared > this.maxRequestBytes) {
        res.shouldKeepAlive = false;
        sendError(res, new HttpFailure(413, "PayloadTooLarge", `request body exceeds ${this.maxRequestBytes} bytes`, { connection: "close" }));
        return;
      }
      res.writeContinue();
      this.track(this.serve(req, res));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.options.port, this.options.host ?? "127.0.0.1", () => {
        server.removeListener("error", reject);
        resolve();
      });
    });
    this.server = server;
    this.port = (server.address() as AddressInfo).port;
    this.started = true;
    if (this.durable) {
      // Without WEBSITE_HOSTNAME, df.getClient rewrites the binding's URLs to localhost:7071; with it set they are used as given.
      const current = process.env.WEBSITE_HOSTNAME;
      if (!current || current.includes("0.0.0.0")) {
        this.savedHostname = { value: current };
        process.env.WEBSITE_HOSTNAME = `${this.loopbackHost()}:${this.port}`;
      }
      await this.durable.runtime.start();
    }
    for (const l of this.listeners) l.start();
    for (const t of this.timers) t.start();
    return { port: this.port };
  }

  /** The durable runtime, when the table has durable functions (tests and tools). */
  get durableRuntime(): DurableRuntime | undefined {
    return this.durable?.runtime;
  }

  /** Builds the durable runtime when the table needs one; throws naming the setting that is missing. */
  private prepareDurable(): void {
    const t = this.durableTable;
    if (this.durable || (t.orchestrations.length === 0 && t.activities.length === 0 && t.clients === 0)) return;
    const d = this.options.durable ?? {};
    const setting = d.connection || "AzureWebJobsStorage";
    const cs = this.env[setting] || this.env[`AzureWebJobs${setting}`];
    if (!cs) throw new Error(`durable functions: connection setting '${setting}' is not set`);
    const taskHub = d.taskHub ?? this.hubFromHostJson();
    const dt = this.hostJson.extensions?.durableTask ?? {};
    const store = new DurableStore(cs, taskHub);
    const runtime = new DurableRuntime({
      store,
      orchestrations: t.orchestrations,
      activities: t.activities,
      invoke: (name, run, meta) => this.invoke(name, run, meta),
      logHandler: (name) => this.logHandler(name),
      log: this.log,
      maxConcurrentActivities: d.maxConcurrentActivities ?? dt.maxConcurrentActivityFunctions ?? 10,
      maxConcurrentOrchestrations: d.maxConcurrentOrchestrations ?? dt.maxConcurrentOrchestratorFunctions ?? 10,
      strictReplayCheck: d.strictReplayCheck ?? true,
    });
    this.durable = { runtime, api: new DurableHttpApi(runtime, { taskHub, ...(this.options.functionKey ? { functionKey: this.options.functionKey } : {}) }) };
  }

  /** host.json's hubName, `%SETTING%` resolved; the extension's local default when it is absent or resolves to nothing. */
  private hubFromHostJson(): string {
    const raw = this.hostJson.extensions?.durableTask?.hubName?.trim() ?? "";
    const setting = /^%([^%]+)%$/.exec(raw);
    const value = setting ? (this.env[setting[1]]?.trim() ?? "") : raw;
    return value || DEFAULT_TASK_HUB;
  }

  private loopbackHost(): string {
    const h = this.options.host ?? "127.0.0.1";
    return h === "0.0.0.0" || h === "::" ? "127.0.0.1" : h;
  }

  /** Stops accepting requests, polling and timers, then waits for every running invocation. */
  async stop(): Promise<void> {
    if (!this.started) return;
    this.started = false;
    const server = this.server;
    this.server = undefined;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    server?.closeIdleConnections();
    for (const t of this.timers) t.stop();
    await Promise.all(this.listeners.map((l) => l.stop()));
    await this.durable?.runtime.stop();
    if (this.savedHostname) {
      if (this.savedHostname.value === undefined) delete process.env.WEBSITE_HOSTNAME;
      else process.env.WEBSITE_HOSTNAME = this.savedHostname.value;
      this.savedHostname = undefined;
    }
    while (this.inFlight.size) await Promise.allSettled([...this.inFlight]);
    // Keep-alive sockets whose responses are done would otherwise hold close() open until their timeout.
    server?.closeAllConnections();
    await closed;
  }

  /** The function list as `func start` prints it. */
  describe(baseUrl: string): string {
    const base = baseUrl.replace(/\/+$/, "");
    const lines = ["Functions:", ""];
    for (const f of this.table) {
      const what =
        f.kind === "http"
          ? `[${f.methods.join(",")}] ${base}/${[this.routePrefix, f.route.replace(/^\/+/, "")].filter(Boolean).join("/")}`
          : `${f.kind}Trigger`;
      lines.push(`        ${f.name}: ${what}`, "");
    }
    return lines.join("\n");
  }

  /**
   * Tests: returns once every trigger queue is empty (invisible messages included) and no queue message is
   * being handled, so retries after a visibility timeout are waited for. HTTP and timer invocations are not
   * waited for (a timer may always be running). Polls the queues itself if the host is not started.
   */
  async drainQueues(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.started) for (const l of this.listeners) l.wake();
      else for (const l of this.listeners) await l.pollOnce();
      const received = () => this.listeners.reduce((n, l) => n + l.received, 0);
      const busy = () => this.listeners.reduce((n, l) => n + l.busy, 0);
      const before = received();
      if (busy() === 0) {
        const counts = await Promise.all(this.listeners.map((l) => l.approximateCount()));
        // Quiet only if nothing ran or was received while the counts were read (a handler may enqueue more).
        if (counts.every((c) => c === 0) && busy() === 0 && received() === before) return;
        if (Date.now() > deadline) {
          const detail = this.listeners.map((l, i) => `${l.queueName}=${counts[i]}`).join(", ");
          throw new Error(`queues not drained within ${timeoutMs} ms (${detail})`);
        }
      } else if (Date.now() > deadline) {
        throw new Error(`queues not drained within ${timeoutMs} ms (${busy()} message(s) still being handled)`);
      }
      await sleep(DRAIN_POLL_MS);
    }
  }

  /** Tests and operators: invokes a timer function now (after any run of it still in progress). */
  async runTimer(name: string): Promise<void> {
    const t = this.timers.find((x) => x.name.toLowerCase() === name.toLowerCase());
    if (!t) throw new Error(`no timer function named '${name}'`);
    t.prepare();
    await t.runNow("manual");
  }

  // -------------------------------------------------------------------------------------------
  // Invocation: one InvocationContext per call, one log line per outcome.

  private invoke(
    functionName: string,
    run: (context: InvocationContext) => Promise<void>,
    triggerMetadata?: Record<string, unknown>,
    extraInputs: [FunctionInput, unknown][] = [],
  ): Promise<void> {
    const invocationId = randomUUID();
    const context = new InvocationContext({
      functionName,
      invocationId,
      triggerMetadata,
      logHandler: this.logHandler(functionName),
      ...(extraInputs.length ? { options: { trigger: { type: "unknown", name: "trigger" }, extraInputs: extraInputs.map(([input]) => input), extraOutputs: [] } } : {}),
    });
    // What the extension does for input bindings (here: the durable client's binding data).
    for (const [input, value] of extraInputs) context.extraInputs.set(input, value);
    const startedAt = performance.now();
    const done = (outcome: "Succeeded" | "Failed") =>
      this.log(
        `[${new Date().toISOString()}] Executed '${functionName}' (${outcome}, id=${invocationId}, Duration=${Math.round(performance.now() - startedAt)}ms)`,
      );
    const p = (async () => {
      try {
        await run(context);
        done("Succeeded");
      } catch (e) {
        this.log(`[${new Date().toISOString()}] Function '${functionName}' failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
        done("Failed");
        throw e;
      }
    })();
    this.track(p);
    return p;
  }

  private logHandler(functionName: string): LogHandler {
    return (level: LogLevel, ...args: unknown[]) => this.log(`[${new Date().toISOString()}] ${functionName}: ${levelPrefix(level)}${format(...args)}`);
  }

  private track(p: Promise<unknown>): void {
    this.inFlight.add(p);
    const forget = () => this.inFlight.delete(p);
    p.then(forget, forget);
  }

  // -------------------------------------------------------------------------------------------
  // HTTP

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? "/", `http://${this.checkHost(req.headers.host)}`);
      const method = (req.method ?? "GET").toUpperCase();
      const base = this.durable ? durableBase(url.pathname) : undefined;
      if (base) return await this.serveDurable(req, res, url, method, base);
      const { spec, params } = this.route(url.pathname, method);
      this.authorize(spec, req, url);
      const body = await this.readBody(req, res);
      let response: HttpResponse | undefined;
      try {
        await this.invoke(
          spec.name,
          async (context) => {
            const request = new HttpRequest({
              method,
              url: url.toString(),
              headers: flattenHeaders(req),
              params,
              // `{ bytes }` keeps binary bodies intact; a bare string would be dropped by HttpRequest.
              ...(body.length ? { body: { bytes: body } } : {}),
            });
            const result: HttpResponseInit | HttpResponse | undefined = spec.durableClient
              ? await spec.handler(request, df.getClient(context), context)
              : await spec.handler(request, context);
            response = result instanceof HttpResponse ? result : new HttpResponse(result ?? {});
          },
          { ...params },
          spec.durableClient ? [[df.input.durableClient(), this.durable!.api.bindingData(this.origin(url), this.clientRpcBase())]] : [],
        );
      } catch {
        // Already logged with its stack by invoke(); the caller only learns that it failed.
        throw new HttpFailure(500, "InternalError", `function '${spec.name}' failed`);
      }
      if (response) await writeResponse(res, response);
    } catch (e) {
      if (e instanceof HttpFailure) return sendError(res, e);
      if (res.destroyed) return;
      this.log(`[${new Date().toISOString()}] HTTP host error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
      sendError(res, new HttpFailure(500, "InternalError", "internal error"));
    }
  }

  /**
   * The Durable management API. With a key set, both bases need it (`x-functions-key` or `?code=`), except the
   * durable client of this host's own functions: it cannot send a key, so its rpc base carries a per-process secret
   * path segment (`/durabletask/<secret>/…`), handed only to the functions through the binding data.
   */
  private async serveDurable(req: IncomingMessage, res: ServerResponse, url: URL, method: string, base: "webhook" | "rpc"): Promise<void> {
    const key = this.options.functionKey;
    const own = base === "rpc" ? this.ownClientPath(url) : undefined;
    if (own) url = own;
    else if (key) {
      const header = req.headers["x-functions-key"];
      const given = (Array.isArray(header) ? header[0] : header) ?? url.searchParams.get("code") ?? "";
      if (!sameSecret(given, key)) throw new HttpFailure(401, "Unauthorized", "missing or invalid key for the durable endpoints (x-functions-key header or ?code=)");
    }
    const body = await this.readBody(req, res);
    const headers = flattenHeaders(req);
    let r: DurableApiResponse;
    try {
      r = await this.durable!.api.handle({ method, url, body, origin: this.origin(url), headers }, base);
    } catch (e) {
      if (isStorageUnavailable(e)) throw new HttpFailure(503, "StorageUnavailable", "storage is not reachable; try again shortly", { "retry-after": String(STORAGE_RETRY_AFTER_SECONDS) });
      throw e;
    }
    const text = r.body === undefined ? "" : JSON.stringify(r.body);
    res.writeHead(r.status, { ...r.headers, ...(text ? { "content-type": "application/json; charset=utf-8", "content-length": Buffer.byteLength(text) } : { "content-length": 0 }) });
    res.end(text);
  }

  /** This host as the caller reached it (its Host, validated by checkHost), so the URLs handed back work from there. */
  private origin(url: URL): string {
    return `${url.protocol}//${url.host}`;
  }

  /** This host at its listening address. */
  private ownOrigin(): string {
    return `http://${hostForUrl(this.loopbackHost())}:${this.port}`;
  }

  /** Where this host's own durable client sends its calls: this host's listening address, never a request's Host. */
  private clientRpcBase(): string {
    return `${this.ownOrigin()}${RPC_BASE}/${this.rpcSecret}/`;
  }

  /** The request's URL without the own-client secret segment, when it carries it (constant-time compare). */
  private ownClientPath(url: URL): URL | undefined {
    const rest = url.pathname.slice(RPC_BASE.length + 1);
    const segment = rest.split("/")[0] ?? "";
    if (!sameSecret(segment, this.rpcSecret)) return undefined;
    const stripped = new URL(url.toString());
    stripped.pathname = `${RPC_BASE}/${rest.slice(segment.length + 1)}`;
    return stripped;
  }

  /**
   * The Host header, validated: loopback names (on this host's port) and the configured names only, so that a page
   * reached through DNS rebinding cannot call the API, and nothing built from the Host points anywhere else. 400
   * otherwise; a request without Host (HTTP/1.0) is taken as addressed to this host.
   */
  private checkHost(header: string | undefined): string {
    if (header === undefined || header === "") return `${hostForUrl(this.loopbackHost())}:${this.port}`;
    const m = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::(\d{1,5}))?$/.exec(header);
    if (!m) throw new HttpFailure(400, "InvalidHost", "the Host header is malformed");
    const name = m[1]!.toLowerCase();
    const port = m[2] === undefined ? undefined : Number(m[2]);
    if (LOOPBACK_NAMES.has(name) || name.endsWith(".localhost")) {
      if (port !== undefined && port !== this.port) throw new HttpFailure(400, "InvalidHost", `Host '${header}' names another port than this host's (${this.port})`);
      return header;
    }
    if (this.allowedHosts.has(name)) return header;
    throw new HttpFailure(400, "InvalidHost", `Host '${name}' is not served here: only loopback names and those in FUNCTIONS_ALLOWED_HOSTS`);
  }

  private route(pathname: string, method: string): { spec: HttpFunctionSpec; params: Record<string, string> } {
    // "/api/items/" and "/api/items" are the same route, as in the host.
    const segments = pathname.split("/").slice(1);
    if (segments.length && segments[segments.length - 1] === "") segments.pop();
    const matches: { route: CompiledRoute; params: Record<string, string> }[] = [];
    for (const route of this.routes) {
      const params = route.match(segments);
      if (params) matches.push({ route, params });
    }
    if (!matches.length) throw new HttpFailure(404, "NotFound", `no function serves ${pathname}`);
    const allowed = matches.filter((m) => m.route.spec.methods.some((x) => x.toUpperCase() === method));
    if (!allowed.length) {
      const allow = [...new Set(matches.flatMap((m) => m.route.spec.methods.map((x) => x.toUpperCase())))].join(", ");
      throw new HttpFailure(405, "MethodNotAllowed", `${method} is not allowed on ${pathname} (allowed: ${allow})`, { allow });
    }
    // Literal segments outrank parameters, as in ASP.NET routing.
    allowed.sort((a, b) => compareRank(a.route.rank, b.route.rank));
    return { spec: allowed[0].route.spec, params: allowed[0].params };
  }

  private authorize(spec: HttpFunctionSpec, req: IncomingMessage, url: URL): void {
    const key = this.options.functionKey;
    if (!key || spec.authLevel === "anonymous") return;
    const header = req.headers["x-functions-key"];
    const given = (Array.isArray(header) ? header[0] : header) ?? url.searchParams.get("code") ?? "";
    if (!sameSecret(given, key)) throw new HttpFailure(401, "Unauthorized", "missing or invalid function key (x-functions-key header or ?code=)");
  }

  /** Reads the body up to the limit; past it answers 413 and discards (never buffers) the rest. */
  private async readBody(req: IncomingMessage, res: ServerResponse): Promise<Buffer> {
    const limit = this.maxRequestBytes;
    const declared = Number(req.headers["content-length"]);
    if (Number.isFinite(declared) && declared > limit) {
      discardRest(req, limit);
      throw new HttpFailure(413, "PayloadTooLarge", `request body exceeds ${limit} bytes`);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    return new Promise<Buffer>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        size += chunk.length;
        if (size > limit) {
          cleanup();
          chunks.length = 0;
          discardRest(req, limit);
          reject(new HttpFailure(413, "PayloadTooLarge", `request body exceeds ${limit} bytes`));
          return;
        }
        chunks.push(chunk);
      };
      const onEnd = () => {
        cleanup();
        resolve(Buffer.concat(chunks));
      };
      const onError = (e: Error) => {
        cleanup();
        reject(e);
      };
      const onAborted = () => {
        cleanup();
        res.destroy();
        reject(new Error("client aborted the request"));
      };
      const cleanup = () => {
        req.off("data", onData);
        req.off("end", onEnd);
        req.off("error", onError);
        req.off("aborted", onAborted);
      };
      req.on("data", onData);
      req.on("end", onEnd);
      req.on("error", onError);
      req.on("aborted", onAborted);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Routing

type Segment = { kind: "literal"; text: string } | { kind: "param"; name: string; optional: boolean } | { kind: "catchAll"; name: string };

interface CompiledRoute {
  spec: HttpFunctionSpec;
  /** Per segment: 0 literal, 1 parameter, 2 optional, 3 catch-all (lower is more specific). */
  rank: number[];
  match(segments: string[]): Record<string, string> | undefined;
}

function compileRoute(spec: HttpFunctionSpec, prefix: string): CompiledRoute {
  const template = [prefix, spec.route.replace(/^\/+|\/+$/g, "")].filter(Boolean).join("/");
  const parts: Segment[] = template.split("/").map((raw) => {
    const m = /^\{(\*)?([A-Za-z_][A-Za-z0-9_]*)(?::[^}?]*)?(\?)?\}$/.exec(raw);
    if (!m) {
      if (/[{}]/.test(raw)) throw new Error(`function '${spec.name}': unsupported route segment '${raw}'`);
      return { kind: "literal", text: raw.toLowerCase() };
    }
    // Constraints (`{id:int}`) are accepted but not enforced locally.
    return m[1] ? { kind: "catchAll", name: m[2] } : { kind: "param", name: m[2], optional: Boolean(m[3]) };
  });
  const rank = parts.map((p) => (p.kind === "literal" ? 0 : p.kind === "catchAll" ? 3 : p.optional ? 2 : 1));
  return {
    spec,
    rank,
    match(path) {
      const params: Record<string, string> = {};
      for (let i = 0; i < parts.length; i++) {
        const part = parts[i];
        if (part.kind === "catchAll") {
          params[part.name] = path.slice(i).map(safeDecode).join("/");
          return params;
        }
        const seg = path[i];
        if (seg === undefined) {
          if (part.kind === "param" && part.optional && i === parts.length - 1) return params;
          return undefined;
        }
        if (part.kind === "literal") {
          if (safeDecode(seg).toLowerCase() !== part.text) return undefined;
        } else {
          if (seg === "") return undefined;
          params[part.name] = safeDecode(seg);
        }
      }
      return path.length === parts.length ? params : undefined;
    },
  };
}

function compareRank(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? -1) - (b[i] ?? -1);
    if (d) return d;
  }
  return 0;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers

function flattenHeaders(req: IncomingMessage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(req.headers)) {
    if (v === undefined) continue;
    out[k] = Array.isArray(v) ? v.join(", ") : v;
  }
  return out;
}

/** Constant-time comparison over digests, so neither content nor length leaks through timing. */
function sameSecret(given: string, expected: string): boolean {
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b) && given.length > 0;
}

/**
 * Reads and drops whatever the client still sends after a 413, so it can read the answer instead of
 * hitting a reset mid-upload; beyond a cap the socket is closed rather than draining forever.
 */
function discardRest(req: IncomingMessage, limit: number): void {
  const cap = Math.max(8 * limit, 64 * 1024 * 1024);
  let dropped = 0;
  req.on("data", (chunk: Buffer) => {
    dropped += chunk.length;
    if (dropped > cap) req.socket.destroy();
  });
  req.on("error", () => undefined);
  req.resume();
}

function sendError(res: ServerResponse, failure: HttpFailure): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ error: { code: failure.code, message: failure.message } });
  res.writeHead(failure.status, {
    ...failure.headers,
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}

async function writeResponse(res: ServerResponse, response: HttpResponse): Promise<void> {
  res.statusCode = response.status;
  response.headers.forEach((value, name) => {
    if (name !== "set-cookie") res.setHeader(name, value);
  });
  const cookies = [...response.headers.getSetCookie(), ...response.cookies.map(serializeCookie)];
  if (cookies.length) res.setHeader("set-cookie", cookies);
  const body = response.body;
  if (!body) {
    res.end();
    return;
  }
  try {
    await pipeline(Readable.fromWeb(body as unknown as NodeReadableStream<Uint8Array>), res);
  } catch {
    // The client went away or the handler's stream failed mid-body: nothing sensible can be sent any more.
    res.destroy();
  }
}

function serializeCookie(c: Cookie): string {
  const parts = [`${c.name}=${c.value}`];
  if (c.domain) parts.push(`Domain=${c.domain}`);
  if (c.path) parts.push(`Path=${c.path}`);
  if (c.expires !== undefined) parts.push(`Expires=${new Date(c.expires).toUTCString()}`);
  if (c.maxAge !== undefined) parts.push(`Max-Age=${c.maxAge}`);
  if (c.secure) parts.push("Secure");
  if (c.httpOnly) parts.push("HttpOnly");
  if (c.sameSite) parts.push(`SameSite=${c.sameSite}`);
  return parts.join("; ");
}

function rawPacketOf(err: NodeJS.ErrnoException): string {
  const raw = (err as NodeJS.ErrnoException & { rawPacket?: unknown }).rawPacket;
  return Buffer.isBuffer(raw) ? raw.toString("latin1", 0, 256) : "";
}

/** An address as it goes into a URL's authority (IPv6 in brackets). */
function hostForUrl(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

/**
 * What Node's HTTP parser refused, answered as the host answers everything: the status that is due and the envelope,
 * then the connection closes. Nothing is written into a response already under way (or a socket already gone).
 */
function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  const inFlight = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (err.code === "ECONNRESET" || !socket.writable || inFlight?.headersSent) {
    socket.destroy();
    return;
  }
  const [status, reason, code, message] =
    err.code === "HPE_HEADER_OVERFLOW"
      ? [431, "Request Header Fields Too Large", "HeadersTooLarge", `request headers exceed ${MAX_HEADER_BYTES} bytes`]
      : err.code === "HPE_INVALID_METHOD" && /^[A-Za-z]+ \S+ HTTP\/1\.[01]\r?\n/.test(rawPacketOf(err))
        ? [501, "Not Implemented", "MethodNotImplemented", "the request method is not one this host implements"]
        : err.code === "ERR_HTTP_REQUEST_TIMEOUT"
          ? [408, "Request Timeout", "RequestTimeout", "the request was not received in time"]
          : [400, "Bad Request", "MalformedRequest", `the request is not valid HTTP/1.1 (${err.code ?? "parse error"})`];
  const body = JSON.stringify({ error: { code, message } });
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}

function levelPrefix(level: LogLevel): string {
  return level === "information" ? "" : `${level}: `;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------------------------------------
// Queue trigger: the host's QueueListener and QueueProcessor, reduced to what a single instance needs.

type Invoker = (run: (context: InvocationContext) => Promise<void>, triggerMetadata?: Record<string, unknown>) => Promise<void>;

class QueueListener {
  readonly queueName: string;
  /** Messages received so far, so drainQueues can tell "quiet" from "busy between two checks". */
  received = 0;
  private client: QueueClient | undefined;
  private poison: QueueClient | undefined;
  private ensured: Promise<void> | undefined;
  private running = false;
  private loop: Promise<void> | undefined;
  private readonly processing = new Set<Promise<void>>();
  private wakeUp: (() => void) | undefined;
  private delayMs = MIN_POLL_MS;
  private polling: Promise<number> | undefined;

  constructor(
    private readonly spec: QueueFunctionSpec,
    private readonly settings: QueueSettings,
    private readonly env: NodeJS.ProcessEnv,
    private readonly invoke: Invoker,
    private readonly log: (line: string) => void,
  ) {
    this.queueName = spec.queueName.toLowerCase();
  }

  /** Resolves the connection setting like the host: the name, then `AzureWebJobs<name>`; none means AzureWebJobsStorage. */
  connect(): void {
    if (this.client) return;
    const setting = this.spec.connection || "AzureWebJobsStorage";
    const cs = this.env[setting] || this.env[`AzureWebJobs${setting}`];
    if (!cs) throw new Error(`function '${this.spec.name}': connection setting '${setting}' is not set`);
    try {
      this.client = new QueueClient(cs, this.queueName);
      this.poison = new QueueClient(cs, `${this.queueName}-poison`);
    } catch (e) {
      throw new Error(`function '${this.spec.name}': setting '${setting}' is not a usable connection string: ${(e as Error).message}`);
    }
  }

  start(): void {
    this.connect();
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wake();
    await this.loop;
    while (this.processing.size) await Promise.allSettled([...this.processing]);
  }

  get busy(): number {
    return this.processing.size;
  }

  wake(): void {
    this.delayMs = MIN_POLL_MS;
    this.wakeUp?.();
  }

  async approximateCount(): Promise<number> {
    this.connect();
    await this.ensureQueue();
    return (await this.client!.getProperties()).approximateMessagesCount ?? 0;
  }

  /** One receive; starts the handlers of what it got and returns how many. Never throws. */
  pollOnce(): Promise<number> {
    // Serialised, so a drain-triggered poll and the loop's own never race for the same slot.
    this.polling ??= this.receiveBatch().finally(() => (this.polling = undefined));
    return this.polling;
  }

  private async run(): Promise<void> {
    while (this.running) {
      const got = await this.pollOnce();
      if (!this.running) break;
      if (got > 0) {
        this.delayMs = MIN_POLL_MS;
        // Like the host: fetch again once the in-flight count falls to newBatchThreshold.
        while (this.running && this.processing.size > this.settings.newBatchThreshold) await Promise.race([...this.processing]);
        continue;
      }
      // Randomised exponential backoff between the floor and maxPollingInterval, as the host's strategy does.
      const wait = Math.min(this.delayMs, this.settings.maxPollingIntervalMs);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, wait);
        this.wakeUp = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wakeUp = undefined;
      this.delayMs = Math.min(this.delayMs * 2 * (0.8 + Math.random() * 0.4), this.settings.maxPollingIntervalMs);
    }
  }

  private ensureQueue(): Promise<void> {
    this.ensured ??= this.client!.createIfNotExists().then(
      () => undefined,
      (e: unknown) => {
        this.ensured = undefined;
        throw e;
      },
    );
    return this.ensured;
  }

  private async receiveBatch(): Promise<number> {
    let messages: ReceivedMessageItem[];
    try {
      this.connect();
      await this.ensureQueue();
      const r = await this.client!.receiveMessages({
        // Storage caps a receive at 32 messages, as the host's batchSize is.
        numberOfMessages: Math.max(1, Math.min(32, this.settings.batchSize)),
        visibilityTimeout: Math.max(1, Math.ceil(this.settings.messageLeaseMs / 1000)),
      });
      messages = r.receivedMessageItems;
    } catch {
      // Storage unreachable or the queue deleted underneath: back off and try again, as the host does.
      this.ensured = undefined;
      return 0;
    }
    for (const m of messages) {
      this.received++;
      const p = this.process(m).catch(() => undefined);
      this.processing.add(p);
      void p.finally(() => this.processing.delete(p));
    }
    return messages.length;
  }

  private async process(message: ReceivedMessageItem): Promise<void> {
    const client = this.client!;
    let popReceipt = message.popReceipt;
    // A message that already used up its attempts (say the host died mid-run) goes to poison without another run.
    if (message.dequeueCount > this.settings.maxDequeueCount) {
      await this.toPoison(message, popReceipt);
      return;
    }
    // Keep the message invisible while the handler runs, renewing at half the lease like the host.
    const leaseSeconds = Math.max(1, Math.ceil(this.settings.messageLeaseMs / 1000));
    let renewing: Promise<void> | undefined;
    const renew = setInterval(() => {
      // Each renewal needs the previous one's pop receipt: never two at once.
      if (renewing) return;
      renewing = client
        .updateMessage(message.messageId, popReceipt, undefined, leaseSeconds)
        .then(
          (r) => {
            if (r.popReceipt) popReceipt = r.popReceipt;
          },
          () => undefined,
        )
        .finally(() => (renewing = undefined));
    }, Math.max(500, this.settings.messageLeaseMs / 2));

    let ok = false;
    try {
      await this.invoke(
        async (context) => {
          await this.spec.handler(this.decode(message.messageText), context);
        },
        {
          id: message.messageId,
          dequeueCount: message.dequeueCount,
          insertionTime: message.insertedOn.toISOString(),
          expirationTime: message.expiresOn.toISOString(),
          nextVisibleTime: message.nextVisibleOn.toISOString(),
          popReceipt: message.popReceipt,
        },
      );
      ok = true;
    } catch {
      // Logged by invoke(); the outcome decides the message's fate below.
    } finally {
      clearInterval(renew);
      await renewing;
    }
    try {
      if (ok) await client.deleteMessage(message.messageId, popReceipt);
      else if (message.dequeueCount >= this.settings.maxDequeueCount) await this.toPoison(message, popReceipt);
      else await client.updateMessage(message.messageId, popReceipt, undefined, Math.round(this.settings.visibilityTimeoutMs / 1000));
    } catch {
      // Lost the pop receipt (the lease lapsed): the message reappears on its own and counts another dequeue.
    }
  }

  /** The message text goes over unchanged, still encoded, exactly as the host copies it. */
  private async toPoison(message: ReceivedMessageItem, popReceipt: string): Promise<void> {
    this.log(
      `[${new Date().toISOString()}] Message ${message.messageId} has reached MaxDequeueCount of ${this.settings.maxDequeueCount}. Moving message to queue '${this.queueName}-poison'.`,
    );
    await this.poison!.createIfNotExists();
    await this.poison!.sendMessage(message.messageText);
    await this.client!.deleteMessage(message.messageId, popReceipt);
  }

  /** base64 (the host's default encoding), then JSON when it parses: what `tryJsonParse` gives a v4 handler. */
  private decode(text: string): unknown {
    let decoded = text;
    if (this.settings.messageEncoding === "base64") {
      const compact = text.replace(/\s+/g, "");
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(compact) || compact.length % 4 !== 0) {
        throw new Error("queue message is not valid base64 (host.json messageEncoding is base64; producers must encode)");
      }
      decoded = Buffer.from(compact, "base64").toString("utf8");
    }
    try {
      return JSON.parse(decoded) as unknown;
    } catch {
      return decoded;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Timer trigger: NCRONTAB (six fields, seconds first) through croner, never overlapping itself.

class TimerRunner {
  readonly name: string;
  private pattern: string | undefined;
  private job: Cron | undefined;
  private current: Promise<void> | undefined;
  private status: Timer["scheduleStatus"] | undefined;

  constructor(
    private readonly spec: TimerFunctionSpec,
    private readonly env: NodeJS.ProcessEnv,
    private readonly invoke: Invoker,
    private readonly log: (line: string) => void,
  ) {
    this.name = spec.name;
  }

  /** Resolves `%SETTING%` and validates the expression; throws a message naming the function. */
  prepare(): void {
    if (this.pattern) return;
    let schedule = this.spec.schedule.trim();
    const setting = /^%([^%]+)%$/.exec(schedule);
    if (setting) {
      const value = this.env[setting[1]];
      if (!value) throw new Error(`function '${this.name}': schedule setting '${setting[1]}' is not set`);
      schedule = value.trim();
    }
    if (schedule.split(/\s+/).length !== 6) {
      throw new Error(`function '${this.name}': schedule '${schedule}' is not a six-field NCRONTAB expression (seconds first)`);
    }
    try {
      // Validates without scheduling anything.
      new Cron(schedule, { paused: true, legacyMode: false, timezone: this.timezone() }).stop();
    } catch (e) {
      throw new Error(`function '${this.name}': invalid schedule '${schedule}': ${(e as Error).message}`);
    }
    this.pattern = schedule;
  }

  start(): void {
    this.prepare();
    const startedAt = new Date().toISOString();
    // NCRONTAB requires both day-of-month and day-of-week to match (croner's legacy mode would OR them).
    this.job = new Cron(this.pattern!, { legacyMode: false, timezone: this.timezone() }, (self) => {
      if (this.current) {
        this.log(`[${new Date().toISOString()}] Timer '${this.name}' is still running; skipping the occurrence at ${(self.currentRun() ?? new Date()).toISOString()}`);
        return;
      }
      void this.runNow("schedule").catch(() => undefined);
    });
    this.status = { last: startedAt, next: this.job.nextRun()?.toISOString() ?? "", lastUpdated: startedAt };
    if (this.spec.runOnStartup) void this.runNow("startup").catch(() => undefined);
  }

  stop(): void {
    this.job?.stop();
    this.job = undefined;
  }

  /** Runs after any invocation of this timer already in progress; rejects if the handler fails. */
  async runNow(_reason: "schedule" | "startup" | "manual"): Promise<void> {
    while (this.current) await this.current.catch(() => undefined);
    const now = new Date().toISOString();
    const status = this.status ?? { last: now, next: this.job?.nextRun()?.toISOString() ?? "", lastUpdated: now };
    // The host keeps no past-due record locally (no schedule monitor across restarts), so nothing is past due.
    const timer: Timer = { isPastDue: false, schedule: { adjustForDST: true }, scheduleStatus: { ...status } };
    const spec = this.spec;
    const run = this.invoke(async (context) => (spec.durableClient ? spec.handler(timer, df.getClient(context), context) : spec.handler(timer, context)));
    this.current = run.catch(() => undefined);
    try {
      await run;
    } finally {
      this.current = undefined;
      const done = new Date().toISOString();
      this.status = { last: now, next: this.job?.nextRun()?.toISOString() ?? status.next, lastUpdated: done };
    }
  }

  /** Azure runs NCRONTAB in UTC unless WEBSITE_TIME_ZONE says otherwise. */
  private timezone(): string {
    return this.env.WEBSITE_TIME_ZONE || "UTC";
  }
}
