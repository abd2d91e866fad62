// The ChurnBeyondCapacity rule over sample series: raised when the backlog grows at every step of a window, held while
// the lag climbs (at least a quarter of the time the window spans) with something waiting, cleared otherwise.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { HistorySample } from "../../shared/operations/history";
import { churnAlertStands } from "../../shared/operations/monitoring";

const MiB = 1048576;
const T0 = Date.parse("2026-12-06T12:00:00Z");

/** Samples every 5 s from [backlog MiB, lag s] pairs. */
function series(points: [number, number][]): HistorySample[] {
  return points.map(([mib, lag], i) => ({
    time: new Date(T0 + i * 5000).toISOString(),
    rpoSeconds: null,
    lagSeconds: lag,
    backlogBytes: mib * MiB,
    backlogBatches: mib / 4,
    spoolBytes: 0,
    appliedBytes: i * 100 * MiB,
    churnBytesPerSecond: null,
  }));
}

/** Whether the alert stands after each sample. */
const standing = (s: HistorySample[]) => s.map((_, i) => churnAlertStands(s.slice(0, i + 1)));

test("a throttled overload (the rpo benchmark's: the backlog level, the lag climbing 0.37 s per s) keeps the alert from its raise to the end", () => {
  const s = series([
    [0, 0],
    [4, 1],
    [8, 2.8],
    [12, 4.6],
    [16, 6.5],
    [16, 8.7],
    [20, 10.2],
    [16, 12],
    [16, 14.2],
    [12, 16.1],
    [16, 18],
    [16, 19.8],
    [16, 22],
  ]);
  assert.deepEqual(standing(s), [false, false, false, true, true, true, true, true, true, true, true, true, true]);
});

test("the alert clears when the lag only wobbles or falls, or nothing waits", () => {
  // Raised by growth, then the pipeline keeps up: a level backlog whose lag wobbles around 2 s.
  assert.equal(
    churnAlertStands(
      series([
        [4, 1],
        [8, 2],
        [12, 3],
        [16, 4],
        [16, 2],
        [16, 3],
        [16, 2],
        [16, 3],
      ]),
    ),
    false,
  );
  // Catching up: the lag falls.
  const falling = series([
    [4, 2],
    [8, 6],
    [12, 10],
    [16, 14],
    [14, 12],
    [10, 8],
    [6, 5],
  ]);
  assert.deepEqual(standing(falling), [false, false, false, true, true, false, false]);
  // Applied: nothing waits, whatever the lag said last.
  assert.equal(
    churnAlertStands(
      series([
        [4, 2],
        [8, 6],
        [12, 10],
        [16, 14],
        [0, 18],
      ]),
    ),
    false,
  );
  // A climbing lag alone does not raise it: only a growing backlog does.
  assert.equal(
    churnAlertStands(
      series([
        [16, 2],
        [16, 6],
        [16, 10],
        [16, 14],
        [16, 18],
      ]),
    ),
    false,
  );
});
