// The VM of `npm run bench -- churn`: an agent on tracked disks and the program writing through it, in a process of
// their own so that the benchmark reads the agent's CPU and memory alone (the writers' data is 1 MiB and one write).
import { useAgentHeapSettings } from "../agent/heap";
// Before the agent's modules load, as the `site-recovery agent` command does (cli/early.ts).
useAgentHeapSettings();
import { Agent } from "../agent";
import { lastSeqs, runWorkload, type Workload } from "./workload";

export interface ChurnWorkerStart {
  type: "start";
  url: string;
  token: string;
  stateDir: string;
  images: Record<string, string>;
  diskSizeMiB: number;
}

export interface ChurnWorkerPhase extends Workload {
  type: "phase";
}

export type ChurnWorkerCommand = ChurnWorkerStart | ChurnWorkerPhase | { type: "stop" };
export type ChurnWorkerReply =
  | { type: "ready" }
  | { type: "written"; bytes: number; lastSeq: Record<string, number>; memory: MemoryPeaks }
  | { type: "failed"; message: string }
  | { type: "stopped" };

/** Peaks of process.memoryUsage() over a phase, MiB: where the agent's resident memory is. */
export interface MemoryPeaks {
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

let agent: Agent | undefined;
let diskSizeMiB = 0;
const send = (m: ChurnWorkerReply) => process.send!(m);

async function phase(p: ChurnWorkerPhase): Promise<void> {
  const peaks: MemoryPeaks = { rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 };
  const sample = () => {
    const m = process.memoryUsage();
    for (const k of Object.keys(peaks) as (keyof MemoryPeaks)[]) peaks[k] = Math.max(peaks[k], Math.round((m[k] / 2 ** 20) * 10) / 10);
  };
  const timer = setInterval(sample, 100);
  try {
    const written = await runWorkload(agent!, diskSizeMiB, p);
    // Everything written is sealed, in the spool and shipped: what is left is the pipeline's.
    await agent!.waitIdle(600_000);
    sample();
    send({ type: "written", bytes: written, lastSeq: lastSeqs(agent!), memory: peaks });
  } finally {
    clearInterval(timer);
  }
}

process.on("message", (m: ChurnWorkerCommand) => {
  void (async () => {
    try {
      if (m.type === "start") {
        diskSizeMiB = m.diskSizeMiB;
        agent = await Agent.start({
          url: m.url,
          token: m.token,
          stateDir: m.stateDir,
          disks: Object.entries(m.images).map(([id, path]) => ({ id, path, kind: "tracked" as const })),
        });
        await agent.waitIdle(600_000);
        send({ type: "ready" });
      } else if (m.type === "phase") {
        await phase(m);
      } else {
        await agent?.stop();
        send({ type: "stopped" });
        process.exit(0);
      }
    } catch (e) {
      send({ type: "failed", message: (e as Error).stack ?? String(e) });
    }
  })();
});
