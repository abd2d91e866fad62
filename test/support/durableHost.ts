// A local host with a small durable function table, run as a child process by the kill-and-resume test; inert unless DURABLE_CHILD_STORAGE is set (node --test loads every file under test/).
import { randomUUID } from "node:crypto";
import { TableClient } from "@azure/data-tables";
import type { OrchestrationContext } from "durable-functions";
import type { FunctionSpec } from "../../functions/spec";
import { LocalFunctionsHost } from "../../local/host";

/** Every run of the `step` activity leaves a row here (partition = the run), written when it starts. */
export const PROBE_TABLE = "DurableProbe";
export const RESTART_HUB = "restarthub";
/** How long one step runs after recording itself: the window in which the test kills the host. */
export const STEP_MS = 400;

export interface StepInput {
  run: string;
  step: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function restartTable(connectionString: string): FunctionSpec[] {
  const probe = TableClient.fromConnectionString(connectionString, PROBE_TABLE, { allowInsecureConnection: true });
  let created: Promise<unknown> | undefined;
  return [
    {
      kind: "activity",
      name: "step",
      handler: async (input) => {
        const { run, step } = input as StepInput;
        created ??= probe.createTable();
        await created;
        await probe.createEntity({ partitionKey: run, rowKey: `${String(step).padStart(3, "0")}-${randomUUID()}`, step, pid: process.pid });
        await sleep(STEP_MS);
        return step * 10;
      },
    },
    {
      kind: "orchestration",
      name: "steps",
      handler: function* (context: OrchestrationContext) {
        const { run, count } = context.df.getInput() as { run: string; count: number };
        const results: number[] = [];
        for (let step = 1; step <= count; step++) {
          results.push(yield context.df.callActivity("step", { run, step } satisfies StepInput));
          context.df.setCustomStatus({ done: step });
        }
        const fanned: number[] = yield context.df.Task.all(
          [count + 1, count + 2].map((step) => context.df.callActivity("step", { run, step } satisfies StepInput)),
        );
        return [...results, ...fanned];
      },
    },
    {
      kind: "orchestration",
      name: "nap",
      handler: function* (context: OrchestrationContext) {
        const fireAt = new Date(context.df.currentUtcDateTime.getTime() + Number(context.df.getInput()));
        yield context.df.createTimer(fireAt);
        return fireAt.toISOString();
      },
    },
    {
      kind: "orchestration",
      name: "gatekeeper",
      handler: function* (context: OrchestrationContext) {
        const go: unknown = yield context.df.waitForExternalEvent("go");
        return { go };
      },
    },
  ];
}

async function main(connectionString: string): Promise<void> {
  const host = new LocalFunctionsHost(restartTable(connectionString), {
    port: 0,
    env: { AzureWebJobsStorage: connectionString },
    log: (line) => process.stderr.write(`${line}\n`),
    durable: { taskHub: RESTART_HUB },
  });
  const { port } = await host.start();
  // The parent reads this line to learn where the host listens.
  process.stdout.write(`${JSON.stringify({ port })}\n`);
}

const storage = process.env.DURABLE_CHILD_STORAGE;
if (storage) {
  main(storage).catch((e: unknown) => {
    process.stderr.write(`durable test host failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  });
}
