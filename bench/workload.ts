// The benchmarks' program on a VM: writers through the agent's tracked disks, paced or as fast as the spool lets them.
import { randomBytes } from "node:crypto";
import type { Agent } from "../agent";

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface Workload {
  writeKiB: number;
  sequential: boolean;
  /** MB/s per disk; 0: as fast as the spool bound lets the writers go. */
  ratePerDiskMBps: number;
  seconds: number;
  /** Unpaced writers wait while a disk's spool holds more than this (sealed but not yet in the cache). */
  maxBacklogMiB: number;
  writersPerDisk: number;
}

/** Runs the writers on every disk of `agent` for `w.seconds`; resolves to the bytes written (acknowledged). */
export async function runWorkload(agent: Agent, diskSizeMiB: number, w: Workload): Promise<number> {
  const ids = Object.keys(agent.status().disks);
  const writeBytes = w.writeKiB * 1024;
  // The last MiB is left alone (a lag marker may live there).
  const slots = Math.floor((diskSizeMiB * MiB - MiB) / writeBytes);
  // The program's data: writes are views into 1 MiB (and a write) of random bytes at random 4 KiB offsets (in the agent's process in
  // the churn benchmark, so kept small: it counts in the agent's resident memory there).
  const spread = MiB;
  const payload = randomBytes(writeBytes + spread);
  const t0 = performance.now();
  const end = t0 + w.seconds * 1000;
  let written = 0;
  const writer = async (id: string, stream: number) => {
    const disk = agent.trackedDisk(id);
    let mine = 0;
    // Sequential streams start far apart and move forward, as a log or a bulk load does.
    let cursor = Math.floor((stream * slots) / w.writersPerDisk);
    while (performance.now() < end) {
      if (w.ratePerDiskMBps > 0) {
        const due = t0 + (mine / ((w.ratePerDiskMBps * 1e6) / w.writersPerDisk)) * 1000;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
      } else {
        while (performance.now() < end && (agent.status().disks[id]?.spoolBytes ?? 0) > w.maxBacklogMiB * MiB) await sleep(5);
      }
      if (performance.now() >= end) break;
      const offset = (w.sequential ? cursor++ % slots : Math.floor(Math.random() * slots)) * writeBytes;
      const from = Math.floor(Math.random() * (spread / 4096 + 1)) * 4096;
      await disk.write(offset, payload.subarray(from, from + writeBytes));
      mine += writeBytes;
      written += writeBytes;
    }
  };
  await Promise.all(ids.flatMap((id) => Array.from({ length: w.writersPerDisk }, (_, i) => writer(id, i))));
  return written;
}

/** Each disk's last sealed batch. */
export function lastSeqs(agent: Agent): Record<string, number> {
  return Object.fromEntries(Object.entries(agent.status().disks).map(([id, d]) => [id, d.nextSeq - 1]));
}
