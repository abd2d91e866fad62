// The fabric port: how site-recovery creates and finds the target region's resources (ARM in Azure).

export type ResourceKind = "resourceGroup" | "virtualNetwork" | "availabilitySet" | "networkMapping";

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
  ensureVirtualNetwork(region: string, resourceGroup: string, name: string, spec: VirtualNetworkSpec): Promise<Ensured>;
  /** Records the mapping in both directions (source → target and target → source). */
  ensureNetworkMapping(source: FabricResource, target: FabricResource): Promise<Ensured[]>;
  ensureAvailabilitySet(region: string, resourceGroup: string, name: string): Promise<Ensured>;
  get(id: string): Promise<FabricResource | undefined>;
  /** Mappings that name `vnetId` as source or target. */
  mappingsOf(vnetId: string): Promise<FabricResource[]>;
  /** Deletes a resource; false when it did not exist. */
  delete(id: string): Promise<boolean>;
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
  }
}
