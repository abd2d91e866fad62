// `start`, `demo` and `bench`: the local stack, the DR drill on a throwaway stack, the benchmarks.
import { Command } from "commander";
import { positiveInt } from "../options";

/** `start`: the local stack. */
export function localCommands(program: Command): void {
  program
    .command("start")
    .description("run the local stack: embedded Azurite and the local Functions host on :7071")
    .action(async () => {
      const { runLocalStack } = await import("../../local/start");
      await runLocalStack();
    });
}

/** `demo`, `soak` and `bench`: they start their own throwaway stack. */
export function drillCommands(program: Command): void {
  program
    .command("demo")
    .description("a complete DR drill on a throwaway local stack: protect a group of two VMs, live writes, test and unplanned failover, every disk verified")
    .option("--disk-mib <n>", "size of each of the 4 disks, MiB", positiveInt("--disk-mib", 4096), 64)
    .option("--seconds <s>", "length of the live workload before the test failover", positiveInt("--seconds", 3600), 30)
    .option("--mbps <n>", "workload rate over all disks, MB/s", positiveInt("--mbps", 100), 4)
    .option("--report <path>", "where the JSON report goes", undefined)
    .option("--verbose", "also print the host's and the agents' log lines")
    .action(async (o: { diskMib: number; seconds: number; mbps: number; report?: string; verbose?: boolean }) => {
      const { runDemo, DEFAULT_REPORT_PATH } = await import("../demo");
      const report = await runDemo({
        diskMiB: o.diskMib,
        seconds: o.seconds,
        mbps: o.mbps,
        reportPath: o.report ?? DEFAULT_REPORT_PATH,
        verbose: o.verbose ?? false,
      });
      // The storage clients keep sockets alive; the drill is over.
      process.exit(report.ok ? 0 : 1);
    });

  program
    .command("soak")
    .description(
      "a chaos soak on a local stack in real processes: four VMs under a seeded workload, seeded faults, every point and failover disk checked against a byte model",
    )
    .option("--minutes <n>", "how long faults are injected", (v) => Number(v), 30)
    .option("--seed <s>", "the seed of the workload and of the fault schedule (printed; the same seed replays the same schedule)", (v) => Number(v))
    .option("--disk-mib <n>", "size of each of the 8 disks, MiB", positiveInt("--disk-mib", 1024), 16)
    .option("--hosts <n>", "Function App instances (host processes)", positiveInt("--hosts", 3), 2)
    .option("--keep", "keep the stack's data and logs after a clean run too")
    .option("--faults <kinds>", "only these fault kinds, comma-separated (default: every kind)", (v) => v.split(",").filter(Boolean))
    .action(async (o: { minutes: number; seed?: number; diskMib: number; hosts: number; keep?: boolean; faults?: string[] }) => {
      const { runSoak, formatReport, FAULT_KINDS } = await import("../../soak");
      const unknown = (o.faults ?? []).filter((k) => !(FAULT_KINDS as readonly string[]).includes(k));
      if (unknown.length > 0) {
        console.error(`unknown fault kind(s) ${unknown.join(", ")}; the kinds are ${FAULT_KINDS.join(", ")}`);
        process.exit(2);
      }
      const faults = o.faults as (typeof FAULT_KINDS)[number][] | undefined;
      const seed = o.seed ?? Math.floor(Math.random() * 2 ** 31);
      console.log(`soak: seed ${seed}, ${o.minutes} min (reproduce: npm run soak -- --minutes ${o.minutes} --seed ${seed})`);
      const report = await runSoak({
        minutes: o.minutes,
        seed,
        diskMiB: o.diskMib,
        hosts: o.hosts,
        keep: o.keep ?? false,
        ...(faults ? { faults } : {}),
        log: (l) => console.log(l),
      });
      console.log(formatReport(report));
      // The storage clients keep sockets alive; the soak is over.
      process.exit(report.ok ? 0 : 1);
    });

  program
    .command("bench")
    .description("measure against the local stack (not a test): writes JSON under bench/results and prints a table")
    .argument("<name>", "replication | recovery-points | failover | nbd | reprotect")
    .option("--seconds <s>", "length of each measured phase", (v) => Number(v), 30)
    .action(async (name: string, o: { seconds: number }) => {
      const { runBenchmark } = await import("../../bench");
      await runBenchmark(name, { seconds: o.seconds });
      // The benchmark's clients keep sockets alive; its work is done.
      process.exit(0);
    });
}
