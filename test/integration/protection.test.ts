// Enable, read, register and disable through the local host over real sockets, against real Azurite.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ContainerClient, BlockBlobClient } from "@azure/storage-blob";
import { QueueClient } from "@azure/storage-queue";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import { isValidFixedVhdFooter } from "../../shared/replication/vhd";
import { cacheContainerName } from "../../shared/protection/items";
import type { Fabric } from "../../shared/fabric/port";

/** A SAS-authorised call's HTTP status (2xx on success). */
async function statusOf(call: () => Promise<unknown>): Promise<number> {
  try {
    await call();
    return 200;
  } catch (e) {
    return (e as { statusCode?: number }).statusCode ?? -1;
  }
}

describe("protecting a VM", () => {
  let stack: TestStack;
  before(async () => {
    // History is sampled at an item's first monitoring pass, then once an hour here (see the 409 case below).
    stack = await startTestStack({ env: { HISTORY_SAMPLE_SECONDS: "3600" } });
  });
  after(async () => {
    await stack?.stop();
  });

  test("enable creates every target resource, the replicas and the cache; disable removes them all", async () => {
    const before = await stack.snapshot();
    const res = await stack.api("POST", "replicated-items", enableBody());
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const item = res.body;
    assert.match(item.id, /^[0-9a-f-]{36}$/);
    assert.equal(item.state, "InitialReplication");
    assert.equal(item.health.status, "Healthy");
    assert.match(item.agentRegistration.token, /^[A-Za-z0-9_-]{43}$/, "256 random bits, base64url");
    assert.ok(Date.parse(item.agentRegistration.expiresAt) > Date.now());

    // Target resources, named <source>-asr, in the target region.
    const { fabric } = stack.services;
    const rg = await fabric.get(item.target.resourceGroup.id);
    assert.equal(rg?.name, "prod-rg-asr");
    assert.equal(rg?.region, "westus");
    const vnet = await fabric.get(item.target.vnet.id);
    assert.equal(vnet?.name, "prod-vnet-asr");
    assert.deepEqual(
      vnet?.subnets?.map((s) => s.name),
      ["web"],
    );
    assert.equal(vnet?.subnets?.[0]?.addressPrefix, "10.0.1.0/24");
    const as = await fabric.get(item.target.availabilitySet.id);
    assert.equal(as?.name, "web-as-asr");
    assert.equal(item.target.networkMappings.length, 2);
    const mappings = await fabric.mappingsOf(item.target.vnet.id);
    assert.equal(mappings.length, 2, "mapped both ways");
    assert.ok(mappings.some((m) => m.targetId === item.target.vnet.id));
    assert.ok(mappings.some((m) => m.sourceId === item.target.vnet.id));

    // Replicas: disk size + 512, a fixed-VHD footer at the end, watermark 0.
    const replicas = await stack.services.storage.replicas();
    for (const d of item.disks) {
      const blob = replicas.getPageBlobClient(d.replicaBlob);
      const props = await blob.getProperties();
      assert.equal(props.contentLength, d.sizeBytes + 512);
      assert.equal(props.blobSequenceNumber, 0);
      const footer = await blob.downloadToBuffer(d.sizeBytes, 512);
      assert.ok(isValidFixedVhdFooter(footer, d.sizeBytes), `${d.id} footer`);
    }
    // The cache container lives in the cache account.
    assert.ok(await stack.services.storage.cacheBlobs.getContainerClient(cacheContainerName(item.id)).exists());

    const got = await stack.api("GET", `replicated-items/${item.id}`);
    assert.equal(got.status, 200);
    assert.equal(got.body.state, "InitialReplication");
    assert.deepEqual(
      got.body.disks.map((d: { id: string }) => d.id),
      ["os", "data0"],
    );
    assert.equal(got.body.agentRegistration, undefined, "the token is shown once, on create");
    const list = await stack.api("GET", "replicated-items");
    assert.deepEqual(
      list.body.map((i: { id: string }) => i.id),
      [item.id],
    );

    const del = await stack.api("DELETE", `replicated-items/${item.id}`);
    assert.equal(del.status, 202);
    assert.equal(del.body.state, "Disabled");
    assert.equal((await stack.api("GET", `replicated-items/${item.id}`)).status, 404);
    assert.equal((await stack.api("DELETE", `replicated-items/${item.id}`)).status, 404, "deleting twice");
    for (const id of [item.target.resourceGroup.id, item.target.vnet.id, item.target.availabilitySet.id, ...item.target.networkMappings]) {
      assert.equal(await fabric.get(id), undefined, `${id} removed`);
    }
    const after = (await stack.snapshot()).filter((l) => !/ table FabricResources .*prod-vnet"/.test(l) && !/ (container|queue) /.test(l));
    // Nothing of the item remains but the record of its jobs: no blob, no row (the discovered source network is not the item's).
    assert.deepEqual(
      after.filter((l) => l.includes(item.id) && !/ table Jobs /.test(l)),
      [],
    );
    const jobs = (await stack.api("GET", `jobs?itemId=${item.id}`)).body;
    assert.deepEqual(
      jobs.map((j: { type: string; state: string }) => `${j.type} ${j.state}`),
      ["disable Succeeded", "enable Succeeded"],
    );
    assert.deepEqual(
      after.filter((l) => / blob /.test(l)),
      before.filter((l) => / blob /.test(l)),
    );
    assert.deepEqual(
      after.filter((l) => / table (ReplicatedItems|Disks|AgentRegistrations) /.test(l)),
      [],
    );
  });

  test("a replica downloaded from storage is a fixed VHD of the disk's size for qemu-img", async () => {
    const res = await stack.api("POST", "replicated-items", enableBody("vhd-check"));
    assert.equal(res.status, 201);
    const d = res.body.disks[1];
    const replicas = await stack.services.storage.replicas();
    const dir = mkdtempSync(join(tmpdir(), "replica-"));
    try {
      const file = join(dir, "replica.vhd");
      writeFileSync(file, await replicas.getPageBlobClient(d.replicaBlob).downloadToBuffer());
      const info = JSON.parse(execFileSync("qemu-img", ["info", "-f", "vpc", "--output=json", file], { encoding: "utf8" }));
      assert.equal(info["virtual-size"], d.sizeBytes);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    assert.equal((await stack.api("DELETE", `replicated-items/${res.body.id}`)).status, 202);
  });

  test("enabling a VM that is already protected is a 409 naming the item", async () => {
    const first = await stack.api("POST", "replicated-items", enableBody("dup-1"));
    assert.equal(first.status, 201);
    // The item's first history sample, before the baseline: a scheduled pass could otherwise write it in between.
    await stack.host.runTimer("sealRecoveryPoints");
    const before = await stack.snapshot();
    const again = await stack.api("POST", "replicated-items", enableBody("DUP-1"));
    assert.equal(again.status, 409);
    assert.equal(again.body.error.code, "AlreadyProtected");
    assert.equal(again.body.error.details.itemId, first.body.id);
    assert.match(again.body.error.message, new RegExp(first.body.id));
    assert.deepEqual(await stack.snapshot(), before, "nothing changed");
    await stack.api("DELETE", `replicated-items/${first.body.id}`);
  });

  test("target resources shared by two items stay until the last one is disabled; explicit names win", async () => {
    const a = await stack.api("POST", "replicated-items", enableBody("app-1"));
    const b = await stack.api("POST", "replicated-items", enableBody("app-2"));
    const c = await stack.api(
      "POST",
      "replicated-items",
      enableBody("app-3", { target: { resourceGroup: "dr-rg", vnet: "dr-vnet", availabilitySet: "dr-as" } }),
    );
    assert.deepEqual([a.status, b.status, c.status], [201, 201, 201]);
    assert.equal(a.body.target.vnet.id, b.body.target.vnet.id, "the second VM reuses the target network");
    assert.equal(c.body.target.resourceGroup.name, "dr-rg");
    assert.equal(c.body.target.vnet.name, "dr-vnet");
    assert.equal(c.body.target.availabilitySet.name, "dr-as");
    const { fabric } = stack.services;

    assert.equal((await stack.api("DELETE", `replicated-items/${a.body.id}`)).status, 202);
    assert.ok(await fabric.get(b.body.target.resourceGroup.id), "still used by app-2");
    assert.ok(await fabric.get(b.body.target.vnet.id));
    assert.ok(await fabric.get(b.body.target.availabilitySet.id));
    assert.equal((await stack.api("DELETE", `replicated-items/${b.body.id}`)).status, 202);
    assert.equal(await fabric.get(b.body.target.resourceGroup.id), undefined);
    assert.equal(await fabric.get(b.body.target.vnet.id), undefined);
    assert.ok(await fabric.get(c.body.target.vnet.id), "app-3's own network stays");
    assert.equal((await stack.api("DELETE", `replicated-items/${c.body.id}`)).status, 202);
    assert.equal(await fabric.get(c.body.target.vnet.id), undefined);
  });

  test("the agent's SAS can write its own cache container but not read, list, delete, or touch another item's", async () => {
    const one = await stack.api("POST", "replicated-items", enableBody("sas-1"));
    const two = await stack.api("POST", "replicated-items", enableBody("sas-2"));
    const reg = await stack.api("POST", "agents/register", { token: one.body.agentRegistration.token });
    assert.equal(reg.status, 200, JSON.stringify(reg.body));
    assert.equal(reg.body.itemId, one.body.id);
    assert.deepEqual(
      reg.body.disks.map((d: { id: string }) => d.id),
      ["os", "data0"],
    );
    assert.equal(reg.body.policy.crashConsistentFrequencySeconds, 300);
    assert.equal(reg.body.queue.messageEncoding, "base64");

    const own = new ContainerClient(reg.body.cache.containerUrl);
    assert.equal(own.containerName, cacheContainerName(one.body.id));
    const blob = own.getBlockBlobClient("os/00000000000000000001.batch");
    assert.equal(await statusOf(() => blob.upload(Buffer.from("batch"), 5)), 200, "write");
    assert.equal(await statusOf(() => blob.download()), 403, "read");
    assert.equal(await statusOf(() => own.listBlobsFlat().next()), 403, "list");
    assert.equal(await statusOf(() => blob.delete()), 403, "delete");
    const sas = new URL(reg.body.cache.containerUrl).search;
    const otherUrl = `${stack.services.config.storage.cache.blobUrl}/${cacheContainerName(two.body.id)}/os/1.batch${sas}`;
    assert.equal(await statusOf(() => new BlockBlobClient(otherUrl).upload(Buffer.from("x"), 1)), 403, "another item's container");
    // The batch really is in the cache, as the control plane sees it.
    const seen = await stack.services.storage.cacheBlobs
      .getContainerClient(own.containerName)
      .getBlockBlobClient("os/00000000000000000001.batch")
      .downloadToBuffer();
    assert.equal(seen.toString(), "batch");

    const queue = new QueueClient(reg.body.queue.url);
    assert.equal(await statusOf(() => queue.sendMessage(Buffer.from("{}").toString("base64"))), 200, "add a message");
    assert.equal(await statusOf(() => queue.receiveMessages()), 403, "receive");
    assert.equal(await statusOf(() => queue.peekMessages()), 403, "peek");
    assert.equal(await statusOf(() => queue.clearMessages()), 403, "clear");

    const again = await stack.api("POST", "agents/register", { token: one.body.agentRegistration.token, replace: true });
    assert.equal(again.status, 200, "an agent that lost its state registers again (explicitly) while the token is valid");
    assert.equal((await stack.api("GET", `replicated-items/${one.body.id}`)).body.agent.registrations, 2);

    for (const i of [one, two]) await stack.api("DELETE", `replicated-items/${i.body.id}`);
    const gone = await stack.api("POST", "agents/register", { token: one.body.agentRegistration.token });
    assert.equal(gone.status, 401, "a disabled item's token");
    assert.equal(gone.body.error.code, "Unauthorized");
  });

  test("wrong and expired registration tokens are refused with 401", async () => {
    const item = await stack.api("POST", "replicated-items", enableBody("token-1"));
    const wrong = await stack.api("POST", "agents/register", { token: "A".repeat(43) });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.error.code, "Unauthorized");
    stack.clock.offsetMs = 25 * 3600_000;
    try {
      const expired = await stack.api("POST", "agents/register", { token: item.body.agentRegistration.token });
      assert.equal(expired.status, 401);
      assert.match(expired.body.error.message, /expired/);
    } finally {
      stack.clock.offsetMs = 0;
    }
    await stack.api("DELETE", `replicated-items/${item.body.id}`);
  });

  test("replication groups hold at most 16 VMs, all on one route between regions", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 16; i++) {
      const r = await stack.api("POST", "replicated-items", enableBody(`grp-${i}`, { replicationGroup: "tier" }));
      assert.equal(r.status, 201);
      ids.push(r.body.id);
    }
    const seventeenth = await stack.api("POST", "replicated-items", enableBody("grp-16", { replicationGroup: "tier" }));
    assert.equal(seventeenth.status, 409);
    assert.equal(seventeenth.body.error.code, "ReplicationGroupFull");
    assert.equal(seventeenth.body.error.details.field, "replicationGroup");
    for (const id of ids.splice(1)) assert.equal((await stack.api("DELETE", `replicated-items/${id}`)).status, 202);
    const otherRoute = await stack.api("POST", "replicated-items", { ...enableBody("grp-x", { replicationGroup: "tier" }), targetRegion: "centralus" });
    assert.equal(otherRoute.status, 409);
    assert.equal(otherRoute.body.error.code, "ReplicationGroupRegionMismatch");
    assert.equal(otherRoute.body.error.details.itemId, ids[0]);
    assert.equal((await stack.api("DELETE", `replicated-items/${ids[0]}`)).status, 202);
  });
});

describe("an enable that fails half-way (fabric fault injected, not a mock of storage)", () => {
  let stack: TestStack;
  let failAvailabilitySet = true;
  before(async () => {
    stack = await startTestStack({
      fabric: (inner: Fabric): Fabric =>
        new Proxy(inner, {
          get(target, prop, receiver) {
            if (prop === "ensureAvailabilitySet" && failAvailabilitySet) {
              return async () => {
                throw new Error("injected: availability set quota exceeded");
              };
            }
            const v = Reflect.get(target, prop, receiver);
            return typeof v === "function" ? v.bind(target) : v;
          },
        }),
    });
  });
  after(async () => {
    await stack?.stop();
  });

  test("leaves nothing behind, and a retry succeeds", async () => {
    const before = (await stack.snapshot()).filter((l) => !/ (container|queue) /.test(l));
    const res = await stack.api("POST", "replicated-items", enableBody("half-1"));
    assert.equal(res.status, 500);
    assert.equal(res.body.error.code, "InternalError");
    // The one thing left is the record of what happened: a Failed enable job.
    const after = (await stack.snapshot()).filter(
      (l) => !/ (container|queue) /.test(l) && !/ table FabricResources .*prod-vnet"/.test(l) && !/ table Jobs /.test(l),
    );
    assert.deepEqual(
      after,
      before.filter((l) => !/ table FabricResources .*prod-vnet"/.test(l)),
      "rolled back",
    );
    const [job] = (await stack.api("GET", "jobs?type=enable")).body;
    assert.equal(job.state, "Failed");
    assert.match(job.error.message, /availability set quota exceeded/);
    assert.deepEqual((await stack.api("GET", "replicated-items")).body, []);

    failAvailabilitySet = false;
    const retry = await stack.api("POST", "replicated-items", enableBody("half-1"));
    assert.equal(retry.status, 201, JSON.stringify(retry.body));
    assert.equal((await stack.api("DELETE", `replicated-items/${retry.body.id}`)).status, 202);
  });
});
