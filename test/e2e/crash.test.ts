// Crashes with real processes: the local host killed mid-apply, the agent killed mid-stream; replicas still equal their sources.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { createServices, type Services } from "../../functions/compose";
import { startHostProcess, type HostProcess } from "../../local/process";
import { loadConfig } from "../../shared/config/settings";
import { replicaBlobName } from "../../shared/protection/items";
import { startTestStorage, type LocalStorage } from "../support/storage";
import { startTestStack, type TestStack } from "../support/stack";
import { assertReplicaEqualsSource, lastSeq, protectVm, runWorkload, waitForWatermark, type E2eVm, type StackLike, hostProcessApi } from "../support/e2e";
import { Agent } from "../../agent";

const DISKS = ["os", "data0"];

describe("the local host killed (SIGKILL) mid-apply and restarted", () => {
  let storage: LocalStorage;
  let env: NodeJS.ProcessEnv;
  let services: Services;
  let host: HostProcess | undefined;
  before(async () => {
    storage = await startTestStorage();
    // The sweep runs every 2 s and re-announces a disk after 2 s without progress: messages the killed host held are
    // invisible for minutes (as in Azure), the sweep is what picks the work up again.
    env = {
      AzureWebJobsStorage: storage.control,
      CACHE_STORAGE: storage.cache,
      SWEEP_SCHEDULE: "*/2 * * * * *",
      SWEEP_STALL_SECONDS: "2",
      AGENT_CHECKIN_SECONDS: "1",
    };
    services = createServices(loadConfig(env));
  });
  after(async () => {
    await host?.kill();
    await storage?.stop();
  });

  test("the restarted host finishes the apply and each replica equals its source", async () => {
    host = await startHostProcess(env);
    // The helpers need only the API (of whichever host process runs now) and the storage clients.
    const stack: StackLike = {
      url: host.url,
      services,
      api: hostProcessApi(() => host!.url),
    };
    const vm: E2eVm = await protectVm(stack, "host-kill");
    try {
      const agent = await vm.startAgent();
      await runWorkload(agent, DISKS, 21, 600);
      await agent.waitIdle(60_000);
      const replicas = await services.storage.replicas();
      const watermark = async (d: string) => (await replicas.getPageBlobClient(replicaBlobName(vm.itemId, d)).getProperties()).blobSequenceNumber ?? 0;
      // Kill it while it is applying: some batches applied, not all.
      const deadline = Date.now() + 30_000;
      while ((await watermark("os")) + (await watermark("data0")) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      await host.kill();
      const at = await Promise.all(DISKS.map(watermark));
      assert.ok(
        at.some((w, i) => w < lastSeq(agent, DISKS[i]!)),
        `killed before the end (watermarks ${at})`,
      );

      host = await startHostProcess(env);
      for (const d of DISKS) {
        await waitForWatermark(stack, vm, d, lastSeq(agent, d), 120_000);
        await assertReplicaEqualsSource(stack, vm, d);
      }
    } finally {
      await vm.cleanup();
    }
  });
});

describe("the agent killed (SIGKILL) mid-stream and restarted from its spool", () => {
  let stack: TestStack;
  before(async () => {
    stack = await startTestStack({ queueOverrides: { maxPollingIntervalMs: 100 }, env: { AGENT_CHECKIN_SECONDS: "1" } });
  });
  after(async () => {
    await stack?.stop();
  });

  test("every write that reached the image reaches the replica", async () => {
    const vm = await protectVm(stack, "agent-kill-e2e");
    try {
      const writer = spawn(
        process.execPath,
        [join(__dirname, "..", "support", "agent-writer.js"), "--agent-writer", stack.url, vm.token, vm.stateDir, vm.images.os!, "5"],
        {
          stdio: ["ignore", "pipe", "pipe"],
        },
      );
      let out = "";
      writer.stdout.on("data", (d: Buffer) => (out += d.toString()));
      writer.stderr.on("data", (d: Buffer) => (out += d.toString()));
      const deadline = Date.now() + 60_000;
      while (!/acked 100\b/.test(out)) {
        if (Date.now() > deadline || writer.exitCode !== null) assert.fail(`the writer did not get going: ${out}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      writer.kill("SIGKILL");
      await once(writer, "exit");

      // The same state directory: no new registration, the dirty log and the spool carry what the kill interrupted.
      const agent = await Agent.start({
        url: stack.url,
        stateDir: vm.stateDir,
        disks: [{ id: "os", path: vm.images.os!, kind: "tracked" }],
        checkinIntervalMs: 500,
      });
      vm.agent = agent;
      await agent.waitIdle(60_000);
      await waitForWatermark(stack, vm, "os", lastSeq(agent, "os"), 60_000);
      await assertReplicaEqualsSource(stack, vm, "os");
      assert.equal((await stack.api("GET", `replicated-items/${vm.itemId}`)).body.agent.registrations, 1);
    } finally {
      await vm.cleanup();
    }
  });
});
