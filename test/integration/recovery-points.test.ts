// Sealing tags into recovery points (per VM and per group), listing them, and pruning them with their snapshots.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import type { BatchTag } from "../../shared/replication/batch";
import { sealRecoveryPoints } from "../../shared/recovery-points/sealing";

const HOUR = 3600_000;

describe("recovery points", () => {
  let stack: TestStack;
  before(async () => {
    // No scheduled passes: the cases build tags hours old by hand and run the sealing pass themselves when they mean
    // to. A scheduled pass between two arrivals would expire the first (arrivals over 15 minutes old go) or prune a
    // point a case is about to count.
    stack = await startTestStack({ timers: false });
  });
  after(async () => {
    await stack?.stop();
  });

  async function enable(name: string, extra: Record<string, unknown> = {}): Promise<string> {
    const r = await stack.api("POST", "replicated-items", enableBody(name, extra));
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return r.body.id;
  }

  /** Snapshots a replica (as apply does at a tag) and records the arrival. */
  async function arrive(itemId: string, diskId: string, tag: BatchTag, seq = 1) {
    const replicas = await stack.services.storage.replicas();
    const blob = replicas.getPageBlobClient(`${itemId}/${diskId}.vhd`);
    await blob.uploadPages(Buffer.alloc(512, seq % 256), 0, 512);
    const { snapshot } = await blob.createSnapshot();
    const sealed = await stack.services.points.recordArrival({ itemId, diskId, snapshot: snapshot!, seq, tag });
    return { snapshot: snapshot!, sealed };
  }

  async function snapshotExists(itemId: string, diskId: string, snapshot: string): Promise<boolean> {
    const replicas = await stack.services.storage.replicas();
    return replicas.getPageBlobClient(`${itemId}/${diskId}.vhd`).withSnapshot(snapshot).exists();
  }

  const tag = (over: Partial<BatchTag> = {}): BatchTag => ({ id: randomUUID(), kind: "crash", time: new Date().toISOString(), scope: "vm", ...over });

  test("a tag becomes a VM point only when every disk of the VM reached it", async () => {
    const id = await enable("rp-1");
    const t = tag();
    const os = await arrive(id, "os", t);
    assert.deepEqual(os.sealed, []);
    const data = await arrive(id, "data0", t);
    assert.equal(data.sealed.length, 1);
    const point = data.sealed[0]!;
    assert.equal(point.scope, "vm");
    assert.deepEqual(
      point.disks.map((d) => [d.diskId, d.snapshot]),
      [
        ["os", os.snapshot],
        ["data0", data.snapshot],
      ],
    );
    const item = (await stack.services.items.get(id))!.item;
    const listed = await stack.services.points.listForItem(item);
    assert.deepEqual(
      listed.map((p) => p.id),
      [t.id],
    );
    // Arriving again (a retried apply) seals nothing twice.
    assert.deepEqual((await arrive(id, "data0", t)).sealed, []);
  });

  test("points are listed newest first", async () => {
    const id = await enable("rp-2");
    const times = [3, 1, 2].map((m) => new Date(Date.now() - m * 60_000).toISOString());
    for (const time of times) {
      const t = tag({ time });
      await arrive(id, "os", t);
      await arrive(id, "data0", t);
    }
    const item = (await stack.services.items.get(id))!.item;
    const listed = await stack.services.points.listForItem(item);
    assert.deepEqual(
      listed.map((p) => p.time),
      [...times].sort().reverse(),
    );
  });

  test("a group point needs every disk of every member; its snapshots outlive the VM points that share them", async () => {
    const ids = [
      await enable("g-1", { replicationGroup: "tier" }),
      await enable("g-2", { replicationGroup: "tier" }),
      await enable("g-3", { replicationGroup: "tier" }),
    ];
    const t = tag({ scope: "group", group: "tier", members: ids, time: new Date(Date.now() - 3 * HOUR).toISOString() });
    const snaps: { id: string; disk: string; snapshot: string }[] = [];
    let sealed: unknown[] = [];
    for (const id of ids) {
      for (const disk of ["os", "data0"]) {
        const a = await arrive(id, disk, t);
        snaps.push({ id, disk, snapshot: a.snapshot });
        sealed = a.sealed;
      }
      const item = (await stack.services.items.get(id))!.item;
      const scopes = (await stack.services.points.listForItem(item)).map((p) => p.scope);
      assert.deepEqual(scopes, id === ids[2] ? ["group", "vm"] : ["vm"], "the group point waits for the last member");
    }
    assert.equal(sealed.length, 2, "the last arrival sealed the VM point and the group point");

    // Retention of 1 hour: the 3-hour-old VM point of g-1 is pruned, but its snapshots stay for the group point.
    const g1 = (await stack.services.items.get(ids[0]!))!.item;
    g1.policy.recoveryPointRetentionHours = 1;
    assert.equal((await stack.services.points.prune(g1)).length, 1);
    for (const s of snaps.filter((x) => x.id === ids[0])) assert.ok(await snapshotExists(s.id, s.disk, s.snapshot));
    // Pruning the group point drops g-1's snapshots (no VM point left) and keeps g-2's (its VM point remains).
    assert.equal((await stack.services.points.pruneGroup("tier", g1.policy)).length, 1);
    for (const s of snaps) assert.equal(await snapshotExists(s.id, s.disk, s.snapshot), s.id !== ids[0], `${s.id}/${s.disk}`);
  });

  test("the sealing pass prunes by policy and deletes pruned snapshots from storage", async () => {
    const id = await enable("rp-3", { policy: { recoveryPointRetentionHours: 1, crashConsistentFrequencySeconds: 300, appConsistentFrequencyMinutes: 0 } });
    const old = tag({ time: new Date(Date.now() - 2 * HOUR).toISOString() });
    const fresh = tag();
    const oldSnaps = [await arrive(id, "os", old), await arrive(id, "data0", old)];
    await arrive(id, "os", fresh);
    await arrive(id, "data0", fresh);
    const report = await sealRecoveryPoints({ items: stack.services.items, points: stack.services.points, rpoCriticalMinutes: 60 });
    assert.ok(report.pruned >= 1);
    const item = (await stack.services.items.get(id))!.item;
    assert.deepEqual(
      (await stack.services.points.listForItem(item)).map((p) => p.id),
      [fresh.id],
    );
    assert.equal(await snapshotExists(id, "os", oldSnaps[0]!.snapshot), false);
    assert.equal(await snapshotExists(id, "data0", oldSnaps[1]!.snapshot), false);
  });

  test("a group tag a member never reaches expires with its orphan snapshots", async () => {
    const a = await enable("x-1", { replicationGroup: "pair" });
    const b = await enable("x-2", { replicationGroup: "pair" });
    const t = tag({ scope: "group", group: "pair", members: [a, b], time: new Date(Date.now() - HOUR).toISOString() });
    const os = await arrive(a, "os", t);
    assert.equal(await stack.services.points.expireArrivals(a, Date.now()), 1);
    assert.equal(await snapshotExists(a, "os", os.snapshot), false);
  });

  test("the API lists an item's points newest first, and the item shows its latest points and its RPO", async () => {
    const id = await enable("rp-api");
    const older = tag({ time: new Date(Date.now() - 120_000).toISOString(), kind: "app" });
    const newer = tag({ time: new Date(Date.now() - 30_000).toISOString() });
    for (const t of [older, newer]) {
      await arrive(id, "os", t);
      await arrive(id, "data0", t);
    }
    const list = await stack.api("GET", `replicated-items/${id}/recovery-points`);
    assert.equal(list.status, 200);
    assert.deepEqual(
      list.body.map((p: { id: string; kind: string; scope: string }) => [p.id, p.kind, p.scope]),
      [
        [newer.id, "crash", "vm"],
        [older.id, "app", "vm"],
      ],
    );
    assert.deepEqual(
      list.body[0].disks.map((d: { diskId: string }) => d.diskId),
      ["os", "data0"],
    );
    const item = await stack.api("GET", `replicated-items/${id}`);
    assert.equal(item.body.latestRecoveryPoint.id, newer.id);
    assert.equal(item.body.latestAppConsistentRecoveryPoint.id, older.id);
    assert.ok(item.body.rpoSeconds >= 29 && item.body.rpoSeconds < 120, `rpo ${item.body.rpoSeconds}`);
    assert.equal((await stack.api("GET", "replicated-items/nope/recovery-points")).status, 404);
  });

  test("a protected VM joins and leaves a replication group without re-enabling replication", async () => {
    const a = await enable("join-1", { replicationGroup: "join-tier" });
    const b = await enable("join-2");
    const joined = await stack.api("PATCH", `replicated-items/${b}`, { replicationGroup: "join-tier" });
    assert.equal(joined.status, 200, JSON.stringify(joined.body));
    assert.equal(joined.body.replicationGroup, "join-tier");
    const bad = await stack.api("PATCH", `replicated-items/${b}`, { replicationGroup: "no spaces allowed" });
    assert.equal(bad.status, 400);
    assert.deepEqual(
      bad.body.error.details.map((d: { field: string }) => d.field),
      ["replicationGroup"],
    );
    assert.equal((await stack.api("PATCH", `replicated-items/${b}`, { colour: "red" })).status, 400);
    assert.equal((await stack.api("PATCH", "replicated-items/nope", { replicationGroup: null })).status, 404);
    const left = await stack.api("PATCH", `replicated-items/${b}`, { replicationGroup: null });
    assert.equal(left.status, 200);
    assert.equal(left.body.replicationGroup, null);
    // A member elsewhere: a group is one route between regions.
    const far = await stack.api("POST", "replicated-items", { ...enableBody("join-3"), targetRegion: "centralus" });
    const mismatch = await stack.api("PATCH", `replicated-items/${far.body.id}`, { replicationGroup: "join-tier" });
    assert.equal(mismatch.status, 409);
    assert.equal(mismatch.body.error.code, "ReplicationGroupRegionMismatch");
    assert.equal(mismatch.body.error.details.itemId, a);
  });

  test("disabling a group member removes the group points it was part of; the others keep their VM points and snapshots", async () => {
    const a = await enable("del-g1", { replicationGroup: "del-tier" });
    const b = await enable("del-g2", { replicationGroup: "del-tier" });
    const t = tag({ scope: "group", group: "del-tier", members: [a, b] });
    const bSnaps: { disk: string; snapshot: string }[] = [];
    for (const id of [a, b]) {
      for (const disk of ["os", "data0"]) {
        const r = await arrive(id, disk, t);
        if (id === b) bSnaps.push({ disk, snapshot: r.snapshot });
      }
    }
    assert.equal((await stack.services.points.listPartition("group|del-tier")).length, 1);
    assert.equal((await stack.api("DELETE", `replicated-items/${a}`)).status, 202);
    assert.deepEqual(await stack.services.points.listPartition("group|del-tier"), []);
    const bItem = (await stack.services.items.get(b))!.item;
    assert.deepEqual(
      (await stack.services.points.listForItem(bItem)).map((p) => [p.id, p.scope]),
      [[t.id, "vm"]],
    );
    for (const s of bSnaps) assert.ok(await snapshotExists(b, s.disk, s.snapshot), `${s.disk} snapshot kept for b's VM point`);
  });

  test("disabling an item removes its recovery points and their snapshots", async () => {
    const id = await enable("rp-del");
    const t = tag();
    const os = await arrive(id, "os", t);
    await arrive(id, "data0", t);
    assert.equal((await stack.api("DELETE", `replicated-items/${id}`)).status, 202);
    assert.deepEqual(await stack.services.points.listPartition(`vm|${id}`), []);
    assert.equal(await snapshotExists(id, "os", os.snapshot), false);
  });

  test("RPO health: Critical without a point for RPO_CRITICAL_MINUTES, Warning when app-consistent points are overdue, both clear", async () => {
    const id = await enable("rp-health", {
      policy: { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 300, appConsistentFrequencyMinutes: 60 },
    });
    await stack.services.items.updateItem(id, (i) => ({ ...i, state: "Protected" }));
    const item = (await stack.services.items.get(id))!.item;
    const seal = (atMs: number) =>
      sealRecoveryPoints({ items: stack.services.items, points: stack.services.points, rpoCriticalMinutes: 60, now: () => new Date(atMs) });
    const health = async () => (await stack.api("GET", `replicated-items/${id}`)).body.health;

    // Two hours after protection began with no point at all: Critical, and app-consistent points are overdue (2 × 60 min).
    const later = Date.parse(item.createdAt) + 121 * 60_000;
    await seal(later);
    let h = await health();
    assert.equal(h.status, "Critical");
    assert.deepEqual(h.issues.map((i: { code: string }) => i.code).sort(), ["AppConsistentPointOverdue", "NoRecentRecoveryPoint"]);

    // A fresh crash-consistent point clears the Critical; the app-consistent warning stays.
    const crash = tag({ time: new Date(later - 60_000).toISOString() });
    await arrive(id, "os", crash);
    await arrive(id, "data0", crash);
    await seal(later);
    h = await health();
    assert.equal(h.status, "Warning");
    assert.deepEqual(
      h.issues.map((i: { code: string }) => i.code),
      ["AppConsistentPointOverdue"],
    );

    // An app-consistent point clears the warning.
    const app = tag({ kind: "app", time: new Date(later - 30_000).toISOString() });
    await arrive(id, "os", app);
    await arrive(id, "data0", app);
    await seal(later);
    h = await health();
    assert.equal(h.status, "Healthy");
    assert.deepEqual(h.issues, []);
  });
});
