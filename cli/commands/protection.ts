// `enable` and `disable`: protect a VM (the agent registration token comes back) and stop protecting it.
import { readFile } from "node:fs/promises";
import { Command } from "commander";
import { printJson as print } from "../format";
import { client, parseDiskOption } from "../options";

export function protectionCommands(program: Command): void {
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

  program
    .command("disable")
    .description("stop protecting a VM and remove its replicas, cache and unused target resources")
    .argument("<itemId>", "a replicated item")
    .option("--json", "print JSON (what this command prints anyway: the API's answer)")
    .action(async (itemId: string, _o: unknown, cmd: Command) => {
      print(await client(cmd).call("DELETE", `replicated-items/${encodeURIComponent(itemId)}`));
    });
}
