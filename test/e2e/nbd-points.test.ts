// Exact recovery points through the NBD front end: two CLI agents (a replication group of two VMs, two disks each) written by qemu-io; every sealed point equals the byte model at its tag on every disk.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QemuIo } from "../../cli/qemu-io";
import { randomBytes, rng } from "../support/batches";
import { CLI, killChildren, runChild, stopChild, until } from "../support/children";
import { enableBody } from "../support/requests";
import { startTestStack, type TestStack } from "../support/stack";
import { replicaBlobName } from "../../shared/protection/items";

const MiB = 1024 * 1024;
const GROUP = "nbd-tier";
const WRITE_SECONDS = 30;

/** One acknowledged write, with when the test sent it and when qemu-io reported it done (ms, sub-ms precision). */
interface AckedWrite {
  offset: number;
  length: number;
  pattern: number;
  sentAt: number;
  ackedAt: number;
}

interface Point {
  id: string;
  kind: string;
  time: string;
  scope: "vm" | "group";
  /** Group points name each disk's item; VM points leave it out. */
  disks: { itemId?: string; diskId: string; snapshot: string }[];
}

const now = () => performance.timeOrigin + performance.now();

describe("exact recovery points through NBD (qemu-io → CLI agents → replicas)", () => {
  let stack: TestStack;
  let dir: string;
  before(async () => {
    // Agents check in every 2 s, so the group's barrier forms within seconds of both agents starting.
    stack = await startTestStack({ env: { AGENT_CHECKIN_SECONDS: "2" } });
    dir = mkdtempSync(join(tmpdir(), "nbd-points-"));
  });
  after(async () => {
    await killChildren();
    await stack?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a group of two VMs written by qemu-io: every sealed point, VM and group, is a prefix of the acknowledged writes at its tag's instant on all four disks", async () => {
    const policy = { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 10, appConsistentFrequencyMinutes: 0 };
    const vms: { name: string; id: string; sock: string; images: Record<string, string>; base: Record<string, Buffer>; agent?: ReturnType<typeof runChild> }[] =
      [];
    for (const [i, name] of ["nbd-web", "nbd-db"].entries()) {
      const body = enableBody(name, { policy, replicationGroup: GROUP });
      const res = await stack.api("POST", "replicated-items", body);
      assert.equal(res.status, 201, JSON.stringify(res.body));
      const next = rng(40 + i);
      const images: Record<string, string> = {};
      const base: Record<string, Buffer> = {};
      for (const d of body.vm.disks) {
        const bytes = Buffer.alloc(d.sizeBytes);
        randomBytes(next, MiB).copy(bytes, 2 * MiB);
        images[d.id] = join(dir, `${name}-${d.id}.img`);
        base[d.id] = bytes;
        writeFileSync(images[d.id]!, bytes);
      }
      const sock = join(dir, `${name}.sock`);
      const vm = { name, id: res.body.id as string, sock, images, base };
      vms.push(vm);
      const agent = runChild([
        CLI,
        "--url",
        stack.url,
        "agent",
        "--token",
        res.body.agentRegistration.token,
        ...Object.entries(images).flatMap(([id, path]) => ["--disk", `${id}=${path}`]),
        "--state-dir",
        join(dir, `${name}-state`),
        "--nbd",
        sock,
        "--group-port",
        "0",
        "--group-host",
        "127.0.0.1",
      ]);
      Object.assign(vm, { agent });
    }
    const writes = new Map<string, AckedWrite[]>();
    const output = () => vms.map((v) => `--- ${v.name}\n${v.agent!.output()}`).join("\n");
    try {
      await until(
        "both items Protected",
        async () => {
          for (const v of vms) if ((await stack.api("GET", `replicated-items/${v.id}`)).body.state !== "Protected") return false;
          return vms.every((v) => existsSync(v.sock));
        },
        90_000,
        output,
      );
      const groupPoints = async () =>
        (await stack.api("GET", `replicated-items/${vms[0]!.id}/recovery-points`)).body.filter((p: Point) => p.scope === "group").length;
      await until("the group's barrier formed (a first group point)", async () => (await groupPoints()) > 0, 60_000, output);

      // One sequential qemu-io writer per disk: overlapping, 512-aligned writes, each with its own byte pattern.
      const started = now();
      await Promise.all(
        vms.flatMap((v, vi) =>
          Object.keys(v.images).map(async (diskId, di) => {
            const io = QemuIo.open(`nbd+unix:///${diskId}?socket=${v.sock}`);
            const log: AckedWrite[] = [];
            writes.set(`${v.id}/${diskId}`, log);
            const next = rng(100 + vi * 10 + di);
            const sectors = v.base[diskId]!.length / 512;
            try {
              while (now() - started < WRITE_SECONDS * 1000) {
                const length = 512 * (1 + Math.floor(next() * 128));
                const offset = 512 * Math.floor(next() * (sectors - length / 512));
                const pattern = 1 + (log.length % 255);
                const sentAt = now();
                await io.write(offset, length, pattern);
                log.push({ offset, length, pattern, sentAt, ackedAt: now() });
                if (log.length % 8 === 0) await new Promise((r) => setTimeout(r, 5));
              }
            } finally {
              await io.close();
            }
          }),
        ),
      );
      const ended = now();

      // Every point whose tag falls in the writing window, once sealed (the last may need a moment to apply).
      // Each item's list: its VM points, and the group points it is part of (their disks name every member's items).
      const all = async () =>
        (
          await Promise.all(
            vms.map(async (v) => ((await stack.api("GET", `replicated-items/${v.id}/recovery-points`)).body as Point[]).map((p) => ({ ...p, owner: v.id }))),
          )
        ).flat();
      let inWindow: (Point & { owner: string })[] = [];
      await until(
        "group points sealed during the writes",
        async () => {
          inWindow = (await all()).filter((p) => Date.parse(p.time) > started && Date.parse(p.time) < ended);
          return inWindow.filter((p) => p.scope === "group").length >= 2;
        },
        60_000,
        () =>
          `points in the window: ${JSON.stringify(inWindow.map((p) => [p.scope, p.time]))}, writes ${[...writes.values()].map((l) => l.length)}; window ${new Date(started).toISOString()}..${new Date(ended).toISOString()}\n${output()}`,
      );
      assert.ok(
        inWindow.some((p) => p.scope === "group"),
        "group points",
      );

      const replicas = await stack.services.storage.replicas();
      let verified = 0;
      for (const point of inWindow) {
        const t = Date.parse(point.time);
        for (const d of point.disks) {
          const itemId = d.itemId ?? point.owner;
          const v = vms.find((x) => x.id === itemId)!;
          const log = writes.get(`${itemId}/${d.diskId}`)!;
          const snap = await replicas
            .getPageBlobClient(replicaBlobName(itemId, d.diskId))
            .withSnapshot(d.snapshot)
            .downloadToBuffer(0, v.base[d.diskId]!.length);
          // Acknowledged before the cut ⇒ in the point; sent after it ⇒ not. The tag's time is whole milliseconds.
          const kmin = log.filter((w) => w.ackedAt < t).length;
          const kmax = log.filter((w) => w.sentAt < t + 1).length;
          const model = Buffer.from(v.base[d.diskId]!);
          for (const w of log.slice(0, kmin)) model.fill(w.pattern, w.offset, w.offset + w.length);
          let match = model.equals(snap);
          for (let k = kmin; k < kmax && !match; k++) {
            const w = log[k]!;
            model.fill(w.pattern, w.offset, w.offset + w.length);
            match = model.equals(snap);
          }
          assert.ok(
            match,
            `${point.scope} point ${point.id} (${point.time}) on ${v.name}/${d.diskId}: no prefix of writes ${kmin}..${kmax} of ${log.length} matches`,
          );
          verified++;
        }
      }
      assert.ok(verified >= 8, `${verified} point disks verified`);
      const total = [...writes.values()].reduce((n, l) => n + l.length, 0);
      assert.ok(total > 1000, `${total} writes acknowledged`);
    } finally {
      for (const v of vms) if (v.agent) assert.equal(await stopChild(v.agent.child), 0, v.agent.output());
    }
    // Every acknowledged write is in the image, in order.
    for (const v of vms) {
      for (const [diskId, path] of Object.entries(v.images)) {
        const model = Buffer.from(v.base[diskId]!);
        for (const w of writes.get(`${v.id}/${diskId}`)!) model.fill(w.pattern, w.offset, w.offset + w.length);
        assert.ok(readFileSync(path).equals(model), `${v.name}/${diskId}: the image holds every acknowledged write`);
      }
    }
  });
});
