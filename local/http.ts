// The local host's HTTP seams: route templates compiled and ranked as the Functions host does, error envelopes, body limits, responses and cookies, the Host allow-list.
import { createHash, timingSafeEqual } from "node:crypto";
import { type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as NodeReadableStream } from "node:stream/web";
import { HttpResponse, type Cookie, type LogLevel } from "@azure/functions";
import type { HttpFunctionSpec } from "../functions/spec";

type ErrorCode = "NotFound" | "MethodNotAllowed" | "PayloadTooLarge" | "Unauthorized" | "InternalError" | "InvalidHost" | "StorageUnavailable";

export class HttpFailure extends Error {
  constructor(
    readonly status: number,
    readonly code: ErrorCode,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export const DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024;
/** Node's default, stated: a larger header block is answered 431. */
export const MAX_HEADER_BYTES = 16 * 1024;
/** Names that reach this machine only (the Host allow-list always holds them). */
export const LOOPBACK_NAMES: ReadonlySet<string> = new Set(["localhost", "127.0.0.1", "[::1]"]);
/** What the Durable extension calls a task hub it was given no name for, when running locally. */
export const DEFAULT_TASK_HUB = "TestHubName";
export const DRAIN_POLL_MS = 50;

// ---------------------------------------------------------------------------------------------
// Routing

type Segment = { kind: "literal"; text: string } | { kind: "param"; name: string; optional: boolean } | { kind: "catchAll"; name: string };

export interface CompiledRoute {
  spec: HttpFunctionSpec;
  /** Per segment: 0 literal, 1 parameter, 2 optional, 3 catch-all (lower is more specific). */
  rank: number[];
  match(segments: string[]): Record<string, string> | undefined;
}

export function compileRoute(spec: HttpFunctionSpec, prefix: string): CompiledRoute {
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

export function compareRank(a: number[], b: number[]): number {
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

export function flattenHeaders(req: IncomingMessage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(req.headers)) {
    if (v === undefined) continue;
    out[k] = Array.isArray(v) ? v.join(", ") : v;
  }
  return out;
}

/** Constant-time comparison over digests, so neither content nor length leaks through timing. */
export function sameSecret(given: string, expected: string): boolean {
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b) && given.length > 0;
}

/**
 * Reads and drops whatever the client still sends after a 413, so it can read the answer instead of
 * hitting a reset mid-upload; beyond a cap the socket is closed rather than draining forever.
 */
export function discardRest(req: IncomingMessage, limit: number): void {
  const cap = Math.max(8 * limit, 64 * 1024 * 1024);
  let dropped = 0;
  req.on("data", (chunk: Buffer) => {
    dropped += chunk.length;
    if (dropped > cap) req.socket.destroy();
  });
  req.on("error", () => undefined);
  req.resume();
}

export function sendError(res: ServerResponse, failure: HttpFailure): void {
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

export async function writeResponse(res: ServerResponse, response: HttpResponse): Promise<void> {
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
export function hostForUrl(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

/**
 * What Node's HTTP parser refused, answered as the host answers everything: the status that is due and the envelope,
 * then the connection closes. Nothing is written into a response already under way (or a socket already gone).
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
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
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

export function levelPrefix(level: LogLevel): string {
  return level === "information" ? "" : `${level}: `;
}
