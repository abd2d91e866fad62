// What the durable orchestrations (failover, re-protect) share: activities whose final failures are returned instead of retried, the retry policy, and reading a step's result.
import * as df from "durable-functions";
import type { ActivityFunctionSpec } from "./spec";
import { ApiError, isTransient, storageCode, storageStatus } from "../shared/contract/errors";
import { FabricError } from "../shared/fabric/port";

/** What an activity returns: its value, or a failure no retry can fix (so it is not retried). */
export type StepResult<T> = { value: T } | { failed: { code: string; message: string } };

/** Transient failures: 5 attempts, 1 s doubling up to 30 s. */
export function stepRetry(): df.RetryOptions {
  const r = new df.RetryOptions(1000, 5);
  r.backoffCoefficient = 2;
  r.maxRetryIntervalInMilliseconds = 30_000;
  return r;
}

export const firstLine = (text: string) => text.split("\n")[0]!.trim();

/** The step's value, or its final failure thrown (named after the step) into the orchestration. */
export function unwrap<T>(step: string, r: StepResult<T>): T {
  if ("failed" in r) throw new Error(`${step}: ${r.failed.code}: ${r.failed.message}`);
  return r.value;
}

/**
 * An activity whose final failures — the domain's own step error, an API error, a fabric refusal, a storage refusal
 * (a 4xx other than 408/429: a snapshot gone, a bad request) — are returned, not thrown into retries. Anything
 * transient or unknown is thrown: the orchestration's retry options decide.
 */
export function step<I>(
  name: string,
  run: (input: I) => Promise<unknown>,
  stepError: abstract new (...args: never[]) => Error & { code: string },
): ActivityFunctionSpec {
  return {
    kind: "activity",
    name,
    handler: async (input) => {
      try {
        return { value: (await run(input as I)) ?? null };
      } catch (e) {
        if (e instanceof stepError || e instanceof ApiError || e instanceof FabricError) return { failed: { code: e.code, message: e.message } };
        const status = storageStatus(e);
        if (status !== undefined && !isTransient(e))
          return { failed: { code: storageCode(e) ?? `Storage${status}`, message: firstLine((e as Error).message) } };
        throw e;
      }
    },
  };
}
