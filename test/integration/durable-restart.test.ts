// Crash safety of the local durable runtime: a host SIGKILLed mid-orchestration and started again on the same storage finishes every instance, re-running only what was in flight.
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { join } from "node:path";
import { TableClient } from "@azure/data-tables";
import { startTestStorage } from "../support/storage";
import { PROBE_TABLE } from "../support/durableHost";

const WEBHOOKS = "/runtime/webhooks/durabletask";

interface ChildHost {
  url: string;
  process: ChildProcess;
  /** stderr of the child (its host log), for failure messages. */
  log: string[];
}

async function spawnHost(connectionString: string): Promise<ChildHost> {
  // Not a test-runner child: without NODE_TEST_CONTEXT its stdout is plain.
  const { NODE_TEST_CONTEXT: _ctx, ...env } = process.env;
  const child = spawn(process.execPath, [join(__dirname, "..", "support", "durableHost.js")], {
    env: { ...env, DURABLE_CHILD_STORAGE: connectionString },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const log: string[] = [];
  createInterface({ input: child.stderr! }).on("line", (l) => log.push(l));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`child host did not start:\n${log.join("\n")}`)), 30_000);
    createInterface({ input: child.stdout! }).once("line", (line) => {
      clearTimeout(timer);
      resolve((JSON.parse(line) as { port: number }).port);
    });
    child.once("exit", (code) => reject(new Error(`child host exited with ${code}:\n${log.join("\n")}`)));
  });
  return { url: `http://127.0.0.1:${port}`, process: child, log };
}

async function kill(child: ChildHost): Promise<void> {
  if (child.process.exitCode !== null || child.process.signalCode !== null) return;
  const exited = new Promise((r) => child.process.once("exit", r));
  child.process.kill("SIGKILL");
  await exited;
}

async function call(url: string, method: string, body?: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(url, { method, headers: { "content-type": "application/json" }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

async function start(host: ChildHost, name: string, input: unknown): Promise<string> {
  const r = await call(`${host.url}${WEBHOOKS}/orchestrators/${name}`, "POST", input);
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return r.body.id as string;
}

async function waitDone(host: ChildHost, id: string, timeoutMs = 20_000): Promise<{ runtimeStatus: string; output: unknown; customStatus: unknown }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await call(`${host.url}${WEBHOOKS}/instances/${id}`, "GET");
    if (r.status === 200) return r.body;
    if (Date.now() > deadline) throw new Error(`instance ${id} not finished: ${JSON.stringify(r.body)}\n${host.log.slice(-30).join("\n")}`);
    await sleep(30);
  }
}

interface ProbeRow {
  step: number;
  pid: number;
}

async function probeRows(connectionString: string, run: string): Promise<ProbeRow[]> {
  const probe = TableClient.fromConnectionString(connectionString, PROBE_TABLE, { allowInsecureConnection: true });
  const rows: ProbeRow[] = [];
  try {
    for await (const e of probe.listEntities<ProbeRow>({ queryOptions: { filter: `PartitionKey eq '${run}'` } }))
      rows.push({ step: Number(e.step), pid: Number(e.pid) });
  } catch (e) {
    if ((e as { statusCode?: number }).statusCode !== 404) throw e;
  }
  return rows;
}

const NAP_MS = 12_000;

test("a host killed mid-orchestration resumes on restart: completed activities are not re-run, the one in flight is, timers and pending events survive", async () => {
  const storage = await startTestStorage();
  const children: ChildHost[] = [];
  try {
    const first = await spawnHost(storage.control);
    children.push(first);
    const run = "run-1";
    const steps = await start(first, "steps", { run, count: 5 });
    // Long enough to outlast step 3, the kill and the new host's start on a loaded machine (4 s did not, under load).
    const nap = await start(first, "nap", NAP_MS);
    const napStarted = Date.now();
    const gate = await start(first, "gatekeeper", null);

    // Step 3 records itself when it starts and then runs for STEP_MS: kill the host inside that window.
    const deadline = Date.now() + 15_000;
    while (!(await probeRows(storage.control, run)).some((r) => r.step === 3)) {
      if (Date.now() > deadline) throw new Error(`step 3 never started:\n${first.log.join("\n")}`);
      await sleep(10);
    }
    await kill(first);
    const before = await probeRows(storage.control, run);
    assert.deepEqual(before.map((r) => r.step).sort(), [1, 2, 3], "killed while step 3 ran");

    const second = await spawnHost(storage.control);
    children.push(second);
    // The event arrives at the new host; the wait for it was recorded by the old one.
    assert.equal((await call(`${second.url}${WEBHOOKS}/instances/${gate}/raiseEvent/go`, "POST", "after restart")).status, 202);

    // The timer was persisted with its fire time: the new host neither fires it at once nor forgets it.
    assert.equal((await call(`${second.url}${WEBHOOKS}/instances/${nap}`, "GET")).status, 202, "still sleeping after the restart");
    const napped = await waitDone(second, nap);
    const sawDone = Date.now();
    assert.equal(napped.runtimeStatus, "Completed");
    const fireAt = Date.parse(String(napped.output));
    assert.ok(fireAt - napStarted >= NAP_MS - 100, "the timer kept its original fire time");
    assert.ok(sawDone >= fireAt, "the re-armed timer fired at its time");

    const s = await waitDone(second, steps);
    assert.equal(s.runtimeStatus, "Completed", JSON.stringify(s));
    assert.deepEqual(s.output, [10, 20, 30, 40, 50, 60, 70]);
    assert.deepEqual(s.customStatus, { done: 5 });

    const rows = await probeRows(storage.control, run);
    const runs = (step: number) => rows.filter((r) => r.step === step);
    const firstPid = first.process.pid;
    for (const step of [1, 2]) {
      assert.equal(runs(step).length, 1, `step ${step} completed before the kill and ran exactly once`);
      assert.equal(runs(step)[0].pid, firstPid);
    }
    assert.ok(runs(3).length >= 1 && runs(3).length <= 2, `the step in flight ran ${runs(3).length} times`);
    assert.ok(
      runs(3).some((r) => r.pid === second.process.pid),
      "the step in flight was run again by the new host",
    );
    for (const step of [4, 5, 6, 7]) {
      assert.equal(runs(step).length, 1, `step ${step} ran exactly once`);
      assert.equal(runs(step)[0].pid, second.process.pid);
    }

    const gated = await waitDone(second, gate);
    assert.deepEqual(gated.output, { go: "after restart" });
  } finally {
    for (const c of children) await kill(c);
    await storage.stop();
  }
});
