// `failover` (followed to the end, then a table), `commit` and `test-failover-cleanup`.
import { Command, Option } from "commander";
import { followFailover } from "../follow-failover";
import type { FailoverStatusBody } from "../../shared/contract/responses";
import { formatDuration, formatTable, printJson as print, Style, useColour } from "../format";
import { client, EXIT } from "../options";

export function failoverCommands(program: Command): void {
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
    .action(
      async (
        itemIds: string[],
        o: { group?: string; plan?: string; type: string; point?: string; testNetwork?: string; wait: boolean; json?: boolean },
        cmd: Command,
      ) => {
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
            out.vms.map((v) => [
              v.vm,
              v.targetVm.name,
              v.targetVm.privateIp,
              st.status(v.targetVm.powerState),
              v.recoveryPoint.id,
              v.recoveryPoint.kind,
              v.recoveryPoint.time,
              formatDuration(v.dataLossWindowSeconds),
            ]),
          ),
        );
        for (const v of out.vms) if (v.note) console.log(`note (${v.vm}): ${v.note}`);
        console.log(`RTO ${out.rtoSeconds.toFixed(1)} s`);
      },
    );

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
}
