// One fabric conformance suite, run against LocalFabric (Table Storage on Azurite) and against ArmFabric over an
// in-process FAKE ARM: NIC address allocation (retain, fromEnd, concurrency, full subnets), VMs, power state, listing.
// Then what only one of them does: LocalFabric's address claims and discovered source VMs; ARM's long-running
// operations, throttling, refusals (quota, VM size) and the source subscription.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { LocalFabric } from "../../shared/fabric/local";
import { ArmFabric } from "../../shared/fabric/arm";
import { ArmClient, ArmError } from "../../shared/fabric/arm-client";
import {
  FabricError,
  resourceId,
  type Fabric,
  type FabricResource,
  type NetworkInterfaceSpec,
  type PowerState,
  type ResourceKind,
  type Subnet,
  type VirtualMachineSpec,
} from "../../shared/fabric/port";
import { loadConfig } from "../../shared/config/settings";
import { Storage, tableClient } from "../../shared/storage/clients";
import { TABLES } from "../../shared/storage/names";
import { startTestStorage, type LocalStorage } from "../support/storage";
import { FakeArm, fakeArmCredential, FAKE_ARM_ENDPOINT, type FakeArmOptions } from "../support/fake-arm";

const REGION = "westeurope";
const SUB = "aaaaaaaa-0000-4000-8000-000000000001";
const SOURCE_SUB = "bbbbbbbb-0000-4000-8000-000000000002";
const REPLICA_ID = `/subscriptions/${SUB}/resourceGroups/dr-rg/providers/Microsoft.Storage/storageAccounts/replicas`;

const fabricError = (code: FabricError["code"]) => (e: unknown) => e instanceof FabricError && e.code === code;

/** One fabric under test, and what the suite needs to know about where it keeps things. */
interface Harness {
  fabric: Fabric;
  /** The id the fabric gives a resource of that kind, group and name. */
  id(kind: ResourceKind, resourceGroup: string, name: string): string;
  /** How many resources it holds (every kind the port lists). */
  count(): Promise<number>;
  /** The power state of a VM right after ensureVirtualMachine made it. */
  createdPowerState: PowerState;
  /** LocalFabric: no address claim of that resource group and address is left. */
  noClaimLeft?(resourceGroup: string, ip: string): Promise<void>;
  stop(): Promise<void>;
}

/** Table rows of the fabric table, by row key. */
async function fabricRows(storage: LocalStorage): Promise<string[]> {
  const config = loadConfig({ AzureWebJobsStorage: storage.control });
  const out: string[] = [];
  try {
    for await (const e of tableClient(config.storage.control, TABLES.fabric).listEntities()) out.push(e.rowKey ?? "");
  } catch (e) {
    // The ARM fabric creates the table only when it records its first network mapping.
    if ((e as { statusCode?: number }).statusCode !== 404) throw e;
  }
  return out;
}

async function localHarness(): Promise<Harness & { storage: LocalStorage }> {
  const storage = await startTestStorage();
  const store = new Storage(loadConfig({ AzureWebJobsStorage: storage.control, CACHE_STORAGE: storage.cache }));
  const fabric = new LocalFabric(() => store.table(TABLES.fabric));
  return {
    storage,
    fabric,
    id: (kind, rg, name) => resourceId(kind, rg, name),
    count: async () => (await fabricRows(storage)).filter((k) => !k.startsWith("ip|")).length,
    createdPowerState: "deallocated",
    async noClaimLeft(rg, ip) {
      const left = (await fabricRows(storage)).filter((k) => k.startsWith("ip|") && k.includes(`|resourcegroups|${rg}|`) && k.endsWith(`|${ip}`));
      assert.deepEqual(left, [], "the address claim is gone");
    },
    stop: () => storage.stop(),
  };
}

const ARM_KINDS = [
  "Microsoft.Resources/resourceGroups",
  "Microsoft.Network/virtualNetworks",
  "Microsoft.Network/networkInterfaces",
  "Microsoft.Compute/availabilitySets",
  "Microsoft.Compute/virtualMachines",
];

export async function armHarness(
  options: FakeArmOptions = {},
  client: Partial<ConstructorParameters<typeof ArmClient>[0]> = {},
): Promise<Harness & { arm: FakeArm; storage: LocalStorage }> {
  const storage = await startTestStorage();
  const store = new Storage(loadConfig({ AzureWebJobsStorage: storage.control, CACHE_STORAGE: storage.cache }));
  const arm = new FakeArm(options);
  const fabric = new ArmFabric({
    client: new ArmClient({ endpoint: FAKE_ARM_ENDPOINT, credential: fakeArmCredential, httpClient: arm, pollIntervalMs: 1, retryDelayMs: 1, ...client }),
    subscriptionId: SUB,
    sourceSubscriptionId: SOURCE_SUB,
    replicaStorageId: REPLICA_ID,
    records: new LocalFabric(() => store.table(TABLES.fabric)),
  });
  return {
    arm,
    storage,
    fabric,
    id: (kind, rg, name) => resourceId(kind, rg, name).replace("00000000-0000-0000-0000-000000000000", SUB),
    count: async () => [...arm.resources.values()].filter((r) => ARM_KINDS.includes(r.type)).length + (await fabricRows(storage)).length,
    createdPowerState: "running",
    stop: () => storage.stop(),
  };
}

function conformance(title: string, start: () => Promise<Harness>): void {
  describe(`fabric conformance: ${title}`, () => {
    let h: Harness;
    let fabric: Fabric;

    before(async () => {
      h = await start();
      fabric = h.fabric;
    });
    after(async () => {
      await h?.stop();
    });

    /** A target vnet of its own per test, so tests share storage but not addresses. */
    async function vnet(rg: string, subnets: Subnet[] = [{ name: "default", addressPrefix: "10.2.0.0/24" }]): Promise<FabricResource> {
      await fabric.ensureResourceGroup(REGION, rg);
      return (await fabric.ensureVirtualNetwork(REGION, rg, `${rg}-vnet`, { addressSpace: ["10.2.0.0/16"], subnets })).resource;
    }

    function nicSpec(net: FabricResource, name: string, over: Partial<NetworkInterfaceSpec> = {}): NetworkInterfaceSpec {
      return { region: REGION, resourceGroup: net.resourceGroup, name, vnetId: net.id, subnet: "default", allocation: "retain", ...over };
    }

    async function nicIp(net: FabricResource, name: string, over: Partial<NetworkInterfaceSpec> = {}): Promise<string | undefined> {
      return (await fabric.ensureNetworkInterface(nicSpec(net, name, over))).resource.privateIp;
    }

    function vmSpec(rg: string, name: string, nicId: string, over: Partial<VirtualMachineSpec> = {}): VirtualMachineSpec {
      return {
        region: REGION,
        resourceGroup: rg,
        name,
        size: "Standard_D2s_v5",
        nicId,
        osDisk: { name: `${name}-os`, vhdUri: `http://127.0.0.1/failover/${name}/os.vhd` },
        dataDisks: [{ name: `${name}-data0`, vhdUri: `http://127.0.0.1/failover/${name}/data0.vhd`, lun: 0 }],
        ...over,
      };
    }

    test("retain keeps the source address when it is free in the target subnet", async () => {
      const net = await vnet("retain-free");
      const { resource, created } = await fabric.ensureNetworkInterface(nicSpec(net, "web-nic", { preferredIp: "10.2.0.7", tags: { failover: "f1" } }));
      assert.equal(created, true);
      assert.equal(resource.privateIp, "10.2.0.7");
      assert.equal(resource.id, h.id("networkInterface", "retain-free", "web-nic"));
      assert.equal(resource.vnetId, net.id);
      assert.equal(resource.subnet, "default");
      assert.equal(resource.createdBySiteRecovery, true);
      assert.deepEqual(resource.tags, { failover: "f1" });
      assert.deepEqual(await fabric.get(resource.id), resource);
    });

    test("retain takes the next free address after the source one when it is taken", async () => {
      const net = await vnet("retain-taken");
      assert.equal(await nicIp(net, "a", { preferredIp: "10.2.0.7" }), "10.2.0.7");
      assert.equal(await nicIp(net, "b", { preferredIp: "10.2.0.7" }), "10.2.0.8");
      assert.equal(await nicIp(net, "c", { preferredIp: "10.2.0.7" }), "10.2.0.9");
      // The subnet name matches whatever its case.
      assert.equal(await nicIp(net, "d", { preferredIp: "10.2.0.8", subnet: "DEFAULT" }), "10.2.0.10");
    });

    test("retain wraps around to the first usable address past the end of the subnet", async () => {
      const net = await vnet("retain-wrap", [{ name: "default", addressPrefix: "10.2.1.0/29" }]);
      assert.equal(await nicIp(net, "a", { preferredIp: "10.2.1.6" }), "10.2.1.6");
      assert.equal(await nicIp(net, "b", { preferredIp: "10.2.1.6" }), "10.2.1.4");
    });

    test("retain without a usable source address takes the first usable one (.4): none, outside the subnet, or reserved", async () => {
      const net = await vnet("retain-first");
      assert.equal(await nicIp(net, "none"), "10.2.0.4");
      assert.equal(await nicIp(net, "outside", { preferredIp: "192.168.7.7" }), "10.2.0.5");
      assert.equal(await nicIp(net, "gateway", { preferredIp: "10.2.0.1" }), "10.2.0.6");
      assert.equal(await nicIp(net, "broadcast", { preferredIp: "10.2.0.255" }), "10.2.0.7");
      assert.equal(await nicIp(net, "garbage", { preferredIp: "not-an-ip" }), "10.2.0.8");
    });

    test("fromEnd gives the highest free addresses of a /24: .254, then .253, ignoring the source address", async () => {
      const net = await vnet("from-end");
      assert.equal(await nicIp(net, "a", { allocation: "fromEnd", preferredIp: "10.2.0.7" }), "10.2.0.254");
      assert.equal(await nicIp(net, "b", { allocation: "fromEnd" }), "10.2.0.253");
    });

    test("20 NICs created at once get 20 distinct addresses", async () => {
      const net = await vnet("concurrent");
      const names = Array.from({ length: 20 }, (_, i) => `nic-${i}`);
      const results = await Promise.all(names.map((n) => fabric.ensureNetworkInterface(nicSpec(net, n, { preferredIp: "10.2.0.10" }))));
      assert.ok(results.every((r) => r.created));
      const ips = results.map((r) => r.resource.privateIp);
      assert.equal(new Set(ips).size, 20, ips.join(" "));
      const expected = Array.from({ length: 20 }, (_, i) => `10.2.0.${10 + i}`);
      assert.deepEqual([...ips].sort(), [...expected].sort(), "the 20 addresses from the source one on");
      // What was handed out is what was stored.
      for (const r of results) assert.deepEqual(await fabric.get(r.resource.id), r.resource);
    });

    test("the same NIC ensured concurrently is created once and holds one address", async () => {
      const net = await vnet("same-nic");
      const results = await Promise.all(Array.from({ length: 8 }, () => fabric.ensureNetworkInterface(nicSpec(net, "only", { allocation: "fromEnd" }))));
      assert.equal(results.filter((r) => r.created).length, 1);
      assert.deepEqual(new Set(results.map((r) => r.resource.privateIp)), new Set(["10.2.0.254"]));
      // No address was kept by the losers: the next NIC gets the one right below.
      assert.equal(await nicIp(net, "next", { allocation: "fromEnd" }), "10.2.0.253");
    });

    test("a /29 subnet holds three NICs (.4–.6), then ensureNetworkInterface throws SubnetFull", async () => {
      const net = await vnet("full", [{ name: "default", addressPrefix: "10.2.2.0/29" }]);
      const ips = [await nicIp(net, "a"), await nicIp(net, "b"), await nicIp(net, "c")];
      assert.deepEqual(ips, ["10.2.2.4", "10.2.2.5", "10.2.2.6"]);
      await assert.rejects(fabric.ensureNetworkInterface(nicSpec(net, "d")), fabricError("SubnetFull"));
      await assert.rejects(fabric.ensureNetworkInterface(nicSpec(net, "e", { allocation: "fromEnd" })), fabricError("SubnetFull"));
      assert.equal(await fabric.get(h.id("networkInterface", "full", "d")), undefined);
    });

    test("ensureNetworkInterface twice returns the same NIC and address (created false), never re-allocating", async () => {
      const net = await vnet("twice");
      const first = await fabric.ensureNetworkInterface(nicSpec(net, "nic", { preferredIp: "10.2.0.20" }));
      const again = await fabric.ensureNetworkInterface(nicSpec(net, "nic", { allocation: "fromEnd", preferredIp: "10.2.0.30" }));
      assert.equal(first.created, true);
      assert.equal(again.created, false);
      assert.deepEqual(again.resource, first.resource);
      assert.equal(again.resource.privateIp, "10.2.0.20");
    });

    test("deleting a NIC frees its address for the next NIC and leaves no claim behind", async () => {
      const net = await vnet("delete");
      const nic = (await fabric.ensureNetworkInterface(nicSpec(net, "old", { allocation: "fromEnd" }))).resource;
      assert.equal(nic.privateIp, "10.2.0.254");
      assert.equal(await fabric.delete(nic.id), true);
      assert.equal(await fabric.get(nic.id), undefined);
      assert.equal(await fabric.delete(nic.id), false);
      await h.noClaimLeft?.("delete", "10.2.0.254");
      assert.equal(await nicIp(net, "new", { allocation: "fromEnd" }), "10.2.0.254");
      assert.equal(await nicIp(net, "retained", { preferredIp: "10.2.0.254" }), "10.2.0.4", "taken again, so the next after it wraps");
    });

    test("a missing subnet or vnet is NotFound and allocates nothing", async () => {
      const net = await vnet("missing-subnet");
      const before = await h.count();
      await assert.rejects(fabric.ensureNetworkInterface(nicSpec(net, "nic", { subnet: "backend" })), fabricError("NotFound"));
      const noVnet = h.id("virtualNetwork", "missing-subnet", "nope");
      await assert.rejects(fabric.ensureNetworkInterface(nicSpec(net, "nic", { vnetId: noVnet })), fabricError("NotFound"));
      assert.equal(await h.count(), before, "nothing was made");
    });

    test("ensureVirtualMachine with a missing NIC or availability set is NotFound", async () => {
      const net = await vnet("vm-missing");
      await assert.rejects(fabric.ensureVirtualMachine(vmSpec("vm-missing", "vm", h.id("networkInterface", "vm-missing", "nope"))), fabricError("NotFound"));
      const nic = (await fabric.ensureNetworkInterface(nicSpec(net, "nic"))).resource;
      const noSet = h.id("availabilitySet", "vm-missing", "nope");
      await assert.rejects(fabric.ensureVirtualMachine(vmSpec("vm-missing", "vm", nic.id, { availabilitySetId: noSet })), fabricError("NotFound"));
      assert.equal(await fabric.get(h.id("virtualMachine", "vm-missing", "vm")), undefined);
    });

    test("ensureVirtualMachine twice creates the VM once, with the spec recorded", async () => {
      const net = await vnet("vm-twice");
      const nic = (await fabric.ensureNetworkInterface(nicSpec(net, "nic"))).resource;
      const set = (await fabric.ensureAvailabilitySet(REGION, "vm-twice", "avset")).resource;
      const spec = vmSpec("vm-twice", "vm", nic.id, { availabilitySetId: set.id, tags: { failover: "f2" } });
      const [a, b] = await Promise.all([fabric.ensureVirtualMachine(spec), fabric.ensureVirtualMachine(spec)]);
      assert.equal([a!, b!].filter((r) => r.created).length, 1);
      const again = await fabric.ensureVirtualMachine({ ...spec, size: "Standard_E4s_v5" });
      assert.equal(again.created, false);
      assert.deepEqual(again.resource, a!.resource);
      assert.deepEqual(again.resource, {
        id: h.id("virtualMachine", "vm-twice", "vm"),
        kind: "virtualMachine",
        region: REGION,
        resourceGroup: "vm-twice",
        name: "vm",
        createdBySiteRecovery: true,
        size: spec.size,
        nicId: nic.id,
        availabilitySetId: set.id,
        osDisk: spec.osDisk,
        dataDisks: spec.dataDisks,
        powerState: h.createdPowerState,
        tags: { failover: "f2" },
      });
    });

    test("setPowerState toggles a created VM between running and deallocated, keeping the rest", async () => {
      const net = await vnet("power");
      const nic = (await fabric.ensureNetworkInterface(nicSpec(net, "nic"))).resource;
      const vm = await fabric.setPowerState(REGION, "power", (await fabric.ensureVirtualMachine(vmSpec("power", "vm", nic.id))).resource.name, "deallocated");
      assert.equal(vm.powerState, "deallocated");
      assert.deepEqual(await fabric.setPowerState(REGION, "power", "vm", "running"), { ...vm, powerState: "running" });
      assert.equal((await fabric.get(vm.id))?.powerState, "running");
      assert.deepEqual(await fabric.setPowerState(REGION, "power", "vm", "deallocated"), vm);
      assert.deepEqual(await fabric.get(vm.id), vm);
      // Concurrent calls each land (ETag retries) and none loses the VM's other fields.
      const states = await Promise.all(Array.from({ length: 6 }, (_, i) => fabric.setPowerState(REGION, "power", "vm", i % 2 ? "running" : "deallocated")));
      assert.ok(states.every((s) => s.nicId === nic.id && s.size === vm.size));
      const final = await fabric.get(vm.id);
      assert.ok(final?.powerState === "running" || final?.powerState === "deallocated");
      assert.deepEqual({ ...final, powerState: vm.powerState }, vm);
    });

    test("list returns every resource of a kind, and address claims as none of them", async () => {
      const net = await vnet("listing");
      const nic = (await fabric.ensureNetworkInterface(nicSpec(net, "listed-nic"))).resource;
      const vm = (await fabric.ensureVirtualMachine(vmSpec("listing", "listed-vm", nic.id))).resource;
      const nics = await fabric.list("networkInterface");
      assert.ok(nics.length > 1);
      assert.ok(nics.every((r) => r.kind === "networkInterface" && r.privateIp));
      assert.deepEqual(
        nics.find((r) => r.id === nic.id),
        nic,
      );
      const vms = await fabric.list("virtualMachine");
      assert.ok(vms.every((r) => r.kind === "virtualMachine"));
      assert.deepEqual(
        vms.find((r) => r.id === vm.id),
        vm,
      );
      assert.ok((await fabric.list("virtualNetwork")).some((r) => r.id === net.id));
      assert.ok((await fabric.list("resourceGroup")).some((r) => r.name === "listing"));
      const all = (
        await Promise.all(
          (["resourceGroup", "virtualNetwork", "availabilitySet", "networkMapping", "networkInterface", "virtualMachine"] as const).map((k) => fabric.list(k)),
        )
      ).flat();
      assert.equal(all.length, await h.count(), "every resource listed once, nothing else");
      assert.deepEqual(await fabric.list("networkMapping"), []);
    });
  });
}

conformance("LocalFabric (Table Storage on Azurite)", localHarness);
conformance("ARM fabric (fake ARM)", () => armHarness());

describe("LocalFabric only: what it records that ARM would hold", () => {
  let h: Harness;
  let fabric: Fabric;
  before(async () => {
    h = await localHarness();
    fabric = h.fabric;
  });
  after(async () => {
    await h?.stop();
  });

  test("setPowerState on a source VM never seen records it as found (createdBySiteRecovery false)", async () => {
    const vm = await fabric.setPowerState("northeurope", "prod-rg", "db-1", "deallocated");
    const expected = {
      id: h.id("virtualMachine", "prod-rg", "db-1"),
      kind: "virtualMachine",
      region: "northeurope",
      resourceGroup: "prod-rg",
      name: "db-1",
      createdBySiteRecovery: false,
      powerState: "deallocated",
    };
    assert.deepEqual(vm, expected);
    assert.deepEqual(await fabric.get(vm.id), expected);
    assert.deepEqual(await fabric.setPowerState("northeurope", "prod-rg", "db-1", "running"), { ...expected, powerState: "running" });
  });
});

describe("ARM fabric (fake ARM) only: long-running operations, throttling, refusals, the source subscription", () => {
  const harnesses: Harness[] = [];
  const start = async (options: FakeArmOptions = {}, client: Partial<ConstructorParameters<typeof ArmClient>[0]> = {}) => {
    const h = await armHarness(options, client);
    harnesses.push(h);
    return h;
  };
  after(async () => {
    for (const h of harnesses) await h.stop();
  });

  async function targetNetwork(h: Harness, rg: string): Promise<FabricResource> {
    await h.fabric.ensureResourceGroup(REGION, rg);
    return (
      await h.fabric.ensureVirtualNetwork(REGION, rg, `${rg}-vnet`, {
        addressSpace: ["10.9.0.0/16"],
        subnets: [{ name: "default", addressPrefix: "10.9.0.0/24" }],
      })
    ).resource;
  }

  function vm(rg: string, name: string, nicId: string, size = "Standard_D2s_v5"): VirtualMachineSpec {
    return {
      region: REGION,
      resourceGroup: rg,
      name,
      size,
      nicId,
      osDisk: { name: `${name}-os`, vhdUri: `https://replicas.blob.core.windows.net/failover/${name}-os.vhd` },
      dataDisks: [{ name: `${name}-data0`, vhdUri: `https://replicas.blob.core.windows.net/failover/${name}-data0.vhd`, lun: 0 }],
    };
  }

  test("ARM fabric (fake ARM): each create waits for ARM's long-running operation until it reports Succeeded", async () => {
    const h = await start({ pollsPerOperation: 3 });
    const net = await targetNetwork(h, "lro");
    assert.equal(h.arm.resources.get(net.id.toLowerCase())?.properties.provisioningState, "Succeeded");
    assert.equal(h.arm.count("GET", "/fake-operations/"), 4, "three InProgress answers, then Succeeded");
    const nic = (
      await h.fabric.ensureNetworkInterface({
        region: REGION,
        resourceGroup: "lro",
        name: "nic",
        vnetId: net.id,
        subnet: "default",
        allocation: "retain",
        preferredIp: "10.9.0.9",
      })
    ).resource;
    const made = (await h.fabric.ensureVirtualMachine(vm("lro", "web-1", nic.id))).resource;
    // Managed disks answer 202 + Location; each is imported from its failover VHD in the replica account.
    const disk = h.arm.resources.get(`/subscriptions/${SUB}/resourcegroups/lro/providers/microsoft.compute/disks/web-1-os`);
    assert.deepEqual(disk?.properties.creationData, {
      createOption: "Import",
      sourceUri: "https://replicas.blob.core.windows.net/failover/web-1-os.vhd",
      storageAccountId: REPLICA_ID,
    });
    assert.equal(disk?.properties.provisioningState, "Succeeded");
    assert.ok(h.arm.count("GET", "/fake-locations/") >= 4, "disks polled through Location");
    assert.deepEqual(made.osDisk, { name: "web-1-os", vhdUri: "https://replicas.blob.core.windows.net/failover/web-1-os.vhd" });
    assert.equal(made.powerState, "running", "Azure starts a VM it creates");
  });

  test("ARM fabric (fake ARM): a long-running operation that never ends fails after the operation timeout, as a transient error", async () => {
    const h = await start({ pollsPerOperation: 1_000_000 }, { operationTimeoutMs: 100 });
    await h.fabric.ensureResourceGroup(REGION, "slow");
    const err = await h.fabric.ensureVirtualNetwork(REGION, "slow", "v", { addressSpace: ["10.1.0.0/16"], subnets: [] }).then(
      () => assert.fail("expected a timeout"),
      (e: unknown) => e,
    );
    assert.ok(!(err instanceof FabricError), "not a refusal: the activity retries it");
    assert.match(String(err), /did not finish within/);
  });

  test("ARM fabric (fake ARM): throttled (429) requests are retried after their Retry-After, and the call succeeds", async () => {
    const h = await start();
    h.arm.throttle(2, 1);
    const t0 = Date.now();
    const { created } = await h.fabric.ensureResourceGroup(REGION, "throttled");
    assert.equal(created, true);
    assert.equal(h.arm.throttled.length, 2);
    assert.ok(Date.now() - t0 >= 1900, `waited Retry-After (1 s) twice, took ${Date.now() - t0} ms`);
    assert.ok(h.arm.resources.has(`/subscriptions/${SUB}/resourcegroups/throttled`));
  });

  test("ARM fabric (fake ARM): throttling beyond the retries surfaces as a transient ArmError 429, not a refusal", async () => {
    const h = await start({}, { maxRetries: 2 });
    h.arm.throttle(10, 0);
    const err = await h.fabric.ensureResourceGroup(REGION, "always-throttled").then(
      () => assert.fail("expected a 429"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ArmError && err.status === 429, String(err));
    assert.equal(h.arm.throttled.length, 3, "the first try and two retries");
  });

  test("ARM fabric (fake ARM): a VM beyond the regional vCPU quota is refused as QuotaExceeded, and its imported disks are removed", async () => {
    const h = await start({ coreQuota: 4 });
    const net = await targetNetwork(h, "quota");
    const nic = async (name: string) =>
      (await h.fabric.ensureNetworkInterface({ region: REGION, resourceGroup: "quota", name, vnetId: net.id, subnet: "default", allocation: "retain" }))
        .resource.id;
    await h.fabric.ensureVirtualMachine(vm("quota", "small", await nic("small-nic"), "Standard_D2s_v5"));
    await assert.rejects(h.fabric.ensureVirtualMachine(vm("quota", "big", await nic("big-nic"), "Standard_D4s_v5")), (e: unknown) => {
      assert.ok(e instanceof FabricError && e.code === "QuotaExceeded", String(e));
      assert.match(e.message, /quota/i);
      return true;
    });
    assert.equal(await h.fabric.get(h.id("virtualMachine", "quota", "big")), undefined);
    const disks = [...h.arm.resources.values()]
      .filter((r) => r.type === "Microsoft.Compute/disks")
      .map((r) => r.name)
      .sort();
    assert.deepEqual(disks, ["small-data0", "small-os"], "no orphan disk of the refused VM");
  });

  test("ARM fabric (fake ARM): a VM size the region does not offer is refused as SkuNotAvailable", async () => {
    const h = await start({ unavailableSizes: ["Standard_M416ms_v2"] });
    const net = await targetNetwork(h, "sku");
    const nicId = (
      await h.fabric.ensureNetworkInterface({ region: REGION, resourceGroup: "sku", name: "nic", vnetId: net.id, subnet: "default", allocation: "retain" })
    ).resource.id;
    await assert.rejects(h.fabric.ensureVirtualMachine(vm("sku", "huge", nicId, "Standard_M416ms_v2")), fabricError("SkuNotAvailable"));
  });

  test("ARM fabric (fake ARM): the source network and VM are read in the source subscription; a planned failover deallocates that VM, a rollback starts it", async () => {
    const h = await start();
    const vnetId = `/subscriptions/${SOURCE_SUB}/resourceGroups/prod-rg/providers/Microsoft.Network/virtualNetworks/prod-vnet`;
    h.arm.seedResourceGroup(SOURCE_SUB, "prod-rg", "northeurope");
    h.arm.seed({
      id: vnetId,
      name: "prod-vnet",
      type: "Microsoft.Network/virtualNetworks",
      location: "northeurope",
      properties: { addressSpace: { addressPrefixes: ["10.0.0.0/16"] }, subnets: [{ name: "web", properties: { addressPrefix: "10.0.1.0/24" } }] },
    });
    h.arm.seed({
      id: `/subscriptions/${SOURCE_SUB}/resourceGroups/prod-rg/providers/Microsoft.Compute/virtualMachines/web-1`,
      name: "web-1",
      type: "Microsoft.Compute/virtualMachines",
      location: "northeurope",
      properties: {},
    });

    const net = await h.fabric.sourceNetwork("northeurope", "prod-rg", "prod-vnet", "web", "10.0.1.4");
    assert.equal(net.id, vnetId);
    assert.deepEqual(net.subnets, [{ name: "web", addressPrefix: "10.0.1.0/24" }]);
    assert.equal(net.createdBySiteRecovery, false);
    await assert.rejects(h.fabric.sourceNetwork("northeurope", "prod-rg", "prod-vnet", "db"), fabricError("NotFound"));
    await assert.rejects(h.fabric.sourceNetwork("northeurope", "prod-rg", "other-vnet", "web"), fabricError("NotFound"));

    const off = await h.fabric.setPowerState("northeurope", "prod-rg", "web-1", "deallocated");
    assert.equal(off.powerState, "deallocated");
    assert.equal(h.arm.count("POST", "/virtualmachines/web-1/deallocate"), 1);
    assert.equal((await h.fabric.setPowerState("northeurope", "prod-rg", "web-1", "running")).powerState, "running");
    await assert.rejects(h.fabric.setPowerState("northeurope", "prod-rg", "never-seen", "running"), fabricError("NotFound"));
  });

  test("ARM fabric (fake ARM): deleting a failed-over VM removes the managed disks made for it; network mappings are the control plane's records", async () => {
    const h = await start();
    const net = await targetNetwork(h, "del");
    const nicId = (
      await h.fabric.ensureNetworkInterface({ region: REGION, resourceGroup: "del", name: "nic", vnetId: net.id, subnet: "default", allocation: "retain" })
    ).resource.id;
    const made = (await h.fabric.ensureVirtualMachine(vm("del", "gone", nicId))).resource;
    assert.equal(await h.fabric.delete(made.id), true);
    assert.equal([...h.arm.resources.values()].filter((r) => r.type === "Microsoft.Compute/disks").length, 0);
    assert.equal(await h.fabric.delete(made.id), false);

    const [forward, back] = await h.fabric.ensureNetworkMapping(
      { ...net, id: `/subscriptions/${SOURCE_SUB}/resourceGroups/prod-rg/providers/Microsoft.Network/virtualNetworks/prod-vnet` },
      net,
    );
    assert.equal(forward!.created, true);
    assert.equal((await h.fabric.mappingsOf(net.id)).length, 2);
    assert.equal(h.arm.count("PUT", "networkmappings"), 0, "nothing of it is sent to ARM");
    assert.equal(await h.fabric.delete(back!.resource.id), true);
  });
});
