// `site-recovery start` (the real command, in a process of its own) when a port it needs is taken: it ends with exit 1
// and one message naming the port, what is probably holding it and the setting that moves it — no stack trace, and
// nothing left running (the Azurite it started is stopped).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import { startTestStorage } from "../support/storage";
import { freePort, portIsFree } from "../../local/process";

const CLI = join(__dirname, "..", "..", "cli", "main.js");

async function holdPort(): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { server, port: (server.address() as { port: number }).port };
}

function runStart(env: NodeJS.ProcessEnv): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, "start"], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

test("start with the HTTP port taken: exit 1, the port and FUNCTIONS_HTTP_PORT named, no stack trace", async () => {
  const storage = await startTestStorage();
  const held = await holdPort();
  try {
    const r = await runStart({ AzureWebJobsStorage: storage.control, CACHE_STORAGE: storage.cache, FUNCTIONS_HTTP_PORT: String(held.port) });
    assert.equal(r.code, 1, `exit ${r.code}\n${r.out}\n${r.err}`);
    assert.match(
      r.err,
      new RegExp(
        `port ${held.port} is already in use: is another \`site-recovery start\` or \`func start\` running\\? Stop it, or set FUNCTIONS_HTTP_PORT to a free port\\.`,
      ),
    );
    assert.doesNotMatch(r.err, /\n\s+at /, "no stack trace");
  } finally {
    held.server.close();
    await storage.stop();
  }
});

test("start that launched its own Azurite, with the HTTP port taken: exit 1, and the Azurite it started is stopped", async () => {
  const held = await holdPort();
  const ports = [await freePort(), await freePort(), await freePort()];
  try {
    const r = await runStart({
      AzureWebJobsStorage: "",
      AZURITE_BLOB_PORT: String(ports[0]),
      AZURITE_QUEUE_PORT: String(ports[1]),
      AZURITE_TABLE_PORT: String(ports[2]),
      FUNCTIONS_HTTP_PORT: String(held.port),
    });
    assert.equal(r.code, 1, `exit ${r.code}\n${r.out}\n${r.err}`);
    // Azurite was up (the host's port is only tried once storage answers), then the port failed the start.
    assert.match(r.out, new RegExp(`Starting Azurite .* on ports ${ports.join("/")}`));
    assert.match(r.err, new RegExp(`port ${held.port} is already in use`));
    assert.doesNotMatch(r.err, /\n\s+at /, "no stack trace");
    // Nothing left running: the emulator's ports are free again once the command has exited.
    const deadline = Date.now() + 10_000;
    let busy = ports;
    while (busy.length > 0 && Date.now() < deadline) {
      const free = await Promise.all(busy.map((p) => portIsFree(p)));
      busy = busy.filter((_, i) => !free[i]);
      if (busy.length > 0) await new Promise((res) => setTimeout(res, 100));
    }
    assert.deepEqual(busy, [], "Azurite's ports still held after start exited");
  } finally {
    held.server.close();
  }
});

test("start with Azurite's ports taken: exit 1, the three ports and their settings named, no stack trace", async () => {
  const blob = await holdPort();
  const queue = await holdPort();
  const table = await holdPort();
  // The ports are checked before Azurite starts, so the emulator never runs here (its data folder is the package's
  // .local/azurite, ignored by git).
  try {
    const r = await runStart({
      AzureWebJobsStorage: "",
      AZURITE_BLOB_PORT: String(blob.port),
      AZURITE_QUEUE_PORT: String(queue.port),
      AZURITE_TABLE_PORT: String(table.port),
      FUNCTIONS_HTTP_PORT: "0",
    });
    assert.equal(r.code, 1, `exit ${r.code}\n${r.out}\n${r.err}`);
    assert.match(r.err, new RegExp(`Azurite's ports ${blob.port}/${queue.port}/${table.port} are already in use`));
    assert.match(r.err, /set AZURITE_BLOB_PORT, AZURITE_QUEUE_PORT and AZURITE_TABLE_PORT to free ports/);
    assert.doesNotMatch(r.err, /\n\s+at /, "no stack trace");
  } finally {
    for (const h of [blob, queue, table]) h.server.close();
  }
});
