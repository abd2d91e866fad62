// Re-protect and failback against real processes: the host killed mid-seed and mid-failback resumes with nothing made twice; the CLI agent (scanner) killed mid-reverse-initial-replication resumes; bytes compared.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServices, type Services } from "../../functions/compose";
import { freePort, startHostProcess, type HostProcess } from "../../local/process";
import { cacheContainerName } from "../../shared/protection/items";
import { vmPartition } from "../../shared/recovery-points/points";
import { loadConfig } from "../../shared/config/settings";
import { startTestStorage, type LocalStorage } from "../support/storage";
import { protectVm, runWorkload, type E2eVm, type StackLike, hostProcessApi } from "../support/e2e";
import { runFailover, startFailover, waitFailover } from "../support/failover";
import { CLI, killChildren, runChild, stopChild, until } from "../support/children";
import { assertDiskEquals, assertReplicaEquals, changeBlocks, materialize, reprotect, waitItem } from "../support/reprotect";

const DISK_MIB = 32;
const DISKS = ["os", "data0"];

describe("re-protect and failback with the local host and the CLI agent in their own processes", () => {
  let storage: LocalStorage;
  let env: NodeJS.ProcessEnv;
  let services: Services;
  let host: HostProcess | undefined;
  let port: number;
  let vm: E2eVm;
  let stack: StackLike;
  let dir: string;
  let images: Record<string, string>;

  const agentArgs = (stateDir: string, token?: string) => [
    CLI,
    "--url",
    host!.url,
    "agent",
    ...(token ? ["--token", token] : []),
    ...DISKS.flatMap((d) => ["--disk", `${d}=${images[d]}`]),
    "--state-dir",
    stateDir,
    "--scan-interval",
    "1",
    "--progress-interval",
    "1",
  ];

  before(async () => {
    storage = await startTestStorage();
    env = { AzureWebJobsStorage: storage.control, CACHE_STORAGE: storage.cache, AGENT_CHECKIN_SECONDS: "1" };
    services = createServices(loadConfig(env));
    port = await freePort();
    host = await startHostProcess(env, { port });
    stack = {
      url: host.url,
      services,
      api: hostProcessApi(() => host!.url),
    };
    dir = mkdtempSync(join(tmpdir(), "reprotect-restart-"));
    vm = await protectVm(stack, "rp-kill", DISK_MIB);
    const agent = await vm.startAgent({ tagIntervalMs: 3_600_000 });
    await runWorkload(agent, DISKS, 31, 120);
    await agent.waitIdle(60_000);
    const tag = await agent.cutTag("crash");
    assert.ok(tag);
    await until("the point sealed", async () => (await services.points.listPartition(vmPartition(vm.itemId))).some((p) => p.id === tag.id), 30_000);
    const fo = await runFailover(stack, { itemIds: [vm.itemId], type: "unplanned", recoveryPoint: tag.id }, 120_000);
    await agent.stop();
    images = await materialize(stack, "forward", fo, join(dir, "recovery-vm"));
    for (const d of DISKS) await changeBlocks(images[d]!, 0.05, d.length);
    assert.equal((await stack.api("POST", `replicated-items/${vm.itemId}/commit`)).status, 200);
  });

  after(async () => {
    await killChildren();
    await vm?.cleanup();
    await host?.kill();
    await storage?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("the host killed mid-seed and restarted: the re-protect resumes, each replica is seeded once, one cache; the CLI agent killed mid-initial-replication resumes byte-exact", async () => {
    const rp = await reprotect(stack, vm.itemId);
    // Killed as soon as the seeds are chosen (recorded before the copies start): the copy may or may not have run.
    await until("the seeds chosen", async () => Object.keys((await services.items.get(vm.itemId))?.item.reprotect?.seeds ?? {}).length > 0, 30_000);
    await host!.kill();
    const atKill = (await services.items.get(vm.itemId))!.item;
    assert.equal(atKill.state, "Reprotecting", "killed before the hand-over");
    host = await startHostProcess(env, { port });

    // The agent is started with the token at once; it waits while the seed is prepared, then registers.
    const stateDir = join(dir, "state-reverse");
    const first = runChild(agentArgs(stateDir, rp.token));
    await waitItem(stack, vm.itemId, "InitialReplication", "reverse", 60_000);
    const item = (await services.items.get(vm.itemId))!.item;
    for (const d of DISKS) assert.equal(item.reprotect?.seeds?.[d]?.source, "other-direction-replica");
    const containers: string[] = [];
    for await (const c of services.storage.cache("reverse").listContainers({ prefix: cacheContainerName(vm.itemId) })) containers.push(c.name);
    assert.deepEqual(containers, [cacheContainerName(vm.itemId)], "one reverse cache");
    assert.equal(await services.storage.cache("forward").getContainerClient(cacheContainerName(vm.itemId)).exists(), false, "the forward cache is gone");
    const replicas: string[] = [];
    for await (const b of (await services.storage.replicas("reverse")).listBlobsFlat({ prefix: `${vm.itemId}/` })) replicas.push(b.name);
    assert.deepEqual(replicas.sort(), DISKS.map((d) => `${vm.itemId}/${d}.vhd`).sort(), "one reverse replica per disk");

    // The agent killed while it ships: its state directory and spool carry it on.
    await until(
      "the agent shipping",
      async () => {
        for await (const b of services.storage.cache("reverse").getContainerClient(cacheContainerName(vm.itemId)).listBlobsFlat())
          if (b.name.endsWith(".batch")) return true;
        return (await services.items.listDisks(vm.itemId)).some((d) => (d.initialTransfer?.bytes ?? 0) > 0);
      },
      60_000,
      first.output,
    );
    await stopChild(first.child, "SIGKILL");
    const mid = (await services.items.get(vm.itemId))!.item;
    assert.equal(mid.state, "InitialReplication", "killed mid-initial-replication");
    const second = runChild(agentArgs(stateDir));
    await waitItem(stack, vm.itemId, "Protected", "reverse", 120_000);
    await until(
      "the replicas equal the disks",
      async () => {
        try {
          for (const d of DISKS) await assertReplicaEquals(stack, "reverse", vm.itemId, d, images[d]!);
          return true;
        } catch {
          return false;
        }
      },
      60_000,
      second.output,
    );
    assert.equal(await stopChild(second.child, "SIGTERM"), 0, second.output());
  });

  test("the host killed mid-failback and restarted: the failback completes into the original resource group and IP, with one VM, one NIC, and disks equal to the VM's", async () => {
    const model = new Map(DISKS.map((d) => [d, readFileSync(images[d]!)]));
    const id = await startFailover(stack, { itemIds: [vm.itemId], type: "unplanned", recoveryPoint: "latest" });
    const inOriginal = async (kind: "networkInterface" | "virtualMachine") => (await services.fabric.list(kind)).filter((r) => r.resourceGroup === "e2e-rg");
    await until("the failback's NIC", async () => (await inOriginal("networkInterface")).length > 0, 60_000);
    await host!.kill();
    host = await startHostProcess(env, { port });
    const st = await waitFailover(stack, id, 120_000);
    assert.equal(st.runtimeStatus, "Completed", JSON.stringify(st.customStatus));
    const v = st.output.vms[0];
    assert.equal(v.targetVm.resourceGroup, "e2e-rg");
    assert.equal(v.targetVm.privateIp, "10.2.0.4");
    assert.equal((await inOriginal("virtualMachine")).length, 1, "one VM");
    assert.equal((await inOriginal("networkInterface")).length, 1, "one NIC");
    const blobs: string[] = [];
    for await (const b of (await services.storage.failover("reverse")).listBlobsFlat()) blobs.push(b.name);
    assert.equal(blobs.length, DISKS.length, `one failback disk per disk: ${blobs}`);
    for (const d of v.disks) await assertDiskEquals(stack, "reverse", d.blob, model.get(d.diskId)!, `failback ${d.diskId}`);
  });
});
