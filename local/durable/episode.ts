// History bookkeeping for the runtime: an instance rebuilt from its stored history, and one episode planned from what the
// replay engine decided (new events, timers, activities, sub-orchestrations) — pure functions over the history.
import { randomUUID } from "node:crypto";
import {
  ActionType,
  actionLabel,
  EventType,
  retryDelayMs,
  signatureOf,
  timerFired,
  type Action,
  type ActionSignature,
  type EpisodeOutcome,
  type HistoryEvent,
  type RetryMark,
} from "./history";
import { type Checkpoint, type LoadedInstance, type ParentLink } from "./store";
import type { InboxMessage } from "./store";

/** One id-taking task of the current execution, as the history describes it. */
export interface TaskRecord {
  id: number;
  kind: "activity" | "timer" | "suborchestration";
  name: string;
  /** JSON text of the input. */
  input?: string;
  instanceId?: string;
  /** The caller chose the child's id (kept across retries). */
  fixedId?: boolean;
  fireAt?: string;
  retry?: RetryMark;
  /** For a retry timer: the failed attempt it follows. */
  retryOf?: number;
  done: boolean;
}

/** The in-memory view of a loaded instance, always equal to what its last commit wrote. */
export interface LiveInstance {
  cp: Checkpoint;
  history: HistoryEvent[];
  signatures: ActionSignature[];
  tasks: Map<number, TaskRecord>;
  nextId: number;
  consumed: Set<string>;
  inbox: Map<string, InboxMessage>;
}

export interface ActivityJob {
  instanceId: string;
  executionId: string;
  taskId: number;
  name: string;
  input?: string;
}

/** The SDK pre-encodes string inputs of activities and continueAsNew (`"x"` → `"\"x\""`); the function gets the original. */
export function decodeActionInput(input: unknown): unknown {
  return typeof input === "string" ? (JSON.parse(input) as unknown) : input;
}

export function newExecutionId(): string {
  return randomUUID().replace(/-/g, "");
}

export function toJsonText(value: unknown): string | undefined {
  return value === undefined ? undefined : JSON.stringify(value);
}

// ---------------------------------------------------------------------------------------------
// History bookkeeping

export function completionId(link: ParentLink): string {
  return `c:${link.executionId}:${link.taskId}`;
}

export function sameLink(a: ParentLink, b: ParentLink): boolean {
  return a.instanceId === b.instanceId && a.executionId === b.executionId && a.taskId === b.taskId;
}

export function emptyLive(cp: Checkpoint): LiveInstance {
  return { cp, history: [], signatures: [], tasks: new Map(), nextId: 0, consumed: new Set(), inbox: new Map() };
}

export function rebuild(loaded: LoadedInstance): LiveInstance {
  const live = emptyLive(loaded.checkpoint);
  for (const ep of loaded.episodes) {
    live.signatures.push(...ep.actions);
    for (const e of ep.events) applyEvent(live, e);
  }
  for (const m of loaded.inbox) {
    if (!live.consumed.has(m.id)) live.inbox.set(m.id, m);
  }
  return live;
}

/** Folds one history event into the task table. */
export function applyEvent(live: LiveInstance, e: HistoryEvent): void {
  live.history.push(e);
  if (typeof e.MessageId === "string") live.consumed.add(e.MessageId);
  const add = (t: TaskRecord) => {
    live.tasks.set(t.id, t);
    live.nextId = Math.max(live.nextId, t.id + 1);
  };
  const retry = (e.Retry as RetryMark | undefined) ?? undefined;
  switch (e.EventType) {
    case EventType.TaskScheduled:
      add({
        id: e.EventId,
        kind: "activity",
        name: String(e.Name),
        ...(typeof e.Input === "string" ? { input: e.Input } : {}),
        ...(retry ? { retry } : {}),
        done: false,
      });
      break;
    case EventType.SubOrchestrationInstanceCreated:
      add({
        id: e.EventId,
        kind: "suborchestration",
        name: String(e.Name),
        instanceId: String(e.InstanceId),
        ...(e.FixedInstanceId === true ? { fixedId: true } : {}),
        ...(typeof e.Input === "string" ? { input: e.Input } : {}),
        ...(retry ? { retry } : {}),
        done: false,
      });
      break;
    case EventType.TimerCreated:
      add({ id: e.EventId, kind: "timer", name: "", fireAt: String(e.FireAt), ...(typeof e.RetryOf === "number" ? { retryOf: e.RetryOf } : {}), done: false });
      break;
    case EventType.TaskCompleted:
    case EventType.TaskFailed:
    case EventType.SubOrchestrationInstanceCompleted:
    case EventType.SubOrchestrationInstanceFailed: {
      const t = live.tasks.get(Number(e.TaskScheduledId));
      if (t) t.done = true;
      break;
    }
    case EventType.TimerFired: {
      const t = live.tasks.get(Number(e.TimerId));
      if (t) t.done = true;
      break;
    }
  }
}

export function lastOrchestratorStarted(history: HistoryEvent[]): number {
  for (let i = history.length - 1; i >= 0; i--) {
    if (history[i].EventType === EventType.OrchestratorStarted) return Date.parse(history[i].Timestamp);
  }
  return 0;
}

/** The next attempt of a retried call, with the id the SDK gives the re-run. */
export function attemptEvent(instanceId: string, failed: TaskRecord, id: number, timestamp: string): HistoryEvent {
  const retry: RetryMark = { root: failed.retry!.root, attempt: failed.retry!.attempt + 1, options: failed.retry!.options };
  if (failed.kind === "suborchestration") {
    return {
      EventType: EventType.SubOrchestrationInstanceCreated,
      EventId: id,
      IsPlayed: false,
      Timestamp: timestamp,
      Name: failed.name,
      InstanceId: failed.fixedId ? failed.instanceId : generatedChildId(instanceId, id),
      ...(failed.fixedId ? { FixedInstanceId: true } : {}),
      ...(failed.input !== undefined ? { Input: failed.input } : {}),
      Retry: retry,
    };
  }
  return {
    EventType: EventType.TaskScheduled,
    EventId: id,
    IsPlayed: false,
    Timestamp: timestamp,
    Name: failed.name,
    ...(failed.input !== undefined ? { Input: failed.input } : {}),
    Retry: retry,
  };
}

/** DTFx's id for a child the caller did not name: `<parent>:<task id in hex>`. A named child keeps its id across retries (the failed one is replaced). */
function generatedChildId(parentId: string, taskId: number): string {
  return `${parentId}:${taskId.toString(16).padStart(4, "0")}`;
}

export function activityKey(job: ActivityJob): string {
  return `${job.instanceId}|${job.executionId}|${job.taskId}`;
}

/** A new history event of an episode; a retry's event takes the next task id for the task it consumes. */
export interface FreshEvent {
  event: HistoryEvent;
  idConsumer?: TaskRecord;
}

/**
 * What an episode brings: the inbox's messages (oldest first) and the timers due by `nowMs` as history events —
 * `early` those that take task ids at once (failed attempts of retried calls and retry timers with attempts left, as
 * the SDK numbers them while it processes the events), `rest` the others — and the ids of every message consumed.
 */
export function freshEvents(live: LiveInstance, nowMs: number): { consumedIds: string[]; early: FreshEvent[]; rest: FreshEvent[]; timestamp: string } {
  const cp = live.cp;
  const consumedIds: string[] = [];
  const early: FreshEvent[] = [];
  const rest: FreshEvent[] = [];
  const messages = [...live.inbox.values()].sort((a, b) => a.sent - b.sent || a.id.localeCompare(b.id));
  for (const m of messages) {
    if (m.kind !== "completion" && m.kind !== "event") continue;
    consumedIds.push(m.id);
    if (!m.event) continue;
    if (m.kind === "event") {
      rest.push({ event: m.event });
      continue;
    }
    const task = typeof m.event.TaskScheduledId === "number" ? live.tasks.get(m.event.TaskScheduledId) : undefined;
    // A completion of an earlier execution, or a second one for the same task: nothing to deliver.
    if (m.executionId !== cp.executionId || !task || task.done) continue;
    const failed = m.event.EventType === EventType.TaskFailed || m.event.EventType === EventType.SubOrchestrationInstanceFailed;
    // A failed attempt of a retried call takes the next task id for its retry timer, at once (see RetryableTask).
    if (failed && task.retry) early.push({ event: m.event, idConsumer: task });
    else rest.push({ event: m.event });
  }
  const due = [...live.tasks.values()]
    .filter((t) => t.kind === "timer" && !t.done && !cp.canceledTimers.includes(t.id) && Date.parse(t.fireAt!) <= nowMs)
    .sort((a, b) => Date.parse(a.fireAt!) - Date.parse(b.fireAt!) || a.id - b.id);
  const timestamp = new Date(Math.max(nowMs, lastOrchestratorStarted(live.history))).toISOString();
  for (const t of due) {
    const ev = timerFired(t.id, t.fireAt!, timestamp);
    const failedAttempt = t.retryOf !== undefined ? live.tasks.get(t.retryOf) : undefined;
    // A retry timer with attempts left: the re-run takes the next task id when the timer fires.
    if (failedAttempt?.retry && failedAttempt.retry.attempt < failedAttempt.retry.options.maxNumberOfAttempts) early.push({ event: ev, idConsumer: t });
    else rest.push({ event: ev });
  }
  return { consumedIds, early, rest, timestamp };
}

/**
 * The events of the retries the early events took, numbered first (in the SDK they are numbered while the events
 * are processed): a fired retry timer re-runs its attempt, a failed attempt schedules its retry timer. Returns the
 * first id left for the episode's new actions.
 */
export function retryEventsOf(live: LiveInstance, early: FreshEvent[], timestamp: string): { retryEvents: HistoryEvent[]; firstActionId: number } {
  const retryEvents: HistoryEvent[] = [];
  let firstActionId = live.nextId;
  for (const f of early) {
    const t = f.idConsumer!;
    if (t.kind === "timer") {
      const attempt = live.tasks.get(t.retryOf!)!;
      retryEvents.push(attemptEvent(live.cp.instanceId, attempt, firstActionId++, timestamp));
    } else {
      const fireAt = new Date(Date.parse(timestamp) + retryDelayMs(t.retry!.options, t.retry!.attempt)).toISOString();
      retryEvents.push({ EventType: EventType.TimerCreated, EventId: firstActionId++, IsPlayed: false, Timestamp: timestamp, FireAt: fireAt, RetryOf: t.id });
    }
  }
  return { retryEvents, firstActionId };
}

export interface PlanInput {
  live: LiveInstance;
  outcome: EpisodeOutcome;
  /** OrchestratorStarted, ExecutionStarted (first episode) and the delivered events. */
  newEvents: HistoryEvent[];
  /** Retry timers and re-runs the delivered events caused, ids already taken. */
  retryEvents: HistoryEvent[];
  firstActionId: number;
  timestamp: string;
}

export interface EpisodePlan {
  nextCp: Checkpoint;
  episodeEvents: HistoryEvent[];
  newSignatures: ActionSignature[];
  /** The scheduling events (retry events first) whose tasks start once committed. */
  scheduled: HistoryEvent[];
  continueAsNew: { input: unknown } | undefined;
  canceled: number[];
  failure: string | undefined;
}

/** Turns an episode's outcome into what to commit: the next checkpoint and the events to append. Throws only on unserialisable data. */
export function planEpisode(p: PlanInput, failureIn: string | undefined): EpisodePlan {
  const { live, outcome, timestamp } = p;
  const cp = live.cp;
  let failure = failureIn;
  let next = p.firstActionId;
  const scheduled: HistoryEvent[] = [...p.retryEvents];
  const newSignatures: ActionSignature[] = [];
  let continueAsNew: { input: unknown } | undefined;
  if (failure === undefined) {
    for (const a of outcome.actions.slice(live.signatures.length)) {
      const sig = signatureOf(a, () => next++);
      newSignatures.push(sig);
      const problem = scheduleLeaves(cp.instanceId, a, sig, timestamp, scheduled);
      if (problem) failure = `${problem} is not supported by the local durable runtime`;
      if (a.type === ActionType.ContinueAsNew) continueAsNew = { input: decodeActionInput(a.input) };
    }
  }
  const at = new Date();
  const episodeEvents = [...p.newEvents, ...scheduled];
  let customStatus: string | undefined;
  try {
    customStatus = toJsonText(outcome.customStatus);
  } catch (e) {
    if (failure === undefined) throw e;
    customStatus = cp.customStatus;
  }
  let nextCp: Checkpoint;
  let canceled = cp.canceledTimers;
  if (failure !== undefined) {
    const message = `Orchestrator function '${cp.name}' failed: ${failure}`;
    nextCp = { ...cp, status: "Failed", output: JSON.stringify(message), lastUpdatedTime: at, episodes: cp.episodes + 1 };
    episodeEvents.push({ EventType: EventType.ExecutionFailed, EventId: -1, IsPlayed: false, Timestamp: at.toISOString(), Reason: message });
    continueAsNew = undefined;
  } else if (continueAsNew) {
    nextCp = { ...cp, status: "Running", executionId: newExecutionId(), lastUpdatedTime: at, episodes: 0, canceledTimers: [] };
    delete nextCp.output;
    const input = toJsonText(continueAsNew.input);
    if (input === undefined) delete nextCp.input;
    else nextCp.input = input;
  } else if (outcome.kind === "completed") {
    nextCp = { ...cp, status: "Completed", lastUpdatedTime: at, episodes: cp.episodes + 1 };
    const output = toJsonText(outcome.output);
    if (output === undefined) delete nextCp.output;
    else nextCp.output = output;
    episodeEvents.push({
      EventType: EventType.ExecutionCompleted,
      EventId: -1,
      IsPlayed: false,
      Timestamp: at.toISOString(),
      ...(output !== undefined ? { Result: output } : {}),
    });
  } else {
    canceled = canceledTimers(outcome.actions, [...live.signatures, ...newSignatures], cp.canceledTimers);
    nextCp = { ...cp, status: "Running", lastUpdatedTime: at, episodes: cp.episodes + 1, canceledTimers: canceled };
  }
  if (customStatus === undefined) delete nextCp.customStatus;
  else nextCp.customStatus = customStatus;
  return { nextCp, episodeEvents, newSignatures, scheduled, continueAsNew, canceled, failure };
}

/**
 * Appends the scheduling event of every id-taking leaf of a new action (ids come from its signature).
 * Returns the label of an action this runtime cannot run, if any.
 */
function scheduleLeaves(instanceId: string, a: Action, sig: ActionSignature, timestamp: string, out: HistoryEvent[]): string | undefined {
  switch (a.type) {
    case "unsupported":
      return actionLabel(a);
    case ActionType.WhenAll:
    case ActionType.WhenAny: {
      for (let k = 0; k < a.children.length; k++) {
        const problem = scheduleLeaves(instanceId, a.children[k], sig.c![k], timestamp, out);
        if (problem) return problem;
      }
      return undefined;
    }
    case ActionType.CallActivity:
    case ActionType.CallActivityWithRetry: {
      const input = toJsonText(decodeActionInput(a.input));
      out.push({
        EventType: EventType.TaskScheduled,
        EventId: sig.id!,
        IsPlayed: false,
        Timestamp: timestamp,
        Name: a.name,
        ...(input !== undefined ? { Input: input } : {}),
        ...(a.type === ActionType.CallActivityWithRetry ? { Retry: { root: sig.id!, attempt: 1, options: a.retry } satisfies RetryMark } : {}),
      });
      return undefined;
    }
    case ActionType.CallSubOrchestrator:
    case ActionType.CallSubOrchestratorWithRetry: {
      // Sub-orchestration inputs are not pre-encoded by the SDK.
      const input = toJsonText(a.input);
      out.push({
        EventType: EventType.SubOrchestrationInstanceCreated,
        EventId: sig.id!,
        IsPlayed: false,
        Timestamp: timestamp,
        Name: a.name,
        InstanceId: a.instanceId ?? generatedChildId(instanceId, sig.id!),
        ...(a.instanceId ? { FixedInstanceId: true } : {}),
        ...(input !== undefined ? { Input: input } : {}),
        ...(a.type === ActionType.CallSubOrchestratorWithRetry ? { Retry: { root: sig.id!, attempt: 1, options: a.retry } satisfies RetryMark } : {}),
      });
      return undefined;
    }
    case ActionType.CreateTimer:
      out.push({ EventType: EventType.TimerCreated, EventId: sig.id!, IsPlayed: false, Timestamp: timestamp, FireAt: a.fireAt.toISOString() });
      return undefined;
    case ActionType.WaitForExternalEvent:
    case ActionType.ContinueAsNew:
      return undefined;
  }
}

/** Timers the orchestrator has cancelled so far (the SDK re-emits every action each episode, with `isCanceled` current). */
function canceledTimers(actions: Action[], signatures: ActionSignature[], known: number[]): number[] {
  const out = new Set(known);
  const walk = (a: Action, s: ActionSignature | undefined) => {
    if (!s) return;
    if (a.type === ActionType.CreateTimer && a.isCanceled && s.id !== undefined) out.add(s.id);
    if ((a.type === ActionType.WhenAll || a.type === ActionType.WhenAny) && s.c) a.children.forEach((c, k) => walk(c, s.c![k]));
  };
  actions.forEach((a, k) => walk(a, signatures[k]));
  return [...out].sort((x, y) => x - y);
}
