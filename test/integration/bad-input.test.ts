// Malformed requests get the right status, the error envelope naming the field, and change nothing.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startTestStack, type TestStack } from "../support/stack";

const MiB = 1024 * 1024;
const TiB = 1024 * 1024 * MiB;

const good = () =>
  ({
    vm: {
      name: "web-1",
      region: "eastus",
      resourceGroup: "prod-rg",
      size: "Standard_D2s_v5",
      network: { vnet: "prod-vnet", subnet: "web", privateIp: "10.0.1.4" },
      disks: [
        { id: "os", sizeBytes: 16 * MiB },
        { id: "data0", sizeBytes: 8 * MiB },
      ] as { id: unknown; sizeBytes: unknown }[],
    } as Record<string, unknown> & { disks: { id: unknown; sizeBytes: unknown }[]; network: Record<string, unknown> },
    targetRegion: "westus",
  }) as Record<string, unknown> & { vm: Record<string, unknown> & { disks: { id: unknown; sizeBytes: unknown }[]; network: Record<string, unknown> } };

const change = (f: (b: ReturnType<typeof good>) => void) => {
  const b = good();
  f(b);
  return b;
};

interface Case {
  name: string;
  method: string;
  path: string;
  body?: unknown;
  status: number;
  code?: string;
  /** Fields the 400 must name (all of them, in any order). */
  fields?: string[];
}

const cases: Case[] = [
  { name: "body is not JSON", method: "POST", path: "replicated-items", body: "{ vm: ", status: 400, fields: ["(body)"] },
  { name: "body is empty", method: "POST", path: "replicated-items", body: "", status: 400, fields: ["(body)"] },
  { name: "body is an array", method: "POST", path: "replicated-items", body: [good()], status: 400, fields: ["(body)"] },
  { name: "vm is missing", method: "POST", path: "replicated-items", body: { targetRegion: "westus" }, status: 400, fields: ["vm"] },
  { name: "vm name has the wrong type", method: "POST", path: "replicated-items", body: change((b) => (b.vm.name = 42)), status: 400, fields: ["vm.name"] },
  {
    name: "several fields wrong at once",
    method: "POST",
    path: "replicated-items",
    body: change((b) => {
      b.vm.size = "";
      delete b.targetRegion;
    }),
    status: 400,
    fields: ["vm.size", "targetRegion"],
  },
  {
    name: "disk size not a whole MiB",
    method: "POST",
    path: "replicated-items",
    body: change((b) => (b.vm.disks[1]!.sizeBytes = 8 * MiB + 512)),
    status: 400,
    fields: ["vm.disks[1].sizeBytes"],
  },
  {
    name: "disk size negative",
    method: "POST",
    path: "replicated-items",
    body: change((b) => (b.vm.disks[0]!.sizeBytes = -MiB)),
    status: 400,
    fields: ["vm.disks[0].sizeBytes"],
  },
  {
    name: "disk size a string",
    method: "POST",
    path: "replicated-items",
    body: change((b) => (b.vm.disks[0]!.sizeBytes = "16MiB")),
    status: 400,
    fields: ["vm.disks[0].sizeBytes"],
  },
  {
    name: "data disk over the page-blob limit",
    method: "POST",
    path: "replicated-items",
    body: change((b) => (b.vm.disks[1]!.sizeBytes = 8 * TiB)),
    status: 400,
    fields: ["vm.disks[1].sizeBytes"],
  },
  {
    name: "OS disk over 4 TiB",
    method: "POST",
    path: "replicated-items",
    body: change((b) => (b.vm.disks[0]!.sizeBytes = 5 * TiB)),
    status: 400,
    fields: ["vm.disks[0].sizeBytes"],
  },
  { name: "unknown region", method: "POST", path: "replicated-items", body: change((b) => (b.vm.region = "east-us-9")), status: 400, fields: ["vm.region"] },
  {
    name: "target region equals the source",
    method: "POST",
    path: "replicated-items",
    body: change((b) => (b.targetRegion = "eastus")),
    status: 400,
    fields: ["targetRegion"],
  },
  {
    name: "duplicate disk ids",
    method: "POST",
    path: "replicated-items",
    body: change((b) => (b.vm.disks[1]!.id = "os")),
    status: 400,
    fields: ["vm.disks[1].id"],
  },
  {
    name: "a disk id that would escape its blob path",
    method: "POST",
    path: "replicated-items",
    body: change((b) => (b.vm.disks[1]!.id = "../x")),
    status: 400,
    fields: ["vm.disks[1].id"],
  },
  {
    name: "more than 64 data disks",
    method: "POST",
    path: "replicated-items",
    body: change((b) => (b.vm.disks = Array.from({ length: 66 }, (_, i) => ({ id: `d${i}`, sizeBytes: MiB })))),
    status: 400,
    fields: ["vm.disks"],
  },
  { name: "no disks", method: "POST", path: "replicated-items", body: change((b) => (b.vm.disks = [])), status: 400, fields: ["vm.disks"] },
  {
    name: "private IP not an address",
    method: "POST",
    path: "replicated-items",
    body: change((b) => (b.vm.network.privateIp = "10.0.1.256")),
    status: 400,
    fields: ["vm.network.privateIp"],
  },
  {
    name: "retention over 15 days",
    method: "POST",
    path: "replicated-items",
    body: { ...good(), policy: { recoveryPointRetentionHours: 400 } },
    status: 400,
    fields: ["policy.recoveryPointRetentionHours"],
  },
  {
    name: "crash frequency under 10 s",
    method: "POST",
    path: "replicated-items",
    body: { ...good(), policy: { crashConsistentFrequencySeconds: 1 } },
    status: 400,
    fields: ["policy.crashConsistentFrequencySeconds"],
  },
  { name: "an unknown field", method: "POST", path: "replicated-items", body: { ...good(), targetRegoin: "westus" }, status: 400, fields: ["targetRegoin"] },
  {
    name: "a body over the size limit",
    method: "POST",
    path: "replicated-items",
    body: { ...good(), pad: "x".repeat(2 * MiB) },
    status: 413,
    code: "PayloadTooLarge",
  },
  { name: "an unknown item", method: "GET", path: "replicated-items/no-such-item", status: 404, code: "NotFound" },
  { name: "disabling an unknown item", method: "DELETE", path: "replicated-items/no-such-item", status: 404, code: "NotFound" },
  { name: "a wrong registration token", method: "POST", path: "agents/register", body: { token: "not-a-token" }, status: 401, code: "Unauthorized" },
  { name: "registration without a token", method: "POST", path: "agents/register", body: {}, status: 400, fields: ["token"] },
  { name: "a registration token of the wrong type", method: "POST", path: "agents/register", body: { token: 7 }, status: 400, fields: ["token"] },
  { name: "an unknown route", method: "GET", path: "no-such-route", status: 404, code: "NotFound" },
  { name: "a method the route does not answer", method: "PUT", path: "replicated-items", body: good(), status: 405, code: "MethodNotAllowed" },
];

describe("bad input", () => {
  let stack: TestStack;
  let baseline: string[];
  before(async () => {
    // The monitoring pass samples history once a minute: taken once before the baseline, then not again during the cases.
    stack = await startTestStack({ env: { HISTORY_SAMPLE_SECONDS: "3600" } });
    // One protected VM, so that "nothing changed" covers existing state too.
    const seed = await stack.api(
      "POST",
      "replicated-items",
      change((b) => (b.vm.name = "seed")),
    );
    assert.equal(seed.status, 201);
    await stack.host.runTimer("sealRecoveryPoints");
    baseline = await stack.snapshot();
  });
  after(async () => {
    await stack?.stop();
  });

  assert.ok(cases.length >= 15);
  for (const c of cases) {
    test(`${c.name} → ${c.status}`, async () => {
      const res = await stack.api(c.method, c.path, c.body);
      assert.equal(res.status, c.status, JSON.stringify(res.body));
      assert.equal(typeof res.body?.error?.code, "string", "error envelope");
      assert.equal(typeof res.body.error.message, "string");
      assert.ok(res.body.error.message.length > 0);
      if (c.code) assert.equal(res.body.error.code, c.code);
      if (c.fields) {
        assert.equal(res.body.error.code, "InvalidInput");
        const named = (res.body.error.details as { field: string }[]).map((d) => d.field).sort();
        assert.deepEqual(named, [...c.fields].sort());
        for (const f of c.fields) assert.ok(res.body.error.message.includes(f === "(body)" ? "body" : f), `message names ${f}`);
      }
      assert.deepEqual(await stack.snapshot(), baseline, "no state changed");
    });
  }
});
