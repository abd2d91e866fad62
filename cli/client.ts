// The CLI's view of the HTTP API: JSON calls with the function key, errors shown as the API words them.
export class ApiCallError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
  }
}

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

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const url = `${this.baseUrl.replace(/\/+$/, "")}/api/${path}`;
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers: { "content-type": "application/json", ...(this.key ? { "x-functions-key": this.key } : {}) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
    } catch (e) {
      throw new ApiCallError(0, "Unreachable", `cannot reach ${this.baseUrl}: ${(e as Error).message} (is 'npm start' running?)`);
    }
    const text = await res.text();
    const json = text ? (JSON.parse(text) as unknown) : undefined;
    if (!res.ok) {
      const err = (json as { error?: { code?: string; message?: string; details?: unknown } } | undefined)?.error;
      throw new ApiCallError(res.status, err?.code ?? String(res.status), err?.message ?? res.statusText, err?.details);
    }
    return json as T;
  }
}
