// Stands in for `func start`: serves the table's HTTP functions, polls its storage queues, fires its timers and runs its durable orchestrations the way the Functions host does, with no business logic.
// Over 500 lines: the host's lifecycle (start, drain, stop) and its HTTP dispatch share the listeners it owns; the
// seams live beside it (host-json.ts, http.ts, queues.ts, timers.ts, durable/).
import { setTimeout as sleep } from "node:timers/promises";
import { randomBytes, randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { format } from "node:util";
import { HttpRequest, HttpResponse, InvocationContext, type FunctionInput, type HttpResponseInit, type LogHandler, type LogLevel } from "@azure/functions";
import * as df from "durable-functions";
import type { ActivityFunctionSpec, FunctionSpec, HttpFunctionSpec, OrchestrationFunctionSpec, QueueFunctionSpec, TimerFunctionSpec } from "../functions/spec";
import { durableBase, DurableHttpApi, RPC_BASE, type DurableApiResponse } from "./durable/http";
import { isStorageUnavailable, STORAGE_RETRY_AFTER_SECONDS } from "../shared/contract/errors";
import { DurableRuntime } from "./durable/runtime";
import { DurableStore } from "./durable/store";
import { QueueListener } from "./queues";
import { TimerRunner } from "./timers";
import {
  CompiledRoute,
  DEFAULT_MAX_REQUEST_BYTES,
  DEFAULT_TASK_HUB,
  DRAIN_POLL_MS,
  HttpFailure,
  LOOPBACK_NAMES,
  MAX_HEADER_BYTES,
  answerClientError,
  compareRank,
  compileRoute,
  discardRest,
  flattenHeaders,
  hostForUrl,
  levelPrefix,
  sameSecret,
  sendError,
  writeResponse,
} from "./http";
import { loadHostJson, queueSettingsFrom, type HostJson, type QueueSettings } from "./host-json";

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
              this.invoke(
                spec.name,
                run,
                undefined,
                spec.durableClient ? [[df.input.durableClient(), this.durable!.api.bindingData(this.ownOrigin(), this.clientRpcBase())]] : [],
              ),
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
      ...(extraInputs.length
        ? { options: { trigger: { type: "unknown", name: "trigger" }, extraInputs: extraInputs.map(([input]) => input), extraOutputs: [] } }
        : {}),
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
      if (!sameSecret(given, key))
        throw new HttpFailure(401, "Unauthorized", "missing or invalid key for the durable endpoints (x-functions-key header or ?code=)");
    }
    const body = await this.readBody(req, res);
    const headers = flattenHeaders(req);
    let r: DurableApiResponse;
    try {
      r = await this.durable!.api.handle({ method, url, body, origin: this.origin(url), headers }, base);
    } catch (e) {
      if (isStorageUnavailable(e))
        throw new HttpFailure(503, "StorageUnavailable", "storage is not reachable; try again shortly", { "retry-after": String(STORAGE_RETRY_AFTER_SECONDS) });
      throw e;
    }
    const text = r.body === undefined ? "" : JSON.stringify(r.body);
    res.writeHead(r.status, {
      ...r.headers,
      ...(text ? { "content-type": "application/json; charset=utf-8", "content-length": Buffer.byteLength(text) } : { "content-length": 0 }),
    });
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
      if (port !== undefined && port !== this.port)
        throw new HttpFailure(400, "InvalidHost", `Host '${header}' names another port than this host's (${this.port})`);
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
