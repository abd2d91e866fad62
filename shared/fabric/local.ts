// LocalFabric: the fabric port kept in Table Storage, the embedded stand-in for Azure Resource Manager.
import { createHash } from "node:crypto";
import { odata, type TableClient } from "@azure/data-tables";
import { isConflict, isNotFound, storageStatus } from "../contract/errors";
import {
  FabricError,
  resourceId,
  type Ensured,
  type Fabric,
  type FabricResource,
  type NetworkInterfaceSpec,
  type PowerState,
  type ResourceKind,
  type VirtualMachineSpec,
  type VirtualNetworkSpec,
} from "./port";

/**
 * A resource, or an address claim (row key `ip|…`, body without `kind`): claims share the partition so that a NIC
 * and its address are created and deleted in one transaction (never one without the other, even after a crash).
 */
interface ResourceEntity {
  partitionKey: string;
  rowKey: string;
  body: string;
}

interface AddressClaim {
  ip: string;
  nicId: string;
}

const PARTITION = "resource";

/** Table keys may not hold '/', so ARM ids are stored lower-cased with '|' for '/'. */
const rowKey = (id: string) => id.toLowerCase().replace(/\//g, "|");

/** Row key prefix of every address claim in one subnet of one vnet. */
const claimPrefix = (vnetId: string, subnet: string) => `ip|${rowKey(vnetId)}|${subnet.toLowerCase().replace(/\//g, "|")}|`;

/** Enough for a burst of concurrent updates of one VM; a 412 beyond that is a real fight worth surfacing. */
const MAX_ETAG_RETRIES = 20;

export function parseIpv4(text: string): number | undefined {
  const parts = text.trim().split(".");
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) return undefined;
  return parts.reduce((n, p) => n * 256 + Number(p), 0);
}

export const formatIpv4 = (n: number) => [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join(".");

/** Azure keeps the network address, the next three (gateway, DNS) and the broadcast address for itself. */
export function usableRange(addressPrefix: string): { first: number; last: number } {
  const [base, bits] = addressPrefix.split("/");
  const address = base === undefined ? undefined : parseIpv4(base);
  const length = Number(bits);
  if (address === undefined || !/^\d{1,2}$/.test(bits ?? "") || length > 32) throw new RangeError(`'${addressPrefix}' is not an IPv4 CIDR prefix`);
  const size = 2 ** (32 - length);
  const network = address - (address % size);
  return { first: network + 4, last: network + size - 2 };
}

/** Addresses to try, best first; lazy, as a large subnet holds millions. */
export function* candidates(addressPrefix: string, allocation: NetworkInterfaceSpec["allocation"], preferredIp: string | undefined): Generator<number> {
  const { first, last } = usableRange(addressPrefix);
  if (allocation === "fromEnd") {
    for (let n = last; n >= first; n--) yield n;
    return;
  }
  const preferred = preferredIp === undefined ? undefined : parseIpv4(preferredIp);
  // Outside the subnet, or one of its reserved addresses (the low ones, or the broadcast one after wrapping): the
  // next usable address after it is the first one.
  const start = preferred !== undefined && preferred >= first && preferred <= last ? preferred : first;
  for (let n = start; n <= last; n++) yield n;
  for (let n = first; n < start; n++) yield n;
}

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
      const e = await t.getEntity<ResourceEntity>(PARTITION, rowKey(id));
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
      await t.createEntity<ResourceEntity>({ partitionKey: PARTITION, rowKey: rowKey(resource.id), body: JSON.stringify(resource) });
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
      await t.upsertEntity<ResourceEntity>({ partitionKey: PARTITION, rowKey: rowKey(id), body: JSON.stringify(updated) }, "Replace");
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

  /** An existing network site-recovery made gains the spec's subnets it lacks (by name); its subnets are never changed. */
  async ensureVirtualNetwork(region: string, resourceGroup: string, name: string, spec: VirtualNetworkSpec): Promise<Ensured> {
    const ensured = await this.ensure(this.build("virtualNetwork", region, resourceGroup, name, { addressSpace: spec.addressSpace, subnets: spec.subnets }));
    if (ensured.created || !ensured.resource.createdBySiteRecovery) return ensured;
    const t = await this.table();
    for (let attempt = 0; attempt < 20; attempt++) {
      const e = await t.getEntity<ResourceEntity>(PARTITION, rowKey(ensured.resource.id));
      const current = JSON.parse(e.body) as FabricResource;
      const have = new Set((current.subnets ?? []).map((s) => s.name.toLowerCase()));
      const missing = spec.subnets.filter((s) => !have.has(s.name.toLowerCase()));
      if (missing.length === 0) return { resource: current, created: false };
      const updated: FabricResource = { ...current, subnets: [...(current.subnets ?? []), ...missing] };
      try {
        await t.updateEntity<ResourceEntity>({ partitionKey: PARTITION, rowKey: rowKey(updated.id), body: JSON.stringify(updated) }, "Replace", {
          etag: e.etag,
        });
        return { resource: updated, created: false };
      } catch (err) {
        if (storageStatus(err) !== 412) throw err;
      }
    }
    throw new Error(`virtual network ${ensured.resource.id} is changing too fast`);
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
    const want = vnetId.toLowerCase();
    return (await this.list("networkMapping")).filter((r) => r.sourceId?.toLowerCase() === want || r.targetId?.toLowerCase() === want);
  }

  async list(kind: ResourceKind): Promise<FabricResource[]> {
    const t = await this.table();
    const out: FabricResource[] = [];
    // Rows carry no kind column (older ones never had one), so the body decides; address claims have no kind.
    for await (const e of t.listEntities<ResourceEntity>({ queryOptions: { filter: odata`PartitionKey eq ${PARTITION}` } })) {
      const r = JSON.parse(e.body) as Partial<FabricResource>;
      if (r.kind === kind) out.push(r as FabricResource);
    }
    return out;
  }

  async delete(id: string): Promise<boolean> {
    const found = await this.get(id);
    if (found?.kind === "networkInterface" && found.privateIp && found.vnetId && found.subnet) {
      const t = await this.table();
      try {
        await t.submitTransaction([
          ["delete", { partitionKey: PARTITION, rowKey: rowKey(id) }],
          ["delete", { partitionKey: PARTITION, rowKey: claimPrefix(found.vnetId, found.subnet) + found.privateIp }],
        ]);
        return true;
      } catch (e) {
        // Deleted meanwhile by someone else (or, never expected, a NIC without its claim): the plain delete decides.
        if (!isNotFound(e)) throw e;
      }
    }
    return this.deleteRow(id);
  }

  private async deleteRow(id: string): Promise<boolean> {
    const t = await this.table();
    try {
      await t.deleteEntity(PARTITION, rowKey(id));
      return true;
    } catch (e) {
      if (isNotFound(e)) return false;
      throw e;
    }
  }

  async ensureNetworkInterface(spec: NetworkInterfaceSpec): Promise<Ensured> {
    const id = resourceId("networkInterface", spec.resourceGroup, spec.name);
    const existing = await this.get(id);
    if (existing) return { resource: existing, created: false };
    const vnet = await this.get(spec.vnetId);
    if (vnet?.kind !== "virtualNetwork") throw new FabricError("NotFound", `virtual network '${spec.vnetId}' does not exist`);
    const subnet = vnet.subnets?.find((s) => s.name.toLowerCase() === spec.subnet.toLowerCase());
    if (!subnet) throw new FabricError("NotFound", `subnet '${spec.subnet}' does not exist in '${vnet.id}'`);

    const t = await this.table();
    const prefix = claimPrefix(vnet.id, subnet.name);
    // Known claims are skipped without a round trip; one made since this read fails the transaction below instead.
    const taken = new Set<string>();
    const filter = odata`PartitionKey eq ${PARTITION} and RowKey ge ${prefix} and RowKey lt ${prefix + "~"}`;
    for await (const e of t.listEntities<ResourceEntity>({ queryOptions: { filter, select: ["RowKey"] } })) taken.add(e.rowKey.slice(prefix.length));

    for (const n of candidates(subnet.addressPrefix, spec.allocation, spec.preferredIp)) {
      const ip = formatIpv4(n);
      if (taken.has(ip)) continue;
      const nic = this.build("networkInterface", spec.region, spec.resourceGroup, spec.name, {
        vnetId: vnet.id,
        subnet: subnet.name,
        privateIp: ip,
        ...(spec.tags ? { tags: spec.tags } : {}),
      });
      const claim: AddressClaim = { ip, nicId: id };
      try {
        // One transaction: the address is never held without its NIC, nor a NIC made without its address.
        await t.submitTransaction([
          ["create", { partitionKey: PARTITION, rowKey: prefix + ip, body: JSON.stringify(claim) }],
          ["create", { partitionKey: PARTITION, rowKey: rowKey(id), body: JSON.stringify(nic) }],
        ]);
        return { resource: nic, created: true };
      } catch (e) {
        if (!isConflict(e)) throw e;
        // Either the address was just taken (try the next) or a concurrent call made this very NIC (it wins).
        const winner = await this.get(id);
        if (winner) return { resource: winner, created: false };
      }
    }
    throw new FabricError("SubnetFull", `no free address in subnet '${subnet.name}' (${subnet.addressPrefix}) of '${vnet.id}'`);
  }

  async ensureVirtualMachine(spec: VirtualMachineSpec): Promise<Ensured> {
    const existing = await this.get(resourceId("virtualMachine", spec.resourceGroup, spec.name));
    if (existing) return { resource: existing, created: false };
    if (!(await this.get(spec.nicId))) throw new FabricError("NotFound", `network interface '${spec.nicId}' does not exist`);
    if (spec.availabilitySetId !== undefined && !(await this.get(spec.availabilitySetId))) {
      throw new FabricError("NotFound", `availability set '${spec.availabilitySetId}' does not exist`);
    }
    return this.ensure(
      this.build("virtualMachine", spec.region, spec.resourceGroup, spec.name, {
        size: spec.size,
        nicId: spec.nicId,
        // Absent rather than undefined: the resource handed back equals the one read later.
        ...(spec.availabilitySetId !== undefined ? { availabilitySetId: spec.availabilitySetId } : {}),
        osDisk: spec.osDisk,
        dataDisks: spec.dataDisks,
        powerState: "deallocated",
        ...(spec.tags ? { tags: spec.tags } : {}),
      }),
    );
  }

  async setPowerState(region: string, resourceGroup: string, name: string, state: PowerState): Promise<FabricResource> {
    const id = resourceId("virtualMachine", resourceGroup, name);
    const t = await this.table();
    for (let attempt = 0; ; attempt++) {
      let found: { resource: FabricResource; etag: string } | undefined;
      try {
        const e = await t.getEntity<ResourceEntity>(PARTITION, rowKey(id));
        found = { resource: JSON.parse(e.body) as FabricResource, etag: e.etag };
      } catch (e) {
        if (!isNotFound(e)) throw e;
      }
      if (!found) {
        // A source VM seen for the first time is recorded as found, already in the state asked for.
        const discovered = this.build("virtualMachine", region, resourceGroup, name, { createdBySiteRecovery: false, powerState: state });
        const ensured = await this.ensure(discovered);
        if (ensured.created) return ensured.resource;
        continue;
      }
      if (found.resource.powerState === state) return found.resource;
      const updated: FabricResource = { ...found.resource, powerState: state };
      try {
        await t.updateEntity<ResourceEntity>({ partitionKey: PARTITION, rowKey: rowKey(id), body: JSON.stringify(updated) }, "Replace", { etag: found.etag });
        return updated;
      } catch (e) {
        // 412: changed since read, so read again; 404: deleted since read, so it is found anew.
        if ((storageStatus(e) !== 412 && !isNotFound(e)) || attempt >= MAX_ETAG_RETRIES) throw e;
      }
    }
  }
}
