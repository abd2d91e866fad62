// The `site-recovery` command: runs the local stack and talks to the HTTP API of a local or deployed app. One module per
// group of commands under commands/, their shared options in options.ts, their output in format.ts.
// First: the agent's heap settings, before the rest loads.
import "./early";
import { Command, CommanderError, Option } from "commander";
import { ApiCallError } from "../shared/contract/client";
import { agentCommand } from "./commands/agent";
import { failoverCommands } from "./commands/failover";
import { drillCommands, localCommands } from "./commands/local";
import { protectionCommands } from "./commands/protection";
import { reprotectCommands } from "./commands/reprotect";
import { operatorCommands } from "./commands/operators";
import { client, EXIT } from "./options";

export { EXIT, parseDiskOption } from "./options";

export function buildProgram(): Command {
  const program = new Command("site-recovery")
    .description("Disaster recovery for Azure VMs: replicate to another region, fail over from any recovery point.")
    .addOption(new Option("--url <url>", "the site-recovery service").env("SITE_RECOVERY_URL").default("http://localhost:7071"))
    .addOption(new Option("--key <key>", "function key of a deployed app").env("SITE_RECOVERY_KEY"))
    .showHelpAfterError();
  localCommands(program);
  protectionCommands(program);
  operatorCommands(program, client);
  failoverCommands(program);
  reprotectCommands(program);
  agentCommand(program);
  drillCommands(program);
  return program;
}

export async function main(argv = process.argv): Promise<void> {
  const program = buildProgram();
  // Usage errors exit 2 (commander's own default is 1, the code of a refused request).
  program.exitOverride();
  for (const c of program.commands) c.exitOverride();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode === 0 ? EXIT.ok : EXIT.usage;
      return;
    }
    if (e instanceof ApiCallError) {
      console.error(`error ${e.status || ""} ${e.code}: ${e.message}`.replace("  ", " "));
      if (e.details !== undefined) console.error(JSON.stringify(e.details, null, 2));
      process.exitCode = e.status === 0 || e.status === 503 ? EXIT.unavailable : e.status === 404 ? EXIT.notFound : EXIT.failed;
      return;
    }
    throw e;
  }
}

if (require.main === module) void main();
