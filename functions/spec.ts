// The shape of one entry of the function table: what the Functions host registers and the local host drives.
import type { HttpMethod, HttpRequest, HttpResponseInit, InvocationContext, Timer } from "@azure/functions";

export type HttpAuthLevel = "anonymous" | "function" | "admin";

export interface HttpFunctionSpec {
  kind: "http";
  name: string;
  /** Route under the host's `api` prefix, with `{param}` segments. */
  route: string;
  methods: HttpMethod[];
  authLevel: HttpAuthLevel;
  handler: (request: HttpRequest, context: InvocationContext) => Promise<HttpResponseInit>;
}

export interface QueueFunctionSpec {
  kind: "queue";
  name: string;
  queueName: string;
  /** App setting holding the storage connection. */
  connection: string;
  /** Receives the decoded (base64 → JSON) message, as the host delivers it. */
  handler: (message: unknown, context: InvocationContext) => Promise<void>;
}

export interface TimerFunctionSpec {
  kind: "timer";
  name: string;
  /** NCRONTAB: six fields, seconds first, or `%SETTING%`. */
  schedule: string;
  runOnStartup?: boolean;
  handler: (timer: Timer, context: InvocationContext) => Promise<void>;
}

export type FunctionSpec = HttpFunctionSpec | QueueFunctionSpec | TimerFunctionSpec;
