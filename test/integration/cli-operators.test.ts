// The CLI for people, run as a process against a running stack: tables without a terminal, colours and progress bars through a pseudo-terminal (script -qfc), --json equal to the API's answer, live failover lines, exit codes.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import { FabricError, type Fabric } from "../../shared/fabric/port";
import { cacheContainerName } from "../../shared/protection/items";
import { HEARTBEAT_BLOB } from "../../shared/protection/agent-protocol";

const KEY = "cli-test-key-0123456789";
const CLI = join(__dirname, "..", "..", "cli", "main.js");
const NEVER = "0 0 0 1 1 *";
const MiB = 1024 * 1024;
const ANSI = /\x1b\[[0-9;]*m/;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** The environment without colour overrides: the CLI decides from the terminal alone. */
function plainEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const { NO_COLOR: _n, FORCE_COLOR: _f, ...rest } = process.env;
  return { ...rest, ...extra };
}

/** Runs the CLI with stdout a pipe (no terminal). */
function cli(stack: TestStack, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, "--url", stack.url, "--key", KEY, ...args], { env: plainEnv(env) });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

/** Runs the CLI inside a pseudo-terminal (util-linux `script`): stdout is a TTY, as for a person. */
function cliOnTty(stack: TestStack, args: string[]): Promise<Run> {
  const quote = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;
  const command = [process.execPath, CLI, "--url", stack.url, "--key", KEY, ...args].map(quote).join(" ");
  return new Promise((resolve, reject) => {
    const child = spawn("script", ["-qfec", command, "/dev/null"], { env: plainEnv({ TERM: "xterm-256color" }) });
    let stdout = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? -1, stdout: stdout.replace(/\r\n/g, "\n"), stderr: "" }));
  });
}

describe("the CLI for people (a process against a running stack)", () => {
  let stack: TestStack;
  const ids = { web: "", copying: "", broken: "" };

  before(async () => {
    stack = await startTestStack({
      functionKey: KEY,
      env: { SEAL_SCHEDULE: NEVER },
      fabric: (inner: Fabric): Fabric =>
        new Proxy(inner, {
          get(target, prop, receiver) {
            if (prop === "ensureVirtualMachine") {
              return async (spec: { name: string }) => {
                if (spec.name.startsWith("broken"))
                  throw new FabricError("SkuNotAvailable", `injected: Standard_D2s_v5 is not offered in westus for ${spec.name}`);
                return target.ensureVirtualMachine(spec as Parameters<Fabric["ensureVirtualMachine"]>[0]);
              };
            }
            const v = Reflect.get(target, prop, receiver);
            return typeof v === "function" ? v.bind(target) : v;
          },
        }),
    });
    const enable = async (name: string, ip: string) => {
      const body = enableBody(name);
      const r = await stack.api(
        "POST",
        "replicated-items",
        { ...body, vm: { ...body.vm, network: { ...body.vm.network, privateIp: ip } } },
        { "x-functions-key": KEY },
      );
      assert.equal(r.status, 201, JSON.stringify(r.body));
      return r.body.id as string;
    };
    ids.web = await enable("web-1", "10.0.1.4");
    ids.copying = await enable("copy-1", "10.0.1.5");
    ids.broken = await enable("broken-1", "10.0.1.6");
    const replicas = await stack.services.storage.replicas();
    for (const id of [ids.web, ids.broken]) {
      const tag = { id: randomUUID(), kind: "crash" as const, time: new Date(Date.now() - 42_000).toISOString(), scope: "vm" as const };
      for (const d of await stack.services.items.listDisks(id)) {
        await stack.services.items.updateDisk(id, d.id, (x) => ({ ...x, initialComplete: true, state: "Protected" }));
        const { snapshot } = await replicas.getPageBlobClient(d.replicaBlob).createSnapshot();
        await stack.services.points.recordArrival({ itemId: id, diskId: d.id, snapshot: snapshot!, seq: 1, tag });
      }
      await stack.services.items.updateItem(id, (i) => ({ ...i, state: "Protected" }));
    }
    // copy-1 is half-way through its initial copy, as its agent's heartbeat says.
    const beat = JSON.stringify({
      agentVersion: "0.1.0",
      time: new Date().toISOString(),
      disks: {
        os: {
          nextSeq: 5,
          spoolBatches: 0,
          spoolBytes: 0,
          mode: "journal",
          dirtyBytes: 0,
          initialReplication: { doneBytes: 6 * MiB, totalBytes: 16 * MiB, complete: false },
        },
        data0: {
          nextSeq: 2,
          spoolBatches: 0,
          spoolBytes: 0,
          mode: "journal",
          dirtyBytes: 0,
          initialReplication: { doneBytes: 2 * MiB, totalBytes: 8 * MiB, complete: false },
        },
      },
      health: { status: "Healthy", issues: [] },
    });
    await stack.services.storage.cacheBlobs
      .getContainerClient(cacheContainerName(ids.copying))
      .getBlockBlobClient(HEARTBEAT_BLOB)
      .upload(beat, Buffer.byteLength(beat));
  });
  after(async () => {
    await stack?.stop();
  });

  test("status without a terminal: a plain table, no colour codes; --json is the API's answer", async () => {
    const r = await cli(stack, ["status"]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, ANSI);
    const lines = r.stdout.trim().split("\n");
    assert.match(lines[0]!, /^ITEM\s+VM\s+ROUTE\s+DIRECTION\s+STATE\s+HEALTH\s+DISKS\s+RPO\s+GROUP$/);
    assert.match(
      lines.find((l) => l.includes("web-1"))!,
      /web-1\s+eastus → westus\s+forward\s+Protected\s+Healthy\s+2\s+\d+ (s|min)\s+-/,
    );
    assert.match(
      lines.find((l) => l.includes("copy-1"))!,
      /InitialReplication\s+Healthy\s+2\s+-/,
    );
    const json = await cli(stack, ["status", "--json"]);
    assert.equal(json.code, 0);
    const api = (await stack.api("GET", "replicated-items", undefined, { "x-functions-key": KEY })).body;
    assert.deepEqual(
      (JSON.parse(json.stdout) as { id: string; state: string }[]).map((i) => [i.id, i.state]),
      api.map((i: { id: string; state: string }) => [i.id, i.state]),
    );
  });

  test("status on a terminal is coloured; `status <item>` shows progress bars while the initial copy runs", async () => {
    const table = await cliOnTty(stack, ["status"]);
    assert.equal(table.code, 0);
    assert.match(table.stdout, /\x1b\[32mProtected\x1b\[0m/, "Protected in green");
    assert.match(table.stdout, /\x1b\[33mInitialReplication\x1b\[0m/, "copying in yellow");
    const one = await cliOnTty(stack, ["status", ids.copying]);
    assert.equal(one.code, 0);
    assert.match(one.stdout, /os\s+16\.0 MiB\s+\S*InitialReplication\S*\s+\[████████░{12}\]\s+37\.5%\s+6\.0 MiB of 16\.0 MiB/);
    assert.match(one.stdout, /data0\s+8\.0 MiB\s+\S*InitialReplication\S*\s+\[█████░{15}\]\s+25\.0%/);
    // Without a terminal the same bars in ASCII, and no colour.
    const plain = await cli(stack, ["status", ids.copying]);
    assert.match(plain.stdout, /\[########------------\]\s+37\.5%/);
    assert.doesNotMatch(plain.stdout, ANSI);
    assert.match(plain.stdout, /Agent\s+heartbeat .* ago \(agent 0\.1\.0\)/);
  });

  test("status <item> of a protected VM: RPO, its newest points, its last failover; --json is GET /api/replicated-items/{id}", async () => {
    const r = await cli(stack, ["status", ids.web]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^web-1  eastus → westus  \(forward\)/);
    assert.match(r.stdout, /State\s+Protected/);
    assert.match(r.stdout, /RPO\s+\d+ (s|min)\s+\(newest point \w{8} crash\/vm at/);
    assert.match(r.stdout, /Recovery points {2}1\n/);
    assert.match(r.stdout, /Last failover\n {2}none/);
    const json = JSON.parse((await cli(stack, ["status", ids.web, "--json"])).stdout);
    assert.equal(json.id, ids.web);
    assert.equal(json.disks.length, 2);
  });

  test("recovery-points <item>: a table newest first, or the API's JSON", async () => {
    const r = await cli(stack, ["recovery-points", ids.web]);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^POINT\s+KIND\s+SCOPE\s+TIME\s+AGE\s+DISKS\n[0-9a-f-]{36}\s+crash\s+vm\s+\d\d:\d\d:\d\dZ\s+\d+ (s|min)\s+2\n$/);
    const json = JSON.parse((await cli(stack, ["recovery-points", ids.web, "--json"])).stdout);
    assert.equal(json.length, 1);
    assert.equal(json[0].kind, "crash");
  });

  test("failover live: one line per step and per VM as it changes, then the outcome table; exit 0", async () => {
    const r = await cli(stack, ["failover", ids.web, "--type", "test"]);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const lines = r.stdout.split("\n");
    assert.match(lines[0]!, /^failover [0-9a-f-]{36} started \(test\)$/);
    const failoverSteps = lines.filter((l) => /^\s+\+\s*[\d.]+s\s+failover\s/.test(l)).map((l) => l.replace(/^\s+\+\s*[\d.]+s\s+failover\s+/, ""));
    assert.deepEqual(
      failoverSteps.filter((s) => s !== "Pending" && s !== "Running"),
      ["validating", "choosing recovery points", "copying disks", "creating network interfaces", "creating VMs", "starting VMs", "completed"].filter((s) =>
        failoverSteps.includes(s),
      ),
    );
    assert.ok(failoverSteps.includes("completed"));
    const vmLines = lines.filter((l) => /^\s+\+\s*[\d.]+s\s+web-1\s/.test(l));
    // How many VM lines show depends on how the CLI's polls fall against the steps (a quick failover can finish
    // between two polls): at least the last state, and each line a change from the one before.
    assert.ok(vmLines.length >= 1, r.stdout);
    const states = vmLines.map((l) => l.replace(/^\s+\+\s*[\d.]+s\s+/, ""));
    assert.ok(
      states.every((st, i) => i === 0 || st !== states[i - 1]),
      `a line only when the VM's state changes: ${r.stdout}`,
    );
    assert.match(vmLines[vmLines.length - 1]!, /web-1\s+running \(2\/2 copied\) ip 10\.\d+\.\d+\.\d+/);
    assert.match(r.stdout, /VM\s+RUNS AS\s+IP\s+POWER\s+RECOVERY POINT/);
    assert.match(r.stdout, /web-1\s+web-1-test\s+10\.\d+\.\d+\.\d+\s+running/);
    assert.match(r.stdout, /RTO \d+\.\d s/);
    assert.equal((await cli(stack, ["test-failover-cleanup", ids.web])).code, 0);
  });

  test("a failover that fails exits 1 and says why", async () => {
    const r = await cli(stack, ["failover", ids.broken, "--type", "unplanned"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /failover Failed: .*SkuNotAvailable: injected: Standard_D2s_v5 is not offered/);
  });

  test("jobs: a table of every operation, newest first, filtered; --json is GET /api/jobs", async () => {
    const r = await cli(stack, ["jobs"]);
    assert.equal(r.code, 0);
    const rows = r.stdout.trim().split("\n");
    assert.match(rows[0]!, /^JOB\s+TYPE\s+VMS\s+STATE\s+STARTED\s+DURATION\s+STEP \/ ERROR$/);
    assert.match(rows[1]!, /failover \(unplanned\)\s+broken-1\s+Failed\s+.*SkuNotAvailable/);
    assert.match(rows[2]!, /test-failover-cleanup\s+web-1\s+Succeeded/);
    assert.match(rows[3]!, /failover \(test\)\s+web-1\s+Succeeded/);
    assert.equal(rows.filter((l) => /\benable\s/.test(l)).length, 3);
    const failed = await cli(stack, ["jobs", "--state", "Failed", "--json"]);
    const jobs = JSON.parse(failed.stdout) as { type: string; state: string }[];
    assert.deepEqual(
      jobs.map((j) => `${j.type} ${j.state}`),
      ["failover Failed"],
    );
  });

  test("alerts: a table with open ones marked, --open, --json", async () => {
    await stack.services.jobs.list(); // the failed failover above is a JobFailed condition
    await stack.host.runTimer("sealRecoveryPoints");
    const r = await cli(stack, ["alerts"]);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^SEVERITY\s+VM\s+ALERT\s+RAISED\s+CLEARED\s+MESSAGE\n/);
    assert.match(r.stdout, /Critical\s+broken-1\s+JobFailed\s+\d\d:\d\d:\d\dZ\s+open\s+failover job/);
    const json = JSON.parse((await cli(stack, ["alerts", "--open", "--json"])).stdout) as { code: string; clearedAt: string | null }[];
    assert.ok(json.some((a) => a.code === "JobFailed") && json.every((a) => a.clearedAt === null));
  });

  test("status --watch redraws (here twice, piped: each refresh after the last, with its time)", async () => {
    const r = await cli(stack, ["status", "--watch", "--interval", "0.2", "--times", "2"]);
    assert.equal(r.code, 0);
    assert.equal(r.stdout.match(/^--- \d{4}-\d\d-\d\dT/gm)?.length, 2);
    assert.equal(r.stdout.match(/^ITEM\s+VM/gm)?.length, 2);
  });

  test("exit codes scripts can rely on: 4 unknown item, 2 bad usage, 3 service unreachable, 1 refused", async () => {
    const missing = await cli(stack, ["status", "no-such-item"]);
    assert.equal(missing.code, 4);
    assert.match(missing.stderr, /error 404 NotFound: replicatedItem 'no-such-item' does not exist/);
    assert.equal((await cli(stack, ["jobs", "--state", "Sideways"])).code, 2);
    assert.equal((await cli(stack, ["frobnicate"])).code, 2);
    const down = await new Promise<Run>((resolve) => {
      const child = spawn(process.execPath, [CLI, "--url", "http://127.0.0.1:9", "status"]);
      let stderr = "";
      child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
      child.on("close", (code) => resolve({ code: code ?? -1, stdout: "", stderr }));
    });
    assert.equal(down.code, 3);
    assert.match(down.stderr, /cannot reach http:\/\/127\.0\.0\.1:9/);
    const refused = await cli(stack, ["commit", ids.copying]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /error 409 IllegalState/);
    assert.equal((await cli(stack, ["status", "--help"])).code, 0);
  });

  test("the agent's usage errors say what is wrong and exit 2, before anything is contacted", async () => {
    const cases: [string[], RegExp][] = [
      [["agent"], /error: give at least one --disk <id=path>/],
      [["agent", "--disk", "os=/tmp/os.img", "--nbd-tcp", "10809"], /error: --nbd-tcp needs --nbd <socket path>/],
      [["agent", "--disk", "os=/tmp/os.img", "--scan-disk", "data=/tmp/d.img"], /error: --scan-disk goes with --nbd/],
      [["agent", "--disk", "os"], /expected <diskId>=<path>/],
    ];
    for (const [args, message] of cases) {
      const r = await cli(stack, args);
      assert.equal(r.code, 2, args.join(" "));
      assert.match(r.stderr, message);
    }
  });
});
