// App-consistent tags with the real stack and a real agent on tracked disks: pre-freeze, app tag, post-thaw, the
// recovery point sealed as the tag is applied; a failing or hanging pre-freeze yields a crash tag and a health warning.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startTestStack, type TestStack } from "../support/stack";
import { protectVm, type E2eVm } from "../support/e2e";
import type { Agent } from "../../agent";
import type { BatchTag } from "../../shared/replication/batch";

// Generous, so that a loaded machine (the suite runs files in parallel) never turns a good freeze into a crash tag.
const FREEZE_TIMEOUT_MS = 3000;

/**
 * The pre-freeze: appends `pre` to the journal, then does what the mode file says: `ok` exits 0, `fail` writes to
 * stderr and exits 1, `hang` records its process group and sleeps (a grandchild that must be killed with it).
 */
const PRE_FREEZE = `#!/bin/sh
dir="$1"
echo pre >> "$dir/journal"
case "$(cat "$dir/mode")" in
  ok) exit 0 ;;
  fail) echo "fsfreeze: /data: cannot freeze: device busy" >&2; exit 1 ;;
  hang) echo $$ > "$dir/pgid"; sleep 30; exit 0 ;;
esac
`;
const POST_THAW = `#!/bin/sh
echo post >> "$1/journal"
`;

async function until<T>(what: string, check: () => Promise<T | undefined> | T | undefined, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("app-consistent tags", () => {
  let stack: TestStack;
  const vms: E2eVm[] = [];
  before(async () => {
    stack = await startTestStack({ queueOverrides: { maxPollingIntervalMs: 100, visibilityTimeoutMs: 500 }, env: { AGENT_CHECKIN_SECONDS: "1" } });
  });
  after(async () => {
    for (const vm of vms) await vm.cleanup();
    await stack?.stop();
  });

  /** A protected VM (8 MiB disks) whose agent freezes with the scripts above; the mode file says how the pre-freeze behaves. */
  async function start(name: string, appTagIntervalMs: number): Promise<{ vm: E2eVm; agent: Agent; journal: () => string[]; mode: (m: string) => void }> {
    const vm = await protectVm(stack, name, 8);
    vms.push(vm);
    writeFileSync(join(vm.dir, "pre.sh"), PRE_FREEZE);
    writeFileSync(join(vm.dir, "post.sh"), POST_THAW);
    writeFileSync(join(vm.dir, "mode"), "ok");
    const agent = await vm.startAgent({
      preFreeze: ["/bin/sh", join(vm.dir, "pre.sh"), vm.dir],
      postThaw: ["/bin/sh", join(vm.dir, "post.sh"), vm.dir],
      freezeTimeoutMs: FREEZE_TIMEOUT_MS,
      appTagIntervalMs,
      tagIntervalMs: 3_600_000,
      // Check-ins when the test says so.
      checkinIntervalMs: 3_600_000,
    });
    await agent.waitIdle(30_000);
    const journalPath = join(vm.dir, "journal");
    return {
      vm,
      agent,
      journal: () => (existsSync(journalPath) ? readFileSync(journalPath, "utf8").trim().split("\n") : []),
      mode: (m) => writeFileSync(join(vm.dir, "mode"), m),
    };
  }

  async function points(itemId: string): Promise<{ id: string; kind: string }[]> {
    const r = await stack.api("GET", `replicated-items/${itemId}/recovery-points`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body;
  }

  async function appIssue(itemId: string): Promise<{ code: string; severity: string; message: string; since: string } | undefined> {
    const r = await stack.api("GET", `replicated-items/${itemId}`);
    return r.body.health.issues.find((i: { code: string }) => i.code === "AppConsistencyFailed");
  }

  /** Checks in until the item's AppConsistencyFailed issue matches: a check-in already in flight may predate the change. */
  async function checkedIn(agent: Agent, itemId: string, match: (issue: Awaited<ReturnType<typeof appIssue>>) => boolean) {
    let last: Awaited<ReturnType<typeof appIssue>>;
    await until("the item's AppConsistencyFailed issue", async () => {
      await agent.checkin();
      last = await appIssue(itemId);
      return match(last) || undefined;
    });
    return last;
  }

  test("the app tag loop: pre-freeze exits 0, the tag is `app`, post-thaw runs after it, and an app recovery point is sealed", async () => {
    const { vm, agent, journal } = await start("app-loop", 300);
    const point = await until("an app-consistent recovery point", async () => (await points(vm.itemId)).find((p) => p.kind === "app"));
    assert.equal(point.kind, "app");
    const j = journal();
    assert.ok(j.length >= 2, `journal ${j.join(",")}`);
    assert.deepEqual(j.slice(0, 2), ["pre", "post"], "thawed after the freeze");
    assert.equal(agent.health.has("AppConsistencyFailed"), false);
  });

  describe("one agent, pre-freeze by mode", () => {
    let ctx: Awaited<ReturnType<typeof start>>;
    before(async () => {
      ctx = await start("app-modes", 0);
    });

    test("pre-freeze exits 0: an `app` tag, post-thaw ran, and the item lists the app point", async () => {
      const tag: BatchTag | undefined = await ctx.agent.cutAppTag();
      assert.ok(tag);
      assert.equal(tag.kind, "app", JSON.stringify(ctx.agent.status().health.issues));
      assert.deepEqual(ctx.journal(), ["pre", "post"]);
      await until("the app point", async () => (await points(ctx.vm.itemId)).find((p) => p.id === tag.id && p.kind === "app"));
    });

    test("pre-freeze exits 1: a crash tag, no post-thaw (nothing was frozen), and the warning on the item after a check-in", async () => {
      ctx.mode("fail");
      const tag = await ctx.agent.cutAppTag();
      assert.ok(tag);
      assert.equal(tag.kind, "crash");
      assert.deepEqual(ctx.journal(), ["pre", "post", "pre"], "post-thaw not run");
      const local = ctx.agent.status().health.issues.find((i) => i.code === "AppConsistencyFailed");
      assert.ok(local, "the agent's health has the warning");
      assert.match(local.message, /exited with code 1: fsfreeze: \/data: cannot freeze: device busy/);
      assert.equal(ctx.agent.status().health.status, "Warning");

      const issue = await checkedIn(ctx.agent, ctx.vm.itemId, (i) => i !== undefined);
      assert.ok(issue, "the item's health shows the warning");
      assert.equal(issue.severity, "Warning");
      assert.match(issue.message, /code 1.*cannot freeze/);
      // Idempotent: another check-in with the same warning changes nothing.
      await ctx.agent.checkin();
      assert.deepEqual(await appIssue(ctx.vm.itemId), issue);
      await until("the crash point", async () => (await points(ctx.vm.itemId)).find((p) => p.id === tag.id && p.kind === "crash"));
    });

    test("pre-freeze hangs past the bound: killed with its process group, thawed to be sure, a crash tag, the warning", async () => {
      ctx.mode("hang");
      const started = Date.now();
      const tag = await ctx.agent.cutAppTag();
      const took = Date.now() - started;
      assert.ok(tag);
      assert.equal(tag.kind, "crash");
      assert.ok(took >= FREEZE_TIMEOUT_MS && took < FREEZE_TIMEOUT_MS + 3000, `bounded: ${took} ms`);
      assert.deepEqual(ctx.journal(), ["pre", "post", "pre", "pre", "post"], "post-thaw run: the killed script may have frozen something");
      const pgid = Number(readFileSync(join(ctx.vm.dir, "pgid"), "utf8"));
      await until(
        "the script's process group gone",
        () => {
          try {
            process.kill(-pgid, 0);
            return undefined;
          } catch {
            return true;
          }
        },
        3000,
      );
      const issue = await checkedIn(ctx.agent, ctx.vm.itemId, (i) => /killed/.test(i?.message ?? ""));
      assert.ok(issue);
      assert.match(issue.message, new RegExp(`did not finish within ${FREEZE_TIMEOUT_MS} ms and was killed`));
    });

    test("pre-freeze succeeds again: an app tag, and the next check-in clears the warning", async () => {
      ctx.mode("ok");
      const tag = await ctx.agent.cutAppTag();
      assert.equal(tag?.kind, "app", JSON.stringify(ctx.agent.status().health.issues));
      assert.equal(ctx.agent.health.has("AppConsistencyFailed"), false, JSON.stringify(ctx.agent.status().health.issues));
      await checkedIn(ctx.agent, ctx.vm.itemId, (i) => i === undefined);
      assert.equal(await appIssue(ctx.vm.itemId), undefined);
    });
  });
});
