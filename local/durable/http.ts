// The Durable Functions HTTP management API (`/runtime/webhooks/durabletask/…` and the client's rpc base `/durabletask/…`) and the durable client binding data, as the extension serves and sends them.
import { EVENT_NAMES, EventType, type HistoryEvent } from "./history";
import { DurableRequestError, type DurableRuntime } from "./runtime";
import { TERMINAL, type InstanceRecord, type RuntimeStatus } from "./store";

export const WEBHOOK_BASE = "/runtime/webhooks/durabletask";
/** Where `rpcBaseUrl` points: the JS DurableClient sends every call here when it is set. */
export const RPC_BASE = "/durabletask";

export type DurableApiBase = "webhook" | "rpc";

export interface DurableApiRequest {
  method: string;
  url: URL;
  body: Buffer;
  /** `http://host:port` as the caller reached this host; the URLs handed back use it. */
  origin: string;
  headers: Record<string, string>;
}

export interface DurableApiResponse {
  status: number;
  headers: Record<string, string>;
  body?: unknown;
}

/** What the extension passes as the `durableClient` input; `df.getClient(context)` builds a DurableClient from it. */
export interface DurableClientBindingData {
  taskHubName: string;
  creationUrls: { createNewInstancePostUri: string; createAndWaitOnNewInstancePostUri: string };
  managementUrls: ManagementUrls;
  baseUrl: string;
  requiredQueryStringParameters: string;
  rpcBaseUrl: string;
}

export interface ManagementUrls {
  id: string;
  statusQueryGetUri: string;
  sendEventPostUri: string;
  terminatePostUri: string;
  rewindPostUri: string;
  purgeHistoryDeleteUri: string;
  restartPostUri: string;
  suspendPostUri: string;
  resumePostUri: string;
}

const ID_PLACEHOLDER = "INSTANCEID";
const STATUS_RETRY_AFTER = "5";
const CREATED_RETRY_AFTER = "10";
const VALID_STATUSES: ReadonlySet<string> = new Set<RuntimeStatus>([
  "Pending",
  "Running",
  "Completed",
  "Failed",
  "Terminated",
  "ContinuedAsNew",
  "Canceled",
  "Suspended",
]);

/** Which durable base a request path is under, if any. */
export function durableBase(pathname: string): DurableApiBase | undefined {
  const p = pathname.toLowerCase();
  if (p === WEBHOOK_BASE || p.startsWith(`${WEBHOOK_BASE}/`)) return "webhook";
  if (p === RPC_BASE || p.startsWith(`${RPC_BASE}/`)) return "rpc";
  return undefined;
}

/** .NET `ToString("s") + "Z"`: second precision, as the extension formats status times. */
function dotnetTime(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function parseJsonText(text: string | undefined): unknown {
  if (text === undefined) return null;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

export class DurableHttpApi {
  constructor(
    private readonly runtime: DurableRuntime,
    private readonly options: { taskHub: string; functionKey?: string },
  ) {}

  /**
   * The binding data for one durable-client invocation: the management URLs on `origin` (the caller's validated view
   * of this host), the client's own calls to `rpcBaseUrl` (this host's listening address, never taken from a request).
   */
  bindingData(origin: string, rpcBaseUrl = `${origin}${RPC_BASE}/`): DurableClientBindingData {
    const base = `${origin}${WEBHOOK_BASE}`;
    const code = this.options.functionKey ? `code=${encodeURIComponent(this.options.functionKey)}` : "";
    const hubQuery = `taskHub=${encodeURIComponent(this.options.taskHub)}&connection=Storage${code ? `&${code}` : ""}`;
    return {
      taskHubName: this.options.taskHub,
      creationUrls: {
        createNewInstancePostUri: `${base}/orchestrators/{functionName}[/{instanceId}]${code ? `?${code}` : ""}`,
        createAndWaitOnNewInstancePostUri: `${base}/orchestrators/{functionName}[/{instanceId}]?timeout={timeoutInSeconds}&pollingInterval={intervalInSeconds}${code ? `&${code}` : ""}`,
      },
      managementUrls: this.managementUrls(base, ID_PLACEHOLDER, hubQuery),
      baseUrl: base,
      requiredQueryStringParameters: code,
      rpcBaseUrl,
    };
  }

  private managementUrls(base: string, id: string, hubQuery: string): ManagementUrls {
    const instance = `${base}/instances/${id}`;
    return {
      id,
      statusQueryGetUri: `${instance}?${hubQuery}`,
      sendEventPostUri: `${instance}/raiseEvent/{eventName}?${hubQuery}`,
      terminatePostUri: `${instance}/terminate?reason={text}&${hubQuery}`,
      rewindPostUri: `${instance}/rewind?reason={text}&${hubQuery}`,
      purgeHistoryDeleteUri: `${instance}?${hubQuery}`,
      restartPostUri: `${instance}/restart?${hubQuery}`,
      suspendPostUri: `${instance}/suspend?reason={text}&${hubQuery}`,
      resumePostUri: `${instance}/resume?reason={text}&${hubQuery}`,
    };
  }

  /** The 202 payload of a start: the management URLs for the new instance (the extension leaves out rewind). */
  private checkStatusPayload(origin: string, instanceId: string): Omit<ManagementUrls, "rewindPostUri"> {
    const data = this.bindingData(origin).managementUrls;
    const urls = Object.fromEntries(
      Object.entries(data).map(([k, v]) => [k, v.replace(ID_PLACEHOLDER, encodeURIComponent(instanceId))]),
    ) as unknown as ManagementUrls;
    const { rewindPostUri: _rewind, ...rest } = urls;
    return { ...rest, id: instanceId };
  }

  async handle(req: DurableApiRequest, base: DurableApiBase): Promise<DurableApiResponse> {
    try {
      return await this.route(req, base);
    } catch (e) {
      if (e instanceof DurableRequestError) return { status: e.status, headers: {}, body: { message: e.message } };
      throw e;
    }
  }

  private async route(req: DurableApiRequest, base: DurableApiBase): Promise<DurableApiResponse> {
    const prefix = base === "webhook" ? WEBHOOK_BASE : RPC_BASE;
    const rest = req.url.pathname.slice(prefix.length).replace(/^\/+/, "");
    const parts = rest.split("/").map(decodeSegment);
    const q = req.url.searchParams;
    const hub = q.get("taskHub");
    if (hub && hub.toLowerCase() !== this.options.taskHub.toLowerCase()) {
      throw new DurableRequestError(404, `Task hub '${hub}' is not served here (this host runs '${this.options.taskHub}').`);
    }
    const method = req.method.toUpperCase();
    const allow = (methods: string[]) => {
      if (!methods.includes(method)) return { status: 405, headers: { allow: methods.join(", ") }, body: { message: `${method} is not allowed here` } };
      return undefined;
    };
    const [section, id, action, arg] = parts;

    if (section === "orchestrators" && id && parts.length <= 3) {
      return allow(["POST"]) ?? (await this.start(req, id, action));
    }
    if (section === "instances" && (id === undefined || id === "") && parts.length <= 2) {
      return allow(["GET", "DELETE"]) ?? (method === "GET" ? await this.list(req) : await this.purgeBy(req));
    }
    if (section === "instances" && id && action === undefined) {
      return allow(["GET", "DELETE"]) ?? (method === "GET" ? await this.status(req, id) : await this.purge(id));
    }
    if (section === "instances" && id && action === "raiseEvent" && arg && parts.length === 4) {
      return allow(["POST"]) ?? (await this.raiseEvent(req, id, arg));
    }
    if (section === "instances" && id && action === "terminate" && parts.length === 3) {
      if (allow(["POST"])) return allow(["POST"])!;
      await this.runtime.terminate(id, q.get("reason") ?? "");
      return { status: 202, headers: {} };
    }
    if (section === "instances" && id && ["rewind", "suspend", "resume", "restart"].includes(action ?? "")) {
      return { status: 501, headers: {}, body: { message: `'${action}' is not supported by the local durable runtime.` } };
    }
    if (section === "entities") return { status: 501, headers: {}, body: { message: "Durable entities are not supported by the local durable runtime." } };
    return { status: 404, headers: {}, body: { message: `no durable API at ${req.url.pathname}` } };
  }

  private async start(req: DurableApiRequest, functionName: string, instanceId: string | undefined): Promise<DurableApiResponse> {
    const input = jsonBody(req.body);
    if (!this.runtime.isOrchestration(functionName)) {
      throw new DurableRequestError(400, `The function '${functionName}' doesn't exist, is disabled, or is not an orchestrator function.`);
    }
    const id = await this.runtime.startNew(functionName, { ...(instanceId ? { instanceId } : {}), ...(input !== undefined ? { input } : {}) });
    const payload = this.checkStatusPayload(req.origin, id);
    return { status: 202, headers: { location: payload.statusQueryGetUri, "retry-after": CREATED_RETRY_AFTER }, body: payload };
  }

  private async status(req: DurableApiRequest, instanceId: string): Promise<DurableApiResponse> {
    const q = req.url.searchParams;
    const rec = await this.runtime.getStatus(instanceId);
    if (!rec) return { status: 404, headers: {}, body: null };
    const history = q.get("showHistory") === "true" ? await this.runtime.history(instanceId) : undefined;
    const body = statusBody(rec, { showInput: q.get("showInput") !== "false", history, showHistoryOutput: q.get("showHistoryOutput") === "true" });
    if (!TERMINAL.has(rec.status)) return { status: 202, headers: { location: req.url.toString(), "retry-after": STATUS_RETRY_AFTER }, body };
    if (rec.status === "Failed" && q.get("returnInternalServerErrorOnFailure") === "true") return { status: 500, headers: {}, body };
    return { status: 200, headers: {}, body };
  }

  private async list(req: DurableApiRequest): Promise<DurableApiResponse> {
    const q = req.url.searchParams;
    const statuses = (q.get("runtimeStatus") ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
    const bad = statuses.filter((s) => !VALID_STATUSES.has(s));
    if (bad.length) throw new DurableRequestError(400, `unknown runtimeStatus: ${bad.join(", ")}`);
    const from = timeParam(q, "createdTimeFrom");
    const to = timeParam(q, "createdTimeTo");
    const all = await this.runtime.list({
      ...(statuses.length ? { statuses: statuses as RuntimeStatus[] } : {}),
      ...(from ? { createdFrom: from } : {}),
      ...(to ? { createdTo: to } : {}),
    });
    all.sort((a, b) => a.createdTime.getTime() - b.createdTime.getTime() || a.instanceId.localeCompare(b.instanceId));
    // Paging as the extension does: `top` per page, the position in `x-ms-continuation-token`.
    const top = Number(q.get("top") ?? "0");
    const token = req.headers["x-ms-continuation-token"] ?? "";
    const start = token ? Number(Buffer.from(token, "base64").toString("utf8")) || 0 : 0;
    const page = top > 0 ? all.slice(start, start + top) : all.slice(start);
    const headers: Record<string, string> = {};
    if (top > 0 && start + top < all.length) headers["x-ms-continuation-token"] = Buffer.from(String(start + top)).toString("base64");
    const showInput = q.get("showInput") === "true";
    return { status: 200, headers, body: page.map((r) => statusBody(r, { showInput })) };
  }

  private async purge(instanceId: string): Promise<DurableApiResponse> {
    const deleted = await this.runtime.purge(instanceId);
    if (deleted === 0) return { status: 404, headers: {}, body: { instancesDeleted: 0 } };
    return { status: 200, headers: {}, body: { instancesDeleted: deleted } };
  }

  private async purgeBy(req: DurableApiRequest): Promise<DurableApiResponse> {
    const q = req.url.searchParams;
    const from = timeParam(q, "createdTimeFrom");
    if (!from) throw new DurableRequestError(400, "createdTimeFrom is required to purge by filter");
    const to = timeParam(q, "createdTimeTo");
    const statuses = (q.get("runtimeStatus") ?? "Completed,Failed,Terminated,Canceled")
      .split(",")
      .filter((s) => TERMINAL.has(s as RuntimeStatus)) as RuntimeStatus[];
    const matches = await this.runtime.list({ statuses, createdFrom: from, ...(to ? { createdTo: to } : {}) });
    let deleted = 0;
    for (const r of matches) deleted += await this.runtime.purge(r.instanceId).catch(() => 0);
    return { status: deleted ? 200 : 404, headers: {}, body: { instancesDeleted: deleted } };
  }

  private async raiseEvent(req: DurableApiRequest, instanceId: string, eventName: string): Promise<DurableApiResponse> {
    const input = jsonBody(req.body);
    await this.runtime.raiseEvent(instanceId, eventName, input);
    return { status: 202, headers: {} };
  }
}

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new DurableRequestError(400, `malformed path segment '${segment}'`);
  }
}

/** The body as JSON text (validated), or undefined when empty. */
function jsonBody(body: Buffer): string | undefined {
  const text = body.toString("utf8");
  if (text.trim() === "") return undefined;
  try {
    return JSON.stringify(JSON.parse(text));
  } catch (e) {
    throw new DurableRequestError(400, `the request body is not valid JSON: ${(e as Error).message}`);
  }
}

function timeParam(q: URLSearchParams, name: string): Date | undefined {
  const v = q.get(name);
  if (!v) return undefined;
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) throw new DurableRequestError(400, `${name} is not a date: '${v}'`);
  return d;
}

/** The status shape the extension returns; `input` and `output` are always present (the JS client requires them). */
export function statusBody(
  r: InstanceRecord,
  opts: { showInput?: boolean; history?: HistoryEvent[] | undefined; showHistoryOutput?: boolean } = {},
): Record<string, unknown> {
  return {
    name: r.name,
    instanceId: r.instanceId,
    runtimeStatus: r.status,
    input: opts.showInput === false ? null : parseJsonText(r.input),
    customStatus: parseJsonText(r.customStatus),
    output: parseJsonText(r.output),
    createdTime: dotnetTime(r.createdTime),
    lastUpdatedTime: dotnetTime(r.lastUpdatedTime),
    ...(opts.history ? { historyEvents: historyView(opts.history, opts.showHistoryOutput ?? false) } : {}),
  };
}

/** A readable history: the events an operator cares about, payloads parsed. */
function historyView(events: HistoryEvent[], showOutput: boolean): Record<string, unknown>[] {
  const skip = new Set<number>([EventType.OrchestratorStarted, EventType.OrchestratorCompleted]);
  return events
    .filter((e) => !skip.has(e.EventType))
    .map((e) => {
      const out: Record<string, unknown> = { EventType: EVENT_NAMES[e.EventType] ?? String(e.EventType), Timestamp: e.Timestamp };
      if (e.EventId >= 0) out.EventId = e.EventId;
      for (const key of ["Name", "TaskScheduledId", "TimerId", "FireAt", "InstanceId", "Reason"] as const) {
        if (e[key] !== undefined) out[key === "Name" ? "FunctionName" : key] = e[key];
      }
      if (typeof e.Input === "string") out.Input = parseJsonText(e.Input);
      if (showOutput && typeof e.Result === "string") out.Result = parseJsonText(e.Result);
      if (showOutput && typeof e.Details === "string") out.Details = e.Details;
      return out;
    });
}
