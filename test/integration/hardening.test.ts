// Defects a hostile probe of the local stack found: each test failed before its fix.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import { ContainerClient } from "@azure/storage-blob";
import { encodeWrites } from "../support/batches";
import { HEARTBEAT_BLOB } from "../../shared/protection/agent-protocol";
import { batchBlobName } from "../../shared/replication/batch";
import { applyBatches } from "../../shared/replication/apply";

/** Items and their disks as stored: what "nothing changed" compares. */
async function itemsAndDisks(stack: TestStack): Promise<string> {
  const items = await stack.services.items.list();
  const disks = await Promise.all(items.map((i) => stack.services.items.listDisks(i.id)));
  return JSON.stringify({ items, disks });
}

describe("hardening: ids, check-ins, races, credentials, groups", () => {
  let stack: TestStack;
  before(async () => {
    stack = await startTestStack();
  });
  after(async () => {
    await stack?.stop();
  });

  async function enable(name: string, extra: Record<string, unknown> = {}) {
    const r = await stack.api("POST", "replicated-items", enableBody(name, extra));
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return r.body as { id: string; agentRegistration: { token: string } };
  }

  async function registered(name: string, extra: Record<string, unknown> = {}) {
    const item = await enable(name, extra);
    const reg = await stack.api("POST", "agents/register", { token: item.agentRegistration.token });
    assert.equal(reg.status, 200, JSON.stringify(reg.body));
    return { item, agentKey: reg.body.agentKey as string };
  }

  // Item 5 -----------------------------------------------------------------------------------------
  const hostileIds = ["a%2Fb", "..%2F..%2Fx", "%2e%2e%2fx", "x%01y", "x%00", "x%20y", "%27or%271", "x".repeat(300)];
  const idRoutes: [string, (id: string) => string][] = [
    ["GET", (id) => `replicated-items/${id}`],
    ["DELETE", (id) => `replicated-items/${id}`],
    ["PATCH", (id) => `replicated-items/${id}`],
    ["GET", (id) => `replicated-items/${id}/recovery-points`],
    ["POST", (id) => `replicated-items/${id}/commit`],
    ["POST", (id) => `replicated-items/${id}/test-failover-cleanup`],
    ["GET", (id) => `failovers/${id}`],
    ["GET", (id) => `recovery-plans/${id}`],
  ];
  for (const [method, path] of idRoutes) {
    test(`an id with '/', '..' or control characters in ${method} ${path("{id}")} is refused at once with 400 or 404`, async () => {
      for (const id of hostileIds) {
        const started = Date.now();
        const res = await stack.api(method, path(id), method === "PATCH" ? { replicationGroup: null } : undefined);
        assert.ok(res.status === 400 || res.status === 404, `${id}: ${res.status} ${JSON.stringify(res.body)}`);
        assert.equal(typeof res.body?.error?.code, "string", `${id}: envelope`);
        assert.ok(Date.now() - started < 3000, `${id}: answered in ${Date.now() - started} ms`);
      }
    });
  }

  test("agent check-ins and manifests naming an id with '/' are refused at once with 400, without credentials", async () => {
    for (const itemId of ["a/b", "../x", "x\u0001", "x'y"]) {
      const started = Date.now();
      const c = await stack.api("POST", "agents/checkin", { itemId, agentKey: "k" });
      assert.equal(c.status, 400, JSON.stringify(c.body));
      assert.ok(c.body.error.details.some((d: { field: string }) => d.field === "itemId"));
      const m = await stack.api("POST", "agents/resync-manifest", { itemId, agentKey: "k", diskId: "os/x", resyncId: "r", offset: 0, length: 65536 });
      assert.equal(m.status, 400, JSON.stringify(m.body));
      assert.ok(Date.now() - started < 3000, `answered in ${Date.now() - started} ms`);
    }
  });

  // Item 4 -----------------------------------------------------------------------------------------
  test("a check-in refused for one unknown disk changes nothing, not even the valid entries before it", async () => {
    const { item, agentKey } = await registered("ck-atomic");
    const before = await itemsAndDisks(stack);
    const res = await stack.api("POST", "agents/checkin", {
      itemId: item.id,
      agentKey,
      resyncRequired: [
        { diskId: "os", resyncId: "r-1", reason: "spool overflow" },
        { diskId: "nope", resyncId: "r-2", reason: "spool overflow" },
      ],
    });
    assert.equal(res.status, 400, JSON.stringify(res.body));
    assert.ok(
      res.body.error.details.some((d: { field: string }) => d.field.startsWith("resyncRequired[1].diskId")),
      JSON.stringify(res.body),
    );
    assert.equal(await itemsAndDisks(stack), before, "nothing changed");
  });
  // Item 3 -----------------------------------------------------------------------------------------
  test("an item whose disks never finished initial replication cannot fail over to latest: 409 naming the disk", async () => {
    const { item, agentKey } = await registered("never-copied");
    const c = await stack.api("POST", "agents/checkin", {
      itemId: item.id,
      agentKey,
      resyncRequired: [{ diskId: "os", resyncId: "r-1", reason: "spool overflow" }],
    });
    assert.equal(c.status, 200, JSON.stringify(c.body));
    assert.equal((await stack.services.items.get(item.id))?.item.state, "ResyncRequired");
    const before = await itemsAndDisks(stack);
    for (const type of ["test", "unplanned"]) {
      const res = await stack.api("POST", "failovers", { itemIds: [item.id], type, recoveryPoint: "latest" });
      assert.equal(res.status, 409, JSON.stringify(res.body));
      assert.equal(res.body.error.code, "InitialReplicationIncomplete");
      assert.equal(res.body.error.details.itemId, item.id);
      assert.equal(res.body.error.details.diskId, "os");
      assert.match(res.body.error.message, /os/);
    }
    assert.equal(await itemsAndDisks(stack), before, "nothing locked");
  });
  // Item 7 -----------------------------------------------------------------------------------------
  const statuses = (rs: { status: number }[]) => rs.map((r) => r.status).sort();

  test("concurrent DELETEs of one item: one 202, the others 409 or 404, never 500", async () => {
    const item = await enable("del-race");
    const rs = await Promise.all([1, 2, 3].map(() => stack.api("DELETE", `replicated-items/${item.id}`)));
    assert.equal(rs.filter((r) => r.status === 202).length, 1, JSON.stringify(rs.map((r) => [r.status, r.body?.error?.code])));
    for (const r of rs.filter((x) => x.status !== 202)) {
      assert.ok(r.status === 409 || r.status === 404, JSON.stringify(r.body));
      assert.equal(typeof r.body.error.code, "string");
    }
    assert.equal(await stack.services.items.get(item.id), undefined);
  });

  test("a registration racing the DELETE of its item answers 200 or 401, never 500", async () => {
    for (let n = 0; n < 6; n++) {
      const item = await enable(`reg-race-${n}`);
      const later = new Promise((r) => setTimeout(r, n * 3)).then(() => stack.api("POST", "agents/register", { token: item.agentRegistration.token }));
      const [reg, del] = await Promise.all([later, stack.api("DELETE", `replicated-items/${item.id}`)]);
      assert.equal(del.status, 202, JSON.stringify(del.body));
      assert.ok(reg.status === 200 || reg.status === 401, `${reg.status} ${JSON.stringify(reg.body)}`);
    }
  });

  test("a registration that meets an item whose disable removed its cache and replicas answers 401, not 500", async () => {
    // The instant a DELETE racing a registration leaves behind: the registration passed its state check, then the
    // disable removed the cache container and the replicas under it.
    const item = await enable("reg-half-gone");
    await stack.services.storage.cacheBlobs.getContainerClient(`cache-${item.id}`).delete();
    const replicas = await stack.services.storage.replicas();
    for (const d of ["os", "data0"]) await replicas.getPageBlobClient(`${item.id}/${d}.vhd`).delete();
    const reg = await stack.api("POST", "agents/register", { token: item.agentRegistration.token });
    assert.equal(reg.status, 401, JSON.stringify(reg.body));
    assert.equal(reg.body.error.code, "Unauthorized");
  });

  test("two concurrent commits: one 200, the other 409", async () => {
    const item = await enable("commit-race");
    await stack.services.items.updateItem(item.id, (i) => ({ ...i, state: "FailedOver" }));
    const rs = await Promise.all([1, 2].map(() => stack.api("POST", `replicated-items/${item.id}/commit`)));
    assert.deepEqual(statuses(rs), [200, 409], JSON.stringify(rs.map((r) => r.body)));
    assert.equal(rs.find((r) => r.status === 409)!.body.error.code, "IllegalState");
  });

  test("two concurrent test-failover cleanups: one 200, the other 409", async () => {
    const item = await enable("cleanup-race");
    const at = new Date().toISOString();
    await stack.services.items.updateItem(item.id, (i) => ({
      ...i,
      state: "TestFailover",
      failover: {
        instanceId: "x",
        type: "test",
        requestedPoint: "latest-processed",
        startedAt: at,
        previousState: "InitialReplication",
        resources: { disks: [] },
        completedAt: at,
      },
    }));
    const rs = await Promise.all([1, 2].map(() => stack.api("POST", `replicated-items/${item.id}/test-failover-cleanup`)));
    assert.deepEqual(statuses(rs), [200, 409], JSON.stringify(rs.map((r) => r.body)));
  });
  // Item 6 -----------------------------------------------------------------------------------------
  test("concurrent enables cannot overfill a replication group: 15 members plus 3 at once gives 16", async () => {
    for (let n = 0; n < 15; n++) await enable(`full-${n}`, { replicationGroup: "full-group" });
    const rs = await Promise.all([0, 1, 2].map((n) => stack.api("POST", "replicated-items", enableBody(`full-late-${n}`, { replicationGroup: "full-group" }))));
    assert.deepEqual(rs.map((r) => r.status).sort(), [201, 409, 409], JSON.stringify(rs.map((r) => r.body?.error)));
    for (const r of rs.filter((x) => x.status === 409)) assert.equal(r.body.error.code, "ReplicationGroupFull");
    const members = (await stack.services.items.list()).filter((i) => i.replicationGroup === "full-group");
    assert.equal(members.length, 16);
  });

  test("concurrent enables into a new group from different region pairs: one is accepted, the other 409", async () => {
    const rs = await Promise.all([
      stack.api("POST", "replicated-items", enableBody("pair-a", { replicationGroup: "new-pair" })),
      stack.api("POST", "replicated-items", { ...enableBody("pair-b", { replicationGroup: "new-pair" }), targetRegion: "northeurope" }),
    ]);
    assert.deepEqual(rs.map((r) => r.status).sort(), [201, 409], JSON.stringify(rs.map((r) => r.body?.error)));
    assert.equal(rs.find((r) => r.status === 409)!.body.error.code, "ReplicationGroupRegionMismatch");
    const regions = new Set(
      (await stack.services.items.list()).filter((i) => i.replicationGroup === "new-pair").map((i) => `${i.vm.region}>${i.targetRegion}`),
    );
    assert.equal(regions.size, 1);
  });

  test("a group slot freed by a disable or a PATCH leaving the group can be taken again", async () => {
    const a = await enable("slot-a", { replicationGroup: "slots" });
    assert.equal((await stack.api("PATCH", `replicated-items/${a.id}`, { replicationGroup: null })).status, 200);
    const b = await stack.api("POST", "replicated-items", { ...enableBody("slot-b", { replicationGroup: "slots" }), targetRegion: "northeurope" });
    assert.equal(b.status, 201, "the empty group takes a new region pair");
    assert.equal((await stack.api("DELETE", `replicated-items/${b.body.id}`)).status, 202);
    assert.equal((await stack.api("PATCH", `replicated-items/${a.id}`, { replicationGroup: "slots" })).status, 200, "and back");
  });
  // Item 9 -----------------------------------------------------------------------------------------
  test("after a committed failover the old agent key and the registration token are refused", async () => {
    const { item, agentKey } = await registered("committed-agent");
    await stack.services.items.updateItem(item.id, (i) => ({ ...i, state: "FailedOver" }));
    assert.equal((await stack.api("POST", `replicated-items/${item.id}/commit`)).status, 200);
    const c = await stack.api("POST", "agents/checkin", { itemId: item.id, agentKey });
    assert.equal(c.status, 401, JSON.stringify(c.body));
    assert.equal(c.body.error.code, "Unauthorized");
    const r = await stack.api("POST", "agents/register", { token: item.agentRegistration.token });
    assert.equal(r.status, 401, JSON.stringify(r.body));
  });

  test("a registration token reused while an agent is registered is refused unless replace is asked for", async () => {
    const { item, agentKey } = await registered("token-reuse");
    const again = await stack.api("POST", "agents/register", { token: item.agentRegistration.token });
    assert.equal(again.status, 409, JSON.stringify(again.body));
    assert.equal(again.body.error.code, "AgentAlreadyRegistered");
    assert.equal((await stack.api("POST", "agents/checkin", { itemId: item.id, agentKey })).status, 200, "the registered agent keeps working");
    const replaced = await stack.api("POST", "agents/register", { token: item.agentRegistration.token, replace: true });
    assert.equal(replaced.status, 200, JSON.stringify(replaced.body));
    assert.equal(
      (await stack.api("POST", "agents/checkin", { itemId: item.id, agentKey })).status,
      401,
      "an explicit re-registration fences the old agent out",
    );
    assert.equal((await stack.api("POST", "agents/checkin", { itemId: item.id, agentKey: replaced.body.agentKey })).status, 200);
  });
  // Item 11 ----------------------------------------------------------------------------------------
  test("a target subnet override never renames a subnet of a shared target network", async () => {
    const body = (name: string, subnet: string, ip: string, target?: Record<string, string>) => {
      const b = enableBody(name, target ? { target } : {});
      return { ...b, vm: { ...b.vm, resourceGroup: "sub-rg", network: { vnet: "shared-vnet", subnet, privateIp: ip } } };
    };
    const subnetsOf = async () => {
      const vnet = (await stack.services.fabric.list("virtualNetwork")).find((v) => v.name === "shared-vnet-asr");
      return (vnet?.subnets ?? []).map((x) => x.name).sort();
    };
    const renamed = await stack.api("POST", "replicated-items", body("sub-a", "web", "10.0.1.4", { subnet: "dmz" }));
    assert.equal(renamed.status, 409, JSON.stringify(renamed.body));
    assert.equal(renamed.body.error.code, "TargetSubnetMissing");
    assert.equal(renamed.body.error.details.field, "target.subnet");
    const plain = await stack.api("POST", "replicated-items", body("sub-b", "web", "10.0.1.5"));
    assert.equal(plain.status, 201, JSON.stringify(plain.body));
    assert.deepEqual(await subnetsOf(), ["web"]);
    const other = await stack.api("POST", "replicated-items", body("sub-c", "app", "10.0.2.4"));
    assert.equal(other.status, 201, "a source subnet seen later joins the target network");
    assert.deepEqual(await subnetsOf(), ["app", "web"]);
    const override = await stack.api("POST", "replicated-items", body("sub-d", "web", "10.0.1.6", { subnet: "app" }));
    assert.equal(override.status, 201, JSON.stringify(override.body));
    assert.equal((await stack.services.items.get(override.body.id))?.item.target?.subnet, "app");
    assert.deepEqual(await subnetsOf(), ["app", "web"], "nothing renamed");
  });
  // Item 12 ----------------------------------------------------------------------------------------
  test("blobs copied into an item's cache from another item's (Azurite allows it with a cw SAS) are never taken as its agent's", async () => {
    const a = await stack.api("POST", "replicated-items", enableBody("copy-victim"));
    const b = await stack.api("POST", "replicated-items", enableBody("copy-thief"));
    const regA = await stack.api("POST", "agents/register", { token: a.body.agentRegistration.token });
    const regB = await stack.api("POST", "agents/register", { token: b.body.agentRegistration.token });
    const cacheA = new ContainerClient(regA.body.cache.containerUrl);
    const cacheB = new ContainerClient(regB.body.cache.containerUrl);
    const beat = JSON.stringify({ agentVersion: "thief", time: new Date().toISOString(), disks: {}, health: { status: "Healthy", issues: [] } });
    await cacheB.getBlockBlobClient(HEARTBEAT_BLOB).upload(beat, Buffer.byteLength(beat));
    const batch = encodeWrites({ itemId: b.body.id, diskId: "os", seq: 1, writes: [{ offset: 0, data: Buffer.alloc(4096, 7) }] });
    await cacheB.getBlockBlobClient(batchBlobName("os", 1)).upload(batch, batch.length);
    // The thief's SAS covers only its own container, yet Azurite copies another container's blob into it.
    const plainUrl = (c: ContainerClient, name: string) => `${c.url.split("?")[0]}/${name}`;
    await cacheA
      .getBlobClient(HEARTBEAT_BLOB)
      .syncCopyFromURL(plainUrl(cacheB, HEARTBEAT_BLOB))
      .catch(() =>
        cacheA
          .getBlobClient(HEARTBEAT_BLOB)
          .beginCopyFromURL(plainUrl(cacheB, HEARTBEAT_BLOB))
          .then((p) => p.pollUntilDone()),
      );
    await cacheA
      .getBlobClient(batchBlobName("os", 1))
      .beginCopyFromURL(plainUrl(cacheB, batchBlobName("os", 1)))
      .then((p) => p.pollUntilDone());

    const view = await stack.api("GET", `replicated-items/${a.body.id}`);
    assert.equal(view.status, 200);
    assert.equal(view.body.heartbeat, null, `a copied heartbeat is not this agent's: ${JSON.stringify(view.body.heartbeat)}`);

    await stack.host.drainQueues().catch(() => undefined);
    await applyBatches(
      { storage: stack.services.storage, items: stack.services.items, config: stack.services.config },
      { v: 1, itemId: a.body.id, diskId: "os", seq: 1 },
    );
    const disk = (await stack.services.items.getDisk(a.body.id, "os"))!.disk;
    assert.equal(disk.state, "ResyncRequired");
    assert.match(disk.resync?.reason ?? "", /not written by this item's agent/);
    const replica = (await stack.services.storage.replicas()).getPageBlobClient(`${a.body.id}/os.vhd`);
    assert.equal((await replica.getProperties()).blobSequenceNumber, 0, "nothing applied");

    // The agent's own next heartbeat (a plain upload) is read again.
    const own = JSON.stringify({ agentVersion: "own", time: new Date().toISOString(), disks: {}, health: { status: "Healthy", issues: [] } });
    await cacheA.getBlockBlobClient(HEARTBEAT_BLOB).upload(own, Buffer.byteLength(own));
    assert.equal((await stack.api("GET", `replicated-items/${a.body.id}`)).body.heartbeat?.agentVersion, "own");
  });
  // Item 1 (the record an unstarted failover replaced) ---------------------------------------------
  test("a failover that cannot be started puts the item's previous failover record back", async () => {
    const item = await enable("previous-record");
    const at = new Date().toISOString();
    const previous = {
      instanceId: "earlier",
      type: "test" as const,
      requestedPoint: "latest-processed",
      startedAt: at,
      previousState: "Protected" as const,
      resources: { disks: [] },
      completedAt: at,
      cleanedUpAt: at,
    };
    await stack.services.items.updateItem(item.id, (i) => ({ ...i, state: "Protected", failover: previous }));
    const point = await stack.services.points.recordCutPoint({
      id: "prev-point",
      kind: "crash",
      time: at,
      scope: "vm",
      itemId: item.id,
      disks: (await stack.services.items.listDisks(item.id)).map((d) => ({ itemId: item.id, diskId: d.id, snapshot: "2020-01-01T00:00:00.0000000Z", seq: 1 })),
      sealedAt: at,
    });
    const input = await stack.services.planning.accept({ itemIds: [item.id], type: "test", recoveryPoint: point.id }, "never-started");
    assert.equal((await stack.services.items.get(item.id))?.item.state, "TestFailover");
    await stack.services.planning.unlock(input.stages.flat(), "never-started");
    const after = (await stack.services.items.get(item.id))!.item;
    assert.equal(after.state, "Protected");
    assert.deepEqual(after.failover, previous);
  });
});
