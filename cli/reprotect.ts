// `site-recovery reprotect` and `resync`: turn a committed item around and follow its differential initial replication (seeded, compared, shipped, ETA).
import { setTimeout as sleep } from "node:timers/promises";
import type { ApiClient } from "../shared/contract/client";
import type { ReprotectJob } from "../shared/contract/responses";

const mib = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`;
const eta = (s: number | null | undefined) =>
  s === null || s === undefined ? "ETA -" : s === 0 ? "done" : `ETA ${s >= 120 ? `${Math.round(s / 60)} min` : `${s} s`}`;

/** `seeding replicas` or `initial replication (differential)  compared 12.0/128.0 MiB (9%) · shipped 1.2 MiB · ETA 40 s`. */
export function reprotectLine(job: ReprotectJob): string {
  const c = job.customStatus;
  if (!c) return job.runtimeStatus;
  const p = c.progress;
  if (!p || p.totalBytes === 0) return c.step;
  const pct = Math.floor((100 * p.doneBytes) / p.totalBytes);
  return `${c.step}  compared ${mib(p.doneBytes)}/${mib(p.totalBytes)} (${pct}%) · shipped ${mib(p.transferredBytes)} · ${eta(p.etaSeconds)}`;
}

/** Polls the re-protect job until it ends, showing each new line; returns the last job. */
export async function followReprotect(api: ApiClient, itemId: string, show: (line: string) => void, pollMs = 1000): Promise<ReprotectJob> {
  let last = "";
  for (;;) {
    const job = await api.call<ReprotectJob>("GET", `replicated-items/${encodeURIComponent(itemId)}/reprotect`);
    const line = reprotectLine(job);
    if (line !== last) show((last = line));
    if (job.state !== "InProgress") return job;
    await sleep(pollMs);
  }
}
