// The rules of the apply side that need no storage: item state from its disks, health issues, the queue message, sweep settings.
import { test } from "node:test";
import assert from "node:assert/strict";
import { batchMessageSchema } from "../../shared/replication/apply";
import { clearIssues, raiseIssue, replicationStateOf, type DiskRecord, type ReplicatedItem } from "../../shared/protection/items";
import { loadConfig, SettingsError, timerSchedules } from "../../shared/config/settings";

const item = (state: ReplicatedItem["state"]): ReplicatedItem => ({ id: "i", state, health: { status: "Healthy", issues: [] } }) as unknown as ReplicatedItem;
const disk = (id: string, state: DiskRecord["state"], initialComplete?: boolean): DiskRecord =>
  ({ itemId: "i", id, state, ...(initialComplete ? { initialComplete } : {}) }) as DiskRecord;

test("an item is Protected only when every disk finished its first copy and none needs a resync", () => {
  assert.equal(replicationStateOf(item("InitialReplication"), [disk("os", "Protected", true), disk("d", "InitialReplication")]), "InitialReplication");
  assert.equal(replicationStateOf(item("InitialReplication"), [disk("os", "Protected", true), disk("d", "Protected", true)]), "Protected");
  assert.equal(replicationStateOf(item("Protected"), [disk("os", "ResyncRequired", true), disk("d", "Protected", true)]), "ResyncRequired");
  assert.equal(replicationStateOf(item("ResyncRequired"), [disk("os", "Protected", true), disk("d", "Protected", true)]), "Protected");
  assert.equal(
    replicationStateOf(item("ResyncRequired"), [disk("os", "InitialReplication")]),
    "InitialReplication",
    "a resync during the first copy returns to it",
  );
  for (const s of ["FailingOver", "TestFailover", "Disabling", "FailedOver"] as const) {
    assert.equal(replicationStateOf(item(s), [disk("os", "ResyncRequired", true)]), s, `${s} is not the apply side's to change`);
  }
});

test("one open issue per cause and disk; health follows the worst open issue", () => {
  const i = item("Protected");
  raiseIssue(i, { code: "PoisonMessage", severity: "Warning", diskId: "os", seq: 3, message: "m1", since: "t1" });
  assert.equal(i.health.status, "Warning");
  raiseIssue(i, { code: "PoisonMessage", severity: "Warning", diskId: "os", seq: 5, message: "m2", since: "t2" });
  assert.equal(i.health.issues.length, 1);
  assert.deepEqual([i.health.issues[0].seq, i.health.issues[0].since], [5, "t1"], "replaced, keeping when it began");
  raiseIssue(i, { code: "CorruptBatch", severity: "Critical", diskId: "data0", message: "m3", since: "t3" });
  assert.equal(i.health.status, "Critical");
  assert.equal(
    clearIssues(i, (x) => x.diskId === "data0"),
    true,
  );
  assert.equal(i.health.status, "Warning");
  assert.equal(
    clearIssues(i, (x) => x.code === "nothing"),
    false,
  );
  clearIssues(i, () => true);
  assert.deepEqual(i.health, { status: "Healthy", issues: [] });
});

test("a batch message names an item, a disk and a positive seq; ids that could escape a blob path are refused", () => {
  const ok = { v: 1, itemId: "3f2b6a38-8f7e-4d7e-9a51-5b0f0d5e2c11", diskId: "data0", seq: 7 };
  assert.deepEqual(batchMessageSchema.parse({ ...ok, extra: true }), ok);
  for (const bad of [
    { ...ok, v: 2 },
    { ...ok, seq: 0 },
    { ...ok, seq: 1.5 },
    { ...ok, seq: "7" },
    { ...ok, itemId: "../x" },
    { ...ok, diskId: "os/../../x" },
    { ...ok, diskId: "OS" },
    "text",
    null,
  ]) {
    assert.equal(batchMessageSchema.safeParse(bad).success, false, JSON.stringify(bad));
  }
});

test("the sweep runs every 30 s and re-kicks after 30 s by default; a bad schedule is named with the other settings", () => {
  const base = { AzureWebJobsStorage: "UseDevelopmentStorage=true" };
  assert.deepEqual(loadConfig(base).sweep, { schedule: "*/30 * * * * *", stallSeconds: 30 });
  assert.deepEqual(timerSchedules({}), { sweep: "*/30 * * * * *", seal: "*/15 * * * * *" }, "the table's schedule needs no other setting");
  assert.deepEqual(loadConfig({ ...base, SWEEP_SCHEDULE: " 0 */5 * * * * ", SWEEP_STALL_SECONDS: "120" }).sweep, {
    schedule: "0 */5 * * * *",
    stallSeconds: 120,
  });
  assert.equal(timerSchedules({ SWEEP_SCHEDULE: "" }).sweep, "*/30 * * * * *", "empty counts as unset");
  try {
    loadConfig({ ...base, SWEEP_SCHEDULE: "*/5 * * * *", SWEEP_STALL_SECONDS: "-1" });
    assert.fail("expected a SettingsError");
  } catch (e) {
    assert.ok(e instanceof SettingsError);
    assert.deepEqual(e.problems.map((p) => p.setting).sort(), ["SWEEP_SCHEDULE", "SWEEP_STALL_SECONDS"]);
    assert.match(e.message, /six-field NCRONTAB/);
  }
  assert.throws(() => timerSchedules({ SWEEP_SCHEDULE: "99 * * * * *" }), SettingsError);
});
