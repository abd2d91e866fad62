// What the agent's process loads: the `site-recovery agent` command (cli/main.js, every module it imports) and the
// agent library load no Azure SDK package — the agent's storage calls are plain REST (agent/cache-client.ts), and the
// SDKs were a fifth of its memory. The control (the service's storage adapter) shows the check can fail.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";

const DIST = join(__dirname, "..", "..");

/** The npm packages (scope/name) a fresh node process has loaded after requiring `modules`. */
function packagesLoadedBy(modules: string[]): string[] {
  const script = `
    for (const m of ${JSON.stringify(modules)}) require(m);
    const names = Object.keys(require.cache)
      .filter((k) => k.includes("/node_modules/"))
      .map((k) => k.split("/node_modules/").pop().split("/"))
      .map((p) => (p[0].startsWith("@") ? p[0] + "/" + p[1] : p[0]));
    process.stdout.write(JSON.stringify([...new Set(names)].sort()));
  `;
  return JSON.parse(execFileSync(process.execPath, ["-e", script], { encoding: "utf8" })) as string[];
}

test("the agent's process (the CLI and the agent library) loads no Azure SDK; the service's storage adapter does", () => {
  const agent = packagesLoadedBy([join(DIST, "cli", "main.js"), join(DIST, "agent", "index.js")]);
  assert.ok(agent.length > 0, "the CLI loads some packages (commander, zod, ...)");
  assert.deepEqual(
    agent.filter((p) => p.startsWith("@azure/")),
    [],
    `loaded: ${agent.join(", ")}`,
  );
  const service = packagesLoadedBy([join(DIST, "shared", "storage", "clients.js")]);
  assert.ok(service.includes("@azure/storage-blob") && service.includes("@azure/storage-queue"), `control loaded: ${service.join(", ")}`);
});
