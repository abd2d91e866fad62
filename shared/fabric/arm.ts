// ArmFabric: the fabric port on Azure Resource Manager — resource groups, networks, NICs, managed disks and VMs in the
// target subscription; network mappings are the control plane's own records (ARM has no such resource outside a vault).
import { ArmClient, ArmError } from "./arm-client";
import { candidates, formatIpv4 } from "./local";
import {
  FabricError,
  type Ensured,
  type Fabric,
  type FabricResource,
  type NetworkInterfaceSpec,
  type PowerState,
  type ResourceKind,
  type Subnet,
  type VirtualMachineSpec,
  type VirtualNetworkSpec,
  type VmDisk,
} from "./port";

export const API_VERSIONS = {
  resources: "2021-04-01",
  network: "2024-05-01",
  compute: "2024-07-01",
  disks: "2024-03-02",
} as const;

/** The tag that marks what site-recovery created: only such resources are ever deleted by it. */
export const CREATED_TAG = "site-recovery";
const CREATED_VALUE = "created";

export interface ArmFabricOptions {
  client: ArmClient;
  /** Target subscription: everything site-recovery creates goes here. */
  subscriptionId: string;
  /** The protected VMs' subscription: their networks are read, planned failover deallocates them. */
  sourceSubscriptionId: string;
  /** Resource id of the storage account holding the failover VHDs (managed disks are imported from it). */
  replicaStorageId: string;
  /** Where network mappings are recorded (the control plane's fabric table, through LocalFabric). */
  records: Fabric;
  /** Managed disk SKU of failed-over disks; StandardSSD_LRS attaches to every VM size. */
  diskSku?: string;
}

interface ArmResource {
  id?: string;
  name?: string;
  location?: string;
  tags?: Record<string, string>;
  properties?: Record<string, unknown>;
}

const PROVIDER_PATH: Record<Exclude<ResourceKind, "resourceGroup" | "networkMapping">, string> = {
  virtualNetwork: "Microsoft.Network/virtualNetworks",
  networkInterface: "Microsoft.Network/networkInterfaces",
  availabilitySet: "Microsoft.Compute/availabilitySets",
  virtualMachine: "Microsoft.Compute/virtualMachines",
};

const apiOf = (kind: ResourceKind) =>
  kind === "resourceGroup" ? API_VERSIONS.resources : kind === "virtualNetwork" || kind === "networkInterface" ? API_VERSIONS.network : API_VERSIONS.compute;

/** What an ARM error means for a failover: a named refusal (not retried) or a failure worth retrying. */
export function refusalOf(e: unknown): FabricError | undefined {
  if (!(e instanceof ArmError)) return undefined;
  const text = `${e.code} ${e.message}`;
  if (e.code === "QuotaExceeded" || /quota/i.test(text)) return new FabricError("QuotaExceeded", `Azure refused for quota: ${e.message}`);
  if (e.code === "SkuNotAvailable" || e.code === "InvalidVmSize" || /SkuNotAvailable/.test(text))
    return new FabricError("SkuNotAvailable", `Azure refused the VM size: ${e.message}`);
  if (e.status === 403 || e.code === "AuthorizationFailed" || e.code === "LinkedAuthorizationFailed") {
    return new FabricError("Forbidden", `the Function App's identity lacks the rights for this (${e.code}): ${e.message}`);
  }
  if (/AlreadyExists|AlreadyTaken|NameNotAvailable|InUse$/.test(e.code) || (e.status === 409 && e.code === "Conflict"))
    return new FabricError("Conflict", `${e.code}: ${e.message}`);
  if (e.status === 404 || e.code === "InvalidResourceReference" || e.code === "NotFound" || e.code === "ParentResourceNotFound")
    return new FabricError("NotFound", `${e.code}: ${e.message}`);
  if (e.code === "SubnetIsFull" || e.code === "NoAvailableIpAddressInSubnet") return new FabricError("SubnetFull", `${e.code}: ${e.message}`);
  return undefined;
}

/** Runs an ARM call; refusals become FabricError, anything else (throttling past its retries, 5xx, timeouts) is rethrown. */
async function armCall<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (e) {
    throw refusalOf(e) ?? e;
  }
}

export class ArmFabric implements Fabric {
  private readonly client: ArmClient;
  private readonly diskSku: string;
  private readonly inflight = new Map<string, Promise<Ensured>>();

  constructor(private readonly o: ArmFabricOptions) {
    this.client = o.client;
    this.diskSku = o.diskSku ?? "StandardSSD_LRS";
  }

  /**
   * One ensure per resource at a time in this process: an ARM PUT is create-or-update, so two concurrent creates would
   * both succeed and both say "created"; the second caller waits for the first and gets its resource.
   */
  private once(id: string, run: () => Promise<Ensured>): Promise<Ensured> {
    const key = id.toLowerCase();
    const running = this.inflight.get(key);
    if (running) return running.then((r) => ({ resource: r.resource, created: false }));
    const p = run().finally(() => this.inflight.delete(key));
    this.inflight.set(key, p);
    return p;
  }

  private rgId(resourceGroup: string, subscription = this.o.subscriptionId): string {
    return `/subscriptions/${subscription}/resourceGroups/${resourceGroup}`;
  }

  private idOf(kind: Exclude<ResourceKind, "networkMapping">, resourceGroup: string, name: string, subscription = this.o.subscriptionId): string {
    return kind === "resourceGroup" ? this.rgId(name, subscription) : `${this.rgId(resourceGroup, subscription)}/providers/${PROVIDER_PATH[kind]}/${name}`;
  }

  private diskId(resourceGroup: string, name: string): string {
    return `${this.rgId(resourceGroup)}/providers/Microsoft.Compute/disks/${name}`;
  }

  private tagsFor(extra: Record<string, string> | undefined): Record<string, string> {
    return { ...(extra ?? {}), [CREATED_TAG]: CREATED_VALUE };
  }

  /** The kind, resource group and name an ARM id names; undefined for ids this fabric does not make. */
  private parse(id: string): { kind: ResourceKind; resourceGroup: string; name: string } | undefined {
    if (/\/providers\/Microsoft\.RecoveryServices\/networkMappings\//i.test(id)) {
      return { kind: "networkMapping", resourceGroup: "", name: id.split("/").pop()! };
    }
    const rg = /^\/subscriptions\/[^/]+\/resourceGroups\/([^/]+)$/i.exec(id);
    if (rg) return { kind: "resourceGroup", resourceGroup: rg[1]!, name: rg[1]! };
    const m = /^\/subscriptions\/[^/]+\/resourceGroups\/([^/]+)\/providers\/([^/]+\/[^/]+)\/([^/]+)$/i.exec(id);
    if (!m) return undefined;
    const kind = (Object.keys(PROVIDER_PATH) as (keyof typeof PROVIDER_PATH)[]).find((k) => PROVIDER_PATH[k].toLowerCase() === m[2]!.toLowerCase());
    return kind ? { kind, resourceGroup: m[1]!, name: m[3]! } : undefined;
  }

  private base(kind: ResourceKind, r: ArmResource, id: string, resourceGroup: string, name: string): FabricResource {
    const { [CREATED_TAG]: created, ...tags } = r.tags ?? {};
    return {
      id,
      kind,
      region: r.location ?? "",
      resourceGroup,
      name,
      createdBySiteRecovery: created === CREATED_VALUE,
      ...(Object.keys(tags).length > 0 ? { tags } : {}),
    };
  }

  private async toResource(
    kind: Exclude<ResourceKind, "networkMapping">,
    r: ArmResource,
    resourceGroup: string,
    name: string,
    subscription?: string,
  ): Promise<FabricResource> {
    const id = this.idOf(kind, resourceGroup, name, subscription);
    const out = this.base(kind, r, id, resourceGroup, name);
    const p = r.properties ?? {};
    if (kind === "virtualNetwork") {
      out.addressSpace = ((p.addressSpace as { addressPrefixes?: string[] } | undefined)?.addressPrefixes ?? []).slice();
      out.subnets = ((p.subnets as { name?: string; properties?: { addressPrefix?: string } }[] | undefined) ?? []).map((s): Subnet => ({
        name: s.name ?? "",
        addressPrefix: s.properties?.addressPrefix ?? "",
      }));
    } else if (kind === "networkInterface") {
      const ipc = (p.ipConfigurations as { properties?: { privateIPAddress?: string; subnet?: { id?: string } } }[] | undefined)?.[0]?.properties;
      const subnetId = ipc?.subnet?.id ?? "";
      const at = subnetId.toLowerCase().lastIndexOf("/subnets/");
      if (at >= 0) {
        out.vnetId = subnetId.slice(0, at);
        out.subnet = subnetId.slice(at + "/subnets/".length);
      }
      if (ipc?.privateIPAddress) out.privateIp = ipc.privateIPAddress;
    } else if (kind === "virtualMachine") {
      const hw = p.hardwareProfile as { vmSize?: string } | undefined;
      const storage = p.storageProfile as
        { osDisk?: { name?: string; managedDisk?: { id?: string } }; dataDisks?: { lun?: number; name?: string; managedDisk?: { id?: string } }[] } | undefined;
      const nics = (p.networkProfile as { networkInterfaces?: { id?: string }[] } | undefined)?.networkInterfaces ?? [];
      if (hw?.vmSize) out.size = hw.vmSize;
      if (nics[0]?.id) out.nicId = nics[0].id;
      const avset = (p.availabilitySet as { id?: string } | undefined)?.id;
      if (avset) out.availabilitySetId = avset;
      const disk = async (d: { name?: string; managedDisk?: { id?: string } }, lun?: number): Promise<VmDisk> => {
        const found = d.managedDisk?.id ? ((await this.client.get(d.managedDisk.id, API_VERSIONS.disks)) as ArmResource | undefined) : undefined;
        const source = (found?.properties?.creationData as { sourceUri?: string } | undefined)?.sourceUri ?? "";
        return { name: d.name ?? found?.name ?? "", vhdUri: source, ...(lun !== undefined ? { lun } : {}) };
      };
      if (storage?.osDisk) out.osDisk = await disk(storage.osDisk);
      out.dataDisks = await Promise.all((storage?.dataDisks ?? []).map((d) => disk(d, d.lun)));
      out.powerState = await this.powerState(id);
    }
    return out;
  }

  private async powerState(vmId: string): Promise<PowerState | undefined> {
    const view = (await this.client.get(`${vmId}/instanceView`, API_VERSIONS.compute)) as { statuses?: { code?: string }[] } | undefined;
    const code = view?.statuses?.map((s) => s.code ?? "").find((c) => c.startsWith("PowerState/"));
    if (code === "PowerState/running" || code === "PowerState/starting") return "running";
    if (code === undefined) return undefined;
    // Stopped but still allocated counts as not running; site-recovery only ever asks for running or deallocated.
    return "deallocated";
  }

  private async read(
    kind: Exclude<ResourceKind, "networkMapping">,
    resourceGroup: string,
    name: string,
    subscription?: string,
  ): Promise<FabricResource | undefined> {
    const r = (await this.client.get(this.idOf(kind, resourceGroup, name, subscription), apiOf(kind))) as ArmResource | undefined;
    return r ? this.toResource(kind, r, resourceGroup, name, subscription) : undefined;
  }

  /** Reads, else creates with `body`: an existing resource is never changed (as LocalFabric). */
  private async ensure(kind: Exclude<ResourceKind, "networkMapping">, resourceGroup: string, name: string, body: ArmResource): Promise<Ensured> {
    return this.once(this.idOf(kind, resourceGroup, name), () =>
      armCall(async () => {
        const existing = await this.read(kind, resourceGroup, name);
        if (existing) return { resource: existing, created: false };
        const id = this.idOf(kind, resourceGroup, name);
        const made = kind === "resourceGroup" ? (await this.client.send("PUT", id, apiOf(kind), body)).body : await this.client.put(id, apiOf(kind), body);
        return { resource: await this.toResource(kind, made as ArmResource, resourceGroup, name), created: true };
      }),
    );
  }

  ensureResourceGroup(region: string, name: string): Promise<Ensured> {
    return this.ensure("resourceGroup", name, name, { location: region, tags: this.tagsFor(undefined) });
  }

  async sourceNetwork(region: string, resourceGroup: string, vnet: string, subnet: string): Promise<FabricResource> {
    return armCall(async () => {
      const found = await this.read("virtualNetwork", resourceGroup, vnet, this.o.sourceSubscriptionId);
      if (!found)
        throw new FabricError(
          "NotFound",
          `source virtual network '${vnet}' does not exist in resource group '${resourceGroup}' (${region}) of subscription ${this.o.sourceSubscriptionId}`,
        );
      if (!found.subnets?.some((s) => s.name.toLowerCase() === subnet.toLowerCase()))
        throw new FabricError("NotFound", `subnet '${subnet}' does not exist in '${found.id}'`);
      return found;
    });
  }

  ensureVirtualNetwork(region: string, resourceGroup: string, name: string, spec: VirtualNetworkSpec): Promise<Ensured> {
    return this.ensure("virtualNetwork", resourceGroup, name, {
      location: region,
      tags: this.tagsFor(undefined),
      properties: {
        addressSpace: { addressPrefixes: spec.addressSpace },
        subnets: spec.subnets.map((s) => ({ name: s.name, properties: { addressPrefix: s.addressPrefix } })),
      },
    });
  }

  ensureNetworkMapping(source: FabricResource, target: FabricResource): Promise<Ensured[]> {
    return this.o.records.ensureNetworkMapping(source, target);
  }

  mappingsOf(vnetId: string): Promise<FabricResource[]> {
    return this.o.records.mappingsOf(vnetId);
  }

  ensureAvailabilitySet(region: string, resourceGroup: string, name: string): Promise<Ensured> {
    return this.ensure("availabilitySet", resourceGroup, name, {
      location: region,
      tags: this.tagsFor(undefined),
      // Aligned: required for VMs with managed disks.
      ...{ sku: { name: "Aligned" } },
      properties: { platformFaultDomainCount: 2, platformUpdateDomainCount: 5 },
    });
  }

  async get(id: string): Promise<FabricResource | undefined> {
    const p = this.parse(id);
    if (!p) return undefined;
    if (p.kind === "networkMapping") return this.o.records.get(id);
    const sub = /^\/subscriptions\/([^/]+)/i.exec(id)?.[1];
    return armCall(() => this.read(p.kind as Exclude<ResourceKind, "networkMapping">, p.resourceGroup, p.name, sub));
  }

  async list(kind: ResourceKind): Promise<FabricResource[]> {
    if (kind === "networkMapping") return this.o.records.list(kind);
    return armCall(async () => {
      const path =
        kind === "resourceGroup"
          ? `/subscriptions/${this.o.subscriptionId}/resourcegroups`
          : `/subscriptions/${this.o.subscriptionId}/providers/${PROVIDER_PATH[kind]}`;
      const items = (await this.client.list(path, apiOf(kind))) as ArmResource[];
      return Promise.all(
        items.map((r) => {
          const parsed = r.id ? this.parse(r.id) : undefined;
          return this.toResource(kind, r, parsed?.resourceGroup ?? r.name ?? "", r.name ?? parsed?.name ?? "");
        }),
      );
    });
  }

  async delete(id: string): Promise<boolean> {
    const p = this.parse(id);
    if (!p) return false;
    if (p.kind === "networkMapping") return this.o.records.delete(id);
    return armCall(async () => {
      if (p.kind !== "virtualMachine") return this.client.delete(id, apiOf(p.kind));
      // A VM's managed disks were made for it from the failover VHDs: they go with it.
      const vm = (await this.client.get(id, API_VERSIONS.compute)) as ArmResource | undefined;
      if (!vm) return false;
      const storage = vm.properties?.storageProfile as
        { osDisk?: { managedDisk?: { id?: string } }; dataDisks?: { managedDisk?: { id?: string } }[] } | undefined;
      const disks = [storage?.osDisk, ...(storage?.dataDisks ?? [])].map((d) => d?.managedDisk?.id).filter((x): x is string => !!x);
      const deleted = await this.client.delete(id, API_VERSIONS.compute);
      for (const d of disks) {
        const disk = (await this.client.get(d, API_VERSIONS.disks)) as ArmResource | undefined;
        if (disk?.tags?.[CREATED_TAG] === CREATED_VALUE) await this.client.delete(d, API_VERSIONS.disks);
      }
      return deleted;
    });
  }

  async ensureNetworkInterface(spec: NetworkInterfaceSpec): Promise<Ensured> {
    return this.once(this.idOf("networkInterface", spec.resourceGroup, spec.name), () =>
      armCall(async () => {
        const existing = await this.read("networkInterface", spec.resourceGroup, spec.name);
        if (existing) return { resource: existing, created: false };
        const vnet = await this.get(spec.vnetId);
        if (vnet?.kind !== "virtualNetwork") throw new FabricError("NotFound", `virtual network '${spec.vnetId}' does not exist`);
        const subnet = vnet.subnets?.find((s) => s.name.toLowerCase() === spec.subnet.toLowerCase());
        if (!subnet) throw new FabricError("NotFound", `subnet '${spec.subnet}' does not exist in '${vnet.id}'`);
        const id = this.idOf("networkInterface", spec.resourceGroup, spec.name);
        for (const n of candidates(subnet.addressPrefix, spec.allocation, spec.preferredIp)) {
          const ip = formatIpv4(n);
          // A read first: a taken address costs a GET, not a failed write. ARM refuses a taken static address
          // (PrivateIPAddressInUse), so two NICs made at once still never share one.
          const check = (await this.client.send("GET", `${vnet.id}/CheckIPAddressAvailability?ipAddress=${ip}`, API_VERSIONS.network)).body as {
            available?: boolean;
          };
          if (check?.available === false) continue;
          try {
            const made = await this.client.put(id, API_VERSIONS.network, {
              location: spec.region,
              tags: this.tagsFor(spec.tags),
              properties: {
                ipConfigurations: [
                  {
                    name: "ipconfig1",
                    properties: {
                      subnet: { id: `${vnet.id}/subnets/${subnet.name}` },
                      privateIPAllocationMethod: "Static",
                      privateIPAddress: ip,
                      primary: true,
                    },
                  },
                ],
              },
            });
            return { resource: await this.toResource("networkInterface", made as ArmResource, spec.resourceGroup, spec.name), created: true };
          } catch (e) {
            if (e instanceof ArmError && e.code === "PrivateIPAddressInUse") {
              // Either the address was just taken (try the next) or a concurrent call made this very NIC (it wins).
              const winner = await this.read("networkInterface", spec.resourceGroup, spec.name);
              if (winner) return { resource: winner, created: false };
              continue;
            }
            throw e;
          }
        }
        throw new FabricError("SubnetFull", `no free address in subnet '${subnet.name}' (${subnet.addressPrefix}) of '${vnet.id}'`);
      }),
    );
  }

  async ensureVirtualMachine(spec: VirtualMachineSpec): Promise<Ensured> {
    return this.once(this.idOf("virtualMachine", spec.resourceGroup, spec.name), () =>
      armCall(async () => {
        const existing = await this.read("virtualMachine", spec.resourceGroup, spec.name);
        if (existing) return { resource: existing, created: false };
        if (!(await this.get(spec.nicId))) throw new FabricError("NotFound", `network interface '${spec.nicId}' does not exist`);
        if (spec.availabilitySetId !== undefined && !(await this.get(spec.availabilitySetId))) {
          throw new FabricError("NotFound", `availability set '${spec.availabilitySetId}' does not exist`);
        }
        const osType = spec.osType ?? "Linux";
        // Managed disks imported from the failover VHD page blobs (fixed VHD, whole MiB + footer), in the VM's region.
        const importDisk = async (d: VmDisk, os: boolean): Promise<string> => {
          const id = this.diskId(spec.resourceGroup, d.name);
          if (!(await this.client.get(id, API_VERSIONS.disks))) {
            await this.client.put(id, API_VERSIONS.disks, {
              location: spec.region,
              tags: this.tagsFor(spec.tags),
              sku: { name: this.diskSku },
              properties: {
                ...(os ? { osType } : {}),
                creationData: { createOption: "Import", sourceUri: d.vhdUri, storageAccountId: this.o.replicaStorageId },
              },
            });
          }
          return id;
        };
        const imported: string[] = [];
        let made: unknown;
        try {
          imported.push(await importDisk(spec.osDisk, true));
          for (const d of spec.dataDisks) imported.push(await importDisk(d, false));
          const [osDiskId, ...dataDiskIds] = imported;
          made = await this.client.put(this.idOf("virtualMachine", spec.resourceGroup, spec.name), API_VERSIONS.compute, {
            location: spec.region,
            tags: this.tagsFor(spec.tags),
            properties: {
              hardwareProfile: { vmSize: spec.size },
              storageProfile: {
                osDisk: { name: spec.osDisk.name, createOption: "Attach", osType, managedDisk: { id: osDiskId } },
                dataDisks: spec.dataDisks.map((d, i) => ({ lun: d.lun ?? i, name: d.name, createOption: "Attach", managedDisk: { id: dataDiskIds[i] } })),
              },
              networkProfile: { networkInterfaces: [{ id: spec.nicId, properties: { primary: true } }] },
              ...(spec.availabilitySetId ? { availabilitySet: { id: spec.availabilitySetId } } : {}),
            },
          });
        } catch (e) {
          // A refused VM (quota, size) leaves no orphan disks behind: the failover's rollback only knows the VM.
          if (refusalOf(e)) for (const d of imported) await this.client.delete(d, API_VERSIONS.disks).catch(() => false);
          throw e;
        }
        return { resource: await this.toResource("virtualMachine", made as ArmResource, spec.resourceGroup, spec.name), created: true };
      }),
    );
  }

  async setPowerState(region: string, resourceGroup: string, name: string, state: PowerState): Promise<FabricResource> {
    return armCall(async () => {
      // A target VM lives in the target subscription; a source VM (planned failover, rollback) in the source one.
      let sub = this.o.subscriptionId;
      let vm = await this.read("virtualMachine", resourceGroup, name, sub);
      if (!vm && this.o.sourceSubscriptionId !== this.o.subscriptionId) {
        sub = this.o.sourceSubscriptionId;
        vm = await this.read("virtualMachine", resourceGroup, name, sub);
      }
      if (!vm) throw new FabricError("NotFound", `virtual machine '${name}' does not exist in resource group '${resourceGroup}' (${region})`);
      if (vm.powerState === state) return vm;
      await this.client.action(`${vm.id}/${state === "running" ? "start" : "deallocate"}`, API_VERSIONS.compute);
      return { ...vm, powerState: (await this.powerState(vm.id)) ?? state };
    });
  }
}
