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

function* orchestrate(context: OrchestrationContext): Generator<df.Task, FailoverOutput, unknown> {
  const input = context.df.getInput() as FailoverInput;
  const ids = input.stages.flat();
  const status: FailoverStatus = { step: "validating", vms: {} };
  // The job's steps, timed by the orchestration's clock (deterministic on replay); recorded once, when it ends.
  const steps: JobStep[] = [];
  const endStep = (state: "Succeeded" | "Failed") => {
    const open = steps[steps.length - 1];
    if (open?.state === "InProgress") Object.assign(open, { state, endedAt: context.df.currentUtcDateTime.toISOString() });
  };
  const show = (step: string) => {
    status.step = step;
    context.df.setCustomStatus(status);
    if (step === "completed" || step === "failed" || steps[steps.length - 1]?.name === step) return;
    endStep("Succeeded");
    steps.push({ name: step, state: "InProgress", startedAt: context.df.currentUtcDateTime.toISOString(), endedAt: null });
  };
  // A job that cannot be recorded must not turn a failover into a failure (nor a failure into a second rollback).
  const endJob = function* (outcome: { state: "Succeeded" | "Failed"; error?: { code: string; message: string } }): Generator<df.Task, void, unknown> {
    try {
      yield context.df.callActivityWithRetry("failoverJobEnd", stepRetry(), { instanceId: input.instanceId, type: input.type, steps, ...outcome });
    } catch {
      // the job stays InProgress; the failover's own status is the truth
    }
  };
  // One step for several VMs at once: the activities run in parallel, the first final failure stops the failover.
  const all = function* <T>(name: string, inputs: unknown[]): Generator<df.Task, T[], unknown> {
    const results = (yield context.df.Task.all(inputs.map((i) => context.df.callActivityWithRetry(name, stepRetry(), i)))) as StepResult<T>[];
    return results.map((r) => unwrap(name, r));
  };
  const later = (ms: number) => context.df.createTimer(new Date(context.df.currentUtcDateTime.getTime() + ms));

  try {
    show("validating");
    const [vms] = yield* all<{ itemId: string; vm: string }[]>("failoverVerify", [input]);
    for (const v of vms!) status.vms[v.itemId] = { vm: v.vm, step: "waiting" };

    let latest: Record<string, { pointId?: string; note?: string }> = {};
    if (input.type === "planned") {
      show("shutting down the source VMs");
      yield* all(
        "failoverRequestShutdown",
        ids.map((itemId) => ({ input, itemId })),
      );
      show("waiting for the source VMs' final sync");
      const deadline = Date.parse(input.startedAt) + SHUTDOWN_TIMEOUT_MS;
      let pending = ids;
      for (;;) {
        const sealed = yield* all<boolean>(
          "failoverFinalPointSealed",
          pending.map((itemId) => ({ input, itemId })),
        );
        for (const [n, id] of pending.entries()) if (sealed[n]) status.vms[id]!.step = "source shut down, final sync done";
        pending = pending.filter((_, n) => !sealed[n]);
        if (pending.length === 0) break;
        if (context.df.currentUtcDateTime.getTime() > deadline) {
          throw new Error(
            `SourceNotShutDown: the source VMs of ${pending.join(", ")} did not complete their final sync within ${SHUTDOWN_TIMEOUT_MS / 60_000} minutes; run an unplanned failover`,
          );
        }
        context.df.setCustomStatus(status);
        yield later(FINAL_SYNC_POLL_MS);
      }
    } else if (input.recoveryPoint === "latest") {
      show("draining the cache and cutting the latest point");
      const drained = yield* all<{ pointId?: string; note?: string }>(
        "failoverDrain",
        ids.map((itemId) => ({ input, itemId })),
      );
      latest = Object.fromEntries(ids.map((id, n) => [id, drained[n]!]));
    }

    show("choosing recovery points");
    const [plans] = yield* all<VmPlan[]>("failoverPlan", [{ input, latest }]);
    for (const p of plans!)
      Object.assign(status.vms[p.itemId]!, { recoveryPoint: p.point, step: "waiting for its group", ...(p.note ? { note: p.note } : {}) });

    const outcomes: VmOutcome[] = [];
    for (const [n, stage] of input.stages.entries()) {
      if (input.stages.length > 1) status.stage = { index: n + 1, count: input.stages.length };
      const group = plans!.filter((p) => stage.includes(p.itemId));
      const mark = (step: string) => group.forEach((p) => (status.vms[p.itemId]!.step = step));

      mark("copying disks");
      show("copying disks");
      let copying = group;
      for (;;) {
        const copies = yield* all<{ state: CopyState; copied: number; total: number }>(
          "failoverCopyDisks",
          copying.map((plan) => ({ input, plan })),
        );
        for (const [k, p] of copying.entries()) status.vms[p.itemId]!.disks = `${copies[k]!.copied}/${copies[k]!.total} copied`;
        copying = copying.filter((_, k) => copies[k]!.state === "pending");
        if (copying.length === 0) break;
        context.df.setCustomStatus(status);
        yield later(COPY_POLL_MS); // Azure copies can stay pending for a while: poll, do not hold an activity
      }

      mark("creating the network interface");
      show("creating network interfaces");
      const nics = yield* all<{ nicId: string; privateIp: string }>(
        "failoverCreateNic",
        group.map((plan) => ({ input, plan })),
      );
      group.forEach((p, k) => (status.vms[p.itemId]!.privateIp = nics[k]!.privateIp));

      mark("creating the VM");
      show("creating VMs");
      yield* all(
        "failoverCreateVm",
        group.map((plan, k) => ({ input, plan, nicId: nics[k]!.nicId })),
      );

      mark("starting");
      show("starting VMs");
      yield* all(
        "failoverStartVm",
        group.map((plan) => ({ input, plan })),
      );

      const done = yield* all<VmOutcome>(
        "failoverComplete",
        group.map((plan) => ({ input, plan })),
      );
      for (const o of done) Object.assign(status.vms[o.itemId]!, { step: "running", powerState: o.targetVm.powerState });
      outcomes.push(...done);
    }
    endStep("Succeeded");
    show("completed");
    const completedAt = context.df.currentUtcDateTime;
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
    yield* endJob({ state: "Succeeded" });
    return output;
  } catch (e) {
    // The first line says what failed (an activity's error also carries its stack, which is for the log).
    const message = firstLine((e as Error).message);
    status.error = message;
    endStep("Failed");
    show("rolling back");
    // Nothing half-done: what the failover made goes and the items return to replication (retried like any step).
    try {
      yield context.df.Task.all(ids.map((itemId) => context.df.callActivityWithRetry("failoverRollback", stepRetry(), { input, itemId, error: message })));
    } catch (r) {
      // Still the failover's error that fails it; what the rollback left is on the items (their failover record).
      status.error = `${message}; the rollback failed too: ${firstLine((r as Error).message)}`;
      endStep("Failed");
    }
    endStep("Succeeded");
    show("failed");
    // "failoverCreateVm: QuotaExceeded: …" → code QuotaExceeded; anything else is FailoverFailed.
    const coded = /^\w+: ([A-Za-z][A-Za-z0-9]*): /.exec(message);
    yield* endJob({ state: "Failed", error: { code: coded?.[1] ?? "FailoverFailed", message: status.error } });
    throw e;
  }
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
