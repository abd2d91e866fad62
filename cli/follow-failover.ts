// Following a failover from the CLI and the drill: its status polled until it ends, each change of progress shown as one line.
import { setTimeout as sleep } from "node:timers/promises";
import type { FailoverStatusBody } from "../shared/contract/responses";
import type { ApiClient } from "../shared/contract/client";

const RUNNING = new Set(["Running", "Pending", "ContinuedAsNew"]);

/** `[group 1/2] copying disks  web-1: copying disks (1/2 copied); db-1: …`, or the runtime status before any progress. */
export function progressLine(st: FailoverStatusBody): string {
  const c = st.customStatus;
  if (!c) return st.runtimeStatus;
  const vms = Object.values(c.vms ?? {})
    .map((v) => `${v.vm}: ${v.step}${v.disks ? ` (${v.disks})` : ""}`)
    .join("; ");
  return `${c.stage ? `[group ${c.stage.index}/${c.stage.count}] ` : ""}${c.step}  ${vms}`.trimEnd();
}

export interface FollowOptions {
  pollMs?: number;
  /** Also show an unchanged line again after this long (a sign of life on long steps). */
  repeatMs?: number;
  /** Give up (throw) after this long. */
  timeoutMs?: number;
}

/** Polls the failover until it is no longer running, showing each new progress line; returns the last status. */
export async function followFailover(
  api: ApiClient,
  id: string,
  show: (line: string, st: FailoverStatusBody) => void,
  o: FollowOptions = {},
): Promise<FailoverStatusBody> {
  const started = Date.now();
  let last = "";
  let shownAt = 0;
  for (;;) {
    const st = await api.call<FailoverStatusBody>("GET", `failovers/${encodeURIComponent(id)}`);
    const line = progressLine(st);
    if (line !== last || (o.repeatMs !== undefined && Date.now() - shownAt > o.repeatMs)) {
      show(line, st);
      last = line;
      shownAt = Date.now();
    }
    if (!RUNNING.has(st.runtimeStatus)) return st;
    if (o.timeoutMs !== undefined && Date.now() - started > o.timeoutMs)
      throw new Error(`failover ${id} did not finish within ${o.timeoutMs / 1000} s (last: ${line})`);
    await sleep(o.pollMs ?? 500);
  }
}
