// The agent's V8 heap: kept small, since the agent runs beside the programs it protects.
import { setFlagsFromString } from "node:v8";

/**
 * The V8 setting the agent process runs with: the young generation stays at its first size (two 1 MiB semi-spaces)
 * instead of doubling up to 16 MiB under load. V8 reads it whenever the young generation would grow, so it works when
 * set from inside the process — but only before the young generation has grown, which loading the agent's modules
 * already does: the CLI sets it first thing (cli/early.ts). Measured in `npm run bench -- churn` at full churn: new
 * space 2 MiB instead of 16, the heap 28–31 MiB instead of 56–60, no measurable CPU cost. (`--max-semi-space-size`
 * is read once, when the heap is made: only the node command line could set it. Not every flag is safe to set late:
 * `--single-threaded-gc` set this way aborts V8.)
 */
export const AGENT_V8_FLAGS = ["--semi-space-growth-factor=1"] as const;

let applied = false;

/** Applies AGENT_V8_FLAGS to this process, best before the agent's modules load (cli/early.ts does for the CLI). */
export function useAgentHeapSettings(): void {
  if (applied) return;
  applied = true;
  for (const flag of AGENT_V8_FLAGS) setFlagsFromString(flag);
}
