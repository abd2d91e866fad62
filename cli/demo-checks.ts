// The drill's steps beside its sequence: enable bodies, images, waits, failovers followed, every failover disk compared with its fingerprint at the point, the report printed.
import { setTimeout as sleep } from "node:timers/promises";
import { randomBytes } from "node:crypto";
import { closeSync, ftruncateSync, openSync, writeSync } from "node:fs";
import { crc32c } from "@node-rs/crc32";
import type { ContainerClient } from "@azure/storage-blob";
import { blobService } from "../shared/storage/clients";
import { FAILOVER_CONTAINER } from "../shared/storage/names";
import { ApiCallError, ApiClient } from "../shared/contract/client";
import { followFailover } from "./follow-failover";
import { formatTable } from "./format";
import { CutFingerprints } from "./demo-workload";
import { BLOCK, DISK_IDS, GROUP, MiB, TAG_SECONDS } from "./demo-model";
import { clock, mb, secs, short, type DemoVm, type FailoverRun, type ItemView } from "./demo-model";
import { DemoError, DemoReport, DiskCheck } from "./demo-model";

// ---------------------------------------------------------------------------------------------
// Steps

export function enableBody(name: string, privateIp: string, diskBytes: number) {
  return {
    vm: {
      name,
      region: "eastus",
      resourceGroup: "demo-rg",
      size: "Standard_D2s_v5",
      network: { vnet: "demo-vnet", subnet: "app", privateIp },
      disks: DISK_IDS.map((id) => ({ id, sizeBytes: diskBytes })),
    },
    targetRegion: "westus",
    replicationGroup: GROUP,
    policy: { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: TAG_SECONDS, appConsistentFrequencyMinutes: 0 },
  };
}

/** A sparse image of the disk's size with random data in one eighth of its 64 KiB blocks: work for the initial copy. */
export function writeImage(path: string, sizeBytes: number): void {
  const fd = openSync(path, "w");
  try {
    ftruncateSync(fd, sizeBytes);
    const blocks = sizeBytes / BLOCK;
    const picked = new Set<number>();
    while (picked.size < Math.max(1, Math.floor(blocks / 8))) picked.add(Math.floor(Math.random() * blocks));
    for (const b of picked) writeSync(fd, randomBytes(BLOCK), 0, BLOCK, b * BLOCK);
  } finally {
    closeSync(fd);
  }
}

export function percent(v: ItemView): string {
  const total = v.disks.reduce((n, d) => n + (d.initialReplication?.totalBytes ?? d.sizeBytes), 0);
  const done = v.disks.reduce((n, d) => n + (d.initialReplication?.doneBytes ?? 0), 0);
  return `${total ? ((done / total) * 100).toFixed(1) : "0.0"}%`;
}

/** The group's barrier is up: one agent coordinates and every other one is connected to it. */
export async function waitForGroup(vms: DemoVm[], timeoutMs = 60_000): Promise<DemoVm> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const c = vms.find((v) => v.agent!.groupRole === "coordinator");
    if (c && c.agent!.groupMembersConnected().length >= vms.length - 1) return c;
    if (Date.now() > deadline) {
      throw new DemoError(
        `the replication group's barrier did not form within ${timeoutMs / 1000} s (roles: ${vms.map((v) => `${v.name} ${v.agent!.groupRole}`).join(", ")})`,
      );
    }
    await sleep(200);
  }
}

/** Waits until the newest sealed group point is one whose cut this drill fingerprinted. */
export async function waitForFingerprintedPoint(
  api: ApiClient,
  vm: DemoVm,
  fingerprints: CutFingerprints,
  status: (line: string) => void,
  timeoutMs = (TAG_SECONDS * 3 + 60) * 1000,
): Promise<{ id: string; kind: string; time: string }> {
  const deadline = Date.now() + timeoutMs;
  let said = 0;
  for (;;) {
    const points = await api.call<{ id: string; kind: string; time: string; scope: string }[]>("GET", `replicated-items/${vm.itemId}/recovery-points`);
    const newest = points.find((p) => p.scope === "group");
    if (newest && fingerprints.has(newest.id)) return newest;
    if (Date.now() > deadline) throw new DemoError(`no group recovery point was sealed within ${timeoutMs / 1000} s`);
    if (Date.now() - said > 2000) {
      status(`waiting for a group recovery point (one every ${TAG_SECONDS} s)`);
      said = Date.now();
    }
    await sleep(500);
  }
}

/** Starts a failover, shows its progress (custom status) until it ends, and returns its output. */
export async function runFailover(api: ApiClient, body: unknown, phase: "test" | "unplanned", status: (line: string) => void): Promise<FailoverRun> {
  const started = performance.now();
  const { id } = await api.call<{ id: string }>("POST", "failovers", body);
  status(`failover ${id} accepted (202)`);
  const st = await followFailover(api, id, (line, s) => status(`${phase} failover ${s.runtimeStatus}: ${line}`), { repeatMs: 2000, timeoutMs: 300_000 }).catch(
    (e: Error) => {
      throw e instanceof ApiCallError ? e : new DemoError(`the ${phase} failover: ${e.message}`);
    },
  );
  if (st.runtimeStatus !== "Completed") {
    const why = st.customStatus?.error ?? (typeof st.output === "string" ? st.output : JSON.stringify(st.output));
    throw new DemoError(`the ${phase} failover ${id} ended ${st.runtimeStatus}: ${why}`);
  }
  if (!st.output || typeof st.output === "string") throw new DemoError(`failover ${id} completed without an output`);
  return { phase, instanceId: id, output: st.output, wallSeconds: Math.round((performance.now() - started) / 100) / 10 };
}

export function failoverSummary(run: FailoverRun): DemoReport["failovers"][number] {
  return {
    phase: run.phase,
    instanceId: run.instanceId,
    rtoSeconds: run.output.rtoSeconds,
    wallSeconds: run.wallSeconds,
    vms: run.output.vms.map((v) => ({
      vm: v.vm,
      recoveryPoint: v.recoveryPoint,
      dataLossWindowSeconds: v.dataLossWindowSeconds,
      failoverDurationSeconds: v.failoverDurationSeconds,
    })),
  };
}

/** Every failover disk of the run against the fingerprint of its VM's disk at the point's cut, 64 KiB block by block. */
export async function verifyRun(
  replica: Parameters<typeof blobService>[0],
  run: FailoverRun,
  vms: DemoVm[],
  fingerprints: CutFingerprints,
  print: (line: string) => void,
): Promise<DiskCheck[]> {
  const o = run.output;
  print(`      ${run.phase} failover completed: RTO ${secs(o.rtoSeconds)} (orchestration), ${secs(run.wallSeconds)} from POST to Completed`);
  const container = blobService(replica).getContainerClient(FAILOVER_CONTAINER);
  const checks: DiskCheck[] = [];
  for (const v of o.vms) {
    const vm = vms.find((x) => x.itemId === v.itemId);
    const p = v.recoveryPoint;
    print(
      `      ${v.vm.padEnd(9)} → ${v.targetVm.name} (${v.targetVm.powerState}, ${v.targetVm.privateIp}) from point ${short(p.id)} (${p.kind}, ${p.scope}, ${clock(p.time)}Z), ` +
        `data-loss window ${v.dataLossWindowSeconds} s`,
    );
    if (v.disks.length !== DISK_IDS.length) print(`        expected ${DISK_IDS.length} disks, the output lists ${v.disks.length}`);
    for (const d of v.disks) {
      const size = vm?.disks.find((x) => x.id === d.diskId)?.sizeBytes ?? 0;
      const check = await verifyDisk(container, d.blob, size, fingerprints.get(p.id, v.itemId, d.diskId));
      const c: DiskCheck = { phase: run.phase, vm: v.vm, diskId: d.diskId, pointId: p.id, ...check };
      checks.push(c);
      print(
        `        ${d.diskId.padEnd(6)} ${d.blob}: ` +
          (c.matched
            ? `${c.blocks}/${c.blocks} blocks match the source at the point`
            : `MISMATCH — ${c.problem ?? `${c.mismatchedBlocks} of ${c.blocks} blocks differ, the first at byte ${c.firstMismatchAt}`}`),
      );
    }
  }
  return checks;
}

async function verifyDisk(
  container: ContainerClient,
  blobPath: string,
  sizeBytes: number,
  expected: Uint32Array | undefined,
): Promise<Omit<DiskCheck, "phase" | "vm" | "diskId" | "pointId">> {
  const base = { blob: blobPath, blocks: expected?.length ?? Math.ceil(sizeBytes / BLOCK), mismatchedBlocks: 0 };
  if (!expected) return { ...base, matched: false, problem: "no fingerprint of this point: its cut was not seen by the drill" };
  const prefix = `${FAILOVER_CONTAINER}/`;
  if (!blobPath.startsWith(prefix)) return { ...base, matched: false, problem: `not a blob of the ${FAILOVER_CONTAINER} container` };
  const blob = container.getPageBlobClient(blobPath.slice(prefix.length));
  const length = (await blob.getProperties()).contentLength ?? 0;
  if (length !== sizeBytes + 512) return { ...base, matched: false, problem: `${length} bytes, expected the disk's ${sizeBytes} + a 512-byte VHD footer` };
  const footer = await blob.downloadToBuffer(sizeBytes, 512);
  if (footer.subarray(0, 8).toString("latin1") !== "conectix") return { ...base, matched: false, problem: "the last 512 bytes are not a VHD footer" };
  let mismatchedBlocks = 0;
  let firstMismatchAt: number | undefined;
  for (let at = 0; at < sizeBytes; at += 4 * MiB) {
    const chunk = await blob.downloadToBuffer(at, Math.min(4 * MiB, sizeBytes - at));
    for (let b = 0; b < chunk.length; b += BLOCK) {
      const index = (at + b) / BLOCK;
      if (crc32c(chunk.subarray(b, Math.min(chunk.length, b + BLOCK))) !== expected[index]) {
        mismatchedBlocks++;
        firstMismatchAt ??= at + b;
      }
    }
  }
  return { ...base, mismatchedBlocks, ...(firstMismatchAt !== undefined ? { firstMismatchAt } : {}), matched: mismatchedBlocks === 0 };
}

// ---------------------------------------------------------------------------------------------
// The report

export function printReport(r: DemoReport, print: (line: string) => void): void {
  print(`\n[6/6] Report`);
  const rows: string[][] = [];
  for (const f of r.failovers) {
    for (const v of f.vms) {
      const disks = r.disks.filter((d) => d.phase === f.phase && d.vm === v.vm);
      rows.push([
        f.phase,
        v.vm,
        `${short(v.recoveryPoint.id)} ${v.recoveryPoint.kind}/${v.recoveryPoint.scope}`,
        `${clock(v.recoveryPoint.time)}Z`,
        `${v.dataLossWindowSeconds} s`,
        secs(f.rtoSeconds),
        secs(f.wallSeconds),
        `${disks.filter((d) => d.matched).length}/${disks.length} match`,
      ]);
    }
  }
  if (rows.length > 0) {
    const table = formatTable(["FAILOVER", "VM", "RECOVERY POINT", "POINT TIME", "DATA LOSS", "RTO", "POST→DONE", "DISKS"], rows);
    for (const l of table.split("\n")) print(`  ${l}`);
    print("");
  }
  const rpo = r.vms.map((v) => `${v.vm} max ${v.rpoSecondsMax ?? "-"} s, last ${v.rpoSecondsLast ?? "-"} s`).join(" · ");
  print(`  RPO during the run      ${rpo}`);
  print(
    `  group tags              ${r.groupTags.cut} cut, every ${r.settings.crashConsistentFrequencySeconds} s; writes held at most ${r.groupTags.maxWriteHoldMs} ms per cut (the drill's fingerprinting included)`,
  );
  print(`  workload                ${mb(r.workload.bytesWritten)} acknowledged in ${r.workload.writes} writes over ${secs(r.workload.seconds)}`);
  print(
    `  replicated              ${mb(r.replication.bytesShipped)} shipped to the cache in ${r.replication.batchesShipped} batches (initial copy included, done in ${secs(r.replication.initialReplicationSeconds)})`,
  );
  const expected = r.settings.vms * r.settings.disksPerVm * 2;
  const matched = r.disks.filter((d) => d.matched).length;
  print(
    `  disks verified          ${matched}/${expected} (test and unplanned failover disks, CRC32C of every 64 KiB block against the source at the point's cut)`,
  );
  if (r.ok) {
    print(`\nRESULT: PASS — all ${matched}/${expected} failed-over disks matched their recovery points block for block.`);
    return;
  }
  const bad = r.disks.filter((d) => !d.matched);
  for (const d of bad) {
    print(
      `  MISMATCH ${d.phase} ${d.vm}/${d.diskId} (${d.blob}, point ${d.pointId}): ${d.problem ?? `${d.mismatchedBlocks} of ${d.blocks} blocks differ, first at byte ${d.firstMismatchAt}`}`,
    );
  }
  const why = r.error
    ? `the drill failed: ${r.error}`
    : `${bad.length} of ${expected} failed-over disks do not match their recovery points (${matched} matched)`;
  print(`\nRESULT: FAIL — ${why}`);
}
