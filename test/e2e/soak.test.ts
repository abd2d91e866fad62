// The chaos soak, short: a fixed seed, a light workload, seeded faults against a local stack in real processes; every sealed point, failover disk and Protected replica must equal the byte model. Every wait is bounded: a stuck stack is a failed report, not a hang.
import { test } from "node:test";
import assert from "node:assert/strict";
import { FAULT_KINDS, formatReport, runSoak } from "../../soak";

test(
  "a short soak with a fixed seed finds no divergence, and did verify points and failovers under faults of several kinds",
  { timeout: 240_000 },
  async () => {
    const lines: string[] = [];
    const started = Date.now();
    const report = await runSoak({
      minutes: 1,
      seed: 20261206,
      diskMiB: 8,
      // Light enough that a loaded 2-core machine keeps up: the final convergence takes seconds, not minutes.
      bytesPerSecond: 16 * 1024,
      quietEndMs: 15_000,
      convergenceEvery: 0,
      testFailoverEvery: 3,
      convergenceTimeoutMs: 60_000,
      failoverTimeoutMs: 60_000,
      log: (l) => lines.push(l),
    });
    const printed = `${formatReport(report)}\n${lines.join("\n")}`;
    assert.deepEqual(report.divergences, [], printed);
    assert.ok(report.ok, printed);
    assert.ok(report.pointsVerified > 0 && report.pointDisksVerified > 0, `no recovery point verified: ${printed}`);
    assert.ok(report.failoversVerified >= 2, `failover VMs verified (the planned failover's two at least): ${printed}`);
    assert.ok((report.faults["test-failover"] ?? 0) >= 1, `no test failover ran: ${printed}`);
    assert.ok(report.convergenceChecks >= 1, printed);
    assert.ok(report.writesAcknowledged > 0, printed);
    const kinds = FAULT_KINDS.filter((k) => (report.faults[k] ?? 0) > 0);
    assert.ok(kinds.length >= 3, `faults of ${kinds.length} kinds injected (${kinds.join(", ")}): ${printed}`);
    console.log(`soak test: ${((Date.now() - started) / 1000).toFixed(1)} s\n${formatReport(report)}`);
  },
);
