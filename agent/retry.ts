// When the agent retries and how long it waits: one place decides transient vs permanent, one backoff for every call out.

/** Capped exponential backoff with full jitter: attempt 0 waits up to `baseMs`, each next one twice as long, never more than `capMs`. */
export function backoffMs(attempt: number, baseMs = 500, capMs = 30_000, random = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });

/** The HTTP status of a storage or service error, if it has one (a network failure has none). */
export function statusOf(error: unknown): number | undefined {
  const e = error as { statusCode?: number; status?: number } | undefined;
  return e?.statusCode ?? e?.status;
}

/** What a failed call out means for the agent. */
export type Failure =
  /** Unreachable, throttled, a server error, a timeout: retry with backoff. */
  | "transient"
  /** The SAS expired or was revoked: renew it through a check-in, then retry. */
  | "credentials"
  /** The item or its cache is gone (disabled): keep the data, retry slowly, tell the operator. */
  | "gone";

export function classify(error: unknown): Failure {
  const status = statusOf(error);
  if (status === 401 || status === 403) return "credentials";
  if (status === 404) return "gone";
  return "transient";
}

export function describe(error: unknown): string {
  const status = statusOf(error);
  const code = (error as { code?: string } | undefined)?.code;
  const message = (error as Error | undefined)?.message?.split("\n")[0] ?? String(error);
  return [status, code].filter(Boolean).join(" ") + (status || code ? ": " : "") + message;
}
