// The one client of the HTTP API (DESIGN.md §6), used by the CLI, the drill, the benchmarks and the tests: `request`
// answers any status as it came (tests of refusals), `call` throws the API's error as an ApiCallError, and the typed
// methods name the routes with the response types defined beside the request schemas (views.ts, responses.ts).
import type { Alert } from "../operations/alerts";
import type { Job } from "../operations/jobs";
import type { FailoverStatusBody, ReprotectJob } from "./responses";
import type { ItemView, PointView } from "./views";
import { ApiError } from "./errors";

/** A response as it came: the status and the parsed JSON body (undefined when empty, the text when not JSON). */
export interface ApiResponse<T = unknown> {
  status: number;
  body: T;
  headers: Headers;
}

/** What enable answers: the item and the agent's one-time registration token. */
export type EnabledItem = ItemView & { agentRegistration: { token: string; expiresAt: string } };
/** The API's error as a caller receives it (status 0, code `Unreachable`, when the host cannot be reached). */
export class ApiCallError extends ApiError {}

export class ApiClient {
  constructor(
    readonly baseUrl: string,
    private readonly key?: string,
  ) {}

  /** A route that answers text (GET /api/metrics). */
  async text(method: string, path: string): Promise<string> {
    const url = `${this.baseUrl.replace(/\/+$/, "")}/api/${path}`;
    let res: Response;
    try {
      res = await fetch(url, { method, headers: this.key ? { "x-functions-key": this.key } : {} });
    } catch (e) {
      throw new ApiCallError(0, "Unreachable", `cannot reach ${this.baseUrl}: ${(e as Error).message} (is 'npm start' running?)`);
    }
    const text = await res.text();
    if (!res.ok) {
      const err = (JSON.parse(text || "{}") as { error?: { code?: string; message?: string } }).error;
      throw new ApiCallError(res.status, err?.code ?? String(res.status), err?.message ?? res.statusText);
    }
    return text;
  }

  /** The body of a 2xx answer; any other status throws the API's error (code, message, details) as an ApiCallError. */
  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.request(method, path, body);
    if (res.status < 200 || res.status >= 300) {
      const err = (res.body as { error?: { code?: string; message?: string; details?: unknown } } | undefined)?.error;
      throw new ApiCallError(res.status, err?.code ?? String(res.status), err?.message ?? `HTTP ${res.status}`, err?.details);
    }
    return res.body as T;
  }

  /** Any status, as it came; throws only when the host cannot be reached. `body` may be a string (sent as is). */
  async request<T = unknown>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<ApiResponse<T>> {
    const url = `${this.baseUrl.replace(/\/+$/, "")}/api/${path}`;
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers: { "content-type": "application/json", ...(this.key ? { "x-functions-key": this.key } : {}), ...headers },
        ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
      });
    } catch (e) {
      throw new ApiCallError(0, "Unreachable", `cannot reach ${this.baseUrl}: ${(e as Error).message} (is 'npm start' running?)`);
    }
    const text = await res.text();
    let parsed: unknown = undefined;
    if (text) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = text;
      }
    }
    return { status: res.status, body: parsed as T, headers: res.headers };
  }

  // ---- the routes, typed ----

  items(): Promise<ItemView[]> {
    return this.call("GET", "replicated-items");
  }

  item(id: string): Promise<ItemView> {
    return this.call("GET", `replicated-items/${encodeURIComponent(id)}`);
  }

  enable(body: unknown): Promise<EnabledItem> {
    return this.call("POST", "replicated-items", body);
  }

  disable(id: string): Promise<ItemView> {
    return this.call("DELETE", `replicated-items/${encodeURIComponent(id)}`);
  }

  points(id: string): Promise<PointView[]> {
    return this.call("GET", `replicated-items/${encodeURIComponent(id)}/recovery-points`);
  }

  startFailover(body: unknown): Promise<{ id: string }> {
    return this.call("POST", "failovers", body);
  }

  failover(id: string): Promise<FailoverStatusBody> {
    return this.call("GET", `failovers/${encodeURIComponent(id)}`);
  }

  commit(id: string): Promise<ItemView> {
    return this.call("POST", `replicated-items/${encodeURIComponent(id)}/commit`);
  }

  cleanupTestFailover(id: string): Promise<ItemView & { removed: string[] }> {
    return this.call("POST", `replicated-items/${encodeURIComponent(id)}/test-failover-cleanup`);
  }

  reprotectJob(id: string): Promise<ReprotectJob> {
    return this.call("GET", `replicated-items/${encodeURIComponent(id)}/reprotect`);
  }

  jobs(query = ""): Promise<Job[]> {
    return this.call("GET", `jobs${query ? `?${query}` : ""}`);
  }

  alerts(query = ""): Promise<Alert[]> {
    return this.call("GET", `alerts${query ? `?${query}` : ""}`);
  }
}
