// The agent's two calls to storage — put a block blob into the item's cache container, add a message to its queue — as
// plain REST requests over the SAS URLs a check-in hands out, through node:http(s) with kept-alive connections.
//
// Not the storage SDKs: in the agent's process they were a fifth of its memory (loading @azure/storage-blob and
// @azure/storage-queue adds 23 MiB to a bare node's RSS, 7 MiB of it heap) and a third of the CPU of each upload (2.3–2.9
// ms per 4 MiB against 1.5–2.1 through node:http, measured against Azurite). Two requests with a SAS need neither their
// authentication nor their retries (the shipper has its own). The service side keeps the SDKs.
import http from "node:http";
import https from "node:https";

/** The REST API version the requests ask for (any version the account supports for SAS-authorised Put Blob and Put Message). */
export const STORAGE_API_VERSION = "2025-01-05";

/** A request storage refused: its HTTP status and error code (`x-ms-error-code`), as retry.ts classifies them. */
export class StorageRequestError extends Error {
  override readonly name = "StorageRequestError";
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface CacheEndpoints {
  /** The cache container's URL with its SAS (create and write). */
  containerUrl: string;
  /** The batch queue's URL with its SAS (add). */
  queueUrl: string;
}

export interface CacheClientOptions {
  /** Connections kept open to each endpoint: the uploads that run at once, plus one for messages and heartbeats. */
  connections: number;
  /** A request whose connection sends and receives nothing for this long fails (the caller then retries it). */
  timeoutMs: number;
}

export interface PutBlobOptions {
  contentType: string;
  metadata?: Record<string, string>;
  signal?: AbortSignal;
}

/**
 * A body sent piece by piece: `send` resolves once its piece has left the process (its buffer may be refilled then), and
 * rejects if the request failed meanwhile. Called again from the start if the request is retried.
 */
export type ChunkedBody = (send: (piece: Buffer) => Promise<void>) => Promise<void>;

type Body = Buffer | string | { length: number; write: ChunkedBody };

/** One request: what is sent, and the status that means it worked. */
interface Call {
  method: string;
  url: string;
  headers: Record<string, string | number>;
  body: Body;
  expected: number;
  signal: AbortSignal | undefined;
}

interface Target {
  /** scheme://host:port/path, no query. */
  base: string;
  /** The SAS, without the '?'. */
  sas: string;
}

function target(url: string): Target {
  const u = new URL(url);
  return { base: `${u.origin}${u.pathname.replace(/\/+$/, "")}`, sas: u.search.replace(/^\?/, "") };
}

export class CacheClient {
  private container!: Target;
  private queue!: Target;
  private readonly agents: { http: http.Agent; https: https.Agent };

  constructor(
    endpoints: CacheEndpoints,
    private readonly opts: CacheClientOptions,
  ) {
    const kept = { keepAlive: true, maxSockets: opts.connections, maxFreeSockets: opts.connections };
    this.agents = { http: new http.Agent(kept), https: new https.Agent(kept) };
    this.setEndpoints(endpoints);
  }

  /** New SAS URLs (a check-in renewed them): requests from now on use them. */
  setEndpoints(e: CacheEndpoints): void {
    this.container = target(e.containerUrl);
    this.queue = target(e.queueUrl);
  }

  /** Put Blob (a block blob, whole): `name` may hold '/' (a virtual directory). */
  putBlob(name: string, body: Buffer | string, o: PutBlobOptions): Promise<void> {
    return this.put(name, body, o);
  }

  /** Put Blob of `length` bytes that `write` sends piece by piece (a batch streamed from its spool file through one buffer). */
  putBlobChunked(name: string, length: number, write: ChunkedBody, o: PutBlobOptions): Promise<void> {
    return this.put(name, { length, write }, o);
  }

  private async put(name: string, body: Body, o: PutBlobOptions): Promise<void> {
    const path = name.split("/").map(encodeURIComponent).join("/");
    const headers: Record<string, string | number> = {
      "x-ms-blob-type": "BlockBlob",
      "content-type": o.contentType,
      "content-length": typeof body === "string" ? Buffer.byteLength(body) : body.length,
    };
    for (const [k, v] of Object.entries(o.metadata ?? {})) headers[`x-ms-meta-${k}`] = v;
    await this.request({ method: "PUT", url: `${this.container.base}/${path}?${this.container.sas}`, headers, body, expected: 201, signal: o.signal });
  }

  /** Put Message: `text` is the message as stored (the caller encodes it; base64 needs no XML escaping). */
  async sendMessage(text: string, signal?: AbortSignal): Promise<void> {
    const body = `<?xml version="1.0" encoding="utf-8"?><QueueMessage><MessageText>${escapeXml(text)}</MessageText></QueueMessage>`;
    const headers = { "content-type": "application/xml", "content-length": Buffer.byteLength(body) };
    await this.request({ method: "POST", url: `${this.queue.base}/messages?${this.queue.sas}`, headers, body, expected: 201, signal });
  }

  /** Closes the kept connections. */
  close(): void {
    this.agents.http.destroy();
    this.agents.https.destroy();
  }

  private async request(call: Call): Promise<void> {
    try {
      return await this.once(call);
    } catch (e) {
      // A kept connection the server closed while it was idle fails as soon as it is used: once more on a new one.
      if (!(e instanceof StaleConnectionError)) throw e;
      return this.once(call);
    }
  }

  /** One request; settles only once its body is no longer being sent (a chunked body's buffer is then free). */
  private async once({ method, url, headers, body, expected, signal }: Call): Promise<void> {
    const secure = url.startsWith("https:");
    const req = (secure ? https : http).request(url, {
      method,
      agent: secure ? this.agents.https : this.agents.http,
      headers: { ...headers, "x-ms-version": STORAGE_API_VERSION, "x-ms-date": new Date().toUTCString() },
      ...(signal ? { signal } : {}),
    });
    let ended = false;
    const answered = new Promise<void>((resolve, reject) => {
      req.on("response", (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (d: Buffer) => {
          // Only an error's body is read, and only its first few KiB (the code and message are at the start).
          if (res.statusCode !== expected && chunks.length < 4) chunks.push(d);
        });
        res.on("error", reject);
        res.on("end", () => {
          if (res.statusCode === expected) return resolve();
          const text = Buffer.concat(chunks).toString("utf8");
          const code = String(res.headers["x-ms-error-code"] ?? /<Code>([^<]*)<\/Code>/.exec(text)?.[1] ?? res.statusCode);
          const message = /<Message>([^<]*)<\/Message>/.exec(text)?.[1]?.split("\n")[0] ?? res.statusMessage ?? "";
          reject(new StorageRequestError(res.statusCode ?? 0, code, `${method} ${redact(url)}: ${res.statusCode} ${message}`.trim()));
        });
      });
      req.on("error", (e: NodeJS.ErrnoException) => {
        if (req.reusedSocket && (e.code === "ECONNRESET" || e.code === "EPIPE")) reject(new StaleConnectionError(e.message));
        else reject(e);
      });
    }).finally(() => (ended = true));
    // Awaited below (and raced by a chunked body's sends), but a chunked body may first wait for its data while the
    // request already failed (a refused connection): that must not count as an unhandled rejection.
    answered.catch(() => undefined);
    // An idle connection for this long (nothing sent or received) is taken as hung.
    req.setTimeout(this.opts.timeoutMs, () => req.destroy(new Error(`no progress within ${this.opts.timeoutMs / 1000} s`)));
    if (typeof body === "string" || Buffer.isBuffer(body)) req.end(body);
    else {
      // A piece is sent once the one before it has left the process; the request failing (or storage answering before
      // the body is whole) stops the sending.
      const send = (piece: Buffer) =>
        Promise.race([
          new Promise<void>((resolve, reject) => req.write(piece, (e) => (e ? reject(e) : resolve()))),
          answered.then(() => Promise.reject(new Error("answered before the body was sent"))),
        ]);
      try {
        await body.write(send);
        req.end();
      } catch (e) {
        // Cut off: the request fails with this error, or (storage answered already) its connection is not reused.
        req.destroy(ended ? undefined : (e as Error));
      }
    }
    await answered;
  }
}

class StaleConnectionError extends Error {}

function escapeXml(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The URL without its SAS (error messages reach logs and the item's health). */
function redact(url: string): string {
  return url.split("?")[0]!;
}
