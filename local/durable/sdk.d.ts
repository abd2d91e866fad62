// Types for the one deep import of durable-functions 3.5.0 (pinned) that the local durable runtime uses: its replay engine.
// The path has no declarations of its own and is not public API; these mirror lib/src/util/testingUtils.js and
// the JSON shapes measured in /work/shared/notes/durable-local.md.

declare module "durable-functions/lib/src/util/testingUtils" {
  import type { InvocationContext } from "@azure/functions";
  import type { OrchestrationHandler } from "durable-functions";

  /** One history event as the extension sends it: PascalCase, `Timestamp` an ISO string (the SDK turns it into a Date in place). */
  export interface WireHistoryEvent {
    EventType: number;
    EventId: number;
    IsPlayed: boolean;
    Timestamp: string;
    [field: string]: unknown;
  }

  /** The orchestration trigger payload (`DurableOrchestrationBindingInfo`). */
  export interface OrchestrationTriggerPayload {
    history: WireHistoryEvent[];
    input: unknown;
    instanceId: string;
    isReplaying: boolean;
    parentInstanceId: string | null;
    upperSchemaVersion: number;
    upperSchemaVersionNew: number;
    longRunningTimerIntervalDuration: string;
    maximumShortTimerDuration: string;
    defaultHttpAsyncRequestSleepTimeMillseconds: number;
  }

  /** What one episode returns (`OrchestratorState`); with schema ≥ V2 `actions` is `[[every action since the start]]`. */
  export interface OrchestratorStatePayload {
    isDone: boolean;
    actions: unknown[][];
    output?: unknown;
    error?: string;
    customStatus?: unknown;
    schemaVersion: number;
  }

  /** The wrapper `df.app.orchestration` registers; rejects with an `OrchestrationFailureError` when user code throws. */
  export function createOrchestrator(
    fn: OrchestrationHandler,
  ): (trigger: OrchestrationTriggerPayload, context: InvocationContext) => Promise<OrchestratorStatePayload>;
}
