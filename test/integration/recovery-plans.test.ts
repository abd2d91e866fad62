// Recovery plans through the local host: created whole or not at all, listed and read back, with ASR's limits.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";

describe("recovery plans", () => {
  let stack: TestStack;
  /** Items: `web` and `app` are the whole replication group `plan-tier`; `db` is alone. */
  const ids = { web: "", app: "", db: "" };

  const enable = async (name: string, extra: Record<string, unknown> = {}) => {
    const r = await stack.api("POST", "replicated-items", enableBody(name, extra));
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return r.body.id as string;
  };
  /** What the plans table holds, plans and name claims alike. */
  const planRows = async () => (await stack.snapshot()).filter((line) => line.includes(" table RecoveryPlans "));
  const fieldsOf = (body: { error: { details?: { field: string }[] } }) => (body.error.details ?? []).map((d) => d.field).sort();

  before(async () => {
    stack = await startTestStack();
    ids.web = await enable("plan-web", { replicationGroup: "plan-tier" });
    ids.app = await enable("plan-app", { replicationGroup: "plan-tier" });
    ids.db = await enable("plan-db");
  });
  after(async () => {
    await stack?.stop();
  });

  test("a plan is created with 201, then listed and read back by its id exactly as created", async () => {
    const created = await stack.api("POST", "recovery-plans", { name: "App Tier", groups: [[ids.db], [ids.web, ids.app]] });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const plan = created.body;
    assert.match(plan.id, /^[a-z0-9]+$/);
    assert.equal(plan.name, "App Tier");
    assert.deepEqual(plan.groups, [[ids.db], [ids.web, ids.app]]);
    assert.ok(!Number.isNaN(Date.parse(plan.createdAt)), "createdAt is a time");

    const listed = await stack.api("GET", "recovery-plans");
    assert.equal(listed.status, 200);
    assert.ok(Array.isArray(listed.body));
    assert.deepEqual(
      listed.body.find((p: { id: string }) => p.id === plan.id),
      plan,
    );

    const got = await stack.api("GET", `recovery-plans/${plan.id}`);
    assert.equal(got.status, 200);
    assert.deepEqual(got.body, plan);
  });

  test("reading an unknown plan id is a 404 NotFound", async () => {
    for (const id of ["0123456789ab", "no-such-plan", "x%23y"]) {
      const r = await stack.api("GET", `recovery-plans/${id}`);
      assert.equal(r.status, 404, id);
      assert.equal(r.body.error.code, "NotFound");
      assert.match(r.body.error.message, /recovery plan/);
    }
  });

  test("a second plan with the same name, in any case, is refused with 409 PlanExists and writes nothing", async () => {
    const first = await stack.api("POST", "recovery-plans", { name: "Nightly Drill", groups: [[ids.db]] });
    assert.equal(first.status, 201, JSON.stringify(first.body));
    const before = await planRows();
    assert.equal(before.filter((row) => row.includes(first.body.id)).length, 2, "the plan and the claim on its name");
    for (const name of ["Nightly Drill", "nightly drill", "NIGHTLY DRILL"]) {
      const again = await stack.api("POST", "recovery-plans", { name, groups: [[ids.web, ids.app]] });
      assert.equal(again.status, 409, name);
      assert.equal(again.body.error.code, "PlanExists");
      assert.equal(again.body.error.details.planId, first.body.id);
    }
    assert.deepEqual(await planRows(), before);
    const named = (await stack.api("GET", "recovery-plans")).body.filter((p: { name: string }) => p.name.toLowerCase() === "nightly drill");
    assert.equal(named.length, 1);
  });

  interface BadCase {
    name: string;
    body: () => unknown;
    status: number;
    code: string;
    /** Every field the error names. */
    fields: string[];
    /** Text the message must hold (a group or item it is about). */
    message?: RegExp;
  }
  const unique = (n: number, prefix = "item") => Array.from({ length: n }, (_, i) => `${prefix}-${i}`);
  const cases: BadCase[] = [
    {
      name: "8 groups are refused with 400 naming groups",
      body: () => ({ name: "eight", groups: Array.from({ length: 8 }, () => [ids.db]) }),
      status: 400,
      code: "InvalidInput",
      fields: ["groups"],
    },
    {
      name: "101 items are refused with 400 naming groups",
      body: () => ({ name: "too-many", groups: [unique(50, "a"), unique(51, "b")] }),
      status: 400,
      code: "InvalidInput",
      fields: ["groups"],
      message: /at most 100 items/,
    },
    {
      name: "an item listed twice is refused with 400 naming the duplicate's path",
      body: () => ({ name: "twice", groups: [[ids.db], [ids.db]] }),
      status: 400,
      code: "InvalidInput",
      fields: ["groups[1][0]"],
      message: /duplicate item/,
    },
    {
      name: "an unknown item is refused with 404 naming it",
      body: () => ({ name: "ghost", groups: [[ids.db, "no-such-item"]] }),
      status: 404,
      code: "NotFound",
      fields: ["groups[0][1]"],
      message: /replicated item 'no-such-item'/,
    },
    {
      name: "a replication group member without the other members is refused with 400 naming the field and the group",
      body: () => ({ name: "half", groups: [[ids.web], [ids.db]] }),
      status: 400,
      code: "InvalidInput",
      fields: ["groups[0][0]"],
      message: /replication group 'plan-tier'.*cannot fail over alone/,
    },
    {
      name: "members of one replication group split across plan groups are refused with 400 naming the field and the group",
      body: () => ({ name: "split", groups: [[ids.web], [ids.app]] }),
      status: 400,
      code: "InvalidInput",
      fields: ["groups[1][0]"],
      message: /replication group 'plan-tier'.*one plan group/,
    },
    {
      name: "an empty group is refused with 400 naming it",
      body: () => ({ name: "empty", groups: [[ids.db], []] }),
      status: 400,
      code: "InvalidInput",
      fields: ["groups[1]"],
    },
    { name: "no groups are refused with 400 naming groups", body: () => ({ name: "none", groups: [] }), status: 400, code: "InvalidInput", fields: ["groups"] },
    {
      name: "a name with other characters is refused with 400 naming name",
      body: () => ({ name: "drill/1", groups: [[ids.db]] }),
      status: 400,
      code: "InvalidInput",
      fields: ["name"],
    },
    {
      name: "a name over 64 characters is refused with 400 naming name",
      body: () => ({ name: "n".repeat(65), groups: [[ids.db]] }),
      status: 400,
      code: "InvalidInput",
      fields: ["name"],
    },
    { name: "a missing name is refused with 400 naming name", body: () => ({ groups: [[ids.db]] }), status: 400, code: "InvalidInput", fields: ["name"] },
    {
      name: "an unknown field is refused with 400 naming it",
      body: () => ({ name: "extra", groups: [[ids.db]], steps: [] }),
      status: 400,
      code: "InvalidInput",
      fields: ["steps"],
    },
    {
      name: "an item id of the wrong type is refused with 400 naming its path",
      body: () => ({ name: "typed", groups: [[ids.db, 7]] }),
      status: 400,
      code: "InvalidInput",
      fields: ["groups[0][1]"],
    },
  ];

  for (const c of cases) {
    test(`${c.name}, and leaves the plans unchanged`, async () => {
      const listBefore = await stack.api("GET", "recovery-plans");
      const rowsBefore = await planRows();
      const r = await stack.api("POST", "recovery-plans", c.body());
      assert.equal(r.status, c.status, JSON.stringify(r.body));
      assert.equal(r.body.error.code, c.code);
      if (c.status === 400) assert.deepEqual(fieldsOf(r.body), [...c.fields].sort(), JSON.stringify(r.body));
      else assert.equal(r.body.error.details.field, c.fields[0]);
      if (c.message) assert.match(r.body.error.message, c.message);
      assert.deepEqual((await stack.api("GET", "recovery-plans")).body, listBefore.body);
      assert.deepEqual(await planRows(), rowsBefore);
    });
  }

  test("exactly 7 groups and 100 items are within the limits", async () => {
    // Checked with the schema alone: enabling 100 VMs would make this test slow for nothing.
    const { createPlanRequestSchema } = await import("../../shared/contract/api");
    const ok = createPlanRequestSchema.safeParse({ name: "full plan", groups: [...Array.from({ length: 6 }, (_, g) => [`g${g}`]), unique(94)] });
    assert.ok(ok.success, JSON.stringify(ok.error?.issues));
  });
});
