// The chaos soak, short: a fixed seed, a light workload, seeded faults (the four that reach into the product's protocols among them) against a local stack in real processes; every sealed point, failover disk and Protected replica must equal the byte model. Every wait is bounded: a stuck stack is a failed report, not a hang.
import { test } from "node:test";
import assert from "node:assert/strict";
import { FAULT_KINDS, formatReport, runSoak } from "../../soak";

/** The faults that reach into the product's protocols: each must be injected, take effect, and be verified after. */
const PROTOCOL_FAULTS = ["sas-expired-early", "batch-corrupt", "group-stall", "spool-overflow"] as const;

test(
  "a short soak with a fixed seed finds no divergence; a SAS expired early, a corrupt batch, a member stalled in prepare and a spool overflow each took effect and were verified",
  { timeout: 300_000 },
  async () => {
    const lines: string[] = [];
    const started = Date.now();
    const report = await runSoak({
      minutes: 1,
      seed: 20261206,
      diskMiB: 8,
      // Light enough that a loaded 2-core machine keeps up: the final convergence takes seconds, not minutes.
      bytesPerSecond: 16 * 1024,
      // A run injects every enabled kind at least once, however slow the machine.
      faults: [...PROTOCOL_FAULTS],
      quietEndMs: 15_000,
      convergenceEvery: 0,
      testFailoverEvery: 3,
      convergenceTimeoutMs: 60_000,
      failoverTimeoutMs: 60_000,
      reprotectCycle: false,
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
    for (const kind of PROTOCOL_FAULTS) {
      const o = report.outcomes[kind];
      assert.ok(o && o.took > 0, `${kind}: injected ${o?.injected ?? 0}, took effect ${o?.took ?? 0}: ${printed}`);
      assert.ok(o.verified > 0, `${kind}: no point or convergence check verified the bytes after it: ${printed}`);
    }
    const kinds = FAULT_KINDS.filter((k) => (report.faults[k] ?? 0) > 0);
    assert.deepEqual(kinds, [...PROTOCOL_FAULTS], `faults of ${kinds.length} kinds injected (${kinds.join(", ")}): ${printed}`);
    console.log(`soak test: ${((Date.now() - started) / 1000).toFixed(1)} s\n${formatReport(report)}`);
  },
);
