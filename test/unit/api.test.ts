// The enable request: what it accepts, what it refuses (naming the field), and the target names it implies.
import { test } from "node:test";
import assert from "node:assert/strict";
import { enableRequestSchema, parseInput, MiB } from "../../shared/contract/api";
import { BadRequest } from "../../shared/contract/errors";
import { targetNames } from "../../shared/protection/enable-disable";

const minimal = () => ({
  vm: {
    name: "web-1",
    region: "eastus",
    resourceGroup: "prod-rg",
    size: "Standard_D2s_v5",
    network: { vnet: "prod-vnet", subnet: "web", privateIp: "10.0.1.4" },
    availabilitySet: "web-as",
    disks: [
      { id: "os", sizeBytes: 1024 * MiB },
      { id: "data0", sizeBytes: 4096 * MiB },
    ],
  },
  targetRegion: "westus",
});

test("the contract's minimal request parses, with ASR's policy defaults", () => {
  const r = parseInput(enableRequestSchema, minimal());
  assert.deepEqual(r.policy, { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 300, appConsistentFrequencyMinutes: 240 });
  assert.equal(r.vm.disks.length, 2);
});

test("target names default to <source>-asr and the subnet keeps its name", () => {
  const r = parseInput(enableRequestSchema, minimal());
  assert.deepEqual(targetNames(r), { resourceGroup: "prod-rg-asr", vnet: "prod-vnet-asr", subnet: "web", availabilitySet: "web-as-asr" });
});

test("explicit target names win over the defaults", () => {
  const r = parseInput(enableRequestSchema, { ...minimal(), target: { resourceGroup: "dr-rg", subnet: "web-dr" } });
  assert.deepEqual(targetNames(r), { resourceGroup: "dr-rg", vnet: "prod-vnet-asr", subnet: "web-dr", availabilitySet: "web-as-asr" });
});

test("a VM without an availability set gets none in the target", () => {
  const body = minimal();
  delete (body.vm as { availabilitySet?: string }).availabilitySet;
  assert.equal(targetNames(parseInput(enableRequestSchema, body)).availabilitySet, undefined);
});

function fieldsOf(body: unknown): string[] {
  try {
    parseInput(enableRequestSchema, body);
  } catch (e) {
    assert.ok(e instanceof BadRequest);
    return e.fields.map((f) => f.field);
  }
  assert.fail("expected the request to be refused");
}

test("each malformed field is named in the 400", () => {
  const b = minimal();
  b.vm.disks[1]!.sizeBytes = 4096 * MiB + 512;
  (b.vm as Record<string, unknown>).region = "mars-north";
  assert.deepEqual(fieldsOf(b).sort(), ["vm.disks[1].sizeBytes", "vm.region"]);
});

test("duplicate disk ids, a source equal to the target, and unknown fields are refused", () => {
  const b = minimal();
  b.vm.disks[1]!.id = "os";
  assert.deepEqual(fieldsOf(b), ["vm.disks[1].id"]);
  assert.deepEqual(fieldsOf({ ...minimal(), targetRegion: "EastUS" }), ["targetRegion"]);
  assert.deepEqual(fieldsOf({ ...minimal(), colour: "blue" }), ["colour"]);
});

test("at most 64 data disks", () => {
  const b = minimal();
  b.vm.disks = Array.from({ length: 66 }, (_, i) => ({ id: `d${i}`, sizeBytes: MiB }));
  assert.deepEqual(fieldsOf(b), ["vm.disks"]);
  b.vm.disks.pop();
  assert.equal(parseInput(enableRequestSchema, b).vm.disks.length, 65);
});

test("policy bounds follow ASR: retention ≤ 15 days, crash frequency ≥ 10 s", () => {
  assert.deepEqual(fieldsOf({ ...minimal(), policy: { recoveryPointRetentionHours: 361 } }), ["policy.recoveryPointRetentionHours"]);
  assert.deepEqual(fieldsOf({ ...minimal(), policy: { crashConsistentFrequencySeconds: 5 } }), ["policy.crashConsistentFrequencySeconds"]);
});
