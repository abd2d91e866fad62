// The one place HTTP functions turn requests into domain calls and domain errors into the JSON envelope.
import type { HttpRequest, HttpResponseInit, InvocationContext } from "@azure/functions";
import { ApiError, BadRequest, isStorageUnavailable, PayloadTooLarge, STORAGE_RETRY_AFTER_SECONDS } from "../shared/contract/errors";

export interface JsonResult {
  status?: number;
  body?: unknown;
  headers?: Record<string, string>;
}

/**
 * Reads the JSON body within the size limit: 413 when larger, 400 when it is not JSON. An empty body is a 400, or `{}`
 * with `optional` (routes that take no required options: re-protect, resync).
 */
export async function readJson(request: HttpRequest, maxBytes: number, opts: { optional?: boolean } = {}): Promise<unknown> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > maxBytes) throw new PayloadTooLarge(maxBytes);
  const text = await request.text();
  if (Buffer.byteLength(text, "utf8") > maxBytes) throw new PayloadTooLarge(maxBytes);
  if (text.trim() === "" && opts.optional) return {};
  if (text.trim() === "") throw new BadRequest("request body is empty: a JSON object is expected", [{ field: "(body)", message: "is required" }]);
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new BadRequest(`request body is not valid JSON: ${(e as Error).message}`, [{ field: "(body)", message: "is not valid JSON" }]);
  }
}

/** The durable client's error for an unexpected status from the durable endpoints (it keeps only the text). */
const DURABLE_UNAVAILABLE = /unexpected status code: 503\b/;

export function errorResponse(error: unknown, context: InvocationContext): HttpResponseInit {
  if (error instanceof ApiError) return { status: error.status, jsonBody: error.toBody() };
  // Storage down: 503 and when to try again, never a 500 (the SDK's retries are bounded, see shared/storage/clients.ts).
  if (isStorageUnavailable(error) || (error instanceof Error && DURABLE_UNAVAILABLE.test(error.message))) {
    context.warn(`storage unavailable: ${(error as Error).message}`);
    return {
      status: 503,
      headers: { "retry-after": String(STORAGE_RETRY_AFTER_SECONDS) },
      jsonBody: { error: { code: "StorageUnavailable", message: "storage is not reachable right now; try again shortly" } },
    };
  }
  context.error(error);
  return {
    status: 500,
    jsonBody: { error: { code: "InternalError", message: `internal error (invocation ${context.invocationId}); see the function log` } },
  };
}

/** Wraps a handler so that every outcome is JSON and every error uses the envelope. */
export function jsonHandler(
  fn: (request: HttpRequest, context: InvocationContext) => Promise<JsonResult>,
): (request: HttpRequest, context: InvocationContext) => Promise<HttpResponseInit> {
  return async (request, context) => {
    try {
      const r = await fn(request, context);
      return { status: r.status ?? 200, jsonBody: r.body, ...(r.headers ? { headers: r.headers } : {}) };
    } catch (error) {
      return errorResponse(error, context);
    }
  };
}
