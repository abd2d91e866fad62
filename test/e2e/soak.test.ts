// The chaos soak, short: two minutes of seeded faults against a local stack in real processes; every sealed point, failover disk and Protected replica must equal the byte model.
import { test } from "node:test";
import assert from "node:assert/strict";
import { formatReport, runSoak } from "../../soak";

test("a two-minute soak with a fixed seed finds no divergence: every point, failover disk and Protected replica equals the model", { timeout: 300_000 }, async () => {
  const lines: string[] = [];
  const report = await runSoak({ minutes: 1.25, seed: 20261206, diskMiB: 8, log: (l) => lines.push(l) });
  const printed = formatReport(report);
  assert.ok(report.ok, `${printed}\n${lines.join("\n")}`);
  assert.deepEqual(report.divergences, []);
  assert.ok(report.pointsVerified > 0, `points verified: ${printed}`);
  assert.ok(report.failoversVerified > 0, `failovers verified (the planned failover at least): ${printed}`);
  assert.ok(report.convergenceChecks >= 1, printed);
  assert.ok(Object.values(report.faults).reduce((a, b) => a + b, 0) >= 4, `faults injected: ${printed}`);
});
