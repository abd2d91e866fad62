// Failover against real processes: the local host SIGKILLed mid-failover resumes it with nothing created twice; with the source cache gone, `latest` falls back to the latest processed point.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServices, type Services } from "../../functions/compose";
import { freePort, startHostProcess, type HostProcess } from "../../local/process";
import { loadConfig } from "../../shared/config/settings";
import { vmPartition } from "../../shared/recovery-points/points";
import { startTestStorage, type LocalStorage } from "../support/storage";
import { protectVm, type E2eVm, type StackLike, hostProcessApi } from "../support/e2e";
import { assertFailoverDisk, startFailover, waitFailover } from "../support/failover";

const DISK_MIB = 8;
const DISKS = ["os", "data0"];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("failover with the local host in its own process", () => {
  let storage: LocalStorage;
  let env: NodeJS.ProcessEnv;
  let services: Services;
  let host: HostProcess | undefined;
  let port: number;
  let vm: E2eVm;
  let stack: StackLike;
  let tagId: string;
  const model = new Map<string, Buffer>();

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
    vm = await protectVm(stack, "fo-kill", DISK_MIB);
    const agent = await vm.startAgent({ tagIntervalMs: 3_600_000 });
    await agent.waitIdle(30_000);
    for (const d of DISKS) await agent.trackedDisk(d).write(4096 * 3 + 17, Buffer.alloc(100_000, d === "os" ? 0x42 : 0x24));
    const tag = await agent.cutTag("crash");
    assert.ok(tag);
    tagId = tag.id;
    for (const d of DISKS) model.set(`${vm.itemId}/${d}`, readFileSync(vm.images[d]!));
    const deadline = Date.now() + 30_000;
    while (!(await services.points.listPartition(vmPartition(vm.itemId))).some((p) => p.id === tagId)) {
      if (Date.now() > deadline) assert.fail("the point was not sealed");
      await sleep(100);
    }
  });

  after(async () => {
    await vm?.cleanup();
    await host?.kill();
    await storage?.stop();
  });

  test("the host killed mid-failover and restarted: the failover completes, and no VM, NIC or disk is created twice", async () => {
    const id = await startFailover(stack, { itemIds: [vm.itemId], type: "test", recoveryPoint: "latest-processed" });
    // Killed as soon as the failover has created something in the fabric: the step that made it may not be recorded.
    const deadline = Date.now() + 30_000;
    while ((await services.fabric.list("networkInterface")).length === 0) {
      if (Date.now() > deadline) assert.fail("the failover created no NIC");
      await sleep(5);
    }
    await host!.kill();
    const before = (await stack.api("GET", `replicated-items/${vm.itemId}`).catch(() => undefined))?.status;
    assert.equal(before, undefined, "the host is down");
    const atKill = await services.items.get(vm.itemId);
    assert.equal(atKill?.item.failover?.completedAt, undefined, "killed before the failover finished");

    host = await startHostProcess(env, { port });
    const st = await waitFailover(stack, id, 60_000);
    assert.equal(st.runtimeStatus, "Completed", JSON.stringify(st.customStatus));
    const v = st.output.vms[0];
    assert.equal(v.recoveryPoint.id, tagId);
    const vms = (await services.fabric.list("virtualMachine")).filter((r) => r.createdBySiteRecovery);
    const nics = await services.fabric.list("networkInterface");
    assert.equal(vms.length, 1, "one VM");
    assert.equal(nics.length, 1, "one NIC");
    assert.equal(nics[0]!.privateIp, "10.2.0.254", "the first address from the end: no second NIC took it");
    const blobs: string[] = [];
    for await (const b of (await services.storage.failover()).listBlobsFlat()) blobs.push(b.name);
    assert.equal(blobs.length, DISKS.length, `one failover disk per disk: ${blobs}`);
    for (const d of v.disks) await assertFailoverDisk(stack, d.blob, model.get(`${vm.itemId}/${d.diskId}`)!, `after restart ${d.diskId}`);
    assert.equal((await stack.api("POST", `replicated-items/${vm.itemId}/test-failover-cleanup`)).status, 200);
  });

  test("the source region's cache unreachable: a failover to latest falls back to the latest processed point and says so", async () => {
    await vm.agent!.stop();
    await host!.kill();
    // The cache account answers nowhere: a port nothing listens on.
    const dead = await freePort();
    const deadCache = String(env.CACHE_STORAGE).replace(/127\.0\.0\.1:\d+/g, `127.0.0.1:${dead}`);
    host = await startHostProcess({ ...env, CACHE_STORAGE: deadCache, FAILOVER_CACHE_TIMEOUT_SECONDS: "2" }, { port });
    const id = await startFailover(stack, { itemIds: [vm.itemId], type: "unplanned", recoveryPoint: "latest" });
    const st = await waitFailover(stack, id, 60_000);
    assert.equal(st.runtimeStatus, "Completed", JSON.stringify(st.customStatus));
    const v = st.output.vms[0];
    assert.equal(v.recoveryPoint.id, tagId, "the latest processed point");
    assert.match(v.note, /cache could not be reached/);
    for (const d of v.disks) await assertFailoverDisk(stack, d.blob, model.get(`${vm.itemId}/${d.diskId}`)!, `fallback ${d.diskId}`);
    assert.equal((await services.items.get(vm.itemId))?.item.failover?.note, v.note);
  });
});
