// Failover helpers for tests: start one over the API, wait for it, and compare failover disks with a byte model and qemu-img.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { StackLike } from "./e2e";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface FailoverStatusBody {
  instanceId: string;
  runtimeStatus: string;
  // Checked field by field in the tests.
  customStatus: any;
  output: any;
}

/** POST /api/failovers, asserting the 202 check-status shape; returns the instance id. */
export async function startFailover(stack: StackLike, body: unknown): Promise<string> {
  const res = await stack.api("POST", "failovers", body);
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.ok(res.body.id, "check-status payload has an id");
  assert.match(res.body.statusQueryGetUri, new RegExp(res.body.id));
  return res.body.id as string;
}

/** Polls GET /api/failovers/{id} until it is finished; returns the last status. */
export async function waitFailover(stack: StackLike, id: string, timeoutMs = 60_000, onStatus?: (s: FailoverStatusBody) => void): Promise<FailoverStatusBody> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await stack.api("GET", `failovers/${id}`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    onStatus?.(res.body);
    if (["Completed", "Failed", "Terminated"].includes(res.body.runtimeStatus)) return res.body;
    if (Date.now() > deadline) assert.fail(`failover ${id} still ${res.body.runtimeStatus} at step ${res.body.customStatus?.step}`);
    await sleep(100);
  }
}

/** Runs a failover to its end and asserts it completed; returns its output. */
export async function runFailover(stack: StackLike, body: unknown, timeoutMs = 60_000): Promise<any> {
  const id = await startFailover(stack, body);
  const st = await waitFailover(stack, id, timeoutMs);
  assert.equal(st.runtimeStatus, "Completed", `failover ${id}: ${JSON.stringify(st.output)} ${JSON.stringify(st.customStatus)}`);
  return st.output;
}

/** A failover disk's bytes (`failover/<blob>`), footer included. */
export async function failoverDiskBytes(stack: StackLike, blobPath: string): Promise<Buffer> {
  const name = blobPath.replace(/^failover\//, "");
  const container = await stack.services.storage.failover();
  return container.getPageBlobClient(name).downloadToBuffer();
}

/** The disk bytes equal the model (the VHD footer aside) and qemu-img reads the blob as a fixed VHD of the disk's size. */
export async function assertFailoverDisk(stack: StackLike, blobPath: string, model: Buffer, what: string): Promise<void> {
  const bytes = await failoverDiskBytes(stack, blobPath);
  assert.equal(bytes.length, model.length + 512, `${what}: disk size + the 512-byte footer`);
  const data = bytes.subarray(0, model.length);
  if (!data.equals(model)) {
    let at = 0;
    while (data[at] === model[at]) at++;
    assert.fail(`${what}: failover disk ${blobPath} differs from the expected content, first at byte ${at}`);
  }
  const dir = mkdtempSync(join(tmpdir(), "failover-vhd-"));
  try {
    const file = join(dir, "disk.vhd");
    writeFileSync(file, bytes);
    const r = spawnSync("qemu-img", ["info", "-f", "vpc", "--output", "json", file], { encoding: "utf8" });
    if ((r.error as NodeJS.ErrnoException | undefined)?.code === "ENOENT")
      assert.fail("qemu-img is not installed; this test needs it: apt-get install -y qemu-utils");
    assert.equal(r.status, 0, r.stderr);
    const info = JSON.parse(r.stdout) as { "virtual-size": number; format: string };
    assert.equal(info.format, "vpc");
    assert.equal(info["virtual-size"], model.length, `${what}: qemu-img reads the fixed VHD at the disk's size`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
