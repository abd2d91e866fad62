// `site-recovery agent`: runs the agent on a VM — registers with a token once, then scans the given disks (or serves them over NBD and tracks every write) and ships their changes until stopped.
import { Command, InvalidArgumentError, Option } from "commander";
import { Agent, DEFAULT_STATE_DIR, DEFAULT_UPLOAD_CONCURRENCY, type AgentOptions } from "../../agent";
import { isLoopback, parseTcpAddress } from "../../agent/nbd/server";
import type { Heartbeat } from "../../shared/protection/agent-protocol";
import { EXIT } from "../options";

/** `os=/dev/sda` → { id: "os", path: "/dev/sda" } (repeatable). */
export function parseDiskPath(value: string, previous: { id: string; path: string }[] = []) {
  const m = /^([a-z0-9][a-z0-9_-]{0,62})=(.+)$/.exec(value.trim());
  if (!m) throw new InvalidArgumentError("expected <diskId>=<path>, e.g. os=/dev/sda or data0=./data0.img");
  return [...previous, { id: m[1]!, path: m[2]! }];
}

const positiveInt = (what: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`${what} must be a positive whole number`);
  return n;
};

/** `--pre-freeze "fsfreeze -f /data"` → ["fsfreeze", "-f", "/data"]: split on whitespace, run without a shell (no quoting). */
export function parseCommandLine(value: string): string[] {
  const argv = value
    .trim()
    .split(/\s+/)
    .filter((a) => a.length > 0);
  if (argv.length === 0) throw new InvalidArgumentError('expected a command, e.g. "fsfreeze -f /data"');
  return argv;
}

const freezeSeconds = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0 || n > 60) throw new InvalidArgumentError("--freeze-timeout must be above 0 and at most 60 seconds");
  return n;
};

const tcpAddress = (v: string) => {
  try {
    return parseTcpAddress(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
};

/** How a user reaches the exports: where the server listens and a client line per kind of client. */
export function nbdHowTo(exports: string[], at: { socketPath: string; tcp?: { host: string; port: number } }): string[] {
  // The first disk is the OS disk (enable's order), which stays scanned on a real VM: the example names a data disk.
  const first = exports[1] ?? exports[0] ?? "<disk>";
  const tcpHost = at.tcp && at.tcp.host.includes(":") ? `[${at.tcp.host}]` : at.tcp?.host;
  return [
    `serving NBD exports ${exports.join(", ")} on ${at.socketPath}${at.tcp ? ` and tcp ${tcpHost}:${at.tcp.port}` : ""}`,
    `  qemu-io -f raw 'nbd+unix:///${first}?socket=${at.socketPath}'`,
    `  nbd-client -unix ${at.socketPath} -N ${first} /dev/nbd0`,
    ...(at.tcp ? [`  nbdinfo --list nbd://${tcpHost}:${at.tcp.port}`] : []),
  ];
}

const mib = (n: number) => `${(n / 1024 / 1024).toFixed(n < 10 * 1024 * 1024 ? 1 : 0)} MiB`;

/** One line: per disk its phase (initial %, resync, bitmap, or replicating), next seq and spool backlog; then open issues. */
export function progressLine(h: Heartbeat): string {
  const disks = Object.entries(h.disks).map(([id, d]) => {
    const i = d.initialReplication;
    // A resync before the first copy is done is a re-protect's seed: the differential initial replication.
    const phase = d.resync
      ? `${i.complete ? "resync" : "initial (differential)"} ${Math.floor((100 * d.resync.doneBytes) / Math.max(1, d.resync.totalBytes))}%`
      : !i.complete
        ? `initial ${Math.floor((100 * i.doneBytes) / Math.max(1, i.totalBytes))}%`
        : "replicating";
    const mode = d.mode === "bitmap" ? ` · BITMAP (${mib(d.dirtyBytes)} dirty)` : "";
    return `${id}: ${phase} · seq ${d.nextSeq - 1} · backlog ${d.spoolBatches} (${mib(d.spoolBytes)})${mode}`;
  });
  const issues = h.health.issues.map((i) => i.message);
  return [disks.join(" | "), ...(issues.length ? [`${h.health.status}: ${issues.join("; ")}`] : [])].join(" — ");
}

interface AgentCliOptions {
  token?: string;
  disk?: { id: string; path: string }[];
  stateDir: string;
  scanInterval: number;
  spoolMaxMb: number;
  uploadConcurrency: number;
  progressInterval: number;
  preFreeze?: string[];
  postThaw?: string[];
  freezeTimeout: number;
  nbd?: string;
  nbdTcp?: { host: string; port: number };
  scanDisk?: { id: string; path: string }[];
  groupPort?: number;
  groupHost?: string;
  groupAdvertise?: string;
  replace?: boolean;
}

const port = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError("--group-port must be a port number (0: any free port)");
  return n;
};

/** Adds the `agent` subcommand to the program. */
export function agentCommand(program: Command): Command {
  return program
    .command("agent")
    .description(
      "replicate this VM's disks (image files or block devices): register with the token once, then scan them (or, with --nbd, serve them over NBD and track every write) and ship changes until stopped",
    )
    .option("--token <token>", "registration token from enable (first start only: the state directory keeps the registration)")
    .option("--disk <id=path>", "a disk of the item and its image file or block device (repeat)", parseDiskPath)
    .option(
      "--scan-disk <id=path>",
      "with --nbd: a disk that stays scanned beside the NBD exports, e.g. the OS disk (repeat); a quiet scan round then vouches for it at each tag",
      parseDiskPath,
    )
    .addOption(
      new Option("--state-dir <dir>", "registration, progress and spool (keep it across restarts)").env("SITE_RECOVERY_AGENT_STATE").default(DEFAULT_STATE_DIR),
    )
    .option(
      "--scan-interval <seconds>",
      "seconds between scan rounds of the scanned disks; a round in which no disk changed cuts a crash-consistent point (at most every crashConsistentFrequencySeconds)",
      positiveInt("--scan-interval"),
      30,
    )
    .option(
      "--nbd <socket path>",
      "serve every --disk as an NBD export named after its disk id on this Unix socket (mode 0600); every write then goes through the agent, " +
        "and crash-consistent tags (and app-consistent ones with --pre-freeze) are cut at the policy's cadence. The agent holds each image or device exclusively while it serves it",
    )
    .option("--nbd-tcp <[host:]port>", "also serve the exports on TCP (no authentication: loopback by default; a bare port means 127.0.0.1)", tcpAddress)
    .option(
      "--spool-max-mb <mib>",
      "local spool bound; beyond it a disk tracks dirty blocks (bitmap mode) until the spool drains",
      positiveInt("--spool-max-mb"),
      1024,
    )
    .option("--upload-concurrency <n>", "batches uploading at once (each holds one in memory)", positiveInt("--upload-concurrency"), DEFAULT_UPLOAD_CONCURRENCY)
    .option(
      "--pre-freeze <command>",
      'app-consistent tags: quiesce the workload before each one, e.g. "fsfreeze -f /data" (split on whitespace, run without a shell; ' +
        "exit 0 = frozen; a failure or timeout yields a crash-consistent tag and an AppConsistencyFailed warning). App tags need every disk served with --nbd",
      parseCommandLine,
    )
    .option(
      "--post-thaw <command>",
      'run after each app tag whose pre-freeze succeeded, e.g. "fsfreeze -u /data" (split on whitespace, no shell)',
      parseCommandLine,
    )
    .option("--freeze-timeout <seconds>", "bound on the pre-freeze, the frozen time and the post-thaw (at most 60)", freezeSeconds, 10)
    .option("--group-port <port>", "replication groups: the barrier's TCP port (0: any free port)", port, 20004)
    .option("--group-host <address>", "replication groups: the barrier's listening address", "0.0.0.0")
    .option("--group-advertise <host>", "replication groups: the address the group's other agents reach this one at (default: this host's first IPv4)")
    .option("--replace", "first start only: take over from an agent already registered for this item (it is locked out)")
    .option("--progress-interval <seconds>", "seconds between progress lines (printed when something changed)", positiveInt("--progress-interval"), 2)
    .action(async (o: AgentCliOptions, cmd: Command) => {
      const { url, key } = cmd.optsWithGlobals<{ url: string; key?: string }>();
      const log = (line: string) => console.log(`${new Date().toISOString()} ${line}`);
      let options: AgentOptions;
      try {
        options = agentOptions(o, url, key, log);
      } catch (e) {
        // Thrown here (not by an option's parser), commander would exit without a word: say it as it says its own.
        cmd.error(`error: ${(e as Error).message}`, { exitCode: EXIT.usage, code: "site-recovery.usage" });
      }
      let agent: Agent;
      try {
        agent = await Agent.start(options);
      } catch (e) {
        console.error(`agent: ${(e as Error).message}`);
        process.exitCode = 1;
        return;
      }
      announce(agent, o, log);
      await runUntilSignalled(agent, o.progressInterval, log);
    });
}

/** The agent's options from the command line's, refusing combinations that cannot work (a usage error). */
function agentOptions(o: AgentCliOptions, url: string, key: string | undefined, log: (line: string) => void): AgentOptions {
  if (!o.disk?.length) throw new Error("give at least one --disk <id=path>");
  if (o.nbdTcp && !o.nbd) throw new Error("--nbd-tcp needs --nbd <socket path>");
  if (o.scanDisk?.length && !o.nbd) throw new Error("--scan-disk goes with --nbd (without it, every --disk is scanned)");
  return {
    url,
    ...(o.token ? { token: o.token } : {}),
    ...(key ? { functionKey: key } : {}),
    stateDir: o.stateDir,
    disks: [
      ...o.disk.map((d) => ({ ...d, kind: o.nbd ? ("tracked" as const) : ("scanned" as const) })),
      ...(o.scanDisk ?? []).map((d) => ({ ...d, kind: "scanned" as const })),
    ],
    groupPort: o.groupPort ?? 20004,
    groupHost: o.groupHost ?? "0.0.0.0",
    ...(o.groupAdvertise ? { groupAdvertiseHost: o.groupAdvertise } : {}),
    ...(o.replace ? { replaceRegistration: true } : {}),
    ...(o.nbd ? { nbd: { socketPath: o.nbd, ...(o.nbdTcp ? { tcp: o.nbdTcp } : {}) } } : {}),
    scanIntervalSeconds: o.scanInterval,
    spoolMaxBytes: o.spoolMaxMb * 1024 * 1024,
    uploadConcurrency: o.uploadConcurrency,
    ...(o.preFreeze ? { preFreeze: o.preFreeze } : {}),
    ...(o.postThaw ? { postThaw: o.postThaw } : {}),
    freezeTimeoutMs: Math.round(o.freezeTimeout * 1000),
    log,
  };
}

/** What the operator needs to know once the agent runs: what it replicates, and how to write through its exports. */
function announce(agent: Agent, o: AgentCliOptions, log: (line: string) => void): void {
  if (o.preFreeze && (!o.nbd || o.scanDisk?.length)) {
    log(
      "note: --pre-freeze acts on app-consistent tags, which need every disk served over NBD; with scanned disks the points are crash-consistent (after quiet scan rounds), so it is not run",
    );
  }
  log(`replicating ${agent.vmName} (item ${agent.itemId}): ${agent.diskIds().join(", ")}; state in ${o.stateDir}; Ctrl-C stops`);
  const served = agent.nbdAddress;
  if (!served) return;
  for (const line of nbdHowTo(
    (o.disk ?? []).map((d) => d.id),
    served,
  ))
    log(line);
  if (served.tcp && !isLoopback(served.tcp.host))
    log(`warning: NBD on tcp ${served.tcp.host}:${served.tcp.port} has no authentication: anyone who reaches it can read and write these disks`);
}

/** Progress lines while the agent runs; SIGINT/SIGTERM stop it (sealing what was written into the spool), a second one exits at once. */
function runUntilSignalled(agent: Agent, progressIntervalSeconds: number, log: (line: string) => void): Promise<void> {
  let last = "";
  const progress = setInterval(() => {
    const line = progressLine(agent.status());
    if (line !== last) log((last = line));
  }, progressIntervalSeconds * 1000);

  return new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        console.error(`${signal} again: exiting now (the spool and the state directory keep what was not shipped)`);
        process.exit(1);
      }
      stopping = true;
      log(`${signal}: stopping — sealing what was written or scanned into the spool`);
      clearInterval(progress);
      agent
        .stop()
        .then(() => {
          const h = agent.status();
          const left = Object.values(h.disks).reduce((n, d) => n + d.spoolBatches, 0);
          log(`stopped; ${left} batch(es) left in the spool for the next start`);
        })
        .catch((e: Error) => {
          console.error(`agent: stop failed: ${e.message}`);
          process.exitCode = 1;
        })
        .finally(resolve);
    };
    process.on("SIGINT", () => stop("SIGINT"));
    process.on("SIGTERM", () => stop("SIGTERM"));
  });
}
