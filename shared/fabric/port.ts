// The fabric port: how site-recovery creates and finds the target region's resources (ARM in Azure).

export type ResourceKind = "resourceGroup" | "virtualNetwork" | "availabilitySet" | "networkMapping" | "networkInterface" | "virtualMachine";

export type PowerState = "running" | "deallocated";

export interface Subnet {
  name: string;
  addressPrefix: string;
}

export interface FabricResource {
  /** ARM-style resource id, e.g. /subscriptions/…/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v. */
  id: string;
  kind: ResourceKind;
  region: string;
  resourceGroup: string;
  name: string;
  /** True when site-recovery created it (an ARM tag): only such resources are ever deleted by it. */
  createdBySiteRecovery: boolean;
  addressSpace?: string[];
  subnets?: Subnet[];
  /** Network mapping: the vnet this one maps to. */
  sourceId?: string;
  targetId?: string;
  /** Network interface: its vnet, subnet and private address. */
  vnetId?: string;
  subnet?: string;
  privateIp?: string;
  /** Virtual machine: size, NIC, availability set, disks (VHD blob URLs, OS first) and power state. */
  size?: string;
  nicId?: string;
  availabilitySetId?: string;
  osDisk?: VmDisk;
  dataDisks?: VmDisk[];
  powerState?: PowerState;
  /** ARM tags, e.g. the failover that made the resource. */
  tags?: Record<string, string>;
}

export interface VmDisk {
  name: string;
  /** The VHD page blob the disk is made from (a failover disk). */
  vhdUri: string;
  /** Data disks only. */
  lun?: number;
}

export interface NetworkInterfaceSpec {
  region: string;
  resourceGroup: string;
  name: string;
  vnetId: string;
  subnet: string;
  /**
   * `retain`: the preferred address if free in the subnet, else the next free one after it (failover);
   * `fromEnd`: the highest free address of the subnet (test failover), the preferred one ignored.
   */
  allocation: "retain" | "fromEnd";
  preferredIp?: string;
  tags?: Record<string, string>;
}

export interface VirtualMachineSpec {
  region: string;
  resourceGroup: string;
  name: string;
  size: string;
  nicId: string;
  availabilitySetId?: string;
  osDisk: VmDisk;
  dataDisks: VmDisk[];
  /** The OS of the attached OS disk (Azure needs it to attach one); Linux when not said. */
  osType?: "Linux" | "Windows";
  tags?: Record<string, string>;
}

export interface Ensured {
  resource: FabricResource;
  created: boolean;
}

export interface VirtualNetworkSpec {
  addressSpace: string[];
  subnets: Subnet[];
}

/** What enable and disable need from the fabric; every call is idempotent. */
export interface Fabric {
  ensureResourceGroup(region: string, name: string): Promise<Ensured>;
  /** The source VM's network as it exists in the source region. */
  sourceNetwork(region: string, resourceGroup: string, vnet: string, subnet: string, privateIp?: string): Promise<FabricResource>;
  /** Creates the network, or adds to one site-recovery made the spec's subnets it lacks (by name); never renames or removes one. */
  ensureVirtualNetwork(region: string, resourceGroup: string, name: string, spec: VirtualNetworkSpec): Promise<Ensured>;
  /** Records the mapping in both directions (source → target and target → source). */
  ensureNetworkMapping(source: FabricResource, target: FabricResource): Promise<Ensured[]>;
  ensureAvailabilitySet(region: string, resourceGroup: string, name: string): Promise<Ensured>;
  get(id: string): Promise<FabricResource | undefined>;
  /** Mappings that name `vnetId` as source or target. */
  mappingsOf(vnetId: string): Promise<FabricResource[]>;
  /** Deletes a resource; false when it did not exist. A NIC's address is free again once it is deleted. */
  delete(id: string): Promise<boolean>;
  /**
   * Creates the NIC unless one with that id exists (then returns it unchanged: its address is never re-chosen). The
   * address is taken atomically: two NICs created at once never get the same one. Throws FabricError
   * `SubnetFull` when no address is free, `NotFound` when the vnet or subnet does not exist.
   */
  ensureNetworkInterface(spec: NetworkInterfaceSpec): Promise<Ensured>;
  /**
   * Creates the VM unless one with that id exists (LocalFabric leaves it deallocated; Azure starts a VM it creates).
   * Throws FabricError `NotFound` for a missing NIC or availability set.
   */
  ensureVirtualMachine(spec: VirtualMachineSpec): Promise<Ensured>;
  /**
   * Sets a VM's power state (start, or shut down and deallocate). A source VM the fabric has not seen yet is
   * recorded as it is found (LocalFabric: created on first sight, `createdBySiteRecovery: false`).
   */
  setPowerState(region: string, resourceGroup: string, name: string, state: PowerState): Promise<FabricResource>;
  /** Every resource of a kind (tests, cleanup checks, the demo's report). */
  list(kind: ResourceKind): Promise<FabricResource[]>;
}

/**
 * Why a fabric call was refused. `QuotaExceeded` (the subscription's vCPU or other quota), `SkuNotAvailable` (the VM
 * size is not offered in the region), `Forbidden` (the identity lacks the rights) and `Conflict` (e.g. a name taken)
 * come from ARM; retrying them cannot help, so they end the failover step.
 */
export type FabricRefusal = "SubnetFull" | "NotFound" | "Conflict" | "QuotaExceeded" | "SkuNotAvailable" | "Forbidden";

/** A fabric call refused for a reason the caller can name (not a transient failure). */
export class FabricError extends Error {
  constructor(
    readonly code: FabricRefusal,
    message: string,
  ) {
    super(message);
    this.name = "FabricError";
  }
}

const SUBSCRIPTION = "00000000-0000-0000-0000-000000000000";

export function resourceId(kind: ResourceKind, resourceGroup: string, name = "", extra = ""): string {
  const rg = `/subscriptions/${SUBSCRIPTION}/resourceGroups/${resourceGroup}`;
  switch (kind) {
    case "resourceGroup":
      return rg;
    case "virtualNetwork":
      return `${rg}/providers/Microsoft.Network/virtualNetworks/${name}`;
    case "availabilitySet":
      return `${rg}/providers/Microsoft.Compute/availabilitySets/${name}`;
    case "networkMapping":
      return `${rg}/providers/Microsoft.RecoveryServices/networkMappings/${name}${extra}`;
    case "networkInterface":
      return `${rg}/providers/Microsoft.Network/networkInterfaces/${name}`;
    case "virtualMachine":
      return `${rg}/providers/Microsoft.Compute/virtualMachines/${name}`;
  }
}

/** The id of the resource group a resource id names (whatever its subscription). */
export function resourceGroupIdOf(id: string): string {
  const m = /^(\/subscriptions\/[^/]+\/resourceGroups\/[^/]+)/i.exec(id);
  return m ? m[1]! : id;
}
