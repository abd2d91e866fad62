// `npm run bench -- scale-out`: the same cached work (batches already in the cache, one message per batch) drained by
// 1, 2 and 3 local host processes on one queue and one storage, as the instances of one Function App: applied
// throughput, CPU per GB, which host applied which batches (one holder at a time), exact watermarks and bytes.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { crc32c } from "@node-rs/crc32";
import { QueueClient } from "@azure/storage-queue";
import { startAzurite } from "../local/azurite";
import { startHostProcess, type HostProcess } from "../local/process";
import { parseConnectionString } from "../shared/config/settings";
import { batchBlobName, encodeBatch } from "../shared/replication/batch";
import { cacheContainerName } from "../shared/protection/items";
import { blobService } from "../shared/storage/clients";
import { queueMessageText, REPLICATION_QUEUE } from "../shared/storage/names";
import { ApiClient } from "../shared/contract/client";
import { machine, nodeArgsFrom, PidMeter, round, table, writeResults } from "./harness";

const MiB = 1024 * 1024;
/** `<item>/<disk>: applied batches <a>-<b> under lease`: what apply logs of each leased run that wrote. */
const APPLIED = /([0-9a-f-]{36})\/(\w+): applied batches (\d+)-(\d+) under lease/g;

export interface ScaleOutBenchOptions {
  hostCounts: number[];
  vms: number;
  disksPerVm: number;
  batchesPerDisk: number;
  batchMiB: number;
  /** APPLY_MAX_BATCHES_PER_RUN for the hosts (undefined: the product default). */
  maxBatchesPerRun?: number;
  log: (line: string) => void;
}

interface Disk {
  itemId: string;
  diskId: string;
  /** CRC32C of each batch's payload, in seq order: the replica's bytes, 4 MiB at a time. */
  crcs: number[];
}

export async function benchScaleOut(o: ScaleOutBenchOptions) {
  const perRound = o.vms * o.disksPerVm * o.batchesPerDisk * o.batchMiB;
  o.log(
    `scale-out benchmark: ${o.hostCounts.join(", ")} host processes, each time ${o.vms} VMs × ${o.disksPerVm} disks × ${o.batchesPerDisk} batches of ${o.batchMiB} MiB (${perRound} MiB) already cached`,
  );
  const dir = mkdtempSync(join(tmpdir(), "site-recovery-bench-"));
  const storage = await startAzurite({ location: join(dir, "azurite"), silent: true });
  const env: NodeJS.ProcessEnv = {
    AzureWebJobsStorage: storage.control,
    CACHE_STORAGE: storage.cache,
    AGENT_CHECKIN_SECONDS: "5",
    ...(o.maxBatchesPerRun ? { APPLY_MAX_BATCHES_PER_RUN: String(o.maxBatchesPerRun) } : {}),
  };
  const hosts: HostProcess[] = [];
  try {
    // Every round's VMs are enabled up front by one host, which then stops: nothing is applied until a round starts.
    const first = await startHostProcess(env);
    const api = new ApiClient(first.url);
    const rounds: Disk[][] = [];
    for (const [r] of o.hostCounts.entries()) {
      const disks: Disk[] = [];
      for (let v = 0; v < o.vms; v++) {
        const res = await api.request<{ id: string; disks: { id: string }[] }>("POST", "replicated-items", {
          vm: {
            name: `scale-${r}-${v}`,
            region: "eastus",
            resourceGroup: "bench-rg",
            size: "Standard_D2s_v5",
            network: { vnet: "bench-vnet", subnet: "default", privateIp: `10.3.${r}.${v + 4}` },
            disks: Array.from({ length: o.disksPerVm }, (_, i) => ({ id: i === 0 ? "os" : `data${i - 1}`, sizeBytes: o.batchesPerDisk * o.batchMiB * MiB })),
          },
          targetRegion: "westus",
        });
        if (res.status !== 201) throw new Error(`enable failed: ${JSON.stringify(res.body)}`);
        for (const d of res.body.disks) disks.push({ itemId: res.body.id, diskId: d.id, crcs: [] });
      }
      rounds.push(disks);
    }
    await first.stop();

    const cache = blobService(parseConnectionString(storage.cache));
    const replicas = blobService(parseConnectionString(storage.control)).getContainerClient("replicas");
    const queue = new QueueClient(storage.control, REPLICATION_QUEUE);
    await queue.createIfNotExists();
    const base = randomBytes(o.batchMiB * MiB);
    const rows = [];
    for (const [r, hostCount] of o.hostCounts.entries()) {
      const disks = rounds[r]!;
      o.log(`round ${r + 1}: caching ${disks.length * o.batchesPerDisk} batches…`);
      const jobs = disks.flatMap((d, di) => Array.from({ length: o.batchesPerDisk }, (_, s) => ({ d, di, seq: s + 1 })));
      let next = 0;
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          while (next < jobs.length) {
            const { d, di, seq } = jobs[next++]!;
            const payload = Buffer.from(base);
            payload.writeUInt32LE(seq, 0);
            payload.writeUInt32LE(di, 4);
            payload.writeUInt32LE(r, 8);
            d.crcs[seq - 1] = crc32c(payload);
            const now = Date.now();
            const body = encodeBatch(
              {
                itemId: d.itemId,
                diskId: d.diskId,
                seq,
                extents: [{ offset: (seq - 1) * payload.length, length: payload.length }],
                firstWriteMs: now,
                lastWriteMs: now,
              },
              payload,
            );
            await cache.getContainerClient(cacheContainerName(d.itemId)).getBlockBlobClient(batchBlobName(d.diskId, seq)).upload(body, body.length);
          }
        }),
      );
      o.log(`round ${r + 1}: ${hostCount} host process(es)…`);
      const logs: string[] = [];
      for (let h = 0; h < hostCount; h++) {
        const host = await startHostProcess(env, { nodeArgs: nodeArgsFrom("BENCH_HOST_NODE_ARGS") });
        logs[h] = "";
        host.child.stdout!.on("data", (c: Buffer) => (logs[h] += c.toString()));
        host.child.stderr!.on("data", (c: Buffer) => (logs[h] += c.toString()));
        hosts.push(host);
      }
      const meter = new PidMeter([...hosts.map((h) => h.child.pid!), storage.pid]);
      const t0 = performance.now();
      // One message per batch, as agents send them.
      const messages = jobs.map(({ d, seq }) => queueMessageText({ v: 1, itemId: d.itemId, diskId: d.diskId, seq }));
      let m = 0;
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          while (m < messages.length) await queue.sendMessage(messages[m++]!);
        }),
      );
      for (;;) {
        const marks = await Promise.all(
          disks.map(async (d) => (await replicas.getPageBlobClient(`${d.itemId}/${d.diskId}.vhd`).getProperties()).blobSequenceNumber ?? 0),
        );
        if (marks.every((w) => w === o.batchesPerDisk)) break;
        if (marks.some((w) => w > o.batchesPerDisk)) throw new Error(`a watermark passed the last batch: ${marks.join(", ")}`);
        if (performance.now() - t0 > 900_000) throw new Error(`not drained after 900 s: watermarks ${marks.join(", ")}`);
        await sleep(50);
      }
      const seconds = (performance.now() - t0) / 1000;
      const usage = meter.stop();
      // A run logs its range once its lease is let go: give the last ones a moment.
      await sleep(1500);
      // Bytes: each 4 MiB of every replica is the batch that wrote it.
      let bytesExact = true;
      for (const d of disks) {
        const bytes = await replicas.getPageBlobClient(`${d.itemId}/${d.diskId}.vhd`).downloadToBuffer(0, o.batchesPerDisk * o.batchMiB * MiB);
        d.crcs.forEach((c, i) => {
          if (crc32c(bytes.subarray(i * o.batchMiB * MiB, (i + 1) * o.batchMiB * MiB)) !== c) bytesExact = false;
        });
      }
      // Holders: the leased runs of every disk, from the hosts' own logs, must tile 1..N without overlap.
      const runs = new Map<string, { host: number; from: number; to: number }[]>();
      for (const [h, text] of logs.entries()) {
        for (const x of text.matchAll(APPLIED))
          runs.set(`${x[1]}/${x[2]}`, [...(runs.get(`${x[1]}/${x[2]}`) ?? []), { host: h, from: Number(x[3]), to: Number(x[4]) }]);
      }
      let oneHolder = true;
      const hostsThatApplied = new Set<number>();
      let handOvers = 0;
      for (const d of disks) {
        const list = (runs.get(`${d.itemId}/${d.diskId}`) ?? []).sort((a, b) => a.from - b.from);
        let expect = 1;
        for (const [k, run] of list.entries()) {
          if (run.from !== expect) oneHolder = false;
          expect = run.to + 1;
          hostsThatApplied.add(run.host);
          if (k > 0 && list[k - 1]!.host !== run.host) handOvers++;
        }
        if (expect !== o.batchesPerDisk + 1) oneHolder = false;
      }
      const gb = (disks.length * o.batchesPerDisk * o.batchMiB * MiB) / 1e9;
      const hostCpu = usage.cpuSeconds.slice(0, hostCount).reduce((a, b) => a + b, 0);
      const row = {
        hosts: hostCount,
        seconds: round(seconds, 1),
        appliedMBps: round((gb * 1000) / seconds, 1),
        hostsThatApplied: hostsThatApplied.size,
        handOvers,
        watermarksExact: true,
        bytesExact,
        leasedRunsTile: oneHolder,
        hostCpuPerGB: round(hostCpu / gb, 1),
        azuriteCpuPerGB: round(usage.cpuSeconds[hostCount]! / gb, 1),
        hostPeakRssMiB: Math.max(...usage.peakRssMiB.slice(0, hostCount)),
      };
      rows.push(row);
      o.log(`  ${row.appliedMBps} MB/s, ${row.hostsThatApplied} host(s) applied, bytes exact: ${bytesExact}, runs tile 1..N: ${oneHolder}`);
      await Promise.all(hosts.splice(0).map((h) => h.stop()));
    }
    const one = rows[0]!.appliedMBps;
    const result = {
      benchmark: "scale-out",
      at: new Date().toISOString(),
      machine: machine(),
      storage: "Azurite 3.35.0, disk mode, on this machine (one process for every host)",
      options: { ...o, log: undefined },
      rounds: rows.map((r) => ({ ...r, ratioToOneHost: round(r.appliedMBps / one, 2) })),
      targets: { twoHostsRatioAtLeast: 1 },
    };
    const file = writeResults("scale-out", result);
    o.log(
      table(
        [
          "host processes",
          "seconds",
          "applied MB/s",
          "÷ 1 host",
          "hosts that applied",
          "hand-overs",
          "watermarks exact",
          "bytes exact",
          "runs tile 1..N",
          "host CPU s/GB",
          "Azurite CPU s/GB",
        ],
        result.rounds.map((r) => [
          r.hosts,
          r.seconds,
          r.appliedMBps,
          r.ratioToOneHost,
          r.hostsThatApplied,
          r.handOvers,
          r.watermarksExact ? "yes" : "no",
          r.bytesExact ? "yes" : "no",
          r.leasedRunsTile ? "yes" : "no",
          r.hostCpuPerGB,
          r.azuriteCpuPerGB,
        ]),
      ),
    );
    o.log(`results: ${file}`);
    return result;
  } finally {
    await Promise.all(hosts.map((h) => h.stop()));
    await storage.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
