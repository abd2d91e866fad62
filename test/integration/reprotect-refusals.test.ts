// Re-protect, resync and failback refused: every wrong state, unknown ids, bad bodies — each with its status, the error envelope, and nothing changed in storage.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import type { ItemState } from "../../shared/protection/items";
import { startTestStack, type TestStack } from "../support/stack";
import { e2eEnableBody } from "../support/e2e";

interface Case {
  name: string;
  /** The item's state for the call (set directly: the fixture, not the behaviour under test). */
  state?: ItemState;
  direction?: "forward" | "reverse";
  method: string;
  path: (itemId: string) => string;
  body?: unknown;
  status: number;
  code: string;
  /** The envelope's details name the item's state. */
  detailsState?: boolean;
  field?: string;
}

const WRONG_FOR_REPROTECT: ItemState[] = [
  "Enabling",
  "EnableFailed",
  "InitialReplication",
  "Protected",
  "ResyncRequired",
  "FailingOver",
  "FailedOver",
  "TestFailover",
  "Disabling",
];

const cases: Case[] = [
  ...WRONG_FOR_REPROTECT.map((state): Case => ({
    name: `re-protect of a ${state} item → 409 with the state`,
    state,
    method: "POST",
    path: (id) => `replicated-items/${id}/reprotect`,
    body: {},
    status: 409,
    code: "IllegalState",
    detailsState: true,
  })),
  {
    name: "a second re-protect (the item is Reprotecting) → 409 ReprotectInProgress",
    state: "Reprotecting",
    method: "POST",
    path: (id) => `replicated-items/${id}/reprotect`,
    body: {},
    status: 409,
    code: "ReprotectInProgress",
    detailsState: true,
  },
  {
    name: "re-protect of an unknown item → 404",
    method: "POST",
    path: () => "replicated-items/00000000-0000-0000-0000-000000000000/reprotect",
    body: {},
    status: 404,
    code: "NotFound",
  },
  {
    name: "re-protect with an id that is not an id → 400 naming itemId",
    method: "POST",
    path: () => "replicated-items/a'b/reprotect",
    body: {},
    status: 400,
    code: "InvalidInput",
    field: "itemId",
  },
  {
    name: "re-protect with an unknown option → 400 naming it",
    state: "FailoverCommitted",
    method: "POST",
    path: (id) => `replicated-items/${id}/reprotect`,
    body: { direction: "reverse" },
    status: 400,
    code: "InvalidInput",
  },
  {
    name: "re-protect with a body that is not JSON → 400",
    state: "FailoverCommitted",
    method: "POST",
    path: (id) => `replicated-items/${id}/reprotect`,
    body: "{nope",
    status: 400,
    code: "InvalidInput",
    field: "(body)",
  },
  {
    name: "re-protect with a body that is an array → 400",
    state: "FailoverCommitted",
    method: "POST",
    path: (id) => `replicated-items/${id}/reprotect`,
    body: [],
    status: 400,
    code: "InvalidInput",
  },
  {
    name: "failback of a reverse item still in initial replication → 409 with the state",
    state: "InitialReplication",
    direction: "reverse",
    method: "POST",
    path: () => "failovers",
    body: "ITEM",
    status: 409,
    code: "IllegalState",
    detailsState: true,
  },
  {
    name: "failback of a Reprotecting item → 409 with the state",
    state: "Reprotecting",
    direction: "reverse",
    method: "POST",
    path: () => "failovers",
    body: "ITEM",
    status: 409,
    code: "IllegalState",
    detailsState: true,
  },
  {
    name: "resync of a Protected item → 409 with the state",
    state: "Protected",
    method: "POST",
    path: (id) => `replicated-items/${id}/resync`,
    body: {},
    status: 409,
    code: "IllegalState",
    detailsState: true,
  },
  {
    name: "resync of a FailoverCommitted item → 409 with the state",
    state: "FailoverCommitted",
    method: "POST",
    path: (id) => `replicated-items/${id}/resync`,
    body: {},
    status: 409,
    code: "IllegalState",
    detailsState: true,
  },
  { name: "resync of an unknown item → 404", method: "POST", path: () => "replicated-items/nope/resync", body: {}, status: 404, code: "NotFound" },
  {
    name: "resync with an unknown option → 400",
    state: "ResyncRequired",
    method: "POST",
    path: (id) => `replicated-items/${id}/resync`,
    body: { full: true },
    status: 400,
    code: "InvalidInput",
  },
  {
    name: "the re-protect job of an item never re-protected → 404",
    state: "Protected",
    method: "GET",
    path: (id) => `replicated-items/${id}/reprotect`,
    status: 404,
    code: "NotFound",
  },
];

describe("re-protect, failback and resync refusals", () => {
  let stack: TestStack;
  let itemId: string;

  before(async () => {
    // No timers: the scheduled passes write state of their own (an item's first history sample, a reverse item's
    // replica container), which a case's "nothing changed" would meet if a pass fell between its two snapshots.
    stack = await startTestStack({ queues: false, timers: false });
    const res = await stack.api("POST", "replicated-items", e2eEnableBody("refusals", 8));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    itemId = res.body.id;
  });

  after(async () => {
    await stack?.stop();
  });

  for (const c of cases) {
    test(c.name, async () => {
      if (c.state) {
        await stack.services.items.updateItem(itemId, (i) => {
          i.state = c.state!;
          if (c.direction) i.direction = c.direction;
          else delete i.direction;
          if (c.state === "Reprotecting") i.reprotect = { instanceId: "held-by-another", from: "forward", to: "reverse", startedAt: i.createdAt };
          else delete i.reprotect;
          return i;
        });
      }
      const before = await stack.snapshot();
      const body = c.body === "ITEM" ? { itemIds: [itemId], type: "planned" } : c.body;
      const res = await stack.api(c.method, c.path(itemId), body);
      assert.equal(res.status, c.status, JSON.stringify(res.body));
      assert.equal(res.body?.error?.code, c.code, JSON.stringify(res.body));
      assert.equal(typeof res.body.error.message, "string");
      assert.deepEqual(Object.keys(res.body), ["error"], "the envelope only");
      if (c.detailsState) assert.equal(res.body.error.details.state, c.state);
      if (c.field) assert.ok(JSON.stringify(res.body.error.details).includes(c.field), JSON.stringify(res.body.error.details));
      assert.deepEqual(await stack.snapshot(), before, "nothing changed");
    });
  }
});
