// The agent's NBD server against real clients (qemu-io, qemu-img, nbdinfo, nbdcopy) and hand-made hostile ones, with the real stack behind it.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent } from "../../agent";
import { imageLockPath } from "../../agent/nbd/exclusive";
import { refuseStateDirOnExports } from "../../agent/nbd/state-dir-guard";
import { Cmd, CmdFlag, encodeOption, NbdErr, Opt, Rep } from "../../agent/nbd/protocol";
import { randomBytes, rng } from "../support/batches";
import { replayDisk } from "../support/cache";
import { nbdUnixUrl, qemuIo, RawNbdClient, runTool } from "../support/nbd-client";
import { enableBody } from "../support/requests";
import { startTestStack, type TestStack } from "../support/stack";

const KiB = 1024;
const MiB = 1024 * KiB;

const hasLoop = existsSync("/dev/loop-control") && process.getuid?.() === 0;

describe("the agent's NBD server", () => {
  let stack: TestStack;
  let dir: string;
  let agent: Agent;
  let itemId: string;
  let sock: string;
  const images = { os: "", data0: "" };

  before(async () => {
    // No queue polling: the shipped batches stay in the cache, where the tests replay them.
    stack = await startTestStack({ queues: false, env: { SWEEP_SCHEDULE: "0 0 0 1 1 *" } });
    dir = mkdtempSync(join(tmpdir(), "nbd-it-"));
    const item = await protect("nbd-proto");
    itemId = item.id;
    images.os = join(dir, "os.img");
    images.data0 = join(dir, "data0.img");
    sock = join(dir, "nbd.sock");
    agent = await Agent.start({
      url: stack.url,
      token: item.token,
      stateDir: join(dir, "state"),
      disks: [
        { id: "os", path: images.os, kind: "tracked" },
        { id: "data0", path: images.data0, kind: "tracked" },
      ],
      sealIntervalMs: 50,
      nbd: { socketPath: sock, tcp: { host: "127.0.0.1", port: 0 } },
    });
  });

  after(async () => {
    await agent?.stop();
    await stack?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function protect(name: string): Promise<{ id: string; token: string }> {
    const res = await stack.api("POST", "replicated-items", enableBody(name));
    assert.equal(res.status, 201, JSON.stringify(res.body));
    return { id: res.body.id, token: res.body.agentRegistration.token };
  }

  const url = (exp: string) => nbdUnixUrl(sock, exp);
  const imageAt = (path: string, offset: number, length: number) => readFileSync(path).subarray(offset, offset + length);

  /** A fresh client is served: a write and its read-back through qemu-io. */
  async function assertStillServing(): Promise<void> {
    await qemuIo(url("os"), ["write -P 0x5a 15m 4k", "read -P 0x5a 15m 4k"]);
  }

  /** The disk's shipped stream, replayed from the cache, rebuilds the image: every acknowledged write is in it. */
  async function assertStreamEqualsImage(diskId: "os" | "data0"): Promise<void> {
    await agent.flush();
    await agent.waitIdle(60_000);
    const { image } = await replayDisk(stack, itemId, diskId, { untilSeq: agent.status().disks[diskId]!.nextSeq - 1 });
    assert.ok(image.equals(readFileSync(images[diskId])), `the replication stream of ${diskId} rebuilds its image`);
  }

  test("the socket is created with mode 0600 and the TCP listener is on loopback", () => {
    const st = statSync(sock);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(agent.nbdAddress?.socketPath, sock);
    assert.equal(agent.nbdAddress?.tcp?.host, "127.0.0.1");
    assert.ok((agent.nbdAddress?.tcp?.port ?? 0) > 0);
  });

  test("nbdinfo --list shows every disk as an export with its size", async () => {
    const r = await runTool("nbdinfo", ["--list", `nbd+unix://?socket=${sock}`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /export="os":\s+export-size: 16777216\b/);
    assert.match(r.stdout, /export="data0":\s+export-size: 8388608\b/);
    assert.match(r.stdout, /can_flush: true/);
    assert.match(r.stdout, /can_fua: true/);
    assert.match(r.stdout, /can_trim: true/);
    assert.match(r.stdout, /can_zero: true/);
  });

  test("qemu-io: patterned writes, a FUA write, write-zeroes, discard and flush land in the image and in the replication stream", async () => {
    await qemuIo(url("data0"), [
      "write -P 0x11 0 64k",
      "write -f -P 0x22 64k 64k",
      "write -P 0x33 1m 256k",
      "write -z 1m 128k",
      "write -P 0x44 3m 64k",
      "discard 3m 64k",
      "flush",
      "read -P 0x11 0 64k",
      "read -P 0x22 64k 64k",
      "read -P 0 1m 128k",
      "read -P 0x33 1152k 128k",
    ]);
    assert.ok(imageAt(images.data0, 0, 64 * KiB).equals(Buffer.alloc(64 * KiB, 0x11)));
    assert.ok(imageAt(images.data0, 64 * KiB, 64 * KiB).equals(Buffer.alloc(64 * KiB, 0x22)));
    assert.ok(imageAt(images.data0, 1 * MiB, 128 * KiB).equals(Buffer.alloc(128 * KiB)), "write-zeroes zeroed the range");
    assert.ok(imageAt(images.data0, 1 * MiB + 128 * KiB, 128 * KiB).equals(Buffer.alloc(128 * KiB, 0x33)));
    // TRIM is acknowledged and leaves the bytes (contents after a discard are unspecified; image and replica stay equal).
    assert.ok(imageAt(images.data0, 3 * MiB, 64 * KiB).equals(Buffer.alloc(64 * KiB, 0x44)), "discard left the range as it was");
    // The default cache mode (writethrough) sends FUA on every write.
    await qemuIo(url("data0"), ["write -P 0x55 2m 4k", "read -P 0x55 2m 4k"], "writethrough");
    assert.ok(imageAt(images.data0, 2 * MiB, 4 * KiB).equals(Buffer.alloc(4 * KiB, 0x55)));

    const cmp = await runTool("qemu-img", ["compare", "-f", "raw", "-F", "raw", url("data0"), images.data0]);
    assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
    assert.match(cmp.stdout, /Images are identical/);
    await assertStreamEqualsImage("data0");
  });

  test("nbdcopy of a whole image into an export: the export, the image and the replication stream equal the source", async () => {
    const source = join(dir, "source.img");
    writeFileSync(source, randomBytes(rng(7), 8 * MiB));
    const r = await runTool("nbdcopy", [source, url("data0")]);
    assert.equal(r.code, 0, r.stderr);
    const cmp = await runTool("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, url("data0")]);
    assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
    assert.ok(readFileSync(images.data0).equals(readFileSync(source)), "the image is the source");
    await assertStreamEqualsImage("data0");
  });

  test("several clients at once, on two exports and on the same export, each see their own writes", async () => {
    const jobs: Promise<string>[] = [];
    for (let i = 0; i < 3; i++) {
      // Each client writes 16 x 64 KiB in its own 1 MiB region, then reads the region back.
      const client = (exp: string, pattern: number) =>
        qemuIo(url(exp), [...Array.from({ length: 16 }, (_, k) => `write -P ${pattern} ${i * MiB + k * 64 * KiB} 64k`), `read -P ${pattern} ${i * MiB} 1m`]);
      jobs.push(client("os", 0x60 + i), client("data0", 0x70 + i));
    }
    await Promise.all(jobs);
    for (let i = 0; i < 3; i++) {
      assert.ok(imageAt(images.os, i * MiB, MiB).equals(Buffer.alloc(MiB, 0x60 + i)), `os region ${i}`);
      assert.ok(imageAt(images.data0, i * MiB, MiB).equals(Buffer.alloc(MiB, 0x70 + i)), `data0 region ${i}`);
    }
  });

  test("the TCP listener serves the same exports", async () => {
    const tcp = agent.nbdAddress!.tcp!;
    await qemuIo(`nbd://${tcp.host}:${tcp.port}/os`, ["write -P 0x77 14m 64k", "read -P 0x77 14m 64k"]);
    assert.ok(imageAt(images.os, 14 * MiB, 64 * KiB).equals(Buffer.alloc(64 * KiB, 0x77)));
  });

  test("overlapping writes in flight at once are applied in the order received", async () => {
    const c = await RawNbdClient.open(sock, "data0");
    try {
      // 32 overlapping writes sent back to back without waiting: the last one received wins, byte for byte.
      const handles: string[] = [];
      for (let i = 0; i < 32; i++) handles.push(c.request(Cmd.WRITE, 5 * MiB + i * 512, 64 * KiB, { payload: Buffer.alloc(64 * KiB, i + 1) }).toString("hex"));
      const replies = [];
      for (let i = 0; i < 32; i++) replies.push(await c.reply());
      assert.ok(replies.every((r) => r.error === 0));
      assert.deepEqual(replies.map((r) => r.handle.toString("hex")).sort(), [...handles].sort());
      const got = imageAt(images.data0, 5 * MiB, 31 * 512 + 64 * KiB);
      for (let i = 0; i < 32; i++) assert.equal(got[i * 512], i + 1, `at ${i * 512}`);
      assert.ok(got.subarray(31 * 512).equals(Buffer.alloc(64 * KiB, 32)));
    } finally {
      c.destroy();
    }
  });

  describe("hostile clients get the protocol's error or a closed connection, and the agent keeps serving", () => {
    test("a bad magic in the handshake closes the connection", async () => {
      const c = await RawNbdClient.connect(sock);
      const hello = await c.greet();
      assert.equal(hello.magic, 0x4e42444d41474943n);
      assert.equal(hello.flags & 1, 1, "fixed newstyle");
      c.send(encodeOption(Opt.GO, Buffer.alloc(6), 0x1234567890abcdefn));
      assert.equal(await c.closedWithoutReply(), true);
      await assertStillServing();
    });

    test("an unknown option is refused with NBD_REP_ERR_UNSUP and GO still works after it", async () => {
      const c = await RawNbdClient.connect(sock);
      try {
        await c.greet();
        c.send(encodeOption(99, Buffer.from("whatever")));
        const r = await c.optionReply();
        assert.equal(r.option, 99);
        assert.equal(r.type, Rep.ERR_UNSUP);
        c.send(encodeOption(Opt.STRUCTURED_REPLY));
        assert.equal((await c.optionReply()).type, Rep.ERR_UNSUP);
        const unknown = await c.go("nope");
        assert.equal(unknown[unknown.length - 1]!.type, Rep.ERR_UNKNOWN);
        assert.match(unknown[unknown.length - 1]!.data.toString(), /no export named 'nope' \(exports: os, data0\)/);
        const go = await c.go("os");
        assert.deepEqual(
          go.map((x) => x.type),
          [Rep.INFO, Rep.INFO, Rep.ACK],
        );
        const info = go[0]!.data;
        assert.equal(info.readUInt16BE(0), 0, "NBD_INFO_EXPORT");
        assert.equal(Number(info.readBigUInt64BE(2)), 16 * MiB);
        const bs = go[1]!.data;
        assert.deepEqual([bs.readUInt16BE(0), bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)], [3, 1, 4096, 32 * MiB]);
        c.request(Cmd.READ, 15 * MiB, 4096);
        const read = await c.reply(4096);
        assert.equal(read.error, 0);
      } finally {
        c.destroy();
      }
    });

    test("NBD_OPT_LIST with data is invalid; NBD_OPT_ABORT is acknowledged and closes", async () => {
      const c = await RawNbdClient.connect(sock);
      await c.greet();
      c.send(encodeOption(Opt.LIST, Buffer.from("x")));
      assert.equal((await c.optionReply()).type, Rep.ERR_INVALID);
      c.send(encodeOption(Opt.ABORT));
      assert.equal((await c.optionReply()).type, Rep.ACK);
      assert.equal(await c.closedWithoutReply(), true);
    });

    test("a bad request magic closes the connection with nothing written", async () => {
      const before = imageAt(images.data0, 6 * MiB, 4096);
      const c = await RawNbdClient.open(sock, "data0");
      c.request(Cmd.WRITE, 6 * MiB, 4096, { magic: 0xdeadbeef, payload: Buffer.alloc(4096, 0xee) });
      assert.equal(await c.closedWithoutReply(), true);
      assert.ok(imageAt(images.data0, 6 * MiB, 4096).equals(before), "nothing written");
      await assertStillServing();
    });

    test("an unknown command gets NBD_EINVAL and the connection goes on", async () => {
      const c = await RawNbdClient.open(sock, "os");
      try {
        c.request(9, 0, 4096);
        assert.equal((await c.reply()).error, NbdErr.EINVAL);
        c.request(Cmd.WRITE, 0, 4096, { flags: CmdFlag.DF, payload: Buffer.alloc(4096, 0xee) });
        assert.equal((await c.reply()).error, NbdErr.EINVAL, "a flag that does not apply");
        c.request(Cmd.READ, 15 * MiB, 4096);
        assert.equal((await c.reply(4096)).error, 0);
      } finally {
        c.destroy();
      }
      assert.notEqual(imageAt(images.os, 0, 1)[0], 0xee);
    });

    test("an oversized READ gets NBD_EINVAL; an oversized WRITE gets NBD_EINVAL and the connection is closed, nothing written", async () => {
      const before = imageAt(images.data0, 7 * MiB, 64 * KiB);
      const c = await RawNbdClient.open(sock, "data0");
      c.request(Cmd.READ, 0, 64 * MiB);
      assert.equal((await c.reply()).error, NbdErr.EINVAL);
      c.request(Cmd.WRITE, 7 * MiB, 33 * MiB, { payload: Buffer.alloc(64 * KiB, 0xee) });
      assert.equal((await c.reply()).error, NbdErr.EINVAL);
      assert.equal(await c.closedWithoutReply(), true);
      assert.ok(imageAt(images.data0, 7 * MiB, 64 * KiB).equals(before), "nothing written");
      await assertStillServing();
    });

    test("offsets past the end: READ and TRIM get NBD_EINVAL, WRITE and WRITE_ZEROES NBD_ENOSPC, nothing written", async () => {
      const end = 8 * MiB;
      const tail = imageAt(images.data0, end - 512, 512);
      const c = await RawNbdClient.open(sock, "data0");
      try {
        c.request(Cmd.READ, end - 512, 4096);
        assert.equal((await c.reply()).error, NbdErr.EINVAL);
        c.request(Cmd.WRITE, end - 512, 4096, { payload: Buffer.alloc(4096, 0xee) });
        assert.equal((await c.reply()).error, NbdErr.ENOSPC);
        c.request(Cmd.WRITE_ZEROES, end, 4096);
        assert.equal((await c.reply()).error, NbdErr.ENOSPC);
        c.request(Cmd.TRIM, 2 ** 60, 4096);
        assert.equal((await c.reply()).error, NbdErr.EINVAL);
        c.request(Cmd.WRITE, 2 ** 62, 512, { payload: Buffer.alloc(512, 0xee) });
        assert.equal((await c.reply()).error, NbdErr.ENOSPC);
        // The payload of the refused write was consumed: the stream is still in step.
        c.request(Cmd.READ, end - 512, 512);
        const last = await c.reply(512);
        assert.equal(last.error, 0);
        assert.ok(last.data.equals(tail));
      } finally {
        c.destroy();
      }
      assert.ok(imageAt(images.data0, end - 512, 512).equals(tail));
      assert.equal(statSync(images.data0).size, 8 * MiB, "the image did not grow");
    });

    test("a client that vanishes mid-payload leaves nothing of its write, in the image or the replication stream", async () => {
      const before = imageAt(images.data0, 6 * MiB + 64 * KiB, 256 * KiB);
      const c = await RawNbdClient.open(sock, "data0");
      c.request(Cmd.WRITE, 6 * MiB + 64 * KiB, 256 * KiB);
      c.send(Buffer.alloc(100 * KiB, 0xee));
      await new Promise<void>((r) => c.socket.end(r));
      c.destroy();
      await c.closed;
      await assertStillServing();
      assert.ok(imageAt(images.data0, 6 * MiB + 64 * KiB, 256 * KiB).equals(before), "nothing written");
      await assertStreamEqualsImage("data0");
    });

    test("writes refused for a planned failover's shutdown get NBD_ESHUTDOWN; reads go on", async () => {
      const disk = agent.trackedDisk("os");
      const before = imageAt(images.os, 13 * MiB, 4096);
      const c = await RawNbdClient.open(sock, "os");
      try {
        disk.refuseWrites("test: planned failover");
        c.request(Cmd.WRITE, 13 * MiB, 4096, { payload: Buffer.alloc(4096, 0xee) });
        assert.equal((await c.reply()).error, NbdErr.ESHUTDOWN);
        c.request(Cmd.WRITE_ZEROES, 13 * MiB, 4096);
        assert.equal((await c.reply()).error, NbdErr.ESHUTDOWN);
        c.request(Cmd.READ, 13 * MiB, 4096);
        assert.equal((await c.reply(4096)).error, 0);
      } finally {
        disk.acceptWrites();
        c.destroy();
      }
      assert.ok(imageAt(images.os, 13 * MiB, 4096).equals(before));
      await assertStillServing();
    });
  });

  describe("exclusive access", () => {
    test("a second agent on the same images is refused, naming the holder; its state directory is left unlocked", async () => {
      const other = await protect("nbd-second");
      const start = () =>
        Agent.start({
          url: stack.url,
          token: other.token,
          stateDir: join(dir, "second-state"),
          disks: [
            { id: "os", path: join(dir, "second-os.img"), kind: "tracked" },
            { id: "data0", path: images.data0, kind: "tracked" },
          ],
          nbd: { socketPath: join(dir, "second.sock") },
        });
      await assert.rejects(start, /disk data0: .*data0\.img is already served by an agent in this process/);
      assert.ok(existsSync(imageLockPath(images.data0)), "the first agent's lock stays");
      assert.equal(existsSync(imageLockPath(join(dir, "second-os.img"))), false, "the lock it took on os was released");
      assert.equal(existsSync(join(dir, "second.sock")), false, "no socket");
      // Another process's lock: the pid of a live process (this one's parent) in the lock file of a fresh image.
      const fresh = join(dir, "third-data0.img");
      writeFileSync(imageLockPath(fresh), String(process.ppid));
      await assert.rejects(
        Agent.start({
          url: stack.url,
          token: other.token,
          stateDir: join(dir, "second-state"),
          disks: [{ id: "data0", path: fresh, kind: "tracked" }],
          nbd: { socketPath: join(dir, "second.sock") },
        }),
        new RegExp(`already served by another agent \\(pid ${process.ppid}`),
      );
      rmSync(imageLockPath(fresh));
    });

    test("a lock left by an agent that is gone is taken over", async () => {
      const other = await protect("nbd-stale");
      const os = join(dir, "stale-os.img");
      const data0 = join(dir, "stale-data0.img");
      writeFileSync(imageLockPath(os), "999999999");
      const a = await Agent.start({
        url: stack.url,
        token: other.token,
        stateDir: join(dir, "stale-state"),
        disks: [
          { id: "os", path: os, kind: "tracked" },
          { id: "data0", path: data0, kind: "tracked" },
        ],
        nbd: { socketPath: join(dir, "stale.sock") },
      });
      try {
        assert.equal(readFileSync(imageLockPath(os), "utf8"), String(process.pid));
      } finally {
        await a.stop();
      }
      assert.equal(existsSync(imageLockPath(os)), false, "released at stop");
      assert.equal(existsSync(join(dir, "stale.sock")), false, "the socket is removed at stop");
    });

    test(
      `a block device is opened with O_EXCL: a second agent on it is refused${hasLoop ? "" : " (skipped: needs loop devices and root)"}`,
      { skip: !hasLoop },
      async () => {
        const backing = join(dir, "loop-data0.img");
        writeFileSync(backing, Buffer.alloc(8 * MiB));
        const lo = await runTool("losetup", ["-f", "--show", backing]);
        assert.equal(lo.code, 0, lo.stderr);
        const device = lo.stdout.trim();
        const first = await protect("nbd-dev-1");
        const second = await protect("nbd-dev-2");
        const a = await Agent.start({
          url: stack.url,
          token: first.token,
          stateDir: join(dir, "dev1-state"),
          disks: [
            { id: "os", path: join(dir, "dev1-os.img"), kind: "tracked" },
            { id: "data0", path: device, kind: "tracked" },
          ],
          nbd: { socketPath: join(dir, "dev1.sock") },
        });
        try {
          await qemuIo(nbdUnixUrl(join(dir, "dev1.sock"), "data0"), ["write -P 0x42 0 64k", "flush"]);
          assert.ok(
            readFileSync(backing)
              .subarray(0, 64 * KiB)
              .equals(Buffer.alloc(64 * KiB, 0x42)),
            "written through to the device",
          );
          await assert.rejects(
            Agent.start({
              url: stack.url,
              token: second.token,
              stateDir: join(dir, "dev2-state"),
              disks: [{ id: "data0", path: device, kind: "tracked" }],
              nbd: { socketPath: join(dir, "dev2.sock") },
            }),
            /disk data0: \/dev\/loop\d+ is in use — mounted, or held exclusively/,
          );
          const mkfs = await runTool("mkfs.ext4", ["-q", "-F", device]);
          assert.notEqual(mkfs.code, 0, "mkfs cannot open the device exclusively either");
        } finally {
          await a.stop();
          await runTool("losetup", ["-d", device]);
        }
      },
    );
  });

  describe("the state directory is never on an exported disk", () => {
    test("a state directory equal to or inside an exported path is refused", () => {
      const exported = join(dir, "exported-dir");
      mkdirSync(join(exported, "state"), { recursive: true });
      assert.throws(
        () => refuseStateDirOnExports(join(exported, "state"), [{ diskId: "data0", path: exported }]),
        /state directory .* is on disk data0, which this agent exports over NBD \(it is .* itself or inside it\)/,
      );
      assert.throws(() => refuseStateDirOnExports(exported, [{ diskId: "data0", path: exported }]), /is on disk data0/);
      assert.doesNotThrow(() => refuseStateDirOnExports(join(dir, "state"), [{ diskId: "data0", path: images.data0 }]));
    });

    /** An ext4 filesystem in `image` on a loop device, mounted; returns the mount point and the device. */
    async function mountedLoop(image: string): Promise<{ mnt: string; device: string; cleanup: () => Promise<void> }> {
      writeFileSync(image, Buffer.alloc(16 * MiB));
      const mk = await runTool("mkfs.ext4", ["-q", "-F", image]);
      assert.equal(mk.code, 0, mk.stderr);
      const lo = await runTool("losetup", ["-f", "--show", image]);
      assert.equal(lo.code, 0, lo.stderr);
      const device = lo.stdout.trim();
      const mnt = mkdtempSync(join(tmpdir(), "nbd-mnt-"));
      const m = await runTool("mount", [device, mnt]);
      if (m.code !== 0) {
        await runTool("losetup", ["-d", device]);
        assert.fail(`mount: ${m.stderr}`);
      }
      return {
        mnt,
        device,
        cleanup: async () => {
          await runTool("umount", [mnt]);
          await runTool("losetup", ["-d", device]);
          rmSync(mnt, { recursive: true, force: true });
        },
      };
    }

    test(
      `a state directory on a loop device backed by an exported image is refused at start${hasLoop ? "" : " (skipped: needs loop devices and root)"}`,
      { skip: !hasLoop },
      async () => {
        const image = join(dir, "fs-data0.img");
        const m = await mountedLoop(image);
        try {
          await assert.rejects(
            Agent.start({
              url: stack.url,
              token: "unused",
              stateDir: join(m.mnt, "state"),
              disks: [{ id: "data0", path: image, kind: "tracked" }],
              nbd: { socketPath: join(dir, "refused.sock") },
            }),
            new RegExp(`is on disk data0, which this agent exports over NBD \\(its filesystem is on loop device .* backed by ${image}`),
          );
        } finally {
          await m.cleanup();
        }
      },
    );

    test(
      `a state directory on a filesystem whose device is an exported block device is refused at start${hasLoop ? "" : " (skipped: needs loop devices and root)"}`,
      { skip: !hasLoop },
      async () => {
        const m = await mountedLoop(join(dir, "fs-dev.img"));
        try {
          await assert.rejects(
            Agent.start({
              url: stack.url,
              token: "unused",
              stateDir: join(m.mnt, "state"),
              disks: [{ id: "data0", path: m.device, kind: "tracked" }],
              nbd: { socketPath: join(dir, "refused.sock") },
            }),
            /is on disk data0, which this agent exports over NBD \(its filesystem is on device \d+:\d+, the exported block device\)/,
          );
        } finally {
          await m.cleanup();
        }
      },
    );
  });
});
