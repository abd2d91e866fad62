// A FAKE Azure Resource Manager, in process: the SDK pipeline's HttpClient answering the calls ArmFabric makes, with
// resources in memory and long-running operations answered the way ARM does (201/202 + Azure-AsyncOperation or
// Location, provisioningState). It checks what ARM would refuse (missing parents, taken addresses, quota, VM sizes),
// and can throttle (429 + Retry-After). It is a test double, never a claim about Azure's full behaviour.
import { createHttpHeaders, type HttpClient, type PipelineRequest, type PipelineResponse } from "@azure/core-rest-pipeline";
import type { TokenCredential } from "@azure/identity";
import { candidates, formatIpv4 } from "../../shared/fabric/local";

export const FAKE_ARM_ENDPOINT = "https://management.fake-arm.test";

/** A credential that hands out a fixed token: the fake checks it is sent. */
export const fakeArmCredential: TokenCredential = {
  getToken: async () => ({ token: "fake-arm-token", expiresOnTimestamp: Date.now() + 3600_000 }),
};

export interface FakeResource {
  id: string;
  name: string;
  type: string;
  location: string;
  tags?: Record<string, string>;
  sku?: { name: string };
  properties: Record<string, unknown>;
}

interface Operation {
  pollsLeft: number;
  done: () => void;
  error?: { code: string; message: string };
}

export interface FakeArmOptions {
  /** Polls an operation answers InProgress before it succeeds; default 1. */
  pollsPerOperation?: number;
  /** Regional vCPU quota; default 100. */
  coreQuota?: number;
  /** VM sizes the region does not offer (SkuNotAvailable). */
  unavailableSizes?: string[];
}

const CORES: Record<string, number> = { standard_d2s_v5: 2, standard_d4s_v5: 4, standard_d8s_v5: 8, standard_b1s: 1 };

export class FakeArm implements HttpClient {
  readonly resources = new Map<string, FakeResource>();
  readonly power = new Map<string, "running" | "deallocated">();
  /** Every request, `METHOD path` (lower-cased path, no query). */
  readonly requests: string[] = [];
  /** When each throttled answer was sent, and when the request after it came. */
  readonly throttled: number[] = [];
  private readonly operations = new Map<string, Operation>();
  private throttleLeft = 0;
  private throttleAfterSeconds = 0;
  private nextOp = 0;

  /** Mutable: a test can refuse a size or lower the quota mid-run. */
  constructor(readonly options: FakeArmOptions = {}) {}

  /** The next `count` requests get 429 with `Retry-After: seconds`. */
  throttle(count: number, seconds: number): void {
    this.throttleLeft = count;
    this.throttleAfterSeconds = seconds;
  }

  /** Puts a resource in place as if it always existed (the source region's VMs and networks). */
  seed(resource: FakeResource): void {
    this.resources.set(resource.id.toLowerCase(), resource);
    if (resource.type === "Microsoft.Compute/virtualMachines") this.power.set(resource.id.toLowerCase(), "running");
  }

  seedResourceGroup(subscription: string, name: string, location: string): void {
    this.seed({
      id: `/subscriptions/${subscription}/resourceGroups/${name}`,
      name,
      type: "Microsoft.Resources/resourceGroups",
      location,
      properties: { provisioningState: "Succeeded" },
    });
  }

  count(method: string, pathPart: string): number {
    return this.requests.filter((r) => r.startsWith(`${method} `) && r.includes(pathPart.toLowerCase())).length;
  }

  async sendRequest(request: PipelineRequest): Promise<PipelineResponse> {
    const url = new URL(request.url);
    const path = decodeURIComponent(url.pathname).replace(/\/+$/, "");
    const lower = path.toLowerCase();
    this.requests.push(`${request.method} ${lower}`);
    const reply = (status: number, body?: unknown, headers: Record<string, string> = {}): PipelineResponse => ({
      request,
      status,
      headers: createHttpHeaders({
        ...(body === undefined ? {} : { "content-type": "application/json" }),
        "x-ms-request-id": `fake-${this.requests.length}`,
        ...headers,
      }),
      ...(body === undefined ? {} : { bodyAsText: JSON.stringify(body) }),
    });
    const fail = (status: number, code: string, message: string) => reply(status, { error: { code, message } });

    if (!request.headers.get("authorization")?.startsWith("Bearer fake-arm-token")) return fail(401, "AuthenticationFailed", "no bearer token");
    if (this.throttleLeft > 0) {
      this.throttleLeft--;
      this.throttled.push(Date.now());
      return reply(429, { error: { code: "TooManyRequests", message: "throttled by the fake ARM" } }, { "retry-after": String(this.throttleAfterSeconds) });
    }

    // Long-running operation monitors.
    const op = /^\/fake-operations\/(\d+)$/.exec(lower) ?? /^\/fake-locations\/(\d+)$/.exec(lower);
    if (op) {
      const o = this.operations.get(op[1]!);
      if (!o) return fail(404, "NotFound", "no such operation");
      const isLocation = lower.startsWith("/fake-locations/");
      if (o.pollsLeft > 0) {
        o.pollsLeft--;
        return isLocation ? reply(202, undefined, { location: request.url, "retry-after": "0" }) : reply(200, { status: "InProgress" }, { "retry-after": "0" });
      }
      if (!o.error) o.done();
      if (o.error) return isLocation ? fail(409, o.error.code, o.error.message) : reply(200, { status: "Failed", error: o.error });
      return isLocation ? reply(200, {}) : reply(200, { status: "Succeeded" });
    }

    if (!url.searchParams.get("api-version")) return fail(400, "MissingApiVersionParameter", "api-version is required");
    const body = request.body === undefined ? undefined : (JSON.parse(String(request.body)) as Partial<FakeResource>);

    // Lists.
    let m = /^\/subscriptions\/([^/]+)\/resourcegroups$/.exec(lower);
    if (m && request.method === "GET")
      return reply(200, {
        value: this.all().filter((r) => r.type === "Microsoft.Resources/resourceGroups" && r.id.toLowerCase().startsWith(`/subscriptions/${m![1]}/`)),
      });
    m = /^\/subscriptions\/([^/]+)\/providers\/([^/]+\/[^/]+)$/.exec(lower);
    if (m && request.method === "GET") {
      const [, sub, type] = m;
      return reply(200, { value: this.all().filter((r) => r.type.toLowerCase() === type && r.id.toLowerCase().startsWith(`/subscriptions/${sub}/`)) });
    }

    // Actions and views on a VM, and the address check on a vnet.
    m =
      /^(\/subscriptions\/[^/]+\/resourcegroups\/[^/]+\/providers\/microsoft\.compute\/virtualmachines\/[^/]+)\/(start|deallocate|poweroff|instanceview)$/.exec(
        lower,
      );
    if (m) {
      const vmId = m[1]!;
      if (!this.resources.has(vmId)) return fail(404, "ResourceNotFound", `${path} not found`);
      if (m[2] === "instanceview")
        return reply(200, { statuses: [{ code: "ProvisioningState/succeeded" }, { code: `PowerState/${this.power.get(vmId) ?? "running"}` }] });
      const target = m[2] === "start" ? "running" : "deallocated";
      return this.operation(reply, () => this.power.set(vmId, target), false);
    }
    m = /^(\/subscriptions\/[^/]+\/resourcegroups\/[^/]+\/providers\/microsoft\.network\/virtualnetworks\/[^/]+)\/checkipaddressavailability$/.exec(lower);
    if (m) {
      const vnet = this.resources.get(m[1]!);
      if (!vnet) return fail(404, "ResourceNotFound", `${path} not found`);
      const ip = url.searchParams.get("ipAddress") ?? "";
      return reply(200, { available: this.inSomeSubnet(vnet, ip) && !this.addressTaken(m[1]!, ip) });
    }

    // One resource (resource group, or a provider resource).
    const rg = /^\/subscriptions\/([^/]+)\/resourcegroups\/([^/]+)$/.exec(lower);
    const res = /^(\/subscriptions\/[^/]+\/resourcegroups\/[^/]+)\/providers\/([^/]+\/[^/]+)\/([^/]+)$/.exec(lower);
    if (!rg && !res) return fail(404, "NoRegisteredProviderFound", `the fake ARM does not serve ${path}`);
    const existing = this.resources.get(lower);
    if (request.method === "GET")
      return existing ? reply(200, existing) : fail(404, rg ? "ResourceGroupNotFound" : "ResourceNotFound", `${path} was not found`);
    if (request.method === "DELETE") {
      if (!existing) return reply(204);
      return this.operation(
        reply,
        () => {
          for (const key of [...this.resources.keys()]) if (key === lower || (rg && key.startsWith(`${lower}/`))) this.resources.delete(key);
          this.power.delete(lower);
        },
        true,
      );
    }
    if (request.method !== "PUT" || !body) return fail(405, "MethodNotAllowed", `${request.method} ${path}`);
    if (res && !this.resources.has(res[1]!)) return fail(404, "ResourceGroupNotFound", `resource group of ${path} not found`);

    const type = rg ? "Microsoft.Resources/resourceGroups" : this.canonicalType(res![2]!);
    const name = path.split("/").pop()!;
    const resource: FakeResource = {
      id: path,
      name,
      type,
      location: body.location ?? "",
      ...(body.tags ? { tags: body.tags } : {}),
      ...(body.sku ? { sku: body.sku } : {}),
      properties: { ...(body.properties ?? {}) },
    };
    const refusal = this.refusal(resource, lower);
    if (refusal) return fail(refusal.status, refusal.code, refusal.message);
    const status = existing ? 200 : 201;
    if (type === "Microsoft.Resources/resourceGroups" || type === "Microsoft.Compute/availabilitySets") {
      if (type === "Microsoft.Resources/resourceGroups") resource.properties.provisioningState = "Succeeded";
      this.resources.set(lower, resource);
      return reply(status, resource);
    }
    resource.properties.provisioningState = existing ? "Updating" : "Creating";
    this.resources.set(lower, resource);
    const finish = () => {
      resource.properties.provisioningState = "Succeeded";
      if (type === "Microsoft.Compute/virtualMachines" && !existing) this.power.set(lower, "running"); // Azure starts a VM it creates
    };
    // Disks answer 202 + Location only; the others 201 + Azure-AsyncOperation with the resource as it is so far.
    if (type === "Microsoft.Compute/disks") return this.operation(reply, finish, true);
    const id = String(++this.nextOp);
    this.operations.set(id, { pollsLeft: this.options.pollsPerOperation ?? 1, done: finish });
    return reply(status, resource, { "azure-asyncoperation": `${FAKE_ARM_ENDPOINT}/fake-operations/${id}`, "retry-after": "0" });
  }

  private operation(reply: (s: number, b?: unknown, h?: Record<string, string>) => PipelineResponse, done: () => void, location: boolean): PipelineResponse {
    const id = String(++this.nextOp);
    this.operations.set(id, { pollsLeft: this.options.pollsPerOperation ?? 1, done });
    return location
      ? reply(202, undefined, { location: `${FAKE_ARM_ENDPOINT}/fake-locations/${id}`, "retry-after": "0" })
      : reply(202, undefined, { "azure-asyncoperation": `${FAKE_ARM_ENDPOINT}/fake-operations/${id}`, "retry-after": "0" });
  }

  private all(): FakeResource[] {
    return [...this.resources.values()];
  }

  private canonicalType(lowerType: string): string {
    const known = [
      "Microsoft.Network/virtualNetworks",
      "Microsoft.Network/networkInterfaces",
      "Microsoft.Compute/availabilitySets",
      "Microsoft.Compute/virtualMachines",
      "Microsoft.Compute/disks",
    ];
    return known.find((k) => k.toLowerCase() === lowerType) ?? lowerType;
  }

  private subnetOf(subnetId: string): { vnetId: string; prefix: string } | undefined {
    const at = subnetId.toLowerCase().lastIndexOf("/subnets/");
    if (at < 0) return undefined;
    const vnetId = subnetId.slice(0, at).toLowerCase();
    const name = subnetId.slice(at + "/subnets/".length).toLowerCase();
    const subnets = (this.resources.get(vnetId)?.properties.subnets as { name: string; properties: { addressPrefix: string } }[] | undefined) ?? [];
    const s = subnets.find((x) => x.name.toLowerCase() === name);
    return s ? { vnetId, prefix: s.properties.addressPrefix } : undefined;
  }

  private inSomeSubnet(vnet: FakeResource, ip: string): boolean {
    const subnets = (vnet.properties.subnets as { properties: { addressPrefix: string } }[] | undefined) ?? [];
    return subnets.some((s) => [...candidates(s.properties.addressPrefix, "fromEnd", undefined)].map(formatIpv4).includes(ip));
  }

  private addressTaken(vnetId: string, ip: string, except?: string): boolean {
    return this.all().some((r) => {
      if (r.type !== "Microsoft.Network/networkInterfaces" || r.id.toLowerCase() === except) return false;
      const c = this.ipConfig(r);
      return c.address === ip && c.subnetId.toLowerCase().startsWith(`${vnetId.toLowerCase()}/subnets/`);
    });
  }

  private ipConfig(nic: FakeResource): { subnetId: string; address: string } {
    const p = (nic.properties.ipConfigurations as { properties: { subnet: { id: string }; privateIPAddress: string } }[] | undefined)?.[0]?.properties;
    return { subnetId: p?.subnet.id ?? "", address: p?.privateIPAddress ?? "" };
  }

  private cores(size: string): number {
    return CORES[size.toLowerCase()] ?? 2;
  }

  /** What ARM would refuse about this PUT, as ARM words it. */
  private refusal(r: FakeResource, lowerId: string): { status: number; code: string; message: string } | undefined {
    if (r.type === "Microsoft.Network/networkInterfaces") {
      const { subnetId, address } = this.ipConfig(r);
      const subnet = this.subnetOf(subnetId);
      if (!subnet) return { status: 400, code: "InvalidResourceReference", message: `Resource ${subnetId} referenced by resource ${r.id} was not found.` };
      if (![...candidates(subnet.prefix, "fromEnd", undefined)].map(formatIpv4).includes(address)) {
        return { status: 400, code: "PrivateIPAddressNotInSubnet", message: `IP ${address} does not belong to subnet ${subnetId}.` };
      }
      if (this.addressTaken(subnet.vnetId, address, lowerId))
        return { status: 400, code: "PrivateIPAddressInUse", message: `IP configuration uses ${address}, which is in use.` };
    }
    if (r.type === "Microsoft.Compute/disks") {
      const data = r.properties.creationData as { createOption?: string; sourceUri?: string; storageAccountId?: string } | undefined;
      if (data?.createOption !== "Import" || !data.sourceUri || !data.storageAccountId) {
        return { status: 400, code: "InvalidParameter", message: "Import needs sourceUri and storageAccountId" };
      }
    }
    if (r.type === "Microsoft.Compute/virtualMachines") {
      const p = r.properties as {
        hardwareProfile?: { vmSize?: string };
        networkProfile?: { networkInterfaces?: { id: string }[] };
        storageProfile?: { osDisk?: { managedDisk?: { id: string } }; dataDisks?: { managedDisk?: { id: string } }[] };
        availabilitySet?: { id: string };
      };
      const size = p.hardwareProfile?.vmSize ?? "";
      if ((this.options.unavailableSizes ?? []).some((s) => s.toLowerCase() === size.toLowerCase())) {
        return { status: 409, code: "SkuNotAvailable", message: `The requested VM size ${size} is currently not available in location '${r.location}'.` };
      }
      const refs = [
        ...(p.networkProfile?.networkInterfaces ?? []).map((n) => n.id),
        p.storageProfile?.osDisk?.managedDisk?.id,
        ...(p.storageProfile?.dataDisks ?? []).map((d) => d.managedDisk?.id),
        p.availabilitySet?.id,
      ].filter((x): x is string => !!x);
      const missing = refs.find((id) => !this.resources.has(id.toLowerCase()));
      if (missing) return { status: 400, code: "InvalidResourceReference", message: `Resource ${missing} referenced by ${r.id} was not found.` };
      const used = this.all()
        .filter((x) => x.type === "Microsoft.Compute/virtualMachines" && x.id.toLowerCase() !== lowerId)
        .reduce((n, x) => n + this.cores((x.properties.hardwareProfile as { vmSize?: string } | undefined)?.vmSize ?? ""), 0);
      const quota = this.options.coreQuota ?? 100;
      if (used + this.cores(size) > quota) {
        return {
          status: 409,
          code: "OperationNotAllowed",
          message: `Operation could not be completed as it results in exceeding approved Total Regional Cores quota. Location: ${r.location}, Current Limit: ${quota}, Current Usage: ${used}, Additional Required: ${this.cores(size)}.`,
        };
      }
    }
    return undefined;
  }
}
