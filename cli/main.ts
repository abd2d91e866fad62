// The `site-recovery` command: runs the local stack and talks to the HTTP API of a local or deployed app.
import { readFile } from "node:fs/promises";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { ApiCallError, ApiClient } from "../shared/contract/client";
import { agentCommand } from "./agent";
import { followFailover } from "./follow-failover";
import { type FailoverStatusBody } from "../shared/contract/responses";
import { formatDuration, formatTable, Style, useColour } from "./format";
import { operatorCommands } from "./operators";

export { formatTable } from "./format";

/**
 * Exit codes scripts can rely on: 0 done; 1 the service refused the request or the operation failed (a failover that
 * ended Failed); 2 the command line is wrong; 3 the service cannot be reached or its storage is unavailable (try
 * again); 4 what was named does not exist (404).
 */
export const EXIT = { ok: 0, failed: 1, usage: 2, unavailable: 3, notFound: 4 } as const;

const SIZE_UNITS: Record<string, number> = { "": 1, b: 1, k: 1024, kib: 1024, m: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gib: 1024 ** 3, t: 1024 ** 4, tib: 1024 ** 4 };

/** `os=1GiB` → { id: "os", sizeBytes: 1073741824 }. */
export function parseDiskOption(value: string, previous: { id: string; sizeBytes: number }[] = []) {
  const m = /^([^=]+)=(\d+)\s*([a-zA-Z]*)$/.exec(value.trim());
  const unit = m ? SIZE_UNITS[m[3]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new InvalidArgumentError(`expected <diskId>=<size>, e.g. os=1GiB or data0=4096MiB`);
  return [...previous, { id: m[1]!, sizeBytes: Number(m[2]) * unit }];
}

/** An option parser for a whole number from 1 to `max`. */
function positiveInt(flag: string, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1 || n > max) throw new InvalidArgumentError(`${flag} takes a whole number from 1 to ${max}`);
    return n;
  };
}

interface GlobalOptions {
  url: string;
  key?: string;
}

function client(cmd: Command): ApiClient {
  const o = cmd.optsWithGlobals<GlobalOptions>();
  return new ApiClient(o.url, o.key);
}

const print = (v: unknown) => console.log(JSON.stringify(v, null, 2));

export function buildProgram(): Command {
  const program = new Command("site-recovery")
    .description("Disaster recovery for Azure VMs: replicate to another region, fail over from any recovery point.")
    .addOption(new Option("--url <url>", "the site-recovery service").env("SITE_RECOVERY_URL").default("http://localhost:7071"))
    .addOption(new Option("--key <key>", "function key of a deployed app").env("SITE_RECOVERY_KEY"))
    .showHelpAfterError();

  program
    .command("start")
    .description("run the local stack: embedded Azurite and the local Functions host on :7071")
    .action(async () => {
      const { runLocalStack } = await import("../local/start");
      await runLocalStack();
    });

  program
    .command("enable")
    .description("protect a VM: create target resources, replica disks and the cache; prints the agent's registration token")
    .option("--file <path>", "the enable request as JSON (see README); other options are then ignored")
    .option("--name <vm>", "VM name")
    .option("--region <region>", "source region, e.g. eastus")
    .option("--resource-group <rg>", "source resource group")
    .option("--size <size>", "VM size", "Standard_D2s_v5")
    .option("--vnet <vnet>", "source virtual network")
    .option("--subnet <subnet>", "source subnet")
    .option("--ip <address>", "the VM's private IP, kept at failover when free")
    .option("--availability-set <name>", "source availability set")
    .option("--disk <id=size>", "a disk, OS disk first (repeat): os=1GiB data0=4GiB", parseDiskOption)
    .option("--target-region <region>", "target region, e.g. westus")
    .option("--group <name>", "replication group (multi-VM consistency)")
    .option("--json", "print JSON (what this command prints anyway: the API's answer)")
    .action(async (o: Record<string, string | undefined> & { disk?: { id: string; sizeBytes: number }[] }, cmd: Command) => {
      const body = o.file
        ? (JSON.parse(await readFile(o.file, "utf8")) as unknown)
        : {
            vm: {
              name: o.name,
              region: o.region,
              resourceGroup: o.resourceGroup,
              size: o.size,
              network: { vnet: o.vnet, subnet: o.subnet, ...(o.ip ? { privateIp: o.ip } : {}) },
              ...(o.availabilitySet ? { availabilitySet: o.availabilitySet } : {}),
              disks: o.disk ?? [],
            },
            targetRegion: o.targetRegion,
            ...(o.group ? { replicationGroup: o.group } : {}),
          };
      print(await client(cmd).call("POST", "replicated-items", body));
    });

  operatorCommands(program, client);

  program
    .command("disable")
    .description("stop protecting a VM and remove its replicas, cache and unused target resources")
    .argument("<itemId>", "a replicated item")
    .option("--json", "print JSON (what this command prints anyway: the API's answer)")
    .action(async (itemId: string, _o: unknown, cmd: Command) => {
      print(await client(cmd).call("DELETE", `replicated-items/${encodeURIComponent(itemId)}`));
    });

  program
    .command("failover")
    .description("fail VMs over into the target region and follow the progress (a test failover leaves replication running)")
    .argument("[itemIds...]", "replicated items (a replication group's members all together)")
    .option("--group <name>", "a whole replication group")
    .option("--plan <planId>", "a recovery plan: its groups in order")
    .addOption(new Option("--type <type>", "test | planned | unplanned").choices(["test", "planned", "unplanned"]).makeOptionMandatory())
    .option("--point <choice>", "latest | latest-processed | latest-app-consistent | <recovery point id> (default: latest for planned, else latest-processed)")
    .option("--test-network <vnet>", "test failover: the isolated vnet in the target resource group")
    .option("--no-wait", "print the check-status payload and return")
    .option("--json", "no live lines: print the final status (runtimeStatus, customStatus, output) as JSON")
    .action(async (itemIds: string[], o: { group?: string; plan?: string; type: string; point?: string; testNetwork?: string; wait: boolean; json?: boolean }, cmd: Command) => {
      const api = client(cmd);
      const body = {
        ...(itemIds.length ? { itemIds } : {}),
        ...(o.group ? { groupId: o.group } : {}),
        ...(o.plan ? { planId: o.plan } : {}),
        type: o.type,
        ...(o.point ? { recoveryPoint: o.point } : {}),
        ...(o.testNetwork ? { testNetwork: o.testNetwork } : {}),
      };
      const started = await api.call<{ id: string }>("POST", "failovers", body);
      if (!o.wait) return print(started);
      if (o.json) {
        const done = await followFailover(api, started.id, () => undefined, { pollMs: 250 });
        print(done);
        if (done.runtimeStatus !== "Completed") process.exitCode = EXIT.failed;
        return;
      }
      const st = new Style(useColour());
      console.log(`failover ${started.id} started (${o.type})`);
      const st0 = Date.now();
      const shown = new Map<string, string>();
      const stamp = () => st.paint(`+${((Date.now() - st0) / 1000).toFixed(1).padStart(5)}s`, "grey");
      // One line each time the failover's step or a VM's step changes.
      const onStatus = (_line: string, s: FailoverStatusBody) => {
        const c = s.customStatus;
        const overall = c ? `${c.stage ? `[group ${c.stage.index}/${c.stage.count}] ` : ""}${c.step}` : s.runtimeStatus;
        if (shown.get("") !== overall) {
          shown.set("", overall);
          console.log(`  ${stamp()}  ${st.paint("failover", "bold")}  ${st.status(overall)}`);
        }
        for (const v of Object.values(c?.vms ?? {})) {
          const text = `${v.step}${v.disks ? ` (${v.disks})` : ""}${v.privateIp ? ` ip ${v.privateIp}` : ""}`;
          if (shown.get(v.vm) === text) continue;
          shown.set(v.vm, text);
          console.log(`  ${stamp()}  ${v.vm.padEnd(8)}  ${st.status(text)}`);
        }
      };
      const done = await followFailover(api, started.id, onStatus, { pollMs: 250 });
      if (done.runtimeStatus !== "Completed" || !done.output || typeof done.output === "string") {
        console.error(`failover ${done.runtimeStatus}: ${done.customStatus?.error ?? JSON.stringify(done.output)}`);
        process.exitCode = EXIT.failed;
        return;
      }
      const out = done.output;
      console.log(
        formatTable(
          ["VM", "RUNS AS", "IP", "POWER", "RECOVERY POINT", "KIND", "POINT TIME", "DATA LOSS"],
          out.vms.map((v) => [v.vm, v.targetVm.name, v.targetVm.privateIp, st.status(v.targetVm.powerState), v.recoveryPoint.id, v.recoveryPoint.kind, v.recoveryPoint.time, formatDuration(v.dataLossWindowSeconds)]),
        ),
      );
      for (const v of out.vms) if (v.note) console.log(`note (${v.vm}): ${v.note}`);
      console.log(`RTO ${out.rtoSeconds.toFixed(1)} s`);
    });

  program
    .command("commit")
    .description("make a failover final: the item's recovery points are deleted")
    .argument("<itemId>", "a failed-over item")
    .option("--json", "print JSON (what this command prints anyway: the API's answer)")
    .action(async (itemId: string, _o: unknown, cmd: Command) => {
      print(await client(cmd).call("POST", `replicated-items/${encodeURIComponent(itemId)}/commit`));
    });

  program
    .command("test-failover-cleanup")
    .description("remove a test failover's VM, NIC and disks; the item stays protected")
    .argument("<itemId>", "an item in test failover")
    .option("--json", "print JSON (what this command prints anyway: the API's answer)")
    .action(async (itemId: string, _o: unknown, cmd: Command) => {
      print(await client(cmd).call("POST", `replicated-items/${encodeURIComponent(itemId)}/test-failover-cleanup`));
    });

  program
    .command("reprotect")
    .description("after a committed failover: replicate the VM that now runs back to the other region (same item, direction turned around); prints the agent's token")
    .argument("<itemId>", "a FailoverCommitted item")
    .option("--json", "print the API's answer and return")
    .option("--follow", "after the answer, follow the differential initial replication until the item is Protected")
    .action(async (itemId: string, o: { json?: boolean; follow?: boolean }, cmd: Command) => {
      const api = client(cmd);
      const res = await api.call<{ id: string; state: string; direction: string; agentRegistration: { token: string; expiresAt: string }; job: { id: string } }>(
        "POST",
        `replicated-items/${encodeURIComponent(itemId)}/reprotect`,
        {},
      );
      if (o.json) return print(res);
      console.log(`re-protect ${res.job.id} started: item ${res.id} now replicates ${res.direction} (${res.state})`);
      console.log(`agent registration token (expires ${res.agentRegistration.expiresAt}):\n  ${res.agentRegistration.token}`);
      console.log(`start the agent on the VM that now runs, e.g.\n  site-recovery agent --token ${res.agentRegistration.token} --disk <id>=<path> ...`);
      if (!o.follow) return;
      const { followReprotect } = await import("./reprotect");
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
          out.disks.map((d) => [d.diskId, d.seed, `${(d.totalBytes / 1024 / 1024).toFixed(0)} MiB`, `${(d.transferredBytes / 1024 / 1024).toFixed(1)} MiB`, `${((100 * d.transferredBytes) / Math.max(1, d.totalBytes)).toFixed(1)}%`]),
        ),
      );
      console.log(`Protected (${res.direction}) in ${out.durationSeconds.toFixed(1)} s; shipped ${(out.transferredBytes / 1024 / 1024).toFixed(1)} of ${(out.totalBytes / 1024 / 1024).toFixed(0)} MiB`);
    });

  program
    .command("reprotect-status")
    .description("the item's last re-protect: step, seeds, compared/shipped bytes and ETA")
    .argument("<itemId>", "a replicated item")
    .option("--json", "print JSON")
    .action(async (itemId: string, o: { json?: boolean }, cmd: Command) => {
      const { reprotectLine } = await import("./reprotect");
      const job = await client(cmd).call<import("../shared/contract/responses").ReprotectJob>("GET", `replicated-items/${encodeURIComponent(itemId)}/reprotect`);
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

  agentCommand(program);

  program
    .command("demo")
    .description("a complete DR drill on a throwaway local stack: protect a group of two VMs, live writes, test and unplanned failover, every disk verified")
    .option("--disk-mib <n>", "size of each of the 4 disks, MiB", positiveInt("--disk-mib", 4096), 64)
    .option("--seconds <s>", "length of the live workload before the test failover", positiveInt("--seconds", 3600), 30)
    .option("--mbps <n>", "workload rate over all disks, MB/s", positiveInt("--mbps", 100), 4)
    .option("--report <path>", "where the JSON report goes", undefined)
    .option("--verbose", "also print the host's and the agents' log lines")
    .action(async (o: { diskMib: number; seconds: number; mbps: number; report?: string; verbose?: boolean }) => {
      const { runDemo, DEFAULT_REPORT_PATH } = await import("./demo");
      const report = await runDemo({ diskMiB: o.diskMib, seconds: o.seconds, mbps: o.mbps, reportPath: o.report ?? DEFAULT_REPORT_PATH, verbose: o.verbose ?? false });
      // The storage clients keep sockets alive; the drill is over.
      process.exit(report.ok ? 0 : 1);
    });

  program
    .command("bench")
    .description("measure against the local stack (not a test): writes JSON under bench/results and prints a table")
    .argument("<name>", "replication | recovery-points | failover | nbd | reprotect")
    .option("--seconds <s>", "length of each measured phase", (v) => Number(v), 30)
    .action(async (name: string, o: { seconds: number }) => {
      const { runBenchmark } = await import("../bench");
      await runBenchmark(name, { seconds: o.seconds });
      // The benchmark's clients keep sockets alive; its work is done.
      process.exit(0);
    });

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
