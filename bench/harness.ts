// What every benchmark shares: a local stack in child processes (Azurite, the Functions host), stats, and results files.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { startAzurite, type LocalStorage } from "../local/azurite";
import { startHostProcess, type HostProcess } from "../local/process";

export const ROOT = resolve(__dirname, "..", "..");
export const RESULTS_DIR = join(ROOT, "bench", "results");

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export const round = (n: number, digits = 2) => Math.round(n * 10 ** digits) / 10 ** digits;

export interface BenchStack {
  url: string;
  storage: LocalStorage;
  dir: string;
  host: HostProcess;
  stop(): Promise<void>;
}

/**
 * Azurite on disk (as `npm start` runs it) and the local Functions host in its own process, so that the agent's CPU
 * and memory, measured in this process, are the agent's alone.
 */
export async function startBenchStack(env: NodeJS.ProcessEnv = {}): Promise<BenchStack> {
  const dir = mkdtempSync(join(tmpdir(), "site-recovery-bench-"));
  const storage = await startAzurite({ location: join(dir, "azurite"), silent: true });
  const host = await startHostProcess({ AzureWebJobsStorage: storage.control, CACHE_STORAGE: storage.cache, ...env });
  return {
    url: host.url,
    storage,
    dir,
    host,
    async stop() {
      await host.stop();
      await storage.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function machine() {
  return { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? "unknown", memoryGiB: round(totalmem() / 2 ** 30, 1), node: process.version, platform: process.platform };
}

/** Writes `<name>-<time>.json` and `<name>-latest.json` under bench/results. */
export function writeResults(name: string, result: unknown): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const body = JSON.stringify(result, null, 2);
  const stamped = join(RESULTS_DIR, `${name}-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
  writeFileSync(stamped, body);
  writeFileSync(join(RESULTS_DIR, `${name}-latest.json`), body);
  return stamped;
}

/** A markdown table, as printed and as pasted into the README. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, c) => Math.max(...cells.map((r) => r[c]!.length)));
  const line = (r: string[]) => `| ${r.map((v, c) => v.padEnd(widths[c]!)).join(" | ")} |`;
  return [line(header), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...rows.map((r) => line(r.map(String)))].join("\n");
}

/** Samples this process's CPU time and peak RSS over a phase. */
export class ProcessMeter {
  private readonly cpu0 = process.cpuUsage();
  private readonly t0 = performance.now();
  private peakRss = process.memoryUsage().rss;
  private readonly timer = setInterval(() => {
    this.peakRss = Math.max(this.peakRss, process.memoryUsage().rss);
  }, 50);

  stop(): { cpuPercent: number; peakRssMiB: number } {
    clearInterval(this.timer);
    const cpu = process.cpuUsage(this.cpu0);
    const wallMs = performance.now() - this.t0;
    return { cpuPercent: round(((cpu.user + cpu.system) / 1000 / wallMs) * 100, 1), peakRssMiB: round(Math.max(this.peakRss, process.memoryUsage().rss) / 2 ** 20, 1) };
  }
}
