// POST /api/failovers refuses bad input with 400/404/409 and the error envelope, and then nothing is started or changed.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import { waitFailover } from "../support/failover";
import type { ItemState, ReplicatedItem } from "../../shared/protection/items";
import type { RecoveryPoint } from "../../shared/recovery-points/points";

const MIN = 60_000;
/** A snapshot time in the shape Azure gives; no replica has it (nothing is copied in the refused requests). */
const FAKE_SNAPSHOT = "2020-01-01T00:00:00.0000000Z";

/** The items the requests name, by role. */
interface Ids {
  /** Protected, not in a group, one crash-consistent VM point (`soloPoint`). */
  solo: string;
  soloPoint: string;
  /** Protected, not in a group, no recovery point. */
  bare: string;
  /** Still in InitialReplication (as enabled). */
  copying: string;
  /** FailedOver. */
  failedOver: string;
  /** ResyncRequired, with a point. */
  resync: string;
  /** The replication group `tier`: both Protected, one group point and a VM point each. */
  g1: string;
  g2: string;
  groupPoint: string;
}

interface Case {
  name: string;
  body: (ids: Ids) => unknown;
  status: 400 | 404 | 409;
  code: string;
  /** 400: the fields error.details must name (all of them, in any order). */
  fields?: string[];
  /** 409/404: details the envelope must carry. */
  details?: (ids: Ids) => Record<string, unknown>;
  /** 404: the id the message must name. */
  names?: (ids: Ids) => string;
}

const cases: Case[] = [
  { name: "a body that is not JSON is refused with 400 naming the body", body: () => "{ itemIds: ", status: 400, code: "InvalidInput", fields: ["(body)"] },
  {
    name: "an empty object is refused with 400 naming every missing field: the selection (itemIds) and type",
    body: () => ({}),
    status: 400,
    code: "InvalidInput",
    fields: ["itemIds", "type"],
  },
  {
    name: "a request selecting nothing (no itemIds, groupId or planId) is refused with 400 naming itemIds",
    body: () => ({ type: "test" }),
    status: 400,
    code: "InvalidInput",
    fields: ["itemIds"],
  },
  {
    name: "an empty itemIds list is refused with 400 naming itemIds",
    body: () => ({ itemIds: [], type: "test" }),
    status: 400,
    code: "InvalidInput",
    fields: ["itemIds"],
  },
  {
    name: "an unknown field is refused with 400 naming it",
    body: (ids) => ({ itemIds: [ids.solo], type: "test", recoveryPiont: "latest" }),
    status: 400,
    code: "InvalidInput",
    fields: ["recoveryPiont"],
  },
  {
    name: "itemIds and planId together are refused with 400 naming both",
    body: (ids) => ({ itemIds: [ids.solo], planId: "0123456789ab", type: "test" }),
    status: 400,
    code: "InvalidInput",
    fields: ["itemIds", "planId"],
  },
  {
    name: "groupId and itemIds together are refused with 400 naming both",
    body: (ids) => ({ itemIds: [ids.g1, ids.g2], groupId: "tier", type: "test" }),
    status: 400,
    code: "InvalidInput",
    fields: ["groupId", "itemIds"],
  },
  {
    name: "a request without type is refused with 400 naming type",
    body: (ids) => ({ itemIds: [ids.solo] }),
    status: 400,
    code: "InvalidInput",
    fields: ["type"],
  },
  {
    name: "an unknown type is refused with 400 naming type",
    body: (ids) => ({ itemIds: [ids.solo], type: "bogus" }),
    status: 400,
    code: "InvalidInput",
    fields: ["type"],
  },
  {
    name: "an unknown item id is refused with 404",
    body: (ids) => ({ itemIds: [ids.solo, "no-such-item"], type: "test" }),
    status: 404,
    code: "NotFound",
    names: () => "no-such-item",
  },
  {
    name: "an item id listed twice is refused with 400 naming the second occurrence",
    body: (ids) => ({ itemIds: [ids.solo, ids.solo], type: "test" }),
    status: 400,
    code: "InvalidInput",
    fields: ["itemIds[1]"],
  },
  {
    name: "a test network on an unplanned failover is refused with 400 naming testNetwork",
    body: (ids) => ({ itemIds: [ids.solo], type: "unplanned", testNetwork: "dr-test-vnet" }),
    status: 400,
    code: "InvalidInput",
    fields: ["testNetwork"],
  },
  {
    name: "a planned failover to latest-processed is refused with 400 naming recoveryPoint (planned takes only latest)",
    body: (ids) => ({ itemIds: [ids.solo], type: "planned", recoveryPoint: "latest-processed" }),
    status: 400,
    code: "InvalidInput",
    fields: ["recoveryPoint"],
  },
  {
    name: "an unknown recovery point id is refused with 404",
    body: (ids) => ({ itemIds: [ids.solo], type: "test", recoveryPoint: "no-such-point" }),
    status: 404,
    code: "NotFound",
    names: () => "no-such-point",
    details: (ids) => ({ recoveryPoint: "no-such-point", itemId: ids.solo }),
  },
  {
    name: "a recovery point id of another item is refused with 400 naming recoveryPoint",
    body: (ids) => ({ itemIds: [ids.bare], type: "test", recoveryPoint: ids.soloPoint }),
    status: 400,
    code: "InvalidInput",
    fields: ["recoveryPoint"],
  },
  {
    name: "latest-processed for an item without any recovery point is refused with 409 NoRecoveryPoint",
    body: (ids) => ({ itemIds: [ids.bare], type: "unplanned", recoveryPoint: "latest-processed" }),
    status: 409,
    code: "NoRecoveryPoint",
    details: (ids) => ({ itemId: ids.bare, recoveryPoint: "latest-processed" }),
  },
  {
    name: "latest-app-consistent for an item with only crash-consistent points is refused with 409 NoRecoveryPoint",
    body: (ids) => ({ itemIds: [ids.solo], type: "test", recoveryPoint: "latest-app-consistent" }),
    status: 409,
    code: "NoRecoveryPoint",
    details: (ids) => ({ itemId: ids.solo, recoveryPoint: "latest-app-consistent" }),
  },
  {
    name: "an item still in InitialReplication is refused with 409 IllegalState naming its state",
    body: (ids) => ({ itemIds: [ids.copying], type: "unplanned" }),
    status: 409,
    code: "IllegalState",
    details: (ids) => ({ itemId: ids.copying, state: "InitialReplication" }),
  },
  {
    name: "an item already FailedOver is refused with 409 IllegalState naming its state",
    body: (ids) => ({ itemIds: [ids.failedOver], type: "test" }),
    status: 409,
    code: "IllegalState",
    details: (ids) => ({ itemId: ids.failedOver, state: "FailedOver" }),
  },
  {
    name: "a planned failover of a ResyncRequired item is refused with 409 IllegalState naming its state",
    body: (ids) => ({ itemIds: [ids.resync], type: "planned" }),
    status: 409,
    code: "IllegalState",
    details: (ids) => ({ itemId: ids.resync, state: "ResyncRequired" }),
  },
  {
    name: "one member of a replication group selected alone is refused with 409 GroupMemberAlone naming the missing member",
    body: (ids) => ({ itemIds: [ids.g1], type: "test", recoveryPoint: "latest-processed" }),
    status: 409,
    code: "GroupMemberAlone",
    details: (ids) => ({ group: "tier", missing: [ids.g2] }),
  },
  {
    name: "an unknown replication group is refused with 404",
    body: () => ({ groupId: "no-such-group", type: "test" }),
    status: 404,
    code: "NotFound",
    names: () => "no-such-group",
  },
  {
    name: "an unknown recovery plan is refused with 404",
    body: () => ({ planId: "0123456789ab", type: "test" }),
    status: 404,
    code: "NotFound",
    names: () => "0123456789ab",
  },
];

describe("POST /api/failovers: bad input", () => {
  let stack: TestStack;
  const ids = {} as Ids;
  /** The ReplicatedItems as they were before any failover request. */
  let baseline: string;

  const enable = async (name: string, extra: Record<string, unknown> = {}) => {
    const r = await stack.api("POST", "replicated-items", enableBody(name, extra));
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return r.body.id as string;
  };

  /**
   * No agent runs in this test, so items never leave InitialReplication nor seal points by themselves: states and
   * points are set through the stores. The disks follow the item's state, as they would after a real initial
   * replication (a failover rollback recomputes the item's state from its disks).
   */
  const setState = async (id: string, state: ItemState) => {
    for (const d of await stack.services.items.listDisks(id)) {
      await stack.services.items.updateDisk(id, d.id, (x) =>
        state === "ResyncRequired" && d.index === 0
          ? {
              ...x,
              initialComplete: true,
              state: "ResyncRequired",
              resync: { id: `resync-${id}`, reason: "set by the test", origin: "agent", baseSeq: 0, since: new Date().toISOString() },
            }
          : { ...x, initialComplete: true, state: "Protected" },
      );
    }
    const updated = await stack.services.items.updateItem(id, (i) => ({ ...i, state }));
    assert.equal(updated?.state, state);
  };

  /** A crash-consistent VM point of the item from a few minutes ago (recent enough that the sealing timer keeps it). */
  const vmPoint = async (itemId: string, id: string, agoMs: number): Promise<RecoveryPoint> => {
    const disks = await stack.services.items.listDisks(itemId);
    return stack.services.points.recordCutPoint({
      id,
      kind: "crash",
      time: new Date(Date.now() - agoMs).toISOString(),
      scope: "vm",
      itemId,
      disks: disks.map((d) => ({ itemId, diskId: d.id, snapshot: FAKE_SNAPSHOT, seq: 1 })),
      sealedAt: new Date().toISOString(),
    });
  };

  const items = async () => JSON.stringify(await stack.services.items.list());

  /** The local host's Durable HTTP API: every orchestration instance of the task hub. */
  const instances = async (): Promise<{ instanceId: string; name: string; runtimeStatus: string }[]> => {
    const res = await fetch(`${stack.url}/runtime/webhooks/durabletask/instances`);
    assert.equal(res.status, 200);
    return (await res.json()) as { instanceId: string; name: string; runtimeStatus: string }[];
  };

  before(async () => {
    stack = await startTestStack();
    ids.solo = await enable("fo-solo");
    ids.bare = await enable("fo-bare");
    ids.copying = await enable("fo-copying");
    ids.failedOver = await enable("fo-failed-over");
    ids.resync = await enable("fo-resync");
    ids.g1 = await enable("fo-g1", { replicationGroup: "tier" });
    ids.g2 = await enable("fo-g2", { replicationGroup: "tier" });

    for (const id of [ids.solo, ids.bare, ids.g1, ids.g2]) await setState(id, "Protected");
    await setState(ids.failedOver, "FailedOver");
    await setState(ids.resync, "ResyncRequired");

    ids.soloPoint = (await vmPoint(ids.solo, "solo-crash-1", 5 * MIN)).id;
    await vmPoint(ids.resync, "resync-crash-1", 5 * MIN);
    await vmPoint(ids.failedOver, "failed-over-crash-1", 5 * MIN);

    // The group point: there is no public insert for one, but recordArrival is how apply records a group tag reaching
    // a disk; once every disk of both members has it, it seals each member's VM point and the group point.
    ids.groupPoint = "tier-crash-1";
    const tag = {
      id: ids.groupPoint,
      kind: "crash" as const,
      time: new Date(Date.now() - 4 * MIN).toISOString(),
      scope: "group" as const,
      group: "tier",
      members: [ids.g1, ids.g2],
    };
    const sealed: RecoveryPoint[] = [];
    for (const itemId of [ids.g1, ids.g2]) {
      for (const d of await stack.services.items.listDisks(itemId)) {
        sealed.push(...(await stack.services.points.recordArrival({ itemId, diskId: d.id, snapshot: FAKE_SNAPSHOT, seq: 1, tag })));
      }
    }
    assert.deepEqual(sealed.map((p) => p.scope).sort(), ["group", "vm", "vm"], "both VM points and the group point sealed");
    const g1 = (await stack.services.items.get(ids.g1))!.item;
    assert.deepEqual(
      (await stack.services.points.listForItem(g1)).map((p) => `${p.scope}:${p.id}`),
      [`group:${ids.groupPoint}`, `vm:${ids.groupPoint}`],
    );

    const states = Object.fromEntries((await stack.services.items.list()).map((i) => [i.vm.name, i.state]));
    assert.deepEqual(states, {
      "fo-solo": "Protected",
      "fo-bare": "Protected",
      "fo-copying": "InitialReplication",
      "fo-failed-over": "FailedOver",
      "fo-resync": "ResyncRequired",
      "fo-g1": "Protected",
      "fo-g2": "Protected",
    });
    assert.deepEqual(await instances(), [], "no orchestration before the requests");
    baseline = await items();
  });
  after(async () => {
    await stack?.stop();
  });

  assert.ok(cases.length >= 20);
  for (const c of cases) {
    test(`${c.name}; no item changes and no orchestration starts`, async () => {
      const res = await stack.api("POST", "failovers", c.body(ids));
      assert.equal(res.status, c.status, JSON.stringify(res.body));
      assert.equal(typeof res.body?.error?.message, "string", `error envelope: ${JSON.stringify(res.body)}`);
      assert.ok(res.body.error.message.length > 0);
      assert.equal(res.body.error.code, c.code, JSON.stringify(res.body));
      if (c.fields) {
        const named = ((res.body.error.details ?? []) as { field: string }[]).map((d) => d.field).sort();
        assert.deepEqual(named, [...c.fields].sort(), JSON.stringify(res.body));
      }
      if (c.details) {
        for (const [k, v] of Object.entries(c.details(ids))) assert.deepEqual(res.body.error.details?.[k], v, `details.${k}: ${JSON.stringify(res.body)}`);
      }
      if (c.names) assert.ok(res.body.error.message.includes(c.names(ids)), `message names ${c.names(ids)}: ${res.body.error.message}`);

      assert.equal(await items(), baseline, "the ReplicatedItems are exactly as before");
      assert.deepEqual(await instances(), [], "no orchestration instance exists");
    });
  }

  test("after all the refused requests the ReplicatedItems are exactly as before and no orchestration instance exists", async () => {
    assert.equal(await items(), baseline);
    assert.deepEqual(await instances(), []);
  });

  // The control: the same checks let a valid request through (and the instance probe above does see instances).
  test("a valid test failover of a Protected item to its point is accepted with 202 and locks the item; its failure (a snapshot that does not exist) rolls the item back to Protected", async () => {
    const res = await stack.api("POST", "failovers", { itemIds: [ids.solo], type: "test", recoveryPoint: ids.soloPoint });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    const id = res.body.id as string;
    assert.equal(typeof id, "string");
    assert.ok(id.length > 0);
    assert.equal(typeof res.body.statusQueryGetUri, "string");
    assert.ok(res.body.statusQueryGetUri.includes(id), res.body.statusQueryGetUri);

    const locked = (await stack.services.items.get(ids.solo))!.item;
    assert.equal(locked.state, "TestFailover");
    assert.equal(locked.failover?.instanceId, id);
    assert.equal(locked.failover?.type, "test");
    assert.equal(locked.failover?.requestedPoint, ids.soloPoint);
    assert.equal(locked.failover?.previousState, "Protected");
    const others = (await stack.services.items.list()).filter((i) => i.id !== ids.solo);
    assert.deepEqual(
      others,
      (JSON.parse(baseline) as ReplicatedItem[]).filter((i) => i.id !== ids.solo),
      "no other item is touched",
    );
    assert.deepEqual(
      (await instances()).map((i) => [i.instanceId, i.name]),
      [[id, "failover"]],
      "exactly the one orchestration",
    );

    // Nothing can copy the fake snapshot: the failover fails and rolls the item back.
    const st = await waitFailover(stack, id, 120_000);
    assert.equal(st.runtimeStatus, "Failed", JSON.stringify(st));
    assert.equal(st.customStatus?.step, "failed");
    assert.match(st.customStatus?.error ?? "", /failoverCopyDisks/, "it failed in the copy step, as a fake snapshot must");
    const after = (await stack.services.items.get(ids.solo))!.item;
    assert.equal(after.state, "Protected", JSON.stringify(after));
    assert.equal(after.failover?.instanceId, id);
    assert.equal(after.failover?.error?.code, "FailoverFailed", JSON.stringify(after.failover));
    assert.ok((after.failover?.error?.message ?? "").length > 0);
    assert.deepEqual(after.failover?.resources.disks, [], "what the failover made is gone");
  });
});
