// The pure parts of the local durable runtime: one episode through the SDK's engine, the replay check, the retry delays.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { OrchestrationHandler } from "durable-functions";
import {
  ActionType,
  checkReplay,
  executionStarted,
  NonDeterminismError,
  orchestratorStarted,
  retryDelayMs,
  runEpisode,
  signatureOf,
  taskCompleted,
  type Action,
  type HistoryEvent,
} from "../../local/durable/history";

const at = "2024-01-01T00:00:00.000Z";
const quiet = () => undefined;

const twoSteps: OrchestrationHandler = function* (context) {
  const a: string = yield context.df.callActivity("first", "apple");
  const [b, c]: string[] = yield context.df.Task.all([context.df.callActivity("second", 1), context.df.createTimer(new Date(Date.parse(at) + 60_000))]);
  return [a, b, c];
};

function episode(history: HistoryEvent[], handler = twoSteps) {
  return runEpisode({ handler, functionName: "twoSteps", instanceId: "i1", parentInstanceId: undefined, input: null, history, logHandler: quiet });
}

test("an episode returns every action since the start, string inputs pre-encoded as the SDK sends them", async () => {
  const first = await episode([orchestratorStarted(at), executionStarted("twoSteps", undefined, "i1", "e1", at)]);
  assert.equal(first.kind, "running");
  assert.deepEqual(first.actions, [{ type: ActionType.CallActivity, name: "first", input: '"apple"' }]);

  const second = await episode([
    orchestratorStarted(at),
    executionStarted("twoSteps", undefined, "i1", "e1", at),
    orchestratorStarted(at),
    taskCompleted(0, '"A"', "c:e1:0"),
  ]);
  assert.equal(second.kind, "running");
  assert.equal(second.actions.length, 2);
  let next = 1;
  const sig = signatureOf(second.actions[1], () => next++);
  assert.deepEqual(
    sig.c?.map((c) => c.id),
    [1, 2],
    "children of Task.all take ids in array order",
  );
});

test("an orchestrator that throws yields a failed outcome with its message", async () => {
  const boom: OrchestrationHandler = function* (context) {
    yield context.df.callActivity("x");
    throw new Error("kaput");
  };
  const r = await episode(
    [orchestratorStarted(at), executionStarted("boom", undefined, "i1", "e1", at), orchestratorStarted(at), taskCompleted(0, "null", "c")],
    boom,
  );
  assert.equal(r.kind, "failed");
  assert.equal(r.kind === "failed" && r.error, "kaput");
});

test("the replay check: type and name always, input and timer time when strict, a short replay only when the orchestrator failed", () => {
  const call = (name: string, input: unknown): Action => ({ type: ActionType.CallActivity, name, input });
  const timer = (ms: number): Action => ({ type: ActionType.CreateTimer, fireAt: new Date(ms), isCanceled: false });
  const history = [signatureOf(call("a", 1)), signatureOf({ type: ActionType.WhenAll, children: [call("b", 2), timer(5)] })];

  checkReplay(history, [call("a", 1), { type: ActionType.WhenAll, children: [call("b", 2), timer(5)] }, call("c", 3)], true, false);
  assert.throws(() => checkReplay(history, [call("z", 1)], false, false), NonDeterminismError);
  assert.throws(() => checkReplay(history, [call("a", 99)], true, true), /input 1 but the replay passes 99/);
  checkReplay(history, [call("a", 99)], false, true);
  assert.throws(() => checkReplay(history, [call("a", 1), { type: ActionType.WhenAll, children: [call("b", 2), timer(6)] }], true, false), /timer firing at/);
  assert.throws(() => checkReplay(history, [call("a", 1), { type: ActionType.WhenAll, children: [call("b", 2)] }], false, false), /1 vs 2|2 vs 1/);
  assert.throws(() => checkReplay(history, [call("a", 1)], true, false), /only 1/);
  checkReplay(history, [call("a", 1)], true, true);
});

test("retry delays follow DTFx: first × backoff^(attempt-1), capped by the maximum interval", () => {
  const options = { firstRetryIntervalInMilliseconds: 100, maxNumberOfAttempts: 5, backoffCoefficient: 3, maxRetryIntervalInMilliseconds: 1000 };
  assert.deepEqual(
    [1, 2, 3, 4].map((n) => retryDelayMs(options, n)),
    [100, 300, 900, 1000],
  );
  assert.deepEqual(
    [1, 2, 3].map((n) => retryDelayMs({ firstRetryIntervalInMilliseconds: 250, maxNumberOfAttempts: 3 }, n)),
    [250, 250, 250],
  );
});
