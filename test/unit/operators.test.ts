// Pure pieces of the operator surface: colour only on a terminal, bars and durations, history thinning, the webhook signature, the vendored chart library.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { formatDuration, formatTable, progressBar, Style, useColour } from "../../cli/format";
import { samplesToKeep } from "../../shared/operations/history";
import { signAlert } from "../../shared/operations/alerts";

const ROOT = join(__dirname, "..", "..", "..");

test("colours only on a terminal; NO_COLOR turns them off, FORCE_COLOR on", () => {
  assert.equal(useColour({ isTTY: true }, {}), true);
  assert.equal(useColour({ isTTY: false }, {}), false);
  assert.equal(useColour({}, {}), false);
  assert.equal(useColour({ isTTY: true }, { NO_COLOR: "1" }), false);
  assert.equal(useColour({ isTTY: false }, { FORCE_COLOR: "1" }), true);
  assert.equal(new Style(false).status("Critical"), "Critical");
  assert.equal(new Style(true).status("Critical"), "\x1b[31mCritical\x1b[0m");
});

test("tables pad by what is visible, not by colour codes", () => {
  const s = new Style(true);
  const t = formatTable(
    ["A", "B"],
    [
      [s.status("Healthy"), "x"],
      ["Warning!", "y"],
    ],
  ).split("\n");
  assert.equal(t[1]!.replace(/\x1b\[[0-9;]*m/g, ""), "Healthy   x");
  assert.equal(t[2], "Warning!  y");
});

test("progress bars and durations read like a person would say them", () => {
  assert.equal(progressBar(0, 10), "[░░░░░░░░░░]   0.0%");
  assert.equal(progressBar(50, 10, false), "[#####-----]  50.0%");
  assert.equal(progressBar(120, 4), "[████] 100.0%");
  assert.deepEqual([3.25, 42, 600, 3 * 3600 + 300, 3 * 86400].map(formatDuration), ["3.3 s", "42 s", "10 min", "3 h 5 min", "3 d 0 h"]);
  assert.equal(formatDuration(null), "-");
});

test("history keeps every sample for 2 hours, one per 5 minutes to a day, one an hour to 15 days, nothing older", () => {
  const now = Date.UTC(2026, 0, 20);
  const minute = 60_000;
  const times = Array.from({ length: 16 * 24 * 60 }, (_, k) => now - k * minute); // one a minute for 16 days
  const keep = samplesToKeep(times, now);
  const inRange = (from: number, to: number) => [...keep].filter((t) => now - t >= from * minute && now - t < to * minute).length;
  assert.equal(inRange(0, 120), 120);
  assert.ok(Math.abs(inRange(120, 24 * 60) - 264) <= 1, String(inRange(120, 24 * 60)));
  assert.ok(Math.abs(inRange(24 * 60, 15 * 24 * 60) - 14 * 24) <= 1);
  assert.equal(inRange(15 * 24 * 60, 17 * 24 * 60), 0);
  assert.ok(keep.size < 730, `bounded: ${keep.size}`);
});

test("the webhook signature is HMAC-SHA256 over '<timestamp>.<body>', as the README tells receivers to check it", () => {
  const expected = createHmac("sha256", "s3cret").update('1700000000.{"a":1}').digest("hex");
  assert.equal(signAlert("s3cret", "1700000000", '{"a":1}'), `sha256=${expected}`);
});

test("the vendored uPlot under web/vendor is the one package-lock.json installs", () => {
  for (const f of ["uPlot.iife.min.js", "uPlot.min.css"]) {
    assert.ok(
      readFileSync(join(ROOT, "web", "vendor", f)).equals(readFileSync(join(ROOT, "node_modules", "uplot", "dist", f))),
      `${f} matches node_modules/uplot`,
    );
  }
});
