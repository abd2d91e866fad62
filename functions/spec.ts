// The shape of one entry of the function table: what the Functions host registers and the local host drives.
import type { HttpMethod, HttpRequest, HttpResponseInit, InvocationContext, Timer } from "@azure/functions";
import type { DurableClient, OrchestrationHandler } from "durable-functions";

export type HttpAuthLevel = "anonymous" | "function" | "admin";

/**
 * Kinds other than HTTP never take a durable client. Declaring the property as absent on every member is
 * what lets TypeScript pick the plain HTTP variant for a literal that omits `durableClient`, so existing
 * `handler: async (request, context) => …` entries stay contextually typed inside a `FunctionSpec[]`.
 */
interface NoDurableClient {
  durableClient?: never;
}

interface HttpFunctionBase {
  kind: "http";
  name: string;
  /** Route under the host's `api` prefix, with `{param}` segments. */
  route: string;
  methods: HttpMethod[];
  authLevel: HttpAuthLevel;
}

export interface PlainHttpFunctionSpec extends HttpFunctionBase {
  durableClient?: false;
  handler: (request: HttpRequest, context: InvocationContext) => Promise<HttpResponseInit>;
}

/** An HTTP function that starts or queries orchestrations; the durable client input is added at registration. */
export interface DurableClientHttpFunctionSpec extends HttpFunctionBase {
  durableClient: true;
  handler: (request: HttpRequest, client: DurableClient, context: InvocationContext) => Promise<HttpResponseInit>;
}

export type HttpFunctionSpec = PlainHttpFunctionSpec | DurableClientHttpFunctionSpec;

export interface QueueFunctionSpec extends NoDurableClient {
  kind: "queue";
  name: string;
  queueName: string;
  /** App setting holding the storage connection. */
  connection: string;
  /** Receives the decoded (base64 → JSON) message, as the host delivers it. */
  handler: (message: unknown, context: InvocationContext) => Promise<void>;
}

interface TimerFunctionBase {
  kind: "timer";
  name: string;
  /** NCRONTAB: six fields, seconds first, or `%SETTING%`. */
  schedule: string;
  runOnStartup?: boolean;
}

export interface PlainTimerFunctionSpec extends TimerFunctionBase {
  durableClient?: false;
  handler: (timer: Timer, context: InvocationContext) => Promise<void>;
}

/** A timer that queries or manages orchestrations; the durable client input is added at registration. */
export interface DurableClientTimerFunctionSpec extends TimerFunctionBase {
  durableClient: true;
  handler: (timer: Timer, client: DurableClient, context: InvocationContext) => Promise<void>;
}

export type TimerFunctionSpec = PlainTimerFunctionSpec | DurableClientTimerFunctionSpec;

/** A durable orchestrator: a deterministic generator (`function* (context) { … yield context.df.callActivity(…) }`). */
export interface OrchestrationFunctionSpec extends NoDurableClient {
  kind: "orchestration";
  name: string;
  handler: OrchestrationHandler;
}

/** A durable activity: receives the input the orchestrator passed (JSON), returns a JSON-serialisable result. Must be idempotent. */
export interface ActivityFunctionSpec extends NoDurableClient {
  kind: "activity";
  name: string;
  handler: (input: unknown, context: InvocationContext) => Promise<unknown>;
}

export type FunctionSpec = HttpFunctionSpec | QueueFunctionSpec | TimerFunctionSpec | OrchestrationFunctionSpec | ActivityFunctionSpec;
