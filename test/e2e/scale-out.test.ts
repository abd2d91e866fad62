// Scale-out: three host processes drain the same queue and storage, as the instances of one Function App do. Every
// disk is applied by one holder at a time: each batch is written exactly once (the hosts' own logs say which seqs each
// leased run wrote), watermarks reach the agents' last batches and every replica equals its source byte for byte.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { createServices, type Services } from "../../functions/compose";
import { startHostProcess, type HostProcess } from "../../local/process";
import { loadConfig } from "../../shared/config/settings";
import { startTestStorage, type LocalStorage } from "../support/storage";
import { assertReplicaEqualsSource, hostProcessApi, lastSeq, protectVm, runWorkload, waitForWatermark, type E2eVm, type StackLike } from "../support/e2e";

const DISKS = ["os", "data0"];
const HOSTS = 3;
/** `<item>/<disk>: applied batches <a>-<b> under lease`: what apply logs of each leased run that wrote. */
const APPLIED = /([0-9a-f-]{36})\/(\w+): applied batches (\d+)-(\d+) under lease/g;

describe("three host processes on one queue and one storage account", () => {
  let storage: LocalStorage;
  let services: Services;
  const hosts: HostProcess[] = [];
  /** Everything each host printed, from its start. */
  const logs: string[] = [];
  before(async () => {
    storage = await startTestStorage();
    // A leased run lets its disk go after 4 batches (re-announced for any host): holders change hands all the time.
    const env = { AzureWebJobsStorage: storage.control, CACHE_STORAGE: storage.cache, AGENT_CHECKIN_SECONDS: "1", APPLY_MAX_BATCHES_PER_RUN: "4" };
    services = createServices(loadConfig(env));
    for (let i = 0; i < HOSTS; i++) {
      const h = await startHostProcess(env);
      logs[i] = "";
      h.child.stdout!.on("data", (c: Buffer) => (logs[i] += c.toString()));
      h.child.stderr!.on("data", (c: Buffer) => (logs[i] += c.toString()));
      hosts.push(h);
    }
  });
  after(async () => {
    await Promise.all(hosts.map((h) => h.kill()));
    await storage?.stop();
  });

  test("every batch of four disks is applied once, by one host at a time, and every replica equals its source", async () => {
    const stack: StackLike = { url: hosts[0]!.url, services, api: hostProcessApi(() => hosts[0]!.url) };
    const vms: E2eVm[] = [await protectVm(stack, "scale-web"), await protectVm(stack, "scale-db")];
    try {
      // Small batches: many messages, so that every host gets its share of the queue.
      const agents = await Promise.all(vms.map((vm) => vm.startAgent({ maxBatchBytes: 256 * 1024 })));
      await Promise.all(agents.map((agent, i) => runWorkload(agent, DISKS, 31 + i, 400)));
      await Promise.all(agents.map((agent) => agent.waitIdle(60_000)));
      for (const [i, vm] of vms.entries()) {
        for (const d of DISKS) {
          await waitForWatermark(stack, vm, d, lastSeq(agents[i]!, d), 180_000);
          await assertReplicaEqualsSource(stack, vm, d);
        }
      }

      // Which host wrote which seqs of each disk, from the hosts' own logs (a run logs once its lease is let go).
      const runsOf = () => {
        const runs = new Map<string, { host: number; from: number; to: number }[]>();
        for (const [host, text] of logs.entries()) {
          for (const m of text.matchAll(APPLIED)) {
            const key = `${m[1]}/${m[2]}`;
            runs.set(key, [...(runs.get(key) ?? []), { host, from: Number(m[3]), to: Number(m[4]) }]);
          }
        }
        return runs;
      };
      const logged = (runs: ReturnType<typeof runsOf>) =>
        vms.every((vm, i) => DISKS.every((d) => (runs.get(`${vm.itemId}/${d}`) ?? []).some((r) => r.to === lastSeq(agents[i]!, d))));
      for (const deadline = Date.now() + 30_000; !logged(runsOf()) && Date.now() < deadline;) await sleep(200);
      const runs = runsOf();
      const hostsThatApplied = new Set<number>();
      for (const [i, vm] of vms.entries()) {
        for (const d of DISKS) {
          const key = `${vm.itemId}/${d}`;
          const ranges = (runs.get(key) ?? []).sort((a, b) => a.from - b.from);
          assert.ok(
            ranges.length > 0,
            `no applied batches logged for ${key}; the hosts logged e.g. ${logs
              .join("\n")
              .split("\n")
              .filter((l) => l.includes("applyBatches"))
              .slice(0, 3)
              .join(" | ")}`,
          );
          // Contiguous and disjoint: each seq from the first to the agent's last written exactly once.
          let next = ranges[0]!.from;
          for (const r of ranges) {
            assert.equal(
              r.from,
              next,
              `${key}: seqs ${r.from}-${r.to} (host ${r.host}) ${r.from < next ? "overlap a batch already applied" : `leave ${next}-${r.from - 1} unapplied`}`,
            );
            next = r.to + 1;
            hostsThatApplied.add(r.host);
          }
          assert.ok(ranges[0]!.from <= 1, `${key}: the first batch applied is ${ranges[0]!.from}`);
          assert.equal(next - 1, lastSeq(agents[i]!, d), `${key}: the last batch applied is the agent's last`);
        }
      }
      assert.ok(hostsThatApplied.size >= 2, `the work was shared: hosts that applied batches ${[...hostsThatApplied].join(", ")}`);
    } finally {
      await Promise.all(vms.map((vm) => vm.cleanup()));
    }
  });
});
