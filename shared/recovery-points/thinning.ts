// Which recovery points to keep: every point for a recent window, then fewer and fewer, up to the retention.

export interface PointTime {
  id: string;
  /** Source time of the point's tag, ms since epoch. */
  timeMs: number;
  kind: "crash" | "app";
}

export interface ThinningPolicy {
  recoveryPointRetentionHours: number;
  crashConsistentFrequencySeconds: number;
}

export interface Tier {
  /** Points younger than this (ms) fall in this tier. */
  untilAgeMs: number;
  /** One point kept per bucket of this many ms; 0 keeps every point. */
  bucketMs: number;
}

const MIN = 60_000;
const HOUR = 60 * MIN;

/**
 * ASR's thinning (every point for 2 hours, then one an hour), made finer for cadences under ASR's 5 minutes
 * (every point for 15 minutes, then one per 5 minutes to 2 hours) and coarser past a day (one per 6 hours),
 * so that a 15-day retention keeps at most about 200 snapshots per disk whatever the cadence.
 */
export function thinningTiers(policy: ThinningPolicy): Tier[] {
  const retention = policy.recoveryPointRetentionHours * HOUR;
  const recent: Tier[] =
    policy.crashConsistentFrequencySeconds < 300
      ? [
          { untilAgeMs: 15 * MIN, bucketMs: 0 },
          { untilAgeMs: 2 * HOUR, bucketMs: 5 * MIN },
        ]
      : [{ untilAgeMs: 2 * HOUR, bucketMs: 0 }];
  const tiers = [...recent, { untilAgeMs: 24 * HOUR, bucketMs: HOUR }, { untilAgeMs: Infinity, bucketMs: 6 * HOUR }];
  // Cut at the retention: nothing older is kept.
  const out: Tier[] = [];
  for (const t of tiers) {
    out.push({ ...t, untilAgeMs: Math.min(t.untilAgeMs, retention) });
    if (t.untilAgeMs >= retention) break;
  }
  return out;
}

/**
 * The ids to keep. Within a bucket the earliest app-consistent point wins, else the earliest point: the earliest,
 * so that a point once kept is not replaced by newer arrivals in its bucket.
 */
export function pointsToKeep(points: PointTime[], nowMs: number, policy: ThinningPolicy): Set<string> {
  const tiers = thinningTiers(policy);
  const keep = new Set<string>();
  const buckets = new Map<string, PointTime>();
  for (const p of points) {
    const age = nowMs - p.timeMs;
    const tierIndex = tiers.findIndex((t) => age < t.untilAgeMs);
    if (tierIndex < 0) continue; // past the retention
    const tier = tiers[tierIndex]!;
    if (tier.bucketMs === 0) {
      keep.add(p.id);
      continue;
    }
    const key = `${tierIndex}:${Math.floor(p.timeMs / tier.bucketMs)}`;
    const held = buckets.get(key);
    const better = !held || (p.kind === "app" && held.kind !== "app") || (p.kind === held.kind && p.timeMs < held.timeMs);
    if (better) buckets.set(key, p);
  }
  for (const p of buckets.values()) keep.add(p.id);
  return keep;
}
