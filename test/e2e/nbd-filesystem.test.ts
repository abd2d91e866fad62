// A real filesystem through the agent: ext4 made and used over NBD (nbdfuse + a loop device); every sealed recovery point of that disk is a filesystem that mounts and checks clean, and the newest holds the files synced before its tag.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes, rng } from "../support/batches";
import { CLI, killChildren, runChild, stopChild, until } from "../support/children";
import { enableBody } from "../support/requests";
import { startTestStack, type TestStack } from "../support/stack";
import { replicaBlobName } from "../../shared/protection/items";

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
const usable =
  process.getuid?.() === 0 &&
  existsSync("/dev/fuse") &&
  existsSync("/dev/loop-control") &&
  ["nbdfuse", "losetup", "mkfs.ext4", "e2fsck"].every((c) => spawnSync("sh", ["-c", `command -v ${c}`]).status === 0);
const why = usable ? "" : " — skipped: needs root, /dev/fuse, loop devices, nbdfuse and e2fsprogs";

interface Point {
  id: string;
  time: string;
  disks: { diskId: string; snapshot: string }[];
}

describe("a real filesystem through the agent's NBD front end", () => {
  let stack: TestStack;
  let dir: string;
  before(async () => {
    stack = await startTestStack();
    dir = mkdtempSync(join(tmpdir(), "nbd-fs-"));
  });
  after(async () => {
    await killChildren();
    await stack?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test(
    `ext4 over NBD: every sealed point of the disk mounts and passes e2fsck -fn; the newest holds the files synced before its tag${why}`,
    { skip: !usable },
    async () => {
      const policy = { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 10, appConsistentFrequencyMinutes: 0 };
      const body = enableBody("fs-vm", { policy });
      const res = await stack.api("POST", "replicated-items", body);
      assert.equal(res.status, 201, JSON.stringify(res.body));
      const itemId: string = res.body.id;
      const images = Object.fromEntries(body.vm.disks.map((d) => [d.id, join(dir, `${d.id}.img`)]));
      for (const d of body.vm.disks) writeFileSync(images[d.id]!, Buffer.alloc(0));
      const sock = join(dir, "agent.sock");
      const agent = runChild([
        CLI,
        "--url",
        stack.url,
        "agent",
        "--token",
        res.body.agentRegistration.token,
        ...Object.entries(images).flatMap(([id, path]) => ["--disk", `${id}=${path}`]),
        "--state-dir",
        join(dir, "state"),
        "--nbd",
        sock,
      ]);
      const fuseDir = join(dir, "fuse");
      const mnt = join(dir, "mnt");
      mkdirSync(fuseDir);
      mkdirSync(mnt);
      let fuse: ReturnType<typeof runChild> | undefined;
      let loop: string | undefined;
      let mounted = false;
      /** Files synced to the disk, and when the sync returned: what each later point must hold. */
      const synced: { at: number; files: Map<string, Buffer> }[] = [];
      try {
        await until(
          "the item Protected and the socket served",
          async () => existsSync(sock) && (await stack.api("GET", `replicated-items/${itemId}`)).body.state === "Protected",
          90_000,
          agent.output,
        );
        fuse = runChild([join(fuseDir, "os"), `nbd+unix:///os?socket=${sock}`], "nbdfuse");
        await until("nbdfuse's file", () => existsSync(join(fuseDir, "os")), 30_000, fuse.output);
        loop = sh("losetup", ["-f", "--show", join(fuseDir, "os")]).trim();
        sh("mkfs.ext4", ["-q", loop]);
        sh("mount", [loop, mnt]);
        mounted = true;

        const next = rng(9);
        const files = new Map<string, Buffer>();
        const start = Date.now();
        for (let round = 0; Date.now() - start < 28_000; round++) {
          for (let i = 0; i < 4; i++) {
            const name = `f-${round}-${i}`;
            const bytes = randomBytes(next, 4096 * (1 + Math.floor(next() * 32)));
            writeFileSync(join(mnt, name), bytes);
            files.set(name, bytes);
          }
          // Delete an older file now and then.
          const old = [...files.keys()][Math.floor(next() * files.size)];
          if (old && round % 3 === 2) {
            rmSync(join(mnt, old));
            files.delete(old);
          }
          sh("sync", ["-f", mnt]);
          synced.push({ at: Date.now(), files: new Map(files) });
          await new Promise((r) => setTimeout(r, 500));
        }
        sh("umount", [mnt]);
        mounted = false;
        sh("losetup", ["-d", loop]);
        loop = undefined;
        sh("fusermount3", ["-u", fuseDir]);
        await stopChild(fuse.child);

        // The points cut while the filesystem was in use, each sealed.
        let points: Point[] = [];
        await until(
          "two points cut while the filesystem was in use",
          async () => {
            points = ((await stack.api("GET", `replicated-items/${itemId}/recovery-points`)).body as Point[]).filter((p) => Date.parse(p.time) > start + 1000);
            return points.length >= 2;
          },
          60_000,
          agent.output,
        );

        const replicas = await stack.services.storage.replicas();
        const size = body.vm.disks.find((d) => d.id === "os")!.sizeBytes;
        const newest = points[0]!;
        for (const p of points) {
          const copy = join(dir, `point-${p.id}.img`);
          const snap = p.disks.find((d) => d.diskId === "os")!.snapshot;
          writeFileSync(copy, await replicas.getPageBlobClient(replicaBlobName(itemId, "os")).withSnapshot(snap).downloadToBuffer(0, size));
          // As a failed-over VM would: mount (ext4 replays its journal), read, unmount; then a forced read-only check.
          const pmnt = join(dir, `pmnt-${p.id}`);
          mkdirSync(pmnt);
          sh("mount", ["-o", "loop", copy, pmnt]);
          try {
            const names = readdirSync(pmnt).filter((n) => n.startsWith("f-"));
            // What was synced before the tag is there, whole; nothing that was deleted before it. A tag can fall while
            // the next round is on its way to the disk: that round's deletion may then be in the point already (a
            // crash-consistent point between two syncs), so a file the next round deletes may be there or not.
            const at = synced.filter((s) => s.at < Date.parse(p.time)).length - 1;
            const before = at >= 0 ? synced[at] : undefined;
            const next = synced[at + 1];
            if (before) {
              // On failure: when the sync returned against the tag, which files the point has, and the agent's last words.
              const context = () =>
                `; the sync returned at ${new Date(before.at).toISOString()} (${Date.parse(p.time) - before.at} ms before the tag), ` +
                `the point holds ${names.length} of its files; agent:\n${agent.output().split("\n").slice(-25).join("\n")}`;
              for (const [name, bytes] of before.files) {
                const mayBeGone = next !== undefined && !next.files.has(name);
                if (mayBeGone && !names.includes(name)) continue;
                assert.ok(names.includes(name), `point ${p.time}: ${name} (synced before the tag) is there${names.includes(name) ? "" : context()}`);
                assert.ok(readFileSync(join(pmnt, name)).equals(bytes), `point ${p.time}: ${name} holds its bytes`);
              }
            }
            const deleted = before
              ? synced
                  .filter((s) => s.at <= before.at)
                  .flatMap((s) => [...s.files.keys()])
                  .filter((n) => !before.files.has(n))
              : [];
            for (const name of deleted) assert.ok(!names.includes(name), `point ${p.time}: ${name} (deleted and synced before the tag) is gone`);
            if (p === newest) assert.ok(before && before.files.size > 0, "the newest point follows synced files");
          } finally {
            sh("umount", [pmnt]);
          }
          const fsck = spawnSync("e2fsck", ["-fn", copy], { encoding: "utf8" });
          assert.equal(fsck.status, 0, `point ${p.time}: e2fsck -fn\n${fsck.stdout}${fsck.stderr}`);
        }
      } finally {
        if (mounted) spawnSync("umount", ["-l", mnt]);
        if (loop) spawnSync("losetup", ["-d", loop]);
        if (fuse) {
          spawnSync("fusermount3", ["-u", fuseDir]);
          await stopChild(fuse.child);
        }
        assert.equal(await stopChild(agent.child), 0, agent.output());
      }
    },
  );
});
