// LocalFabric: the fabric port kept in Table Storage, the embedded stand-in for Azure Resource Manager.
import { createHash } from "node:crypto";
import type { TableClient } from "@azure/data-tables";
import { isConflict, isNotFound } from "../errors";
import { resourceId, type Ensured, type Fabric, type FabricResource, type ResourceKind, type VirtualNetworkSpec } from "./port";

interface ResourceEntity {
  partitionKey: string;
  rowKey: string;
  body: string;
}

/** Table keys may not hold '/', so ARM ids are stored lower-cased with '|' for '/'. */
const rowKey = (id: string) => id.toLowerCase().replace(/\//g, "|");

/** The /16 and /24 around an address: how LocalFabric imagines a source network it has never seen. */
function networkAround(ip: string | undefined): { space: string; subnet: string } {
  const [a, b, c] = (ip ?? "10.0.0.4").split(".");
  return { space: `${a}.${b}.0.0/16`, subnet: `${a}.${b}.${c}.0/24` };
}

export class LocalFabric implements Fabric {
  constructor(private readonly table: () => Promise<TableClient>) {}

  async get(id: string): Promise<FabricResource | undefined> {
    const t = await this.table();
    try {
      const e = await t.getEntity<ResourceEntity>("resource", rowKey(id));
      return JSON.parse(e.body) as FabricResource;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** Creates the resource unless one with that id exists; the existing one wins a race. */
  private async ensure(resource: FabricResource): Promise<Ensured> {
    const t = await this.table();
    try {
      await t.createEntity<ResourceEntity>({ partitionKey: "resource", rowKey: rowKey(resource.id), body: JSON.stringify(resource) });
      return { resource, created: true };
    } catch (e) {
      if (!isConflict(e)) throw e;
      const existing = await this.get(resource.id);
      if (!existing) return this.ensure(resource);
      return { resource: existing, created: false };
    }
  }

  private build(kind: ResourceKind, region: string, resourceGroup: string, name: string, extra: Partial<FabricResource> = {}): FabricResource {
    return {
      id: resourceId(kind, resourceGroup, name),
      kind,
      region,
      resourceGroup,
      name,
      createdBySiteRecovery: true,
      ...extra,
    };
  }

  ensureResourceGroup(region: string, name: string): Promise<Ensured> {
    return this.ensure(this.build("resourceGroup", region, name, name));
  }

  async sourceNetwork(region: string, resourceGroup: string, vnet: string, subnet: string, privateIp?: string): Promise<FabricResource> {
    const id = resourceId("virtualNetwork", resourceGroup, vnet);
    const known = await this.get(id);
    const around = networkAround(privateIp);
    if (known) {
      if (known.subnets?.some((s) => s.name.toLowerCase() === subnet.toLowerCase())) return known;
      // A subnet seen for the first time joins the known network.
      const updated = { ...known, subnets: [...(known.subnets ?? []), { name: subnet, addressPrefix: around.subnet }] };
      const t = await this.table();
      await t.upsertEntity<ResourceEntity>({ partitionKey: "resource", rowKey: rowKey(id), body: JSON.stringify(updated) }, "Replace");
      return updated;
    }
    // The source region is outside what LocalFabric creates: it records the network the VM is said to use.
    const discovered = this.build("virtualNetwork", region, resourceGroup, vnet, {
      createdBySiteRecovery: false,
      addressSpace: [around.space],
      subnets: [{ name: subnet, addressPrefix: around.subnet }],
    });
    return (await this.ensure(discovered)).resource;
  }

  ensureVirtualNetwork(region: string, resourceGroup: string, name: string, spec: VirtualNetworkSpec): Promise<Ensured> {
    return this.ensure(this.build("virtualNetwork", region, resourceGroup, name, { addressSpace: spec.addressSpace, subnets: spec.subnets }));
  }

  async ensureNetworkMapping(source: FabricResource, target: FabricResource): Promise<Ensured[]> {
    const mapping = (from: FabricResource, to: FabricResource) => {
      const name = createHash("sha256").update(`${from.id.toLowerCase()}>${to.id.toLowerCase()}`).digest("hex").slice(0, 24);
      return this.build("networkMapping", to.region, to.resourceGroup, name, { sourceId: from.id, targetId: to.id });
    };
    return [await this.ensure(mapping(source, target)), await this.ensure(mapping(target, source))];
  }

  ensureAvailabilitySet(region: string, resourceGroup: string, name: string): Promise<Ensured> {
    return this.ensure(this.build("availabilitySet", region, resourceGroup, name));
  }

  async mappingsOf(vnetId: string): Promise<FabricResource[]> {
    const t = await this.table();
    const out: FabricResource[] = [];
    const want = vnetId.toLowerCase();
    for await (const e of t.listEntities<ResourceEntity>({ queryOptions: { filter: "PartitionKey eq 'resource'" } })) {
      const r = JSON.parse(e.body) as FabricResource;
      if (r.kind === "networkMapping" && (r.sourceId?.toLowerCase() === want || r.targetId?.toLowerCase() === want)) out.push(r);
    }
    return out;
  }

  async delete(id: string): Promise<boolean> {
    const t = await this.table();
    try {
      await t.deleteEntity("resource", rowKey(id));
      return true;
    } catch (e) {
      if (isNotFound(e)) return false;
      throw e;
    }
  }
}
