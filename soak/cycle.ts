// The soak's once-per-run DR cycle on one VM: planned failover → commit → re-protect (reverse) → Protected → planned failback → commit → re-protect (forward) → Protected, every failover disk and every replica checked against the byte model.
import { firstDifference } from "./model";
import { FINISHED, sleep, type FailoverAnswer, type FailoverVm, type FaultRecord, type SoakContext } from "./context";
import type { SoakVm } from "./vms";

/** Starts a failover and waits for it to complete (bounded); its output. */
export async function runFailover(ctx: SoakContext, body: unknown, what: string): Promise<FailoverVm[]> {
  const res = await ctx.api("POST", "failovers", body);
  if (res.status !== 202) ctx.diverge(`${what}: ${res.status} ${JSON.stringify(res.body)}`);
  const deadline = Date.now() + ctx.failoverTimeoutMs;
  let st: FailoverAnswer | undefined;
  for (;;) {
    st = (await ctx.api<FailoverAnswer | undefined>("GET", `failovers/${res.body.id}`)).body;
    if (FINISHED.includes(st?.runtimeStatus ?? "")) break;
    if (Date.now() > deadline) ctx.diverge(`${what} still ${st?.runtimeStatus} after ${ctx.failoverTimeoutMs / 1000} s: ${JSON.stringify(st?.customStatus)}`);
    await sleep(500);
  }
  if (st?.runtimeStatus !== "Completed" || !st.output) return ctx.diverge(`${what} ${st?.runtimeStatus}: ${JSON.stringify(st?.output ?? st?.customStatus)}`);
  return st.output.vms;
}

/** Every disk of a planned failover holds every write acknowledged before it (the workload is paused: the model is exact). */
async function failoverDisksEqualModel(ctx: SoakContext, v: SoakVm, out: FailoverVm, direction: "forward" | "reverse", what: string) {
  const container = await ctx.failoverDisks(direction);
  const bytes = new Map<string, Buffer>();
  for (const d of out.disks) {
    const all = await container
      .getPageBlobClient(d.blob.replace(/^failover\//, ""))
      .downloadToBuffer(0, undefined, { abortSignal: AbortSignal.timeout(120_000) });
    if (all.length !== ctx.diskBytes + 512) ctx.diverge(`${what}: ${d.blob} is ${all.length} bytes, expected the disk and a 512-byte footer`);
    const disk = all.subarray(0, ctx.diskBytes);
    const model = v.models.get(d.diskId)!.current();
    if (!disk.equals(model))
      ctx.diverge(`${what}: ${d.blob} of ${v.spec.name}/${d.diskId} differs from the model (first difference at byte ${firstDifference(disk, model)})`);
    bytes.set(d.diskId, Buffer.from(disk));
  }
  return bytes;
}

async function waitState(ctx: SoakContext, v: SoakVm, state: string, direction: "forward" | "reverse", what: string): Promise<void> {
  const deadline = Date.now() + 2 * ctx.failoverTimeoutMs;
  for (;;) {
    const item = (await ctx.api("GET", `replicated-items/${v.itemId}`)).body;
    if (item?.state === state && item.direction === direction) return;
    if (Date.now() > deadline) ctx.diverge(`${what}: ${v.spec.name} still ${item?.state} (${item?.direction}) after ${(2 * ctx.failoverTimeoutMs) / 1000} s`);
    await sleep(1000);
  }
}

/** Commit, then re-protect: the VM now running (on `disks`) replicates the other way through a newly registered agent. */
async function commitAndReprotect(ctx: SoakContext, v: SoakVm, disks: Map<string, Buffer>, direction: "forward" | "reverse", note: (s: string) => void) {
  const commit = await ctx.api("POST", `replicated-items/${v.itemId}/commit`, {});
  if (commit.status !== 200) ctx.diverge(`commit of ${v.spec.name}: ${commit.status} ${JSON.stringify(commit.body)}`);
  note("committed");
  const rp = await ctx.api("POST", `replicated-items/${v.itemId}/reprotect`, {});
  if (rp.status !== 202 || rp.body.direction !== direction)
    ctx.diverge(`re-protect of ${v.spec.name} (${direction}): ${rp.status} ${JSON.stringify(rp.body?.error ?? rp.body?.direction)}`);
  for (const [d, bytes] of disks) v.adoptImage(d, bytes);
  await v.reincarnate(rp.body.agentRegistration.token, direction);
  v.go();
  note(`re-protect (${direction}) started, the agent of the running VM registered`);
  await waitState(ctx, v, "Protected", direction, `re-protect (${direction})`);
  note(`Protected (${direction})`);
  await ctx.convergence();
  note("every Protected replica equals its model");
}

/** The whole cycle on `v` (an NBD VM: a planned failover refuses its writes at once). */
export async function reprotectCycle(ctx: SoakContext, v: SoakVm, ip: string): Promise<FaultRecord> {
  const r = ctx.record(
    "reprotect-cycle",
    `${v.spec.name}: planned failover → commit → re-protect (reverse) → planned failback → commit → re-protect (forward), bytes checked at every step`,
  );
  r.items = [v.itemId];
  const t0 = Date.now();
  const steps: string[] = [];
  const note = (s: string) => {
    const l = `${s} at ${((Date.now() - t0) / 1000).toFixed(1)} s`;
    steps.push(l);
    ctx.log(`  ${l}`);
  };

  const [fo] = await runFailover(ctx, { itemIds: [v.itemId], type: "planned", recoveryPoint: "latest" }, `planned failover of ${v.spec.name}`);
  await v.pause();
  const failedOver = await failoverDisksEqualModel(ctx, v, fo!, "forward", "planned failover");
  note("planned failover: its disks hold every acknowledged write");
  await v.kill(); // the source VM is shut down; the VM now runs in the recovery region
  await commitAndReprotect(ctx, v, failedOver, "reverse", note);

  const [fb] = await runFailover(ctx, { itemIds: [v.itemId], type: "planned", recoveryPoint: "latest" }, `planned failback of ${v.spec.name}`);
  await v.pause();
  const failedBack = await failoverDisksEqualModel(ctx, v, fb!, "reverse", "planned failback");
  if (fb!.targetVm && (fb!.targetVm.resourceGroup !== "soak-rg" || fb!.targetVm.privateIp !== ip))
    ctx.diverge(`failback of ${v.spec.name} landed in ${fb!.targetVm.resourceGroup} with ${fb!.targetVm.privateIp}, not the original soak-rg with ${ip}`);
  note("planned failback: its disks hold every acknowledged write, in the original resource group with the original IP");
  await v.kill();
  await commitAndReprotect(ctx, v, failedBack, "forward", note);
  r.effect = steps.join("; ");
  return r;
}
