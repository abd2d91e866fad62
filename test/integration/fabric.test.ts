// LocalFabric against real Azurite: NIC address allocation (retain, fromEnd, concurrency, full subnets), VMs, power state and listing.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { LocalFabric } from "../../shared/fabric/local";
import { FabricError, resourceId, type FabricResource, type NetworkInterfaceSpec, type Subnet, type VirtualMachineSpec } from "../../shared/fabric/port";
import { loadConfig } from "../../shared/settings";
import { Storage, TABLES, tableClient } from "../../shared/storage";
import { startTestStorage, type LocalStorage } from "../support/storage";

const REGION = "westeurope";

const fabricError = (code: FabricError["code"]) => (e: unknown) => e instanceof FabricError && e.code === code;

describe("local fabric", () => {
  let storage: LocalStorage;
  let fabric: LocalFabric;
  let rows: () => Promise<string[]>;

  before(async () => {
    storage = await startTestStorage();
    const config = loadConfig({ AzureWebJobsStorage: storage.control, CACHE_STORAGE: storage.cache });
    const store = new Storage(config);
    fabric = new LocalFabric(() => store.table(TABLES.fabric));
    const raw = tableClient(config.storage.control, TABLES.fabric);
    rows = async () => {
      const out: string[] = [];
      for await (const e of raw.listEntities()) out.push(e.rowKey ?? "");
      return out;
    };
  });
  after(async () => {
    await storage?.stop();
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
    assert.equal(resource.id, resourceId("networkInterface", "retain-free", "web-nic"));
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
    assert.equal(await fabric.get(resourceId("networkInterface", "full", "d")), undefined);
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
    assert.ok(!(await rows()).some((k) => k.startsWith("ip|") && k.includes("|resourcegroups|delete|") && k.endsWith("|10.2.0.254")), "the address claim is gone");
    assert.equal(await nicIp(net, "new", { allocation: "fromEnd" }), "10.2.0.254");
    assert.equal(await nicIp(net, "retained", { preferredIp: "10.2.0.254" }), "10.2.0.4", "taken again, so the next after it wraps");
  });

  test("a missing subnet or vnet is NotFound and allocates nothing", async () => {
    const net = await vnet("missing-subnet");
    const before = (await rows()).length;
    await assert.rejects(fabric.ensureNetworkInterface(nicSpec(net, "nic", { subnet: "backend" })), fabricError("NotFound"));
    const noVnet = resourceId("virtualNetwork", "missing-subnet", "nope");
    await assert.rejects(fabric.ensureNetworkInterface(nicSpec(net, "nic", { vnetId: noVnet })), fabricError("NotFound"));
    assert.equal((await rows()).length, before);
  });

  test("ensureVirtualMachine with a missing NIC or availability set is NotFound", async () => {
    const net = await vnet("vm-missing");
    await assert.rejects(fabric.ensureVirtualMachine(vmSpec("vm-missing", "vm", resourceId("networkInterface", "vm-missing", "nope"))), fabricError("NotFound"));
    const nic = (await fabric.ensureNetworkInterface(nicSpec(net, "nic"))).resource;
    const noSet = resourceId("availabilitySet", "vm-missing", "nope");
    await assert.rejects(fabric.ensureVirtualMachine(vmSpec("vm-missing", "vm", nic.id, { availabilitySetId: noSet })), fabricError("NotFound"));
    assert.equal(await fabric.get(resourceId("virtualMachine", "vm-missing", "vm")), undefined);
  });

  test("ensureVirtualMachine twice creates the VM once, deallocated, with the spec recorded", async () => {
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
      id: resourceId("virtualMachine", "vm-twice", "vm"),
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
      powerState: "deallocated",
      tags: { failover: "f2" },
    });
  });

  test("setPowerState on a source VM never seen records it as found (createdBySiteRecovery false)", async () => {
    const vm = await fabric.setPowerState("northeurope", "prod-rg", "db-1", "deallocated");
    const expected = {
      id: resourceId("virtualMachine", "prod-rg", "db-1"),
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

  test("setPowerState toggles a created VM between running and deallocated, keeping the rest", async () => {
    const net = await vnet("power");
    const nic = (await fabric.ensureNetworkInterface(nicSpec(net, "nic"))).resource;
    const vm = (await fabric.ensureVirtualMachine(vmSpec("power", "vm", nic.id))).resource;
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
    assert.deepEqual(nics.find((r) => r.id === nic.id), nic);
    const vms = await fabric.list("virtualMachine");
    assert.ok(vms.every((r) => r.kind === "virtualMachine"));
    assert.deepEqual(vms.find((r) => r.id === vm.id), vm);
    assert.ok((await fabric.list("virtualNetwork")).some((r) => r.id === net.id));
    assert.ok((await fabric.list("resourceGroup")).some((r) => r.name === "listing"));
    const all = (await Promise.all((["resourceGroup", "virtualNetwork", "availabilitySet", "networkMapping", "networkInterface", "virtualMachine"] as const).map((k) => fabric.list(k)))).flat();
    assert.equal(all.length, (await rows()).filter((k) => !k.startsWith("ip|")).length);
    assert.deepEqual(await fabric.list("networkMapping"), []);
  });
});
