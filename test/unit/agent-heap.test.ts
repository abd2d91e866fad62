// The agent's heap setting as the CLI applies it (cli/early.ts, the first module cli/main.ts loads): a process that
// loads the CLI for the `agent` command keeps V8's young generation at its first size through the loading of every
// module and an allocation-heavy load after it; any other command's process lets it grow (the control that shows the
// check can fail). Set after the modules load, the setting would come too late: they grow the young generation.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";

const CLI_MODULE = join(__dirname, "..", "..", "cli", "main.js");

/** The young generation's peak size (KiB) in a fresh node process that loads the CLI with `args`, then churns objects. */
function youngGenerationKiB(args: string[]): number {
  const script = `
    const v8 = require("node:v8");
    const newSpace = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space").space_size;
    // As the command starts (bin/site-recovery.js requires it; main() is not run here).
    require(${JSON.stringify(CLI_MODULE)});
    let keep = [];
    let peak = newSpace();
    for (let round = 0; round < 300; round++) {
      for (let i = 0; i < 2000; i++) keep.push({ i, list: [i, i + 1], text: "x" + i });
      if (keep.length > 40000) keep = [];
      peak = Math.max(peak, newSpace());
    }
    process.stdout.write(String(Math.round(peak / 1024)));
  `;
  return Number(execFileSync(process.execPath, ["-e", script, "--", ...args], { encoding: "utf8" }));
}

test("the agent command's process keeps the young generation at its first size; another command's grows it", () => {
  const agent = youngGenerationKiB(["--url", "http://localhost:7071", "agent", "--token", "t"]);
  const status = youngGenerationKiB(["--url", "http://localhost:7071", "status"]);
  assert.ok(agent <= 2048, `agent: new space ${agent} KiB`);
  assert.ok(status > 2 * agent, `control: new space ${status} KiB should have grown past ${agent} KiB`);
});
