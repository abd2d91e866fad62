// `reprotect`, `reprotect-status` and `resync`: turn a committed item around, follow its differential initial replication.
import { Command } from "commander";
import { formatTable, printJson as print } from "../format";
import { client } from "../options";

export function reprotectCommands(program: Command): void {
  program
    .command("reprotect")
    .description(
      "after a committed failover: replicate the VM that now runs back to the other region (same item, direction turned around); prints the agent's token",
    )
    .argument("<itemId>", "a FailoverCommitted item")
    .option("--json", "print the API's answer and return")
    .option("--follow", "after the answer, follow the differential initial replication until the item is Protected")
    .action(async (itemId: string, o: { json?: boolean; follow?: boolean }, cmd: Command) => {
      const api = client(cmd);
      const res = await api.call<{
        id: string;
        state: string;
        direction: string;
        agentRegistration: { token: string; expiresAt: string };
        job: { id: string };
      }>("POST", `replicated-items/${encodeURIComponent(itemId)}/reprotect`, {});
      if (o.json) return print(res);
      console.log(`re-protect ${res.job.id} started: item ${res.id} now replicates ${res.direction} (${res.state})`);
      console.log(`agent registration token (expires ${res.agentRegistration.expiresAt}):\n  ${res.agentRegistration.token}`);
      console.log(`start the agent on the VM that now runs, e.g.\n  site-recovery agent --token ${res.agentRegistration.token} --disk <id>=<path> ...`);
      if (!o.follow) return;
      const { followReprotect } = await import("../reprotect");
      const job = await followReprotect(api, itemId, (line) => console.log(`  ${line}`));
      if (job.state !== "Succeeded" || !job.output || typeof job.output === "string") {
        console.error(`re-protect ${job.runtimeStatus}: ${job.error?.message ?? job.customStatus?.error ?? JSON.stringify(job.output)}`);
        process.exitCode = 1;
        return;
      }
      const out = job.output;
      console.log(
        formatTable(
          ["DISK", "SEED", "SIZE", "SHIPPED", "SHARE"],
          out.disks.map((d) => [
            d.diskId,
            d.seed,
            `${(d.totalBytes / 1024 / 1024).toFixed(0)} MiB`,
            `${(d.transferredBytes / 1024 / 1024).toFixed(1)} MiB`,
            `${((100 * d.transferredBytes) / Math.max(1, d.totalBytes)).toFixed(1)}%`,
          ]),
        ),
      );
      console.log(
        `Protected (${res.direction}) in ${out.durationSeconds.toFixed(1)} s; shipped ${(out.transferredBytes / 1024 / 1024).toFixed(1)} of ${(out.totalBytes / 1024 / 1024).toFixed(0)} MiB`,
      );
    });

  program
    .command("reprotect-status")
    .description("the item's last re-protect: step, seeds, compared/shipped bytes and ETA")
    .argument("<itemId>", "a replicated item")
    .option("--json", "print JSON")
    .action(async (itemId: string, o: { json?: boolean }, cmd: Command) => {
      const { reprotectLine } = await import("../reprotect");
      const job = await client(cmd).call<import("../../shared/contract/responses").ReprotectJob>(
        "GET",
        `replicated-items/${encodeURIComponent(itemId)}/reprotect`,
      );
      if (o.json) return print(job);
      console.log(`re-protect ${job.id} (${job.from} → ${job.to}): ${job.state}`);
      console.log(`  ${reprotectLine(job)}`);
      for (const [d, s] of Object.entries(job.seeds)) console.log(`  ${d}: seeded from ${s.source}${s.note ? ` — ${s.note}` : ""}`);
    });

  program
    .command("resync")
    .description("resynchronize a ResyncRequired item: each waiting disk compares with its replica and ships the blocks that differ")
    .argument("<itemId>", "a ResyncRequired item")
    .action(async (itemId: string, _o: unknown, cmd: Command) => {
      print(await client(cmd).call("POST", `replicated-items/${encodeURIComponent(itemId)}/resync`, {}));
    });
}
