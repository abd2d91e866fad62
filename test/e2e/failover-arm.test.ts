// Failover end to end with FABRIC=arm over the in-process FAKE ARM: real agents on tracked disks, the local host's
// durable orchestration, ArmFabric creating the target resources; failover disks compared byte for byte, and what the
// fake ARM holds (NICs, managed disks imported from the failover VHDs, VMs, power states) checked at each step.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startTestStack, type TestStack } from "../support/stack";
import { protectVm, type E2eVm } from "../support/e2e";
import { Workload } from "../support/workload";
import { assertFailoverDisk, runFailover, startFailover, waitFailover } from "../support/failover";
import { FakeArm, fakeArmCredential, FAKE_ARM_ENDPOINT } from "../support/fake-arm";
import { ArmFabric } from "../../shared/fabric/arm";
import { ArmClient } from "../../shared/fabric/arm-client";
import { vmPartition } from "../../shared/recovery-points/points";
import type { Agent } from "../../agent";
import type { BatchTag } from "../../shared/replication/batch";

const MiB = 1024 * 1024;
const DISK_MIB = 8;
const DISKS = ["os", "data0"];
const SUB = "aaaaaaaa-0000-4000-8000-000000000001";
const REPLICA_ID = `/subscriptions/${SUB}/resourceGroups/dr-rg/providers/Microsoft.Storage/storageAccounts/replicas`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("failover with the ARM fabric over a fake ARM: test failover and cleanup, a refused VM size, planned failover and commit", () => {
  let stack: TestStack;
  let arm: FakeArm;
  let vm: E2eVm;
  let agent: Agent;
  let work: Workload;

  const armResources = (type: string) => [...arm.resources.values()].filter((r) => r.type === type);

  before(async () => {
    arm = new FakeArm({ pollsPerOperation: 2 });
    // The source region as Azure would have it: the VM's resource group, network and the VM itself.
    arm.seedResourceGroup(SUB, "e2e-rg", "eastus");
    arm.seed({
      id: `/subscriptions/${SUB}/resourceGroups/e2e-rg/providers/Microsoft.Network/virtualNetworks/e2e-vnet`,
      name: "e2e-vnet",
      type: "Microsoft.Network/virtualNetworks",
      location: "eastus",
      properties: { addressSpace: { addressPrefixes: ["10.2.0.0/16"] }, subnets: [{ name: "app", properties: { addressPrefix: "10.2.0.0/24" } }] },
    });
    arm.seed({
      id: `/subscriptions/${SUB}/resourceGroups/e2e-rg/providers/Microsoft.Compute/virtualMachines/fo-arm`,
      name: "fo-arm",
      type: "Microsoft.Compute/virtualMachines",
      location: "eastus",
      properties: {},
    });
    stack = await startTestStack({
      queueOverrides: { maxPollingIntervalMs: 100, visibilityTimeoutMs: 500 },
      env: { AGENT_CHECKIN_SECONDS: "1" },
      fabric: (records) =>
        new ArmFabric({
          client: new ArmClient({ endpoint: FAKE_ARM_ENDPOINT, credential: fakeArmCredential, httpClient: arm, pollIntervalMs: 5, retryDelayMs: 5 }),
          subscriptionId: SUB,
          sourceSubscriptionId: SUB,
          replicaStorageId: REPLICA_ID,
          records,
        }),
    });
    vm = await protectVm(stack, "fo-arm", DISK_MIB);
    agent = await vm.startAgent({ tagIntervalMs: 3_600_000, appTagIntervalMs: 0 });
    await agent.waitIdle(30_000);
    work = new Workload([{ itemId: vm.itemId, agent }], 53, { disks: DISKS, diskBytes: DISK_MIB * MiB });
  });

  after(async () => {
    await work?.stop();
    await vm?.cleanup();
    await stack?.stop();
  });

  async function cut(): Promise<{ tag: BatchTag; model: Map<string, Buffer> }> {
    await sleep(200);
    await work.pause();
    const model = work.copy();
    const tag = await agent.cutTag("crash");
    work.go();
    assert.ok(tag, "tag cut");
    const deadline = Date.now() + 30_000;
    while (!(await stack.services.points.listPartition(vmPartition(vm.itemId))).some((p) => p.id === tag.id)) {
      if (Date.now() > deadline) assert.fail(`point ${tag.id} not sealed`);
      await sleep(100);
    }
    return { tag, model };
  }

  test("ARM fabric (fake ARM): enable made the target resource group and network in ARM; test failover imports managed disks and runs the VM at the end of the test subnet; cleanup deletes it all", async () => {
    assert.ok(arm.resources.has(`/subscriptions/${SUB}/resourcegroups/e2e-rg-asr`), "target resource group");
    assert.ok(arm.resources.has(`/subscriptions/${SUB}/resourcegroups/e2e-rg-asr/providers/microsoft.network/virtualnetworks/e2e-vnet-asr`), "target network");

    const point = await cut();
    const out = await runFailover(stack, { itemIds: [vm.itemId], type: "test", recoveryPoint: "latest-processed" });
    const v = out.vms[0];
    assert.equal(v.recoveryPoint.id, point.tag.id);
    assert.equal(v.targetVm.powerState, "running");
    assert.equal(v.targetVm.privateIp, "10.2.0.254", "test failover takes addresses from the end of the range");
    for (const d of v.disks) await assertFailoverDisk(stack, d.blob, point.model.get(`${vm.itemId}/${d.diskId}`)!, `test failover ${d.diskId}`);

    const testVm = armResources("Microsoft.Compute/virtualMachines").find((r) => r.name === "fo-arm-test");
    assert.ok(testVm, "the VM is in ARM");
    assert.equal(arm.power.get(testVm.id.toLowerCase()), "running");
    const disks = armResources("Microsoft.Compute/disks");
    assert.deepEqual(disks.map((d) => d.name).sort(), ["fo-arm-test-data0", "fo-arm-test-os"]);
    for (const d of disks) {
      const data = d.properties.creationData as { sourceUri: string; storageAccountId: string };
      assert.equal(data.storageAccountId, REPLICA_ID);
      assert.ok(
        v.disks.some((x: { blob: string }) => data.sourceUri.endsWith(`/${x.blob}`)),
        `${d.name} imported from a failover VHD: ${data.sourceUri}`,
      );
    }

    const res = await stack.api("POST", `replicated-items/${vm.itemId}/test-failover-cleanup`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.state, "Protected");
    assert.deepEqual(
      armResources("Microsoft.Compute/virtualMachines").map((r) => r.name),
      ["fo-arm"],
      "only the source VM is left",
    );
    assert.deepEqual(armResources("Microsoft.Compute/disks"), []);
    assert.deepEqual(armResources("Microsoft.Network/networkInterfaces"), []);
    assert.ok(!armResources("Microsoft.Network/virtualNetworks").some((r) => r.name === "e2e-vnet-asr-test"), "the test network is gone");
  });

  test("ARM fabric (fake ARM): a VM size the target region does not offer ends the failover at once, without retrying the create, and rolls back", async () => {
    arm.options.unavailableSizes = ["Standard_D2s_v5"];
    const vmPut = `PUT /subscriptions/${SUB}/resourcegroups/e2e-rg-asr/providers/microsoft.compute/virtualmachines/fo-arm-test`;
    const putsBefore = arm.requests.filter((r) => r === vmPut).length;
    try {
      const id = await startFailover(stack, { itemIds: [vm.itemId], type: "test", recoveryPoint: "latest-processed" });
      const st = await waitFailover(stack, id, 60_000);
      assert.equal(st.runtimeStatus, "Failed");
      assert.match(JSON.stringify(st.customStatus), /SkuNotAvailable|not available/);
      assert.equal(arm.requests.filter((r) => r === vmPut).length - putsBefore, 1, "a refusal is not retried");
      assert.deepEqual(armResources("Microsoft.Compute/disks"), [], "no orphan disk");
      assert.deepEqual(armResources("Microsoft.Network/networkInterfaces"), [], "the NIC was rolled back");
      const item = await stack.api("GET", `replicated-items/${vm.itemId}`);
      assert.equal(item.body.state, "Protected");
    } finally {
      arm.options.unavailableSizes = [];
    }
  });

  test("ARM fabric (fake ARM): planned failover deallocates the source VM in ARM, keeps its IP, and the committed VM stays running", async () => {
    await sleep(300);
    const out = await runFailover(stack, { itemIds: [vm.itemId], type: "planned" }, 90_000);
    await work.stop();
    const v = out.vms[0];
    assert.equal(v.dataLossWindowSeconds, 0);
    assert.equal(v.targetVm.privateIp, "10.2.0.4", "the source address is kept");
    const models = work.copy();
    for (const d of v.disks) await assertFailoverDisk(stack, d.blob, models.get(`${vm.itemId}/${d.diskId}`)!, `planned ${d.diskId}`);
    assert.equal(
      arm.power.get(`/subscriptions/${SUB}/resourcegroups/e2e-rg/providers/microsoft.compute/virtualmachines/fo-arm`),
      "deallocated",
      "the source VM is shut down",
    );
    assert.equal(arm.power.get(`/subscriptions/${SUB}/resourcegroups/e2e-rg-asr/providers/microsoft.compute/virtualmachines/fo-arm`), "running");
    const commit = await stack.api("POST", `replicated-items/${vm.itemId}/commit`);
    assert.equal(commit.status, 200, JSON.stringify(commit.body));
    assert.equal(commit.body.state, "FailoverCommitted");
  });
});
