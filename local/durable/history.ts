// The durable history model: the events and actions the SDK's replay engine exchanges, one episode run through that engine, and the replay (non-determinism) check.
import { DummyOrchestrationContext, type OrchestrationHandler } from "durable-functions";
import type { LogHandler } from "@azure/functions";
import {
  createOrchestrator,
  type OrchestrationTriggerPayload,
  type OrchestratorStatePayload,
  type WireHistoryEvent,
} from "durable-functions/lib/src/util/testingUtils";

/** DTFx `EventType` numbers (the SDK's HistoryEventType). */
export const EventType = {
  ExecutionStarted: 0,
  ExecutionCompleted: 1,
  ExecutionFailed: 2,
  ExecutionTerminated: 3,
  TaskScheduled: 4,
  TaskCompleted: 5,
  TaskFailed: 6,
  SubOrchestrationInstanceCreated: 7,
  SubOrchestrationInstanceCompleted: 8,
  SubOrchestrationInstanceFailed: 9,
  TimerCreated: 10,
  TimerFired: 11,
  OrchestratorStarted: 12,
  OrchestratorCompleted: 13,
  EventSent: 14,
  EventRaised: 15,
  ContinueAsNew: 16,
} as const;

export const EVENT_NAMES: Record<number, string> = Object.fromEntries(Object.entries(EventType).map(([k, v]) => [v, k]));

/** The SDK's ActionType numbers. */
export const ActionType = {
  CallActivity: 0,
  CallActivityWithRetry: 1,
  CallSubOrchestrator: 2,
  CallSubOrchestratorWithRetry: 3,
  ContinueAsNew: 4,
  CreateTimer: 5,
  WaitForExternalEvent: 6,
  CallEntity: 7,
  CallHttp: 8,
  SignalEntity: 9,
  WhenAny: 11,
  WhenAll: 12,
  LockEntities: 13,
  ReleaseEntities: 14,
} as const;

const ACTION_NAMES: Record<number, string> = Object.fromEntries(Object.entries(ActionType).map(([k, v]) => [v, k]));

/**
 * One history event: the wire shape plus the driver's own bookkeeping fields (`MessageId`, `Retry`, `RetryOf`,
 * `InstanceId`), which the SDK ignores.
 */
export type HistoryEvent = WireHistoryEvent;

/** RetryOptions as the SDK puts them on an action. */
export interface RetrySettings {
  firstRetryIntervalInMilliseconds: number;
  maxNumberOfAttempts: number;
  backoffCoefficient?: number;
  maxRetryIntervalInMilliseconds?: number;
  retryTimeoutInMilliseconds?: number;
}

/** Marks a scheduled task as one attempt of a retried call. */
export interface RetryMark {
  /** Task id of the first attempt. */
  root: number;
  attempt: number;
  options: RetrySettings;
}

// ---------------------------------------------------------------------------------------------
// Actions returned by the engine, parsed from the SDK's action objects.

export type Action =
  | { type: typeof ActionType.CallActivity; name: string; input: unknown }
  | { type: typeof ActionType.CallActivityWithRetry; name: string; input: unknown; retry: RetrySettings }
  | { type: typeof ActionType.CallSubOrchestrator; name: string; input: unknown; instanceId?: string }
  | { type: typeof ActionType.CallSubOrchestratorWithRetry; name: string; input: unknown; instanceId?: string; retry: RetrySettings }
  | { type: typeof ActionType.CreateTimer; fireAt: Date; isCanceled: boolean }
  | { type: typeof ActionType.WaitForExternalEvent; eventName: string }
  | { type: typeof ActionType.ContinueAsNew; input: unknown }
  | { type: typeof ActionType.WhenAll | typeof ActionType.WhenAny; children: Action[] }
  | { type: "unsupported"; actionType: number };

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null;
}

function parseRetry(v: unknown): RetrySettings {
  if (!isRecord(v) || typeof v.firstRetryIntervalInMilliseconds !== "number" || typeof v.maxNumberOfAttempts !== "number") {
    throw new Error("retry action without usable retryOptions");
  }
  const out: RetrySettings = { firstRetryIntervalInMilliseconds: v.firstRetryIntervalInMilliseconds, maxNumberOfAttempts: v.maxNumberOfAttempts };
  if (typeof v.backoffCoefficient === "number") out.backoffCoefficient = v.backoffCoefficient;
  if (typeof v.maxRetryIntervalInMilliseconds === "number") out.maxRetryIntervalInMilliseconds = v.maxRetryIntervalInMilliseconds;
  if (typeof v.retryTimeoutInMilliseconds === "number") out.retryTimeoutInMilliseconds = v.retryTimeoutInMilliseconds;
  return out;
}

/** Reads one SDK action object (class instance or its JSON). */
export function parseAction(raw: unknown): Action {
  if (!isRecord(raw) || typeof raw.actionType !== "number") throw new Error(`not an orchestrator action: ${JSON.stringify(raw)}`);
  const name = typeof raw.functionName === "string" ? raw.functionName : "";
  const instanceId = typeof raw.instanceId === "string" && raw.instanceId ? raw.instanceId : undefined;
  switch (raw.actionType) {
    case ActionType.CallActivity:
      return { type: ActionType.CallActivity, name, input: raw.input };
    case ActionType.CallActivityWithRetry:
      return { type: ActionType.CallActivityWithRetry, name, input: raw.input, retry: parseRetry(raw.retryOptions) };
    case ActionType.CallSubOrchestrator:
      return { type: ActionType.CallSubOrchestrator, name, input: raw.input, ...(instanceId ? { instanceId } : {}) };
    case ActionType.CallSubOrchestratorWithRetry:
      return {
        type: ActionType.CallSubOrchestratorWithRetry,
        name,
        input: raw.input,
        retry: parseRetry(raw.retryOptions),
        ...(instanceId ? { instanceId } : {}),
      };
    case ActionType.CreateTimer: {
      const fireAt = raw.fireAt instanceof Date ? raw.fireAt : new Date(String(raw.fireAt));
      if (Number.isNaN(fireAt.getTime())) throw new Error(`timer action with an invalid fireAt: ${String(raw.fireAt)}`);
      return { type: ActionType.CreateTimer, fireAt, isCanceled: raw.isCanceled === true };
    }
    case ActionType.WaitForExternalEvent:
      return { type: ActionType.WaitForExternalEvent, eventName: String(raw.externalEventName ?? "") };
    case ActionType.ContinueAsNew:
      return { type: ActionType.ContinueAsNew, input: raw.input };
    case ActionType.WhenAll:
    case ActionType.WhenAny:
      return { type: raw.actionType, children: (Array.isArray(raw.compoundActions) ? raw.compoundActions : []).map(parseAction) };
    default:
      return { type: "unsupported", actionType: raw.actionType };
  }
}

export function actionLabel(a: Action): string {
  switch (a.type) {
    case "unsupported":
      return ACTION_NAMES[a.actionType] ?? `action type ${a.actionType}`;
    case ActionType.CallActivity:
    case ActionType.CallActivityWithRetry:
    case ActionType.CallSubOrchestrator:
    case ActionType.CallSubOrchestratorWithRetry:
      return `${ACTION_NAMES[a.type]} '${a.name}'`;
    case ActionType.CreateTimer:
      return `CreateTimer (fireAt ${a.fireAt.toISOString()})`;
    case ActionType.WaitForExternalEvent:
      return `WaitForExternalEvent '${a.eventName}'`;
    case ActionType.ContinueAsNew:
      return "ContinueAsNew";
    default:
      return `${ACTION_NAMES[a.type]} of ${a.children.length}`;
  }
}

// ---------------------------------------------------------------------------------------------
// Signatures: what an episode scheduled, kept in history so that later replays can be checked against it.

/** A top-level action as persisted: type, name, and for the strict check the input and timer time; `id` for leaves that took a task id. */
export interface ActionSignature {
  t: number;
  n?: string;
  /** JSON of the input as the action carried it (strings pre-encoded, as the SDK does). */
  i?: string;
  f?: string;
  id?: number;
  c?: ActionSignature[];
}

function inputText(input: unknown): string | undefined {
  return input === undefined ? undefined : JSON.stringify(input);
}

/** The signature of an action; `nextId` hands out task ids to the leaves that take one, depth-first as the SDK numbers them. */
export function signatureOf(a: Action, nextId?: () => number): ActionSignature {
  switch (a.type) {
    case "unsupported":
      return { t: a.actionType };
    case ActionType.CallActivity:
    case ActionType.CallActivityWithRetry:
    case ActionType.CallSubOrchestrator:
    case ActionType.CallSubOrchestratorWithRetry: {
      const s: ActionSignature = { t: a.type, n: a.name };
      const i = inputText(a.input);
      if (i !== undefined) s.i = i;
      if (nextId) s.id = nextId();
      return s;
    }
    case ActionType.CreateTimer:
      return { t: a.type, f: a.fireAt.toISOString(), ...(nextId ? { id: nextId() } : {}) };
    case ActionType.WaitForExternalEvent:
      return { t: a.type, n: a.eventName };
    case ActionType.ContinueAsNew:
      return { t: a.type };
    default:
      return { t: a.type, c: a.children.map((c) => signatureOf(c, nextId)) };
  }
}

/** Raised when a replay does not schedule what the history says it scheduled. */
export class NonDeterminismError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NonDeterminismError";
  }
}

function describeSignature(s: ActionSignature): string {
  const kind = ACTION_NAMES[s.t] ?? `action type ${s.t}`;
  if (s.c) return `${kind} of ${s.c.length}`;
  if (s.t === ActionType.CreateTimer) return `CreateTimer (fireAt ${s.f})`;
  return s.n !== undefined ? `${kind} '${s.n}'` : kind;
}

function compare(path: string, before: ActionSignature, now: ActionSignature, strict: boolean): string | undefined {
  const what = () => `${path}: the history has ${describeSignature(before)} but the replay scheduled ${describeSignature(now)}`;
  if (before.t !== now.t || (before.n ?? "") !== (now.n ?? "")) return what();
  if (before.c || now.c) {
    const a = before.c ?? [];
    const b = now.c ?? [];
    if (a.length !== b.length) return `${what()} (${a.length} vs ${b.length} tasks)`;
    for (let k = 0; k < a.length; k++) {
      const m = compare(`${path}.${k}`, a[k], b[k], strict);
      if (m) return m;
    }
    return undefined;
  }
  if (strict && before.t === ActionType.CreateTimer && before.f !== now.f) {
    return `${path}: the history has a timer firing at ${before.f} but the replay asked for ${now.f} (use context.df.currentUtcDateTime, never new Date())`;
  }
  if (strict && before.i !== now.i) {
    return `${path}: ${describeSignature(now)} was scheduled with input ${clip(before.i)} but the replay passes ${clip(now.i)}`;
  }
  return undefined;
}

function clip(s: string | undefined): string {
  if (s === undefined) return "(none)";
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}

/**
 * Checks that a replay re-emitted exactly the actions already scheduled, in order (type and name; with `strict`,
 * also timer fire times and inputs). `finished` tolerates a replay that stopped early because the orchestrator threw.
 */
export function checkReplay(history: ActionSignature[], replayed: Action[], strict: boolean, failed: boolean): void {
  const n = Math.min(history.length, replayed.length);
  for (let k = 0; k < n; k++) {
    const m = compare(`action #${k}`, history[k], signatureOf(replayed[k]), strict);
    if (m)
      throw new NonDeterminismError(`Non-deterministic orchestrator: ${m}. An orchestrator must schedule the same work in the same order on every replay.`);
  }
  if (replayed.length < history.length && !failed) {
    throw new NonDeterminismError(
      `Non-deterministic orchestrator: the history has ${history.length} scheduled actions but the replay produced only ${replayed.length} (next expected: ${describeSignature(history[replayed.length])}).`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Events

const now = () => new Date().toISOString();

export function orchestratorStarted(timestamp: string): HistoryEvent {
  return { EventType: EventType.OrchestratorStarted, EventId: -1, IsPlayed: false, Timestamp: timestamp };
}

export function executionStarted(name: string, input: string | undefined, instanceId: string, executionId: string, timestamp: string): HistoryEvent {
  return {
    EventType: EventType.ExecutionStarted,
    EventId: -1,
    IsPlayed: false,
    Timestamp: timestamp,
    Name: name,
    Version: "",
    ...(input !== undefined ? { Input: input } : {}),
    OrchestrationInstance: { InstanceId: instanceId, ExecutionId: executionId },
  };
}

export function taskCompleted(taskId: number, result: string, messageId: string): HistoryEvent {
  return { EventType: EventType.TaskCompleted, EventId: -1, IsPlayed: false, Timestamp: now(), TaskScheduledId: taskId, Result: result, MessageId: messageId };
}

export function taskFailed(taskId: number, reason: string, details: string, messageId: string): HistoryEvent {
  return {
    EventType: EventType.TaskFailed,
    EventId: -1,
    IsPlayed: false,
    Timestamp: now(),
    TaskScheduledId: taskId,
    Reason: reason,
    Details: details,
    MessageId: messageId,
  };
}

export function subOrchestrationCompleted(taskId: number, result: string, messageId: string): HistoryEvent {
  return {
    EventType: EventType.SubOrchestrationInstanceCompleted,
    EventId: -1,
    IsPlayed: false,
    Timestamp: now(),
    TaskScheduledId: taskId,
    Result: result,
    MessageId: messageId,
  };
}

export function subOrchestrationFailed(taskId: number, reason: string, details: string, messageId: string): HistoryEvent {
  return {
    EventType: EventType.SubOrchestrationInstanceFailed,
    EventId: -1,
    IsPlayed: false,
    Timestamp: now(),
    TaskScheduledId: taskId,
    Reason: reason,
    Details: details,
    MessageId: messageId,
  };
}

export function timerFired(timerId: number, fireAt: string, timestamp: string): HistoryEvent {
  return { EventType: EventType.TimerFired, EventId: -1, IsPlayed: false, Timestamp: timestamp, TimerId: timerId, FireAt: fireAt };
}

export function eventRaised(name: string, input: string | undefined, messageId: string): HistoryEvent {
  return {
    EventType: EventType.EventRaised,
    EventId: -1,
    IsPlayed: false,
    Timestamp: now(),
    Name: name,
    ...(input !== undefined ? { Input: input } : {}),
    MessageId: messageId,
  };
}

// ---------------------------------------------------------------------------------------------
// One episode

/** Durations the extension passes with schema V3 (LongTimerTask splits timers longer than 6 days). */
const LONG_TIMER_INTERVAL = "3.00:00:00";
const MAX_SHORT_TIMER = "6.00:00:00";

export type EpisodeOutcome =
  | { kind: "running"; actions: Action[]; customStatus: unknown }
  | { kind: "completed"; actions: Action[]; output: unknown; customStatus: unknown }
  | { kind: "failed"; actions: Action[]; error: string; customStatus: unknown };

export interface EpisodeRequest {
  handler: OrchestrationHandler;
  functionName: string;
  instanceId: string;
  parentInstanceId: string | undefined;
  input: unknown;
  history: HistoryEvent[];
  logHandler: LogHandler;
}

const OUT_OF_PROC = "$OutOfProcData$:";

/**
 * Runs the orchestrator once over the whole history through the SDK's own replay engine, with a fresh context
 * (the SDK builds `context.df` only when it is undefined) and a private copy of the history (the SDK mutates it).
 */
export async function runEpisode(req: EpisodeRequest): Promise<EpisodeOutcome> {
  const trigger: OrchestrationTriggerPayload = {
    history: JSON.parse(JSON.stringify(req.history)) as HistoryEvent[],
    input: req.input,
    instanceId: req.instanceId,
    isReplaying: false,
    parentInstanceId: req.parentInstanceId ?? null,
    upperSchemaVersion: 1,
    upperSchemaVersionNew: 2,
    longRunningTimerIntervalDuration: LONG_TIMER_INTERVAL,
    maximumShortTimerDuration: MAX_SHORT_TIMER,
    defaultHttpAsyncRequestSleepTimeMillseconds: 30000,
  };
  const context = new DummyOrchestrationContext(req.functionName, undefined, req.logHandler);
  let state: OrchestratorStatePayload;
  try {
    state = await createOrchestrator(req.handler)(trigger, context);
  } catch (e) {
    // User code threw: the SDK rejects with the state JSON after a marker, because it passes a boolean as the error.
    const message = e instanceof Error ? e.message : String(e);
    const at = message.indexOf(OUT_OF_PROC);
    if (at < 0) return { kind: "failed", actions: [], error: message, customStatus: undefined };
    const failed = JSON.parse(message.slice(at + OUT_OF_PROC.length)) as OrchestratorStatePayload;
    return { kind: "failed", actions: topLevel(failed), error: failed.error ?? "unknown error", customStatus: failed.customStatus };
  }
  const actions = topLevel(state);
  if (state.isDone) return { kind: "completed", actions, output: state.output, customStatus: state.customStatus };
  return { kind: "running", actions, customStatus: state.customStatus };
}

function topLevel(state: OrchestratorStatePayload): Action[] {
  const list = Array.isArray(state.actions) && Array.isArray(state.actions[0]) ? state.actions[0] : [];
  return list.map(parseAction);
}

/** DTFx's RetryInterceptor delay after failed attempt `attempt` (1-based): first × backoff^(attempt-1), capped. */
export function retryDelayMs(options: RetrySettings, attempt: number): number {
  const backoff = options.backoffCoefficient && options.backoffCoefficient > 0 ? options.backoffCoefficient : 1;
  let delay = options.firstRetryIntervalInMilliseconds * Math.pow(backoff, attempt - 1);
  if (options.maxRetryIntervalInMilliseconds && options.maxRetryIntervalInMilliseconds > 0) delay = Math.min(delay, options.maxRetryIntervalInMilliseconds);
  return Math.max(0, Math.round(delay));
}
