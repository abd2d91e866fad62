// The agent's control-plane API: check-ins with the agent key, SAS renewal, resync reports and manifests.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { crc32c } from "@node-rs/crc32";
import { startTestStack, type TestStack } from "../support/stack";
import { RESYNC_BLOCK_BYTES } from "../../shared/protection/agent-protocol";
import { enableBody } from "../support/requests";

describe("agent check-in and resync manifests", () => {
  let stack: TestStack;
  before(async () => {
    stack = await startTestStack();
  });
  after(async () => {
    await stack?.stop();
  });

  async function registered(name: string) {
    const item = await stack.api("POST", "replicated-items", enableBody(name));
    assert.equal(item.status, 201);
    const reg = await stack.api("POST", "agents/register", { token: item.body.agentRegistration.token });
    assert.equal(reg.status, 200);
    return { item: item.body, reg: reg.body };
  }

  test("registration hands out an agent key and the next sequence number of each disk", async () => {
    const { item, reg } = await registered("ck-1");
    assert.match(reg.agentKey, /^[A-Za-z0-9_-]{43}$/);
    assert.deepEqual(
      reg.disks.map((d: { nextSeq: number }) => d.nextSeq),
      [1, 1],
    );
    assert.ok(reg.checkinIntervalSeconds > 0);
    // Batches waiting in the cache raise nextSeq for an agent that registers again without its state.
    const cache = stack.services.storage.cacheBlobs.getContainerClient(`cache-${item.id}`);
    await cache.getBlockBlobClient("os/00000000000000000007.batch").upload(Buffer.from("x"), 1);
    const refused = await stack.api("POST", "agents/register", { token: item.agentRegistration.token });
    assert.equal(refused.status, 409, "a token reused while an agent is registered is refused unless replace is asked for");
    const again = await stack.api("POST", "agents/register", { token: item.agentRegistration.token, replace: true });
    assert.deepEqual(
      again.body.disks.map((d: { id: string; nextSeq: number }) => [d.id, d.nextSeq]),
      [
        ["os", 8],
        ["data0", 1],
      ],
    );

    const old = await stack.api("POST", "agents/checkin", { itemId: item.id, agentKey: reg.agentKey });
    assert.equal(old.status, 401, "a re-registration fences the previous agent out");
    const ok = await stack.api("POST", "agents/checkin", { itemId: item.id, agentKey: again.body.agentKey });
    assert.equal(ok.status, 200);
    assert.match(ok.body.cache.containerUrl, new RegExp(`/cache-${item.id}\\?`));
    assert.deepEqual(ok.body.resync, []);
  });

  test("check-ins with a wrong key, an unknown item or a bad body are refused", async () => {
    const { item } = await registered("ck-2");
    assert.equal((await stack.api("POST", "agents/checkin", { itemId: item.id, agentKey: "nope" })).status, 401);
    assert.equal((await stack.api("POST", "agents/checkin", { itemId: "no-such-item", agentKey: "nope" })).status, 401);
    const bad = await stack.api("POST", "agents/checkin", { itemId: item.id });
    assert.equal(bad.status, 400);
    assert.deepEqual(
      bad.body.error.details.map((d: { field: string }) => d.field),
      ["agentKey"],
    );
  });

  test("an agent that lost write order reports it: the disk and the item show ResyncRequired with the reason", async () => {
    const { item, reg } = await registered("ck-3");
    const res = await stack.api("POST", "agents/checkin", {
      itemId: item.id,
      agentKey: reg.agentKey,
      resyncRequired: [{ diskId: "data0", resyncId: "r-1", reason: "spool full (1024 MiB): tracking dirty blocks" }],
    });
    assert.equal(res.status, 200);
    const disk = (await stack.services.items.getDisk(item.id, "data0"))!.disk;
    assert.equal(disk.state, "ResyncRequired");
    assert.equal(disk.resync?.origin, "agent");
    const got = await stack.api("GET", `replicated-items/${item.id}`);
    assert.equal(got.body.state, "ResyncRequired");
    assert.equal(got.body.health.status, "Warning");
    assert.match(got.body.health.issues[0].message, /spool full/);
    // Reporting the same resync again changes nothing.
    await stack.api("POST", "agents/checkin", {
      itemId: item.id,
      agentKey: reg.agentKey,
      resyncRequired: [{ diskId: "data0", resyncId: "r-1", reason: "again" }],
    });
    assert.equal((await stack.api("GET", `replicated-items/${item.id}`)).body.health.issues.length, 1);
    const unknown = await stack.api("POST", "agents/checkin", {
      itemId: item.id,
      agentKey: reg.agentKey,
      resyncRequired: [{ diskId: "nope", resyncId: "r-2", reason: "x" }],
    });
    assert.equal(unknown.status, 400);
  });

  test("agent warnings: a reported AppConsistencyFailed becomes an item Warning, others are ignored, a check-in without it clears it", async () => {
    const { item, reg } = await registered("ck-warn");
    const checkin = (warnings?: unknown) => stack.api("POST", "agents/checkin", { itemId: item.id, agentKey: reg.agentKey, ...(warnings ? { warnings } : {}) });
    const issues = async () => (await stack.api("GET", `replicated-items/${item.id}`)).body.health;
    assert.equal(
      (
        await checkin([
          { code: "AppConsistencyFailed", message: "pre-freeze exited with code 1" },
          { code: "SomethingElse", message: "x" },
        ])
      ).status,
      200,
    );
    const raised = await issues();
    assert.equal(raised.status, "Warning");
    assert.deepEqual(
      raised.issues.map((i: { code: string; severity: string }) => [i.code, i.severity]),
      [["AppConsistencyFailed", "Warning"]],
    );
    assert.match(raised.issues[0].message, /code 1/);
    assert.equal((await checkin([{ code: "AppConsistencyFailed", message: "pre-freeze exited with code 1" }])).status, 200);
    assert.deepEqual(await issues(), raised, "the same report again changes nothing");
    for (const bad of [
      [{ code: "AppConsistencyFailed", message: "x".repeat(1001) }],
      [{ code: "AppConsistencyFailed", message: "m", extra: 1 }],
      Array(17).fill({ code: "A", message: "m" }),
      [{ code: "no spaces", message: "m" }],
    ]) {
      assert.equal((await checkin(bad)).status, 400, JSON.stringify(bad).slice(0, 80));
    }
    assert.equal((await checkin()).status, 200);
    assert.deepEqual(await issues(), { status: "Healthy", issues: [] });
  });

  test("a halted disk is handed to the agent as a resync, with the replica's block checksums at its base", async () => {
    const { item, reg } = await registered("ck-4");
    const replica = (await stack.services.storage.replicas()).getPageBlobClient(`${item.id}/data0.vhd`);
    const bytes = randomBytes(3 * RESYNC_BLOCK_BYTES);
    await replica.uploadPages(bytes, RESYNC_BLOCK_BYTES, bytes.length);
    await replica.updateSequenceNumber("update", 5);

    const noResync = await stack.api("POST", "agents/resync-manifest", {
      itemId: item.id,
      agentKey: reg.agentKey,
      diskId: "data0",
      resyncId: "x",
      offset: 0,
      length: RESYNC_BLOCK_BYTES,
    });
    assert.equal(noResync.status, 409);
    assert.equal(noResync.body.error.code, "NoSuchResync");

    await stack.services.items.updateDisk(item.id, "data0", (d) => ({
      ...d,
      state: "ResyncRequired",
      resync: { id: "halt-1", reason: "corrupt batch 6", origin: "apply", baseSeq: 5, since: new Date().toISOString() },
    }));
    const ck = await stack.api("POST", "agents/checkin", { itemId: item.id, agentKey: reg.agentKey });
    assert.deepEqual(ck.body.resync, [{ diskId: "data0", resyncId: "halt-1", baseSeq: 5, reason: "corrupt batch 6" }]);

    const m = await stack.api("POST", "agents/resync-manifest", {
      itemId: item.id,
      agentKey: reg.agentKey,
      diskId: "data0",
      resyncId: "halt-1",
      offset: 0,
      length: 8 * RESYNC_BLOCK_BYTES,
    });
    assert.equal(m.status, 200, JSON.stringify(m.body));
    const zero = crc32c(Buffer.alloc(RESYNC_BLOCK_BYTES));
    const expected = [zero, ...[0, 1, 2].map((i) => crc32c(bytes.subarray(i * RESYNC_BLOCK_BYTES, (i + 1) * RESYNC_BLOCK_BYTES))), zero, zero, zero, zero];
    assert.deepEqual(m.body.checksums, expected);
    assert.equal(m.body.baseSeq, 5);

    const past = await stack.api("POST", "agents/resync-manifest", {
      itemId: item.id,
      agentKey: reg.agentKey,
      diskId: "data0",
      resyncId: "halt-1",
      offset: 8 * 1024 * 1024,
      length: RESYNC_BLOCK_BYTES,
    });
    assert.equal(past.status, 400, "past the disk's end");
    const unaligned = await stack.api("POST", "agents/resync-manifest", {
      itemId: item.id,
      agentKey: reg.agentKey,
      diskId: "data0",
      resyncId: "halt-1",
      offset: 512,
      length: RESYNC_BLOCK_BYTES,
    });
    assert.equal(unaligned.status, 400);
    assert.deepEqual(
      unaligned.body.error.details.map((d: { field: string }) => d.field),
      ["offset"],
    );

    await replica.updateSequenceNumber("update", 6);
    const moved = await stack.api("POST", "agents/resync-manifest", {
      itemId: item.id,
      agentKey: reg.agentKey,
      diskId: "data0",
      resyncId: "halt-1",
      offset: 0,
      length: RESYNC_BLOCK_BYTES,
    });
    assert.equal(moved.status, 409);
    assert.equal(moved.body.error.code, "ReplicaMoved");
  });
});
