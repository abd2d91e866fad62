// The durable re-protect: prepare the new direction, seed its replicas, hand over to the agent, then follow the differential initial replication to Protected (progress and ETA as its custom status).
import * as df from "durable-functions";
import type { OrchestrationContext } from "durable-functions";
import type { Services } from "./compose";
import type { ActivityFunctionSpec, FunctionSpec, OrchestrationFunctionSpec } from "./spec";
import { firstLine, step as finalStep, stepRetry, unwrap, type StepResult } from "./steps";
import type { DiskSeed } from "../shared/protection/items";
import { ReprotectStepError, type ReprotectInput, type ReprotectProgress } from "../shared/protection/reprotect";
import type { ReprotectOutput, ReprotectStatus } from "../shared/contract/responses";

export const REPROTECT_ORCHESTRATION = "reprotect";

const SEED_POLL_MS = 2_000;
/** How often the differential initial replication's progress is read (and the status refreshed). */
export const PROGRESS_POLL_MS = 3_000;
/** Polls before the orchestration continues as new (its history stays short on a long initial replication). */
const POLLS_PER_EPISODE = 200;

type Episode = ReprotectInput & { phase?: "monitor"; seededAt?: string; seeds?: Record<string, DiskSeed> };

function* orchestrate(context: OrchestrationContext): Generator<df.Task, ReprotectOutput, unknown> {
  const input = context.df.getInput() as Episode;
  const status: ReprotectStatus = { step: "preparing", from: input.from, to: input.to, seeds: input.seeds ?? {} };
  const show = (step: string) => {
    status.step = step;
    context.df.setCustomStatus(status);
  };
  const one = function* <T>(name: string, i: unknown): Generator<df.Task, T, unknown> {
    return unwrap(name, (yield context.df.callActivityWithRetry(name, stepRetry(), i)) as StepResult<T>);
  };
  const later = (ms: number) => context.df.createTimer(new Date(context.df.currentUtcDateTime.getTime() + ms));
  const base: ReprotectInput = { instanceId: input.instanceId, itemId: input.itemId, from: input.from, to: input.to, startedAt: input.startedAt };

  let handedOver = input.phase === "monitor";
  let seededAt = input.seededAt ?? "";
  try {
    if (!handedOver) {
      show(input.to === "reverse" ? "preparing the original region" : "preparing the recovery region");
      const { disks } = yield* one<{ disks: { diskId: string }[] }>("reprotectPrepare", base);
      show("seeding replicas");
      let pending = disks.map((d) => d.diskId);
      for (;;) {
        const results = (yield context.df.Task.all(
          pending.map((diskId) => context.df.callActivityWithRetry("reprotectSeedDisk", stepRetry(), { input: base, diskId })),
        )) as StepResult<{
          state: "success" | "pending";
          seed: DiskSeed;
        }>[];
        const values = results.map((r) => unwrap("reprotectSeedDisk", r));
        pending.forEach((id, n) => (status.seeds[id] = values[n]!.seed));
        pending = pending.filter((_, n) => values[n]!.state === "pending");
        if (pending.length === 0) break;
        context.df.setCustomStatus(status);
        yield later(SEED_POLL_MS); // Azure copies can stay pending: poll, never hold an activity
      }
      show("handing over to the agent");
      yield* one("reprotectFinishSeed", base);
      handedOver = true;
      seededAt = context.df.currentUtcDateTime.toISOString();
    }
    show("initial replication (differential): waiting for the agent");
    for (let polls = 0; ; polls++) {
      const p = yield* one<ReprotectProgress>("reprotectProgress", base);
      const { state, ...rest } = p;
      status.progress = rest;
      if (state === "done") {
        show("completed");
        yield* one("reprotectComplete", { input: base, progress: p });
        const completedAt = context.df.currentUtcDateTime;
        return {
          instanceId: base.instanceId,
          itemId: base.itemId,
          direction: base.to,
          startedAt: base.startedAt,
          seededAt,
          completedAt: completedAt.toISOString(),
          durationSeconds: Math.max(0, (completedAt.getTime() - Date.parse(base.startedAt)) / 1000),
          transferredBytes: p.transferredBytes,
          totalBytes: p.totalBytes,
          disks: p.disks,
        };
      }
      if (state === "ended") throw new Error(`ReprotectEnded: the item left the re-protect (now ${p.itemState})`);
      show(p.doneBytes > 0 ? "initial replication (differential)" : "initial replication (differential): waiting for the agent");
      if (polls + 1 >= POLLS_PER_EPISODE) {
        context.df.continueAsNew({ ...base, phase: "monitor", seededAt, seeds: status.seeds } satisfies Episode);
        return undefined as unknown as ReprotectOutput;
      }
      yield later(PROGRESS_POLL_MS);
    }
  } catch (e) {
    const message = firstLine((e as Error).message);
    status.error = message;
    show(handedOver ? "failed" : "rolling back");
    try {
      yield context.df.callActivityWithRetry("reprotectRollback", stepRetry(), { input: base, error: message });
    } catch (r) {
      status.error = `${message}; the rollback failed too: ${firstLine((r as Error).message)}`;
    }
    show("failed");
    throw e;
  }
}

/** An activity of this orchestration: its own step errors are final too. */
const step = <I>(name: string, run: (input: I) => Promise<unknown>): ActivityFunctionSpec => finalStep<I>(name, run, ReprotectStepError);

export function reprotectFunctions(services: () => Services): FunctionSpec[] {
  const r = () => services().reprotection;
  const orchestration: OrchestrationFunctionSpec = { kind: "orchestration", name: REPROTECT_ORCHESTRATION, handler: orchestrate };
  return [
    orchestration,
    step<ReprotectInput>("reprotectPrepare", (i) => r().prepare(i)),
    step<{ input: ReprotectInput; diskId: string }>("reprotectSeedDisk", ({ input, diskId }) => r().seedDisk(input, diskId)),
    step<ReprotectInput>("reprotectFinishSeed", (i) =>
      r()
        .finishSeed(i)
        .then(() => null),
    ),
    step<ReprotectInput>("reprotectProgress", (i) => r().progress(i)),
    step<{ input: ReprotectInput; progress: ReprotectProgress }>("reprotectComplete", ({ input, progress }) => r().complete(input, progress)),
    step<{ input: ReprotectInput; error: string }>("reprotectRollback", ({ input, error }) => r().rollback(input, error)),
  ];
}
