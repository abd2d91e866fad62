// A small Azure Resource Manager client: JSON over the Azure SDK's pipeline (bearer token, 429 retried with its
import { setTimeout as sleep } from "node:timers/promises";
// Retry-After), long-running operations polled the way ARM answers them and bounded in time, errors kept by code.
import {
  bearerTokenAuthenticationPolicy,
  createHttpHeaders,
  createPipelineFromOptions,
  createPipelineRequest,
  createDefaultHttpClient,
  type HttpClient,
  type HttpMethods,
  type Pipeline,
  type PipelineResponse,
} from "@azure/core-rest-pipeline";
import type { TokenCredential } from "@azure/identity";

/** An ARM error answer: its HTTP status and ARM's own `error.code` (e.g. QuotaExceeded, SkuNotAvailable). */
export class ArmError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "ArmError";
  }
}

export interface ArmClientOptions {
  /** https://management.azure.com, or a sovereign cloud's. */
  endpoint: string;
  credential: TokenCredential;
  /** The transport; tests pass an in-process fake ARM here, as the SDK clients' `httpClient` option allows. */
  httpClient?: HttpClient;
  /** Poll interval when ARM gives no Retry-After; default 2 s. */
  pollIntervalMs?: number;
  /** A long-running operation not finished after this long fails (transiently: the step is retried); default 15 min. */
  operationTimeoutMs?: number;
  /** Throttled (429) or failed (5xx, network) requests are retried this many times, honouring Retry-After; default 6. */
  maxRetries?: number;
  /** First backoff of a retry without Retry-After; default 1 s. */
  retryDelayMs?: number;
}

export interface ArmResponse {
  status: number;
  headers: { get(name: string): string | undefined };
  body: unknown;
}

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

function parseBody(res: PipelineResponse): unknown {
  const text = res.bodyAsText;
  if (!text) return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

function errorOf(body: unknown): { code: string; message: string } | undefined {
  const e = (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  return e && typeof e.code === "string" ? { code: e.code, message: typeof e.message === "string" ? e.message : e.code } : undefined;
}

function provisioningState(body: unknown): string | undefined {
  const s = (body as { properties?: { provisioningState?: unknown } } | undefined)?.properties?.provisioningState;
  return typeof s === "string" ? s : undefined;
}

export class ArmClient {
  private readonly pipeline: Pipeline;
  private readonly http: HttpClient;
  private readonly endpoint: string;
  private readonly pollMs: number;
  private readonly timeoutMs: number;

  constructor(options: ArmClientOptions) {
    this.endpoint = options.endpoint.replace(/\/+$/, "");
    this.pollMs = options.pollIntervalMs ?? 2000;
    this.timeoutMs = options.operationTimeoutMs ?? 15 * 60_000;
    this.http = options.httpClient ?? createDefaultHttpClient();
    this.pipeline = createPipelineFromOptions({
      retryOptions: { maxRetries: options.maxRetries ?? 6, retryDelayInMs: options.retryDelayMs ?? 1000, maxRetryDelayInMs: 60_000 },
      userAgentOptions: { userAgentPrefix: "site-recovery" },
    });
    this.pipeline.addPolicy(bearerTokenAuthenticationPolicy({ credential: options.credential, scopes: `${this.endpoint}/.default` }));
  }

  /** One request; an ARM error answer (after the pipeline's retries) is thrown as ArmError. */
  async send(method: HttpMethods, pathOrUrl: string, apiVersion: string | undefined, body?: unknown): Promise<ArmResponse> {
    let url = pathOrUrl.startsWith("https://") || pathOrUrl.startsWith("http://") ? pathOrUrl : `${this.endpoint}${pathOrUrl}`;
    if (apiVersion && !/[?&]api-version=/.test(url)) url += `${url.includes("?") ? "&" : "?"}api-version=${apiVersion}`;
    const request = createPipelineRequest({
      url,
      method,
      headers: createHttpHeaders({ accept: "application/json", ...(body === undefined ? {} : { "content-type": "application/json" }) }),
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const res = await this.pipeline.sendRequest(this.http, request);
    const parsed = parseBody(res);
    if (res.status >= 400) {
      const e = errorOf(parsed);
      throw new ArmError(res.status, e?.code ?? `Http${res.status}`, e?.message ?? `${method} ${url} answered ${res.status}`);
    }
    return { status: res.status, headers: { get: (n) => res.headers.get(n) }, body: parsed };
  }

  /** GET of a resource; undefined when ARM says it does not exist. */
  async get(path: string, apiVersion: string): Promise<unknown> {
    try {
      return (await this.send("GET", path, apiVersion)).body;
    } catch (e) {
      if (e instanceof ArmError && e.status === 404) return undefined;
      throw e;
    }
  }

  /** Every item of a list, following nextLink. */
  async list(path: string, apiVersion: string): Promise<unknown[]> {
    const out: unknown[] = [];
    let next: string | undefined = path;
    while (next) {
      const page = (await this.send("GET", next, next === path ? apiVersion : undefined)).body as { value?: unknown[]; nextLink?: string } | undefined;
      out.push(...(page?.value ?? []));
      next = page?.nextLink;
    }
    return out;
  }

  /** PUT (create or update) and wait for the operation to end; returns the resource as it then is. */
  async put(path: string, apiVersion: string, body: unknown): Promise<unknown> {
    const res = await this.send("PUT", path, apiVersion, body);
    await this.waitFor(res, path, apiVersion, `PUT ${path}`);
    return (await this.send("GET", path, apiVersion)).body;
  }

  /** POST an action (start, deallocate…) and wait for it to end. */
  async action(path: string, apiVersion: string): Promise<void> {
    const res = await this.send("POST", path, apiVersion);
    await this.waitFor(res, undefined, apiVersion, `POST ${path}`);
  }

  /** DELETE and wait; false when the resource did not exist. */
  async delete(path: string, apiVersion: string): Promise<boolean> {
    let res: ArmResponse;
    try {
      res = await this.send("DELETE", path, apiVersion);
    } catch (e) {
      if (e instanceof ArmError && e.status === 404) return false;
      throw e;
    }
    if (res.status === 204) return false;
    await this.waitFor(res, undefined, apiVersion, `DELETE ${path}`);
    return true;
  }

  /**
   * Waits for a long-running operation the way ARM describes it: `Azure-AsyncOperation` (poll for its `status`), else
   * `Location` (poll until it stops answering 202), else the resource's own `provisioningState`; each poll after the
   * answer's Retry-After, all within the operation timeout.
   */
  private async waitFor(first: ArmResponse, resourcePath: string | undefined, apiVersion: string, what: string): Promise<void> {
    const deadline = Date.now() + this.timeoutMs;
    const asyncUrl = first.headers.get("azure-asyncoperation");
    const location = first.headers.get("location");
    let last: ArmResponse = first;
    const pause = async () => {
      if (Date.now() >= deadline) throw new Error(`ARM operation ${what} did not finish within ${Math.round(this.timeoutMs / 1000)} s`);
      const after = Number(last.headers.get("retry-after"));
      await sleep(
        Math.min(Number.isFinite(after) && last.headers.get("retry-after") !== undefined ? after * 1000 : this.pollMs, Math.max(0, deadline - Date.now())),
      );
    };
    if (asyncUrl) {
      for (;;) {
        await pause();
        last = await this.send("GET", asyncUrl, undefined);
        const body = last.body as { status?: string } | undefined;
        const status = body?.status?.toLowerCase();
        if (status === "succeeded") return;
        if (status === "failed" || status === "canceled") {
          const e = errorOf(body);
          throw new ArmError(409, e?.code ?? "OperationFailed", `${what}: ${e?.message ?? status}`);
        }
      }
    }
    if (location && first.status === 202) {
      for (;;) {
        await pause();
        last = await this.send("GET", location, undefined);
        if (last.status !== 202) return;
      }
    }
    if (resourcePath && first.status < 300) {
      let state = provisioningState(first.body);
      while (state !== undefined && !TERMINAL.has(state.toLowerCase())) {
        await pause();
        last = await this.send("GET", resourcePath, apiVersion);
        state = provisioningState(last.body);
      }
      if (state?.toLowerCase() === "failed" || state?.toLowerCase() === "canceled")
        throw new ArmError(409, "ProvisioningFailed", `${what}: provisioning ${state}`);
    }
  }
}
