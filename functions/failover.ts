// The durable failover: an orchestration that runs shared/failover/steps.ts step by step (each an activity with retries), publishing progress as its custom status.
import * as df from "durable-functions";
import type { OrchestrationContext } from "durable-functions";
import type { Services } from "./compose";
import type { ActivityFunctionSpec, FunctionSpec, OrchestrationFunctionSpec } from "./spec";
import { firstLine, step as finalStep, stepRetry, unwrap, type StepResult } from "./steps";
import type { FailoverInput } from "../shared/failover/start";
import { FailoverStepError, type CopyState, type VmOutcome, type VmPlan } from "../shared/failover/steps";
import type { JobStep } from "../shared/operations/jobs";
import type { FailoverOutput, FailoverStatus } from "../shared/contract/responses";

export const FAILOVER_ORCHESTRATION = "failover";

/** How long a planned failover waits for the source VMs' final sync before it gives up (and rolls back). */
export const SHUTDOWN_TIMEOUT_MS = 10 * 60_000;
const COPY_POLL_MS = 2_000;
const FINAL_SYNC_POLL_MS = 1_000;

type Steps<T> = Generator<df.Task, T, unknown>;
type Latest = Record<string, { pointId?: string; note?: string }>;

/**
 * One failover as its orchestration runs it: the status it publishes, its job's steps, and one method per phase
 * (validate → shut down or drain → choose points → per stage: copy, NIC, VM, start → complete; or roll back).
 */
class FailoverRun {
  private readonly input: FailoverInput;
  private readonly ids: string[];
  private readonly status: FailoverStatus = { step: "validating", vms: {} };
  /** The job's steps, timed by the orchestration's clock (deterministic on replay); recorded once, when it ends. */
  private readonly steps: JobStep[] = [];

  constructor(private readonly context: OrchestrationContext) {
    this.input = context.df.getInput() as FailoverInput;
    this.ids = this.input.stages.flat();
  }

  *run(): Steps<FailoverOutput> {
    try {
      yield* this.validate();
      let latest: Latest = {};
      if (this.input.type === "planned") yield* this.awaitFinalSync();
      else if (this.input.recoveryPoint === "latest") latest = yield* this.drainLatest();
      const plans = yield* this.choosePoints(latest);
      const outcomes: VmOutcome[] = [];
      for (const [n, stage] of this.input.stages.entries()) {
        if (this.input.stages.length > 1) this.status.stage = { index: n + 1, count: this.input.stages.length };
        outcomes.push(...(yield* this.failOverStage(plans.filter((p) => stage.includes(p.itemId)))));
      }
      return yield* this.complete(outcomes);
    } catch (e) {
      yield* this.rollBack(e);
      throw e;
    }
  }

  private *validate(): Steps<void> {
    this.show("validating");
    const [vms] = yield* this.all<{ itemId: string; vm: string }[]>("failoverVerify", [this.input]);
    for (const v of vms!) this.status.vms[v.itemId] = { vm: v.vm, step: "waiting" };
  }

  /** Planned: the source VMs are asked to shut down, then polled until each one's final point is sealed (or the deadline). */
  private *awaitFinalSync(): Steps<void> {
    const { input, status } = this;
    this.show("shutting down the source VMs");
    yield* this.all("failoverRequestShutdown", this.perItem());
    this.show("waiting for the source VMs' final sync");
    const deadline = Date.parse(input.startedAt) + SHUTDOWN_TIMEOUT_MS;
    let pending = this.ids;
    for (;;) {
      const sealed = yield* this.all<boolean>(
        "failoverFinalPointSealed",
        pending.map((itemId) => ({ input, itemId })),
      );
      for (const [n, id] of pending.entries()) if (sealed[n]) status.vms[id]!.step = "source shut down, final sync done";
      pending = pending.filter((_, n) => !sealed[n]);
      if (pending.length === 0) return;
      if (this.context.df.currentUtcDateTime.getTime() > deadline) {
        throw new Error(
          `SourceNotShutDown: the source VMs of ${pending.join(", ")} did not complete their final sync within ${SHUTDOWN_TIMEOUT_MS / 60_000} minutes; run an unplanned failover`,
        );
      }
      this.context.df.setCustomStatus(status);
      yield this.later(FINAL_SYNC_POLL_MS);
    }
  }

  /** `latest`: what is in the cache is applied and a point cut on it, per VM. */
  private *drainLatest(): Steps<Latest> {
    this.show("draining the cache and cutting the latest point");
    const drained = yield* this.all<{ pointId?: string; note?: string }>("failoverDrain", this.perItem());
    return Object.fromEntries(this.ids.map((id, n) => [id, drained[n]!]));
  }

  private *choosePoints(latest: Latest): Steps<VmPlan[]> {
    this.show("choosing recovery points");
    const [plans] = yield* this.all<VmPlan[]>("failoverPlan", [{ input: this.input, latest }]);
    for (const p of plans!)
      Object.assign(this.status.vms[p.itemId]!, { recoveryPoint: p.point, step: "waiting for its group", ...(p.note ? { note: p.note } : {}) });
    return plans!;
  }

  /** One stage of a recovery plan (every VM of a plain failover is one stage): its VMs go through each step together. */
  private *failOverStage(group: VmPlan[]): Steps<VmOutcome[]> {
    const { input, status } = this;
    const mark = (step: string) => group.forEach((p) => (status.vms[p.itemId]!.step = step));
    const perVm = () => group.map((plan) => ({ input, plan }));

    mark("copying disks");
    this.show("copying disks");
    yield* this.copyDisks(group);

    mark("creating the network interface");
    this.show("creating network interfaces");
    const nics = yield* this.all<{ nicId: string; privateIp: string }>("failoverCreateNic", perVm());
    group.forEach((p, k) => (status.vms[p.itemId]!.privateIp = nics[k]!.privateIp));

    mark("creating the VM");
    this.show("creating VMs");
    yield* this.all(
      "failoverCreateVm",
      group.map((plan, k) => ({ input, plan, nicId: nics[k]!.nicId })),
    );

    mark("starting");
    this.show("starting VMs");
    yield* this.all("failoverStartVm", perVm());

    const done = yield* this.all<VmOutcome>("failoverComplete", perVm());
    for (const o of done) Object.assign(status.vms[o.itemId]!, { step: "running", powerState: o.targetVm.powerState });
    return done;
  }

  /** Azure copies can stay pending for a while: the copy step is polled, no activity is held while it runs. */
  private *copyDisks(group: VmPlan[]): Steps<void> {
    let copying = group;
    for (;;) {
      const copies = yield* this.all<{ state: CopyState; copied: number; total: number }>(
        "failoverCopyDisks",
        copying.map((plan) => ({ input: this.input, plan })),
      );
      for (const [k, p] of copying.entries()) this.status.vms[p.itemId]!.disks = `${copies[k]!.copied}/${copies[k]!.total} copied`;
      copying = copying.filter((_, k) => copies[k]!.state === "pending");
      if (copying.length === 0) return;
      this.context.df.setCustomStatus(this.status);
      yield this.later(COPY_POLL_MS);
    }
  }

  private *complete(outcomes: VmOutcome[]): Steps<FailoverOutput> {
    const { input } = this;
    this.endStep("Succeeded");
    this.show("completed");
    const completedAt = this.context.df.currentUtcDateTime;
    const output: FailoverOutput = {
      instanceId: input.instanceId,
      type: input.type,
      recoveryPoint: input.recoveryPoint,
      startedAt: input.startedAt,
      completedAt: completedAt.toISOString(),
      rtoSeconds: Math.max(0, (completedAt.getTime() - Date.parse(input.startedAt)) / 1000),
      vms: outcomes,
    };
    // After the RTO is taken: recording the job is not part of the failover's time.
    yield* this.endJob({ state: "Succeeded" });
    return output;
  }

  /** Nothing half-done: what the failover made goes and the items return to replication (retried like any step). */
  private *rollBack(e: unknown): Steps<void> {
    const { input, status } = this;
    // The first line says what failed (an activity's error also carries its stack, which is for the log).
    const message = firstLine((e as Error).message);
    status.error = message;
    this.endStep("Failed");
    this.show("rolling back");
    try {
      yield this.context.df.Task.all(
        this.ids.map((itemId) => this.context.df.callActivityWithRetry("failoverRollback", stepRetry(), { input, itemId, error: message })),
      );
    } catch (r) {
      // Still the failover's error that fails it; what the rollback left is on the items (their failover record).
      status.error = `${message}; the rollback failed too: ${firstLine((r as Error).message)}`;
      this.endStep("Failed");
    }
    this.endStep("Succeeded");
    this.show("failed");
    // "failoverCreateVm: QuotaExceeded: …" → code QuotaExceeded; anything else is FailoverFailed.
    const coded = /^\w+: ([A-Za-z][A-Za-z0-9]*): /.exec(message);
    yield* this.endJob({ state: "Failed", error: { code: coded?.[1] ?? "FailoverFailed", message: status.error } });
  }

  /** Publishes the step as the custom status, and opens it as the job's current step. */
  private show(step: string): void {
    const { steps } = this;
    this.status.step = step;
    this.context.df.setCustomStatus(this.status);
    if (step === "completed" || step === "failed" || steps[steps.length - 1]?.name === step) return;
    this.endStep("Succeeded");
    steps.push({ name: step, state: "InProgress", startedAt: this.context.df.currentUtcDateTime.toISOString(), endedAt: null });
  }

  private endStep(state: "Succeeded" | "Failed"): void {
    const open = this.steps[this.steps.length - 1];
    if (open?.state === "InProgress") Object.assign(open, { state, endedAt: this.context.df.currentUtcDateTime.toISOString() });
  }

  /** A job that cannot be recorded must not turn a failover into a failure (nor a failure into a second rollback). */
  private *endJob(outcome: { state: "Succeeded" | "Failed"; error?: { code: string; message: string } }): Steps<void> {
    const { instanceId, type } = this.input;
    try {
      yield this.context.df.callActivityWithRetry("failoverJobEnd", stepRetry(), { instanceId, type, steps: this.steps, ...outcome });
    } catch {
      // the job stays InProgress; the failover's own status is the truth
    }
  }

  /** One step for several VMs at once: the activities run in parallel, the first final failure stops the failover. */
  private *all<T>(name: string, inputs: unknown[]): Steps<T[]> {
    const df = this.context.df;
    const results = (yield df.Task.all(inputs.map((i) => df.callActivityWithRetry(name, stepRetry(), i)))) as StepResult<T>[];
    return results.map((r) => unwrap(name, r));
  }

  private perItem(): { input: FailoverInput; itemId: string }[] {
    return this.ids.map((itemId) => ({ input: this.input, itemId }));
  }

  private later(ms: number): df.Task {
    return this.context.df.createTimer(new Date(this.context.df.currentUtcDateTime.getTime() + ms));
  }
}

function* orchestrate(context: OrchestrationContext): Steps<FailoverOutput> {
  return yield* new FailoverRun(context).run();
}

/** An activity of this orchestration: its own step errors are final too. */
const step = <I>(name: string, run: (input: I) => Promise<unknown>): ActivityFunctionSpec => finalStep<I>(name, run, FailoverStepError);

export function failoverFunctions(services: () => Services): FunctionSpec[] {
  const f = () => services().failover;
  type Item = { input: FailoverInput; itemId: string };
  type Vm = { input: FailoverInput; plan: VmPlan };
  const orchestration: OrchestrationFunctionSpec = { kind: "orchestration", name: FAILOVER_ORCHESTRATION, handler: orchestrate };
  return [
    orchestration,
    step<FailoverInput>("failoverVerify", (input) => f().verify(input)),
    step<Item>("failoverRequestShutdown", ({ input, itemId }) => f().requestShutdown(input, itemId)),
    step<Item>("failoverFinalPointSealed", ({ input, itemId }) => f().finalPointSealed(input, itemId)),
    step<Item>("failoverDrain", ({ input, itemId }) => f().drainAndCut(input, itemId)),
    step<{ input: FailoverInput; latest: Record<string, { pointId?: string; note?: string }> }>("failoverPlan", ({ input, latest }) => f().plan(input, latest)),
    step<Vm>("failoverCopyDisks", ({ input, plan }) => f().copyDisks(input, plan)),
    step<Vm>("failoverCreateNic", ({ input, plan }) => f().createNic(input, plan)),
    step<Vm & { nicId: string }>("failoverCreateVm", ({ input, plan, nicId }) => f().createVm(input, plan, nicId)),
    step<Vm>("failoverStartVm", ({ input, plan }) => f().startVm(input, plan)),
    step<Vm>("failoverComplete", ({ input, plan }) => f().complete(input, plan)),
    step<Item & { error: string }>("failoverRollback", ({ input, itemId, error }) => f().rollback(input, itemId, error)),
    step<{ instanceId: string; type: string; state: "Succeeded" | "Failed"; error?: { code: string; message: string }; steps: JobStep[] }>(
      "failoverJobEnd",
      async (o) => {
        const seconds = await f().endJob(o.instanceId, o);
        if (seconds !== undefined) services().telemetry.failoverEnded(seconds, { type: o.type, outcome: o.state });
      },
    ),
  ];
}
