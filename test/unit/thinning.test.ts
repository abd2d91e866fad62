// Thinning keeps every recent point, then one per bucket, bounded whatever the cadence and retention.
import { test } from "node:test";
import assert from "node:assert/strict";
import { pointsToKeep, thinningTiers, type PointTime } from "../../shared/recovery-points/thinning";

const MIN = 60_000;
const HOUR = 60 * MIN;
const now = Date.UTC(2026, 10, 25, 12, 0, 0);

function every(cadenceMs: number, spanMs: number, appEvery = 0): PointTime[] {
  const out: PointTime[] = [];
  for (let t = now - spanMs, i = 0; t <= now; t += cadenceMs, i++) {
    out.push({ id: `p${i}`, timeMs: t, kind: appEvery && i % appEvery === 0 ? "app" : "crash" });
  }
  return out;
}

test("with ASR's 5-minute cadence every point of the last 2 hours is kept, then one an hour", () => {
  const points = every(5 * MIN, 24 * HOUR);
  const keep = pointsToKeep(points, now, { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 300 });
  const recent = points.filter((p) => now - p.timeMs < 2 * HOUR);
  for (const p of recent) assert.ok(keep.has(p.id));
  const older = points.filter((p) => keep.has(p.id) && now - p.timeMs >= 2 * HOUR);
  // One per clock hour between 2 h and 24 h ago.
  const hours = new Set(older.map((p) => Math.floor(p.timeMs / HOUR)));
  assert.equal(hours.size, older.length);
  assert.ok(older.length >= 21 && older.length <= 23, `${older.length} hourly points`);
  // Nothing past the retention.
  assert.ok(points.filter((p) => now - p.timeMs >= 24 * HOUR).every((p) => !keep.has(p.id)));
});

test("a 10-second cadence keeps every point for 15 minutes, one per 5 minutes to 2 hours", () => {
  const points = every(10_000, 3 * HOUR);
  const keep = pointsToKeep(points, now, { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 10 });
  assert.equal(points.filter((p) => now - p.timeMs < 15 * MIN && keep.has(p.id)).length, 90);
  const mid = points.filter((p) => keep.has(p.id) && now - p.timeMs >= 15 * MIN && now - p.timeMs < 2 * HOUR);
  assert.ok(mid.length >= 20 && mid.length <= 22, `${mid.length}`);
});

test("15 days of 10-second points stay about 200 snapshots or fewer", () => {
  const points = every(10_000, 15 * 24 * HOUR);
  const keep = pointsToKeep(points, now, { recoveryPointRetentionHours: 360, crashConsistentFrequencySeconds: 10 });
  assert.ok(keep.size <= 200, `${keep.size} kept of ${points.length}`);
  assert.ok(keep.size >= 100);
});

test("in a bucket an app-consistent point wins, and a kept point stays kept as time passes", () => {
  const points = every(5 * MIN, 6 * HOUR, 7);
  const policy = { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 300 };
  const keep = pointsToKeep(points, now, policy);
  const hourly = points.filter((p) => keep.has(p.id) && now - p.timeMs >= 2 * HOUR);
  for (const p of hourly) {
    const bucket = points.filter((q) => now - q.timeMs >= 2 * HOUR && Math.floor(q.timeMs / HOUR) === Math.floor(p.timeMs / HOUR));
    if (bucket.some((q) => q.kind === "app")) assert.equal(p.kind, "app");
  }
  // An hour later, with more points, every point kept for a bucket already wholly in the hourly tier is still kept.
  const later = [...points, ...every(5 * MIN, HOUR).map((p) => ({ ...p, id: `n${p.id}`, timeMs: p.timeMs + HOUR }))];
  const keepLater = pointsToKeep(later, now + HOUR, policy);
  const settled = hourly.filter((p) => (Math.floor(p.timeMs / HOUR) + 1) * HOUR <= now - 2 * HOUR);
  assert.ok(settled.length >= 3);
  for (const p of settled) assert.ok(keepLater.has(p.id), p.id);
});

test("tiers stop at the retention", () => {
  assert.deepEqual(thinningTiers({ recoveryPointRetentionHours: 1, crashConsistentFrequencySeconds: 300 }), [{ untilAgeMs: HOUR, bucketMs: 0 }]);
});
