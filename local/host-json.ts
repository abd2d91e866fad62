// host.json, the one source of the trigger settings shared with Azure: what this host honours of it, and the Storage extension's defaults where it is silent.
import { readFileSync } from "node:fs";
import { join } from "node:path";

// ---------------------------------------------------------------------------------------------
// host.json: the single source of the trigger settings, shared with Azure.

/** The subset of host.json this host honours. */
export interface HostJson {
  extensions?: {
    http?: { routePrefix?: string };
    queues?: {
      messageEncoding?: string;
      maxDequeueCount?: number;
      visibilityTimeout?: string;
      batchSize?: number;
      newBatchThreshold?: number;
      maxPollingInterval?: string;
    };
    durableTask?: {
      hubName?: string;
      maxConcurrentActivityFunctions?: number;
      maxConcurrentOrchestratorFunctions?: number;
    };
  };
}

/** Queue-trigger behaviour, in milliseconds where host.json uses TimeSpans. */
export interface QueueSettings {
  messageEncoding: "base64" | "none";
  maxDequeueCount: number;
  /** How long a failed message stays invisible before its retry (host.json `visibilityTimeout`). */
  visibilityTimeoutMs: number;
  batchSize: number;
  /** A new batch is fetched once in-flight messages drop to this many. */
  newBatchThreshold: number;
  maxPollingIntervalMs: number;
  /** Invisibility taken on receive and renewed at half-time while the handler runs (the host's fixed 10 minutes). */
  messageLeaseMs: number;
}

/** The host's floor for queue polling (QueuePollingIntervals.Minimum). */
export const MIN_POLL_MS = 100;
const HOST_MESSAGE_LEASE_MS = 10 * 60_000;

/** host.json sits at the repo root; this file runs from dist/local/host.js. */
export function loadHostJson(path = join(__dirname, "..", "..", "host.json")): HostJson {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as HostJson;
  } catch (e) {
    throw new Error(`cannot read host.json at ${path}: ${(e as Error).message}`);
  }
}

/** Host defaults where host.json is silent, as documented for the Storage extension 5.x. */
export function queueSettingsFrom(hostJson: HostJson): QueueSettings {
  const q = hostJson.extensions?.queues ?? {};
  const batchSize = q.batchSize ?? 16;
  const encoding = (q.messageEncoding ?? "base64").toLowerCase();
  if (encoding !== "base64" && encoding !== "none") throw new Error(`host.json: unknown queues.messageEncoding '${q.messageEncoding}'`);
  return {
    messageEncoding: encoding,
    maxDequeueCount: q.maxDequeueCount ?? 5,
    visibilityTimeoutMs: q.visibilityTimeout ? parseTimeSpan(q.visibilityTimeout) : 0,
    batchSize,
    newBatchThreshold: q.newBatchThreshold ?? Math.floor(batchSize / 2),
    maxPollingIntervalMs: q.maxPollingInterval ? parseTimeSpan(q.maxPollingInterval) : 60_000,
    messageLeaseMs: HOST_MESSAGE_LEASE_MS,
  };
}

/** .NET TimeSpan text: `[d.]hh:mm:ss[.fff]`. */
export function parseTimeSpan(text: string): number {
  const m = /^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,7}))?$/.exec(text.trim());
  if (!m) throw new Error(`not a TimeSpan (d.hh:mm:ss): '${text}'`);
  const [, d, h, min, s, frac] = m;
  const ms = frac ? Math.round(Number(`0.${frac}`) * 1000) : 0;
  return ((Number(d ?? 0) * 24 + Number(h)) * 60 + Number(min)) * 60_000 + Number(s) * 1000 + ms;
}
