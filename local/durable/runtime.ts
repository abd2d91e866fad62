// The local durable runtime: drives orchestrations episode by episode through the SDK's replay engine, runs their activities, timers, retries and sub-orchestrations, with all state in Table Storage so a killed host resumes where it was.
// Over 500 lines: DurableRuntime is one scheduler over live instances (episodes, activities, timers, sub-orchestrations,
// completions, termination); its history bookkeeping is in episode.ts, its storage in store.ts.
import { setTimeout as sleep } from "node:timers/promises";
import { randomUUID } from "node:crypto";
import type { InvocationContext, LogHandler } from "@azure/functions";
import type { ActivityFunctionSpec, OrchestrationFunctionSpec } from "../../functions/spec";
import {
  checkReplay,
  EventType,
  eventRaised,
  executionStarted,
  NonDeterminismError,
  orchestratorStarted,
  runEpisode,
  subOrchestrationCompleted,
  subOrchestrationFailed,
  taskCompleted,
  taskFailed,
  type EpisodeOutcome,
  type HistoryEvent,
} from "./history";
import {
  CheckpointConflict,
  TERMINAL,
  validInstanceId,
  type Checkpoint,
  type DurableStore,
  type InboxMessage,
  type InstanceQuery,
  type InstanceRecord,
  type ParentLink,
} from "./store";
import {
  EpisodePlan,
  PlanInput,
  activityKey,
  applyEvent,
  completionId,
  emptyLive,
  freshEvents,
  planEpisode,
  rebuild,
  retryEventsOf,
  sameLink,
} from "./episode";
import { ActivityJob, LiveInstance, TaskRecord, newExecutionId } from "./episode";

export interface DurableRuntimeOptions {
  store: DurableStore;
  orchestrations: OrchestrationFunctionSpec[];
  activities: ActivityFunctionSpec[];
  /** Runs one activity invocation the way the host runs any function (context, log lines, tracking). */
  invoke: (functionName: string, run: (context: InvocationContext) => Promise<void>, triggerMetadata?: Record<string, unknown>) => Promise<void>;
  /** Where an orchestrator's `context.log` goes. */
  logHandler: (functionName: string) => LogHandler;
  log: (line: string) => void;
  /** host.json durableTask.maxConcurrentActivityFunctions; default 10. */
  maxConcurrentActivities?: number;
  /** host.json durableTask.maxConcurrentOrchestratorFunctions; default 10. */
  maxConcurrentOrchestrations?: number;
  /** Also compare timer fire times and inputs on replay, not only types and names (default true). */
  strictReplayCheck?: boolean;
}

/** A client request the management API answers with a status code other than 2xx. */
export class DurableRequestError extends Error {
  constructor(
    readonly status: 400 | 404 | 409 | 410 | 412,
    message: string,
  ) {
    super(message);
    this.name = "DurableRequestError";
  }
}

const DEFAULT_CONCURRENCY = 10;
const MAX_TIMER_MS = 2 ** 31 - 1;
const STEP_RETRY_MS = [200, 500, 1000, 2000, 5000];
const COMPLETION_WRITE_ATTEMPTS = 8;

/** Serialises everything that touches one instance; coalesces "run an episode" requests. */
class InstanceActor {
  live: LiveInstance | undefined;
  /** Messages written since the last step began; merged into the inbox by the next step (whatever it loads). */
  readonly mailbox = new Map<string, InboxMessage>();
  readonly timers = new Map<number, NodeJS.Timeout>();
  failures = 0;
  private tail: Promise<void> = Promise.resolve();
  private pending = 0;
  private stepQueued = false;

  constructor(
    readonly instanceId: string,
    private readonly runtime: DurableRuntime,
  ) {}

  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    this.pending++;
    const run = this.tail.then(fn);
    this.tail = run.then(
      () => undefined,
      () => undefined,
    );
    const settled = run.finally(() => {
      this.pending--;
      this.runtime.release(this);
    });
    this.runtime.track(settled);
    return run;
  }

  signal(): void {
    if (this.stepQueued || this.runtime.stopping) return;
    this.stepQueued = true;
    void this.exclusive(async () => {
      this.stepQueued = false;
      await this.runtime.step(this);
    }).catch(() => undefined);
  }

  get idle(): boolean {
    return this.pending === 0 && !this.stepQueued && this.timers.size === 0 && this.mailbox.size === 0 && this.live === undefined;
  }

  clearTimers(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }
}

/** At most `limit` tasks at once; a finishing task hands its slot straight to the next waiter (nothing can slip in between). */
export class Semaphore {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(private readonly limit: number) {}
  async use<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active < this.limit) this.active++;
    else await new Promise<void>((r) => this.waiting.push(r));
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}

let sentCounter = 0;
/** Arrival order for inbox messages, monotonic within a process and increasing across restarts. */
function nextSent(): number {
  sentCounter = (sentCounter + 1) % 1000;
  return Date.now() * 1000 + sentCounter;
}

function parseJson(text: string | undefined): unknown {
  return text === undefined ? undefined : (JSON.parse(text) as unknown);
}

function errorText(e: unknown): { message: string; details: string } {
  if (e instanceof Error) return { message: e.message, details: e.stack ?? "" };
  return { message: String(e), details: "" };
}

export class DurableRuntime {
  /** Set by stop(): no new episodes, activities or timers. */
  stopping = false;
  readonly store: DurableStore;
  private readonly orchestrations = new Map<string, OrchestrationFunctionSpec>();
  private readonly activities = new Map<string, ActivityFunctionSpec>();
  private readonly actors = new Map<string, InstanceActor>();
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly episodes: Semaphore;
  private readonly maxActivities: number;
  private readonly strict: boolean;
  private readonly queue: ActivityJob[] = [];
  /** Activities queued or running in this process, by `<instance>|<execution>|<task>`: never two runs of one at once. */
  private readonly activeActivities = new Set<string>();
  private runningActivities = 0;

  constructor(private readonly options: DurableRuntimeOptions) {
    this.store = options.store;
    for (const o of options.orchestrations) this.orchestrations.set(o.name.toLowerCase(), o);
    for (const a of options.activities) this.activities.set(a.name.toLowerCase(), a);
    this.episodes = new Semaphore(options.maxConcurrentOrchestrations ?? DEFAULT_CONCURRENCY);
    this.maxActivities = options.maxConcurrentActivities ?? DEFAULT_CONCURRENCY;
    this.strict = options.strictReplayCheck ?? true;
  }

  /** Creates the tables and picks up every instance a previous host left unfinished. */
  async start(): Promise<void> {
    this.stopping = false;
    await this.store.ensure();
    const open = await this.store.listInstances({ statuses: ["Pending", "Running", "ContinuedAsNew"] });
    if (open.length) this.options.log(`[${new Date().toISOString()}] Durable: resuming ${open.length} unfinished orchestration instance(s)`);
    for (const r of open) this.actor(r.instanceId).signal();
  }

  /** Stops timers and new work, then waits for running episodes and activities (queued ones run after the next start). */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const job of this.queue.splice(0)) this.activeActivities.delete(activityKey(job));
    for (const a of this.actors.values()) a.clearTimers();
    while (this.inFlight.size) await Promise.allSettled([...this.inFlight]);
  }

  isOrchestration(name: string): boolean {
    return this.orchestrations.has(name.toLowerCase());
  }

  // -------------------------------------------------------------------------------------------
  // Client operations (the management API and DurableClient go through these)

  async startNew(name: string, options: { instanceId?: string; input?: string } = {}): Promise<string> {
    const spec = this.orchestrations.get(name.toLowerCase());
    if (!spec) throw new DurableRequestError(400, `The function '${name}' doesn't exist, is disabled, or is not an orchestrator function.`);
    const instanceId = options.instanceId ?? newExecutionId();
    if (!validInstanceId(instanceId))
      throw new DurableRequestError(400, `'${instanceId}' is not a valid instance id (1-256 characters, none of / \\ # ? or control characters)`);
    const actor = this.actor(instanceId);
    await actor.exclusive(async () => {
      const existing = await this.store.readInstance(instanceId);
      if (existing && !TERMINAL.has(existing.status)) {
        throw new DurableRequestError(409, `An instance with ID '${instanceId}' already exists and is ${existing.status}.`);
      }
      if (existing) await this.store.purge(instanceId);
      await this.create(actor, spec.name, options.input, undefined);
    });
    this.options.log(`[${new Date().toISOString()}] Durable: started '${spec.name}' instance ${instanceId}`);
    return instanceId;
  }

  async raiseEvent(instanceId: string, eventName: string, input: string | undefined): Promise<void> {
    await this.requireLive(instanceId);
    const id = `e:${randomUUID()}`;
    const m: InboxMessage = { id, kind: "event", sent: nextSent(), event: eventRaised(eventName, input, id) };
    await this.store.appendInbox(instanceId, m);
    this.deliver(instanceId, m);
  }

  async terminate(instanceId: string, reason: string): Promise<void> {
    await this.requireLive(instanceId);
    const m: InboxMessage = { id: `x:${randomUUID()}`, kind: "terminate", sent: nextSent(), reason };
    await this.store.appendInbox(instanceId, m);
    this.deliver(instanceId, m);
  }

  getStatus(instanceId: string): Promise<InstanceRecord | undefined> {
    return this.store.readInstance(instanceId);
  }

  list(query: InstanceQuery = {}): Promise<InstanceRecord[]> {
    return this.store.listInstances(query);
  }

  /** The current execution's history, for `showHistory`. */
  async history(instanceId: string): Promise<HistoryEvent[]> {
    const loaded = await this.store.load(instanceId);
    return loaded ? loaded.episodes.flatMap((e) => e.events) : [];
  }

  /** Deletes a finished instance and its history; returns how many were deleted. */
  async purge(instanceId: string): Promise<number> {
    const actor = this.actor(instanceId);
    return actor.exclusive(async () => {
      const rec = await this.store.readInstance(instanceId);
      if (!rec) return 0;
      if (!TERMINAL.has(rec.status)) throw new DurableRequestError(412, `Instance '${instanceId}' is ${rec.status}; only finished instances can be purged.`);
      await this.store.purge(instanceId);
      actor.live = undefined;
      actor.clearTimers();
      return 1;
    });
  }

  private async requireLive(instanceId: string): Promise<InstanceRecord> {
    const rec = await this.store.readInstance(instanceId);
    if (!rec) throw new DurableRequestError(404, `No instance with ID '${instanceId}' found.`);
    if (TERMINAL.has(rec.status)) throw new DurableRequestError(410, `Instance '${instanceId}' is ${rec.status}.`);
    return rec;
  }

  // -------------------------------------------------------------------------------------------
  // Actors

  private actor(instanceId: string): InstanceActor {
    let a = this.actors.get(instanceId);
    if (!a) {
      a = new InstanceActor(instanceId, this);
      this.actors.set(instanceId, a);
    }
    return a;
  }

  /** For InstanceActor: forgets an actor with nothing left to do, so memory follows the number of running instances. */
  release(actor: InstanceActor): void {
    if (actor.idle && this.actors.get(actor.instanceId) === actor) this.actors.delete(actor.instanceId);
  }

  /** For InstanceActor: work stop() waits for. */
  track(p: Promise<unknown>): void {
    this.inFlight.add(p);
    const forget = () => this.inFlight.delete(p);
    p.then(forget, forget);
  }

  /** Hands a durably written message to its instance and asks for an episode. */
  private deliver(instanceId: string, m: InboxMessage): void {
    const actor = this.actor(instanceId);
    actor.mailbox.set(m.id, m);
    actor.signal();
  }

  private async create(actor: InstanceActor, name: string, input: string | undefined, parent: ParentLink | undefined): Promise<void> {
    const at = new Date();
    const cp: Checkpoint = {
      instanceId: actor.instanceId,
      name,
      executionId: newExecutionId(),
      status: "Pending",
      ...(input !== undefined ? { input } : {}),
      createdTime: at,
      lastUpdatedTime: at,
      ...(parent ? { parent } : {}),
      episodes: 0,
      canceledTimers: [],
    };
    // Checkpoint first: an Instances row always has its checkpoint; a checkpoint without a row is an unacknowledged start and is overwritten.
    cp.etag = await this.store.createCheckpoint(cp);
    await this.store.writeInstance(cp);
    actor.clearTimers();
    actor.live = emptyLive(cp);
    actor.signal();
  }

  /** For InstanceActor: one unit of work for an instance (load it if needed, run an episode if anything waits), inside the actor. */
  async step(actor: InstanceActor): Promise<void> {
    if (this.stopping) return;
    try {
      await this.episodes.use(() => this.stepInner(actor));
      actor.failures = 0;
    } catch (e) {
      // Storage trouble or a lost race: forget the in-memory view (the tables are the truth) and try again later.
      actor.live = undefined;
      // A lost race is retried at once, the first time; anything else backs off.
      const delay = e instanceof CheckpointConflict && actor.failures === 0 ? 0 : STEP_RETRY_MS[Math.min(actor.failures, STEP_RETRY_MS.length - 1)];
      actor.failures++;
      if (delay > 0) this.options.log(`[${new Date().toISOString()}] Durable: instance ${actor.instanceId}: ${errorText(e).message}; retrying in ${delay} ms`);
      // The actor may be released meanwhile: signal whichever actor holds the instance then.
      const t = setTimeout(() => this.actor(actor.instanceId).signal(), delay);
      t.unref();
    }
  }

  private async stepInner(actor: InstanceActor): Promise<void> {
    // Everything delivered so far is either in what load() reads (written before delivery) or merged here.
    const delivered = [...actor.mailbox.values()];
    actor.mailbox.clear();
    if (!actor.live && !(await this.load(actor))) return;
    const live = actor.live!;
    for (const m of delivered) if (!live.consumed.has(m.id)) live.inbox.set(m.id, m);
    const cp = live.cp;
    if (TERMINAL.has(cp.status)) {
      // Whatever arrived after the end (late completions, events) is dropped.
      if (live.inbox.size) await this.store.deleteInbox(cp.instanceId, [...live.inbox.keys()]);
      actor.clearTimers();
      actor.live = undefined;
      return;
    }
    const terminate = [...live.inbox.values()].find((m) => m.kind === "terminate");
    if (terminate) {
      await this.finishTerminated(actor, terminate.reason ?? "");
      return;
    }
    await this.episode(actor, live);
  }

  // -------------------------------------------------------------------------------------------
  // Loading and recovery

  private async load(actor: InstanceActor): Promise<boolean> {
    const [loaded, row] = await Promise.all([this.store.load(actor.instanceId), this.store.readInstance(actor.instanceId)]);
    // No Instances row: never created, purged, or a start that crashed before acknowledging; nothing to run.
    if (!loaded || !row) return false;
    const live = rebuild(loaded);
    actor.live = live;
    if (loaded.stale.length) this.track(this.store.deleteRows(actor.instanceId, loaded.stale).catch(() => undefined));
    // Inbox rows already in the history (a commit whose deletes did not all fit or land) are leftovers.
    const leftovers = loaded.inbox.filter((m) => live.consumed.has(m.id)).map((m) => m.id);
    if (leftovers.length) this.track(this.store.deleteInbox(actor.instanceId, leftovers).catch(() => undefined));
    // The Instances row is written after each commit: a crash in between leaves it one step behind.
    if (
      row.status !== live.cp.status ||
      row.executionId !== live.cp.executionId ||
      row.customStatus !== live.cp.customStatus ||
      row.output !== live.cp.output
    ) {
      await this.store.writeInstance(live.cp);
    }
    if (TERMINAL.has(live.cp.status)) {
      if (live.cp.parent) this.track(this.notifyParent(live.cp).catch(() => undefined));
      return true;
    }
    // Pick up what was in flight: activities without a completion run again (they are idempotent), timers are re-armed,
    // sub-orchestrations are checked.
    const completed = new Set<number>();
    for (const m of live.inbox.values()) {
      if (m.kind === "completion" && m.executionId === live.cp.executionId && typeof m.event?.TaskScheduledId === "number")
        completed.add(m.event.TaskScheduledId);
    }
    for (const t of live.tasks.values()) {
      if (t.done || completed.has(t.id)) continue;
      if (t.kind === "activity")
        this.dispatch({
          instanceId: live.cp.instanceId,
          executionId: live.cp.executionId,
          taskId: t.id,
          name: t.name,
          ...(t.input !== undefined ? { input: t.input } : {}),
        });
      else if (t.kind === "suborchestration") this.track(this.ensureChild(live.cp, t).catch((e: unknown) => this.logError(actor.instanceId, e)));
    }
    this.armTimers(actor);
    return true;
  }

  // -------------------------------------------------------------------------------------------
  // Episodes

  /**
   * One episode of an instance: the messages and due timers become new history events, the orchestrator replays with
   * them, the plan of what it did is committed at once, and only then do its effects follow.
   */
  private async episode(actor: InstanceActor, live: LiveInstance): Promise<void> {
    const cp = live.cp;
    const { consumedIds, early, rest, timestamp } = freshEvents(live, Date.now());
    if (cp.episodes > 0 && early.length === 0 && rest.length === 0) {
      if (consumedIds.length) await this.dropMessages(live, consumedIds);
      this.armTimers(actor);
      return;
    }
    const newEvents: HistoryEvent[] = [orchestratorStarted(timestamp)];
    if (cp.episodes === 0) newEvents.push(executionStarted(cp.name, cp.input, cp.instanceId, cp.executionId, timestamp));
    newEvents.push(...early.map((f) => f.event), ...rest.map((f) => f.event));
    const { outcome, failure } = await this.replay(live, newEvents);

    const { retryEvents, firstActionId } = retryEventsOf(live, early, timestamp);
    const input: PlanInput = { live, outcome, newEvents, retryEvents, firstActionId, timestamp };
    let plan: EpisodePlan;
    try {
      plan = planEpisode(input, failure);
    } catch (e) {
      // What the orchestrator returned or passed on cannot be recorded (not JSON): that fails it, it is not a storage problem to retry.
      plan = planEpisode(input, `${errorText(e).message} (orchestrator data must be JSON-serialisable)`);
    }
    const { nextCp, episodeEvents, newSignatures, continueAsNew } = plan;
    const episode = continueAsNew ? undefined : { number: nextCp.episodes, events: episodeEvents, actions: newSignatures };
    nextCp.etag = await this.store.commit(nextCp, episode, consumedIds);

    // Committed: the in-memory view follows, then the effects (all recoverable from what was just written).
    for (const id of consumedIds) live.inbox.delete(id);
    if (continueAsNew) return this.continuedAsNew(actor, live, nextCp);
    live.cp = nextCp;
    live.signatures.push(...newSignatures);
    for (const e of episodeEvents) applyEvent(live, e);
    for (const id of consumedIds) live.consumed.add(id);
    if (TERMINAL.has(nextCp.status)) return this.ended(actor, live, cp, plan.failure);
    this.startScheduled(actor, live, plan);
    this.armTimers(actor);
    await this.store.writeInstance(nextCp);
  }

  /** Runs the orchestrator over its history and the new events; a replay that does not match its history fails it. */
  private async replay(live: LiveInstance, newEvents: HistoryEvent[]): Promise<{ outcome: EpisodeOutcome; failure?: string }> {
    const cp = live.cp;
    const spec = this.orchestrations.get(cp.name.toLowerCase());
    if (!spec) {
      const error = `The orchestrator function '${cp.name}' is not registered with this host.`;
      return { outcome: { kind: "failed", actions: [], error, customStatus: parseJson(cp.customStatus) }, failure: error };
    }
    let outcome: EpisodeOutcome;
    let failure: string | undefined;
    const played = live.history.map((e) => ({ ...e, IsPlayed: true }));
    try {
      outcome = await runEpisode({
        handler: spec.handler,
        functionName: spec.name,
        instanceId: cp.instanceId,
        parentInstanceId: cp.parent?.instanceId,
        input: parseJson(cp.input),
        history: [...played, ...newEvents],
        logHandler: this.options.logHandler(spec.name),
      });
    } catch (e) {
      outcome = { kind: "failed", actions: [], error: errorText(e).message, customStatus: parseJson(cp.customStatus) };
    }
    try {
      checkReplay(live.signatures, outcome.actions, this.strict, outcome.kind === "failed");
    } catch (e) {
      if (!(e instanceof NonDeterminismError)) throw e;
      failure = `${e.name}: ${e.message}`;
    }
    if (outcome.kind === "failed" && failure === undefined) failure = outcome.error;
    return { outcome, ...(failure !== undefined ? { failure } : {}) };
  }

  /** continueAsNew: a new execution of the same instance, with the messages that were not completions carried over. */
  private async continuedAsNew(actor: InstanceActor, live: LiveInstance, nextCp: Checkpoint): Promise<void> {
    const cp = live.cp;
    actor.clearTimers();
    this.track(this.store.deleteEpisodes(cp.instanceId, cp.executionId, cp.episodes).catch(() => undefined));
    const carried = [...live.inbox.values()].filter((m) => m.kind !== "completion");
    actor.live = emptyLive(nextCp);
    for (const m of carried) actor.live.inbox.set(m.id, m);
    await this.store.writeInstance(nextCp);
    actor.signal();
  }

  /** Completed, failed or terminated: the record is written, the parent told, the inbox emptied, the actor idle. */
  private async ended(actor: InstanceActor, live: LiveInstance, cp: Checkpoint, failure: string | undefined): Promise<void> {
    const nextCp = live.cp;
    actor.clearTimers();
    await this.store.writeInstance(nextCp);
    this.options.log(
      `[${nextCp.lastUpdatedTime.toISOString()}] Durable: '${cp.name}' instance ${cp.instanceId} ${nextCp.status}${failure ? `: ${failure}` : ""}`,
    );
    if (nextCp.parent) await this.notifyParent(nextCp);
    if (live.inbox.size) await this.store.deleteInbox(cp.instanceId, [...live.inbox.keys()]);
    actor.live = undefined;
  }

  /** The episode's new tasks start (activities dispatched, children created); timers it canceled are dropped. */
  private startScheduled(actor: InstanceActor, live: LiveInstance, plan: EpisodePlan): void {
    const cp = live.cp;
    for (const e of plan.scheduled) {
      const t = live.tasks.get(e.EventId);
      if (!t) continue;
      if (t.kind === "activity")
        this.dispatch({
          instanceId: cp.instanceId,
          executionId: cp.executionId,
          taskId: t.id,
          name: t.name,
          ...(t.input !== undefined ? { input: t.input } : {}),
        });
      else if (t.kind === "suborchestration") this.track(this.ensureChild(cp, t).catch((err: unknown) => this.logError(cp.instanceId, err)));
    }
    for (const id of plan.canceled) {
      const timer = actor.timers.get(id);
      if (timer) clearTimeout(timer);
      actor.timers.delete(id);
    }
  }

  private async finishTerminated(actor: InstanceActor, reason: string): Promise<void> {
    const live = actor.live!;
    const cp = live.cp;
    const at = new Date();
    const nextCp: Checkpoint = { ...cp, status: "Terminated", output: JSON.stringify(reason), lastUpdatedTime: at, episodes: cp.episodes + 1 };
    const events: HistoryEvent[] = [{ EventType: EventType.ExecutionTerminated, EventId: -1, IsPlayed: false, Timestamp: at.toISOString(), Input: reason }];
    nextCp.etag = await this.store.commit(nextCp, { number: nextCp.episodes, events, actions: [] }, [...live.inbox.keys()]);
    actor.clearTimers();
    actor.live = undefined;
    await this.store.writeInstance(nextCp);
    this.options.log(`[${at.toISOString()}] Durable: '${cp.name}' instance ${cp.instanceId} Terminated${reason ? `: ${reason}` : ""}`);
    if (nextCp.parent) await this.notifyParent(nextCp);
  }

  /** Messages that turned out to be moot (duplicates, late completions): removed without an episode. */
  private async dropMessages(live: LiveInstance, ids: string[]): Promise<void> {
    await this.store.deleteInbox(live.cp.instanceId, ids);
    for (const id of ids) {
      live.inbox.delete(id);
      live.consumed.add(id);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Timers: wall-clock, re-armed from history after a restart.

  private armTimers(actor: InstanceActor): void {
    const live = actor.live;
    if (!live || this.stopping) return;
    for (const t of live.tasks.values()) {
      if (t.kind !== "timer" || t.done || live.cp.canceledTimers.includes(t.id) || actor.timers.has(t.id)) continue;
      const wait = Date.parse(t.fireAt!) - Date.now();
      const handle = setTimeout(
        () => {
          actor.timers.delete(t.id);
          actor.signal();
        },
        Math.min(Math.max(wait, 0) + 1, MAX_TIMER_MS),
      );
      handle.unref();
      actor.timers.set(t.id, handle);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Activities: a bounded pool; the completion is durable before the orchestrator hears of it.

  private dispatch(job: ActivityJob): void {
    const key = activityKey(job);
    if (this.activeActivities.has(key) || this.stopping) return;
    this.activeActivities.add(key);
    this.queue.push(job);
    this.pump();
  }

  private pump(): void {
    while (!this.stopping && this.runningActivities < this.maxActivities && this.queue.length) {
      const job = this.queue.shift()!;
      this.runningActivities++;
      const p = this.runActivity(job).finally(() => {
        this.runningActivities--;
        this.pump();
      });
      this.track(p);
    }
  }

  private async runActivity(job: ActivityJob): Promise<void> {
    const key = activityKey(job);
    const messageId = `c:${job.executionId}:${job.taskId}`;
    const spec = this.activities.get(job.name.toLowerCase());
    let event: HistoryEvent;
    if (!spec) {
      event = taskFailed(
        job.taskId,
        `Activity function '${job.name}' failed: The function '${job.name}' doesn't exist, is disabled, or is not an activity function.`,
        "",
        messageId,
      );
    } else {
      try {
        let result: unknown;
        const input = parseJson(job.input);
        await this.options.invoke(
          spec.name,
          async (context) => {
            result = await spec.handler(input, context);
          },
          { instanceId: job.instanceId },
        );
        event = taskCompleted(job.taskId, JSON.stringify(result ?? null) ?? "null", messageId);
      } catch (e) {
        const { message, details } = errorText(e);
        event = taskFailed(job.taskId, `Activity function '${spec.name}' failed: ${message}`, details, messageId);
      }
    }
    const m: InboxMessage = { id: messageId, kind: "completion", sent: nextSent(), executionId: job.executionId, event };
    try {
      await this.writeWithRetry(() => this.store.appendInbox(job.instanceId, m));
    } catch (e) {
      // Not recorded: the activity runs again when the instance is next loaded.
      this.logError(job.instanceId, e);
      this.activeActivities.delete(key);
      return;
    }
    // Only now, with the completion durable, may a reload decide whether to run it again.
    this.activeActivities.delete(key);
    this.deliver(job.instanceId, m);
  }

  private async writeWithRetry(write: () => Promise<void>): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await write();
        return;
      } catch (e) {
        if (attempt >= COMPLETION_WRITE_ATTEMPTS) throw e;
        await sleep(Math.min(100 * 2 ** attempt, 5000));
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Sub-orchestrations

  /** Makes sure the child of a scheduled sub-orchestration task exists (idempotent; reports an already finished child). */
  private async ensureChild(parent: Checkpoint, task: TaskRecord): Promise<void> {
    const childId = task.instanceId!;
    const link: ParentLink = { instanceId: parent.instanceId, executionId: parent.executionId, taskId: task.id };
    const child = this.actor(childId);
    const spec = this.orchestrations.get(task.name.toLowerCase());
    await child.exclusive(async () => {
      const existing = await this.store.readInstance(childId);
      const mine = existing?.parent && sameLink(existing.parent, link);
      if (existing && mine) {
        if (TERMINAL.has(existing.status)) await this.notifyParent(existing);
        return;
      }
      if (!spec || (existing && !TERMINAL.has(existing.status)) || !validInstanceId(childId)) {
        const why = !spec
          ? `The function '${task.name}' doesn't exist, is disabled, or is not an orchestrator function.`
          : !validInstanceId(childId)
            ? `'${childId}' is not a valid instance id.`
            : `An instance with ID '${childId}' already exists and is ${existing!.status}.`;
        await this.postToParent(link, subOrchestrationFailed(task.id, why, "", completionId(link)));
        return;
      }
      if (existing) await this.store.purge(childId);
      await this.create(child, spec.name, task.input, link);
    });
  }

  private async notifyParent(child: InstanceRecord): Promise<void> {
    const link = child.parent;
    if (!link) return;
    const id = completionId(link);
    let event: HistoryEvent;
    if (child.status === "Completed") event = subOrchestrationCompleted(link.taskId, child.output ?? "null", id);
    else {
      const detail = child.output !== undefined ? parseJson(child.output) : undefined;
      const reason =
        child.status === "Terminated" ? `Sub-orchestration '${child.instanceId}' was terminated: ${String(detail ?? "")}` : String(detail ?? `${child.status}`);
      event = subOrchestrationFailed(link.taskId, reason, "", id);
    }
    await this.postToParent(link, event);
  }

  private async postToParent(link: ParentLink, event: HistoryEvent): Promise<void> {
    // A parent that is gone or finished has no one to read it (and a row in a purged partition would linger).
    const parent = await this.store.readInstance(link.instanceId);
    if (!parent || TERMINAL.has(parent.status) || parent.executionId !== link.executionId) return;
    const m: InboxMessage = { id: completionId(link), kind: "completion", sent: nextSent(), executionId: link.executionId, event };
    await this.writeWithRetry(() => this.store.appendInbox(link.instanceId, m));
    this.deliver(link.instanceId, m);
  }

  private logError(instanceId: string, e: unknown): void {
    this.options.log(`[${new Date().toISOString()}] Durable: instance ${instanceId}: ${errorText(e).message}`);
  }
}
