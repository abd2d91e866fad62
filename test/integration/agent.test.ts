// The agent against the real stack (local host + Azurite): registration, tracked writes, the shipped stream, restarts, overflow, resync.
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { once } from "node:events";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent } from "../../agent";
import { randomBytes, rng } from "../support/batches";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import { crc32c } from "@node-rs/crc32";
import { RESYNC_BLOCK_BYTES } from "../../shared/protection/agent-protocol";
import type { BatchTag } from "../../shared/replication/batch";
import { replicaBlobName } from "../../shared/protection/items";
import { killChildren, runChild as run, until } from "../support/children";
import {
  assertContiguous,
  readHeartbeat,
  replayBatches,
  replayDisk,
  spoolBatches,
  stackAppliesBatches,
  takeAnnouncements,
  type ShippedBatch,
} from "../support/cache";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Deterministic numbers and bytes, so that a failure replays. */
function prng(seed: number) {
  const next = rng(seed);
  return { next, bytes: (n: number) => randomBytes(next, n), int: (n: number) => Math.floor(next() * n) };
}

function writeAt(path: string, offset: number, data: Buffer): void {
  const fd = openSync(path, "r+");
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

describe("the agent", () => {
  let stack: TestStack;
  let dir: string;
  before(async () => {
    // No queue polling (and no cache sweep): the announcements and batches stay where the agent put them, to be checked.
    // The applied replicas are the end-to-end tests' business.
    stack = await startTestStack({ queues: false, env: { SWEEP_SCHEDULE: "0 0 0 1 1 *" } });
    dir = mkdtempSync(join(tmpdir(), "agent-it-"));
  });
  after(async () => {
    await killChildren();
    await stack?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function protect(name: string): Promise<{ id: string; token: string }> {
    const res = await stack.api("POST", "replicated-items", enableBody(name));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    return { id: res.body.id, token: res.body.agentRegistration.token };
  }

  async function expectReplicated(agent: Agent, itemId: string, images: Record<string, string>): Promise<void> {
    const status = agent.status();
    for (const [diskId, path] of Object.entries(images)) {
      const r = await replayDisk(stack, itemId, diskId, { untilSeq: status.disks[diskId]!.nextSeq - 1 });
      assert.ok(
        r.image.equals(readFileSync(path)),
        `disk ${diskId}: the shipped batches rebuild the image (watermark ${r.watermark}, ${r.batches.length} batches)`,
      );
    }
  }

  test("tracked writes reach the cache as contiguous batches that rebuild each image, each announced once in base64", async () => {
    const item = await protect("agent-1");
    const os = join(dir, "a1-os.img");
    const data0 = join(dir, "a1-data0.img");
    const rnd = prng(1);
    // Data on the disk before the agent starts: initial replication copies it, and skips the zeros around it.
    const pre = rnd.bytes(300 * KiB);
    writeFileSync(os, Buffer.alloc(16 * MiB));
    writeAt(os, 3 * MiB + 100, pre);

    const agent = await Agent.start({
      url: stack.url,
      token: item.token,
      stateDir: join(dir, "a1-state"),
      disks: [
        { id: "os", path: os, kind: "tracked" },
        { id: "data0", path: data0, kind: "tracked" },
      ],
      sealIntervalMs: 50,
      heartbeatIntervalMs: 300,
    });
    try {
      const disks = [agent.trackedDisk("os"), agent.trackedDisk("data0")];
      assert.equal(disks[1]!.sizeBytes, 8 * MiB, "the image is created at the registered size");
      // Unaligned, overlapping, concurrent writes, and one larger than a batch.
      for (let round = 0; round < 30; round++) {
        await Promise.all(
          Array.from({ length: 10 }, () => {
            const d = disks[rnd.int(2)]!;
            const len = 1 + rnd.int(64 * KiB);
            return d.write(rnd.int(d.sizeBytes - len), rnd.bytes(len));
          }),
        );
      }
      await disks[0]!.write(5 * MiB + 7, rnd.bytes(6 * MiB));
      await agent.waitIdle(60_000);
      await expectReplicated(agent, item.id, { os, data0 });

      // The stream itself, as spooled: contiguous seqs, bounded payloads, and it turns the image before into the image after.
      agent.pauseShipping();
      const before = readFileSync(os);
      const next = agent.status().disks.os!.nextSeq;
      for (let i = 0; i < 200; i++) {
        const len = 1 + rnd.int(256 * KiB);
        await disks[0]!.write(rnd.int(16 * MiB - len), rnd.bytes(len));
      }
      await agent.flush();
      const spooled = await spoolBatches(join(dir, "a1-state"), "os");
      assertContiguous(
        spooled.map((b) => b.seq),
        next,
      );
      assert.ok(spooled.length >= 5, `${spooled.length} batches`);
      assert.ok(spooled.every((b) => b.header.payloadLength <= 4 * MiB && b.header.diskId === "os" && b.header.itemId === item.id));
      assert.ok(spooled.every((b) => b.header.firstWriteMs <= b.header.lastWriteMs && !b.header.initial && !b.header.resyncId));
      assert.ok(replayBatches(spooled, before).equals(readFileSync(os)), "the spooled batches turn the image before into the image after");
      agent.resumeShipping();
      await agent.waitIdle(60_000);
      await expectReplicated(agent, item.id, { os, data0 });

      if (!stackAppliesBatches(stack)) {
        const all: { diskId: string; seq: number }[] = [];
        for (const diskId of ["os", "data0"]) {
          const { batches } = await replayDisk(stack, item.id, diskId);
          assert.equal(batches[0]?.seq, 1, "sequence numbers start at 1");
          assert.ok(
            batches.every((b) => b.header.payloadLength <= 4 * MiB),
            "no payload over 4 MiB",
          );
          assert.equal(batches.filter((b) => b.header.initialComplete).length, 1, "one batch ends initial replication");
          const lastInitial = batches.findIndex((b) => b.header.initialComplete);
          // Writes made during the initial copy are sealed as their own batches, interleaved with the copy's (under
          // load the copy is slower than the first seal): the copy's batches are flagged, and none follows its end.
          assert.ok(batches[lastInitial]!.header.initial, "the batch that completes initial replication is an initial one");
          assert.ok(
            batches.slice(lastInitial + 1).every((b) => !b.header.initial),
            "no initial batch after the one that completes it",
          );
          for (const b of batches) {
            assert.equal(b.header.itemId, item.id);
            assert.ok(Number(b.metadata.firstwritems) <= Number(b.metadata.lastwritems), "write times in the metadata");
            assert.ok(Number(b.metadata.lastwritems) <= Date.now());
          }
          all.push(...batches.map((b) => ({ diskId, seq: b.seq })));
        }
        const queue = stack.services.storage.controlQueues.getQueueClient("replication-batches");
        const announced = (await takeAnnouncements(queue)).map((m) => {
          assert.equal(m.v, 1);
          assert.equal(m.itemId, item.id);
          return { diskId: m.diskId, seq: m.seq };
        });
        const key = (x: { diskId: string; seq: number }) => `${x.diskId}/${x.seq}`;
        assert.deepEqual(announced.map(key).sort(), all.map(key).sort(), "one message per batch");
      }

      // The heartbeat tells the control plane where the agent is.
      let hb = await readHeartbeat(stack, item.id);
      for (let i = 0; i < 50 && hb.disks.os?.spoolBatches !== 0; i++) {
        await sleep(100);
        hb = await readHeartbeat(stack, item.id);
      }
      assert.equal(hb.health.status, "Healthy");
      assert.deepEqual(Object.keys(hb.disks).sort(), ["data0", "os"]);
      assert.equal(hb.disks.os!.mode, "journal");
      assert.equal(hb.disks.os!.spoolBatches, 0);
      assert.deepEqual(hb.disks.os!.initialReplication, { doneBytes: 16 * MiB, totalBytes: 16 * MiB, complete: true });
    } finally {
      await agent.stop();
    }
  });

  /** True once the disk's shipped batches (applied or cached) rebuild the file; batches still uploading are a "not yet". */
  async function replicated(itemId: string, diskId: string, path: string): Promise<boolean> {
    try {
      const { image } = await replayDisk(stack, itemId, diskId);
      // An image file shorter than the disk reads as zeros past its end.
      const file = Buffer.alloc(image.length);
      readFileSync(path).copy(file);
      return image.equals(file);
    } catch {
      return false;
    }
  }

  test("an agent killed (SIGKILL) mid-stream and restarted from its state directory loses nothing and does not register again", async () => {
    const item = await protect("agent-kill");
    const os = join(dir, "kill-os.img");
    const state = join(dir, "kill-state");
    const writer = run([join(__dirname, "..", "support", "agent-writer.js"), "--agent-writer", stack.url, item.token, state, os, "9"]);
    const killed = once(writer.child, "exit");
    try {
      await until("the writer's acknowledged writes", () => /acked 150\b/.test(writer.output()), 60_000, writer.output);
    } finally {
      writer.child.kill("SIGKILL");
      await killed;
    }

    const agent = await Agent.start({ url: stack.url, stateDir: state, disks: [{ id: "os", path: os, kind: "tracked" }], sealIntervalMs: 50 });
    try {
      await agent.trackedDisk("os").write(12_345, Buffer.from("written after the restart"));
      await agent.waitIdle(60_000);
      await expectReplicated(agent, item.id, { os });
    } finally {
      await agent.stop();
    }
    const got = await stack.api("GET", `replicated-items/${item.id}`);
    assert.equal(got.body.agent.registrations, 1, "the restart used the saved registration");
  });

  test("the CLI agent scans image files: initial replication skips zeros, dd-written blocks follow, SIGTERM stops cleanly, a restart resumes", async () => {
    const item = await protect("agent-cli");
    const os = join(dir, "cli-os.img");
    const data0 = join(dir, "cli-data0.img");
    const state = join(dir, "cli-state");
    const rnd = prng(3);
    writeFileSync(os, Buffer.alloc(16 * MiB));
    writeAt(os, 1 * MiB, rnd.bytes(512 * KiB));
    writeFileSync(data0, Buffer.alloc(0)); // shorter than the disk: the rest reads as zeros
    const cli = join(__dirname, "..", "..", "cli", "main.js");
    const start = (token?: string) =>
      run([
        cli,
        "--url",
        stack.url,
        "agent",
        ...(token ? ["--token", token] : []),
        "--disk",
        `os=${os}`,
        "--disk",
        `data0=${data0}`,
        "--state-dir",
        state,
        "--scan-interval",
        "1",
        "--progress-interval",
        "1",
      ]);

    let agent = start(item.token);
    const both = async () => (await replicated(item.id, "os", os)) && (await replicated(item.id, "data0", data0));
    try {
      await until("initial replication", both, 90_000, agent.output);
      if (!stackAppliesBatches(stack)) {
        const { batches } = await replayDisk(stack, item.id, "os");
        const copied = batches.filter((b) => b.header.initial).reduce((n, b) => n + b.header.payloadLength, 0);
        assert.ok(copied >= 512 * KiB && copied <= 640 * KiB, `the zeros were skipped (${copied} bytes copied)`);
      }

      execFileSync("dd", ["if=/dev/urandom", `of=${os}`, "bs=4k", "seek=1000", "count=64", "conv=notrunc"], { stdio: "ignore" });
      execFileSync("dd", ["if=/dev/urandom", `of=${data0}`, "bs=64k", "seek=20", "count=8", "conv=notrunc"], { stdio: "ignore" });
      await until("the dd writes", both, 90_000, agent.output);
    } catch (e) {
      agent.child.kill("SIGKILL");
      throw e;
    }
    const exited = once(agent.child, "exit");
    agent.child.kill("SIGTERM");
    const [code] = (await exited) as [number | null];
    assert.equal(code, 0, agent.output());
    assert.match(agent.output(), /initial 100%|replicating/);
    assert.match(agent.output(), /stopped; \d+ batch\(es\) left in the spool/);

    // Restarted without the token: the state directory has the registration.
    execFileSync("dd", ["if=/dev/urandom", `of=${os}`, "bs=1k", "seek=7", "count=3", "conv=notrunc"], { stdio: "ignore" });
    agent = start();
    try {
      await until("the writes made while the agent was down", both, 90_000, agent.output);
    } finally {
      const exit = once(agent.child, "exit");
      agent.child.kill("SIGTERM");
      await exit;
    }
    const got = await stack.api("GET", `replicated-items/${item.id}`);
    assert.equal(got.body.agent.registrations, 1);
  });

  test("the CLI agent refuses to start without a token when the state directory is empty", async () => {
    const cli = join(__dirname, "..", "..", "cli", "main.js");
    const p = run([cli, "--url", stack.url, "agent", "--disk", `os=${join(dir, "none.img")}`, "--state-dir", join(dir, "empty-state")]);
    const [code] = (await once(p.child, "exit")) as [number | null];
    assert.equal(code, 1);
    assert.match(p.output(), /needs the registration token/);
  });

  test("a full spool switches the disk to bitmap mode and the item to ResyncRequired; once it drains, the dirty blocks ship under the resync id", async () => {
    const item = await protect("agent-overflow");
    const os = join(dir, "ovf-os.img");
    const agent = await Agent.start({
      url: stack.url,
      token: item.token,
      stateDir: join(dir, "ovf-state"),
      disks: [{ id: "os", path: os, kind: "tracked" }],
      spoolMaxBytes: 1 * MiB,
      maxBatchBytes: 128 * KiB,
      sealIntervalMs: 20,
      checkinIntervalMs: 300,
    });
    try {
      await agent.waitIdle(60_000);
      const disk = agent.trackedDisk("os");
      const rnd = prng(5);
      agent.pauseShipping();
      for (let i = 0; i < 48; i++) await disk.write(rnd.int(16 * MiB - 64 * KiB), rnd.bytes(64 * KiB));
      await disk.flush();
      const during = agent.status().disks.os!;
      assert.equal(during.mode, "bitmap");
      assert.ok(during.dirtyBytes > 0);
      assert.ok(during.spoolBytes <= 1 * MiB, `the spool stays within its bound (${during.spoolBytes})`);
      const resyncId = during.resync?.id;
      assert.ok(resyncId, "the heartbeat names the overflow's resync");

      await agent.checkin();
      const got = await stack.api("GET", `replicated-items/${item.id}`);
      assert.equal(got.body.state, "ResyncRequired");
      assert.ok(
        got.body.health.issues.some((i: { message: string }) => /spool full/.test(i.message)),
        JSON.stringify(got.body.health),
      );

      // Writes go on while the spool is full, unaligned ones too.
      for (let i = 0; i < 20; i++) await disk.write(rnd.int(16 * MiB - 10_000), rnd.bytes(1 + rnd.int(10_000)));
      agent.resumeShipping();
      await agent.waitIdle(60_000);
      assert.equal(agent.status().disks.os!.mode, "journal");
      await expectReplicated(agent, item.id, { os });
      if (!stackAppliesBatches(stack)) {
        const { batches } = await replayDisk(stack, item.id, "os");
        const flagged = batches.filter((b) => b.header.resyncId === resyncId);
        assert.ok(flagged.length > 0, "the dirty blocks are shipped under the overflow's resync id");
        assert.equal(flagged.filter((b) => b.header.resyncComplete).length, 1);
        assert.ok(flagged[flagged.length - 1]!.header.resyncComplete, "the last of them completes the resync");
      }
    } finally {
      await agent.stop();
    }
  });

  test("a resync the control plane asks for ships exactly the blocks where the replica differs, while writes go on", async () => {
    const item = await protect("agent-resync");
    const os = join(dir, "rs-os.img");
    const rnd = prng(8);
    writeFileSync(os, Buffer.alloc(16 * MiB));
    writeAt(os, 2 * MiB, rnd.bytes(3 * MiB));
    const agent = await Agent.start({
      url: stack.url,
      token: item.token,
      stateDir: join(dir, "rs-state"),
      disks: [{ id: "os", path: os, kind: "tracked" }],
      sealIntervalMs: 20,
      checkinIntervalMs: 60_000,
    });
    try {
      await agent.waitIdle(60_000);
      const last = agent.status().disks.os!.nextSeq - 1;
      const replica = (await stack.services.storage.replicas()).getPageBlobClient(replicaBlobName(item.id, "os"));
      if (stackAppliesBatches(stack)) await replayDisk(stack, item.id, "os", { untilSeq: last });
      else {
        // No apply side in this stack: stand in for it, the replica at the last batch.
        const image = readFileSync(os);
        for (let at = 0; at < image.length; at += 4 * MiB) await replica.uploadPages(image.subarray(at, at + 4 * MiB), at, 4 * MiB);
        await replica.updateSequenceNumber("update", last);
      }
      // Three blocks of the replica go bad (a zero block, a data block, the last block), and the disk is halted there.
      const damaged = [0, 40, 16 * 16 - 1];
      for (const b of damaged) await replica.uploadPages(rnd.bytes(RESYNC_BLOCK_BYTES), b * RESYNC_BLOCK_BYTES, RESYNC_BLOCK_BYTES);
      const base = (await replica.getProperties()).blobSequenceNumber ?? 0;
      await stack.services.items.updateDisk(item.id, "os", (d) => ({
        ...d,
        state: "ResyncRequired",
        resync: { id: "halt-1", reason: "a corrupt batch", origin: "apply", baseSeq: base, since: new Date().toISOString() },
      }));

      await agent.checkin();
      const disk = agent.trackedDisk("os");
      const during = [disk.write(9 * MiB + 3, rnd.bytes(70_000)), disk.write(100, rnd.bytes(300))];
      await Promise.all(during);
      await agent.waitIdle(60_000);

      if (!stackAppliesBatches(stack)) {
        const all = await replayDisk(stack, item.id, "os");
        const resync = all.batches.filter((b) => b.header.resyncId === "halt-1");
        assert.ok(resync.length >= 2, "a first batch naming the resync, then the blocks");
        assert.ok(resync[resync.length - 1]!.header.resyncComplete);
        const first = resync[0]!.seq;
        const shipped = new Set<number>();
        for (const b of resync.slice(1))
          for (const e of b.header.extents)
            for (let at = e.offset; at < e.offset + e.length; at += RESYNC_BLOCK_BYTES) shipped.add(Math.floor(at / RESYNC_BLOCK_BYTES));
        // The damaged blocks, plus any block the writes during the resync touched (they may be compared after the writes).
        const touched = new Set([...damaged, Math.floor((9 * MiB + 3) / RESYNC_BLOCK_BYTES), Math.floor((9 * MiB + 70_003) / RESYNC_BLOCK_BYTES), 0]);
        for (const b of damaged) assert.ok(shipped.has(b), `damaged block ${b} shipped`);
        for (const b of shipped) assert.ok(touched.has(b), `block ${b} shipped although the replica had it`);
        // The replica at its base, then every batch from the resync's first on, is the image.
        const rebuilt = (await replica.downloadToBuffer(0, 16 * MiB)).subarray(0);
        for (const b of all.batches.filter((x) => x.seq >= first)) {
          let at = 0;
          for (const e of b.header.extents) {
            b.payload.copy(rebuilt, e.offset, at, at + e.length);
            at += e.length;
          }
        }
        assert.ok(rebuilt.equals(readFileSync(os)), "replica at the base + the resync's batches = the image");
        assert.equal(crc32c(rebuilt), crc32c(readFileSync(os)));
      } else {
        await expectReplicated(agent, item.id, { os });
      }
      assert.equal(agent.status().disks.os!.resync, undefined, "the resync is done");
    } finally {
      await agent.stop();
    }
  });

  test("a tag is cut on every disk at one instant: up to the tagged batches, the disks hold a prefix of the acknowledged writes", async () => {
    const item = await protect("agent-tag");
    const os = join(dir, "tag-os.img");
    const data0 = join(dir, "tag-data0.img");
    const state = join(dir, "tag-state");
    const agent = await Agent.start({
      url: stack.url,
      token: item.token,
      stateDir: state,
      disks: [
        { id: "os", path: os, kind: "tracked" },
        { id: "data0", path: data0, kind: "tracked" },
      ],
      sealIntervalMs: 5,
      tagIntervalMs: 3_600_000,
    });
    try {
      await agent.waitIdle(60_000);
      agent.pauseShipping();
      const disks = [agent.trackedDisk("os"), agent.trackedDisk("data0")];
      const next = { os: agent.status().disks.os!.nextSeq, data0: agent.status().disks.data0!.nextSeq };
      // Write i goes to disk i % 2, sector i / 2, and is acknowledged before write i + 1 starts.
      let writing = true;
      let acked = 0;
      const writer = (async () => {
        for (let i = 0; writing || i < 200; i++) {
          const stamp = Buffer.alloc(512, 0);
          stamp.writeUInt32LE(i + 1, 0);
          await disks[i % 2]!.write(Math.floor(i / 2) * 512, stamp);
          acked = i + 1;
        }
      })();
      await until("some writes", () => acked >= 100);
      const tag: BatchTag | undefined = await agent.cutTag("crash");
      await until("more writes", () => acked >= 400);
      writing = false;
      await writer;
      await agent.flush();
      assert.ok(tag, "every disk can carry the tag");
      assert.equal(tag.scope, "vm");

      const present: number[] = [];
      for (const [d, diskId] of (["os", "data0"] as const).entries()) {
        const batches = (await spoolBatches(state, diskId)).filter((b) => b.seq >= next[diskId]);
        const tagged: ShippedBatch[] = batches.filter((b) => b.header.tag?.id === tag.id);
        assert.equal(tagged.length, 1, `disk ${diskId} carries the tag once`);
        assert.deepEqual(tagged[0]!.header.tag, tag);
        const image = replayBatches(
          batches.filter((b) => b.seq <= tagged[0]!.seq),
          Buffer.alloc(disks[d]!.sizeBytes),
        );
        for (let slot = 0; slot < 1000; slot++) {
          const stamp = image.readUInt32LE(slot * 512);
          if (stamp !== 0) {
            assert.equal(stamp, slot * 2 + d + 1);
            present.push(stamp - 1);
          }
        }
      }
      present.sort((a, b) => a - b);
      assert.ok(present.length >= 100 && present.length < acked, `the tag fell mid-stream (${present.length} of ${acked})`);
      assert.deepEqual(
        present,
        present.map((_, i) => i),
        "no write is at the tag unless every earlier one is",
      );

      agent.resumeShipping();
      await agent.waitIdle(60_000);
      await expectReplicated(agent, item.id, { os, data0 });
    } finally {
      await agent.stop();
    }
  });
});
