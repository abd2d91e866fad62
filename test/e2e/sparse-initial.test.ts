// Initial replication of a sparse image through the CLI agent reads where the image holds data, not its holes: the replica equals the image, and the agent read far less than the disk.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DataMap } from "../../agent/data-map";
import { randomBytes, rng } from "../support/batches";
import { CLI, killChildren, runChild, stopChild, until } from "../support/children";
import { enableBody } from "../support/requests";
import { startTestStack, type TestStack } from "../support/stack";
import { replicaBlobName } from "../../shared/protection/items";

const MiB = 1024 * 1024;
const DISK_MIB = 256;
/** Data pieces (offset MiB, length MiB) in an otherwise sparse image; one straddles a 64 KiB block boundary. */
const PIECES: [number, number][] = [
  [0, 1],
  [37.53125, 2],
  [200, 3],
  [DISK_MIB - 1, 1],
];

/** Bytes the process has read through read(2) and its kind (its files, sockets, pipes): /proc/<pid>/io. */
function bytesRead(pid: number): number {
  return Number(/rchar: (\d+)/.exec(readFileSync(`/proc/${pid}/io`, "utf8"))![1]);
}

describe("initial replication of a sparse image", () => {
  let stack: TestStack;
  let dir: string;
  before(async () => {
    stack = await startTestStack();
    dir = mkdtempSync(join(tmpdir(), "sparse-initial-"));
  });
  after(async () => {
    await killChildren();
    await stack?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  function sparseImage(name: string): string {
    const path = join(dir, `${name}.img`);
    const fd = openSync(path, "w");
    const next = rng(name.length);
    ftruncateSync(fd, DISK_MIB * MiB);
    for (const [at, len] of PIECES) writeSync(fd, randomBytes(next, len * MiB), 0, len * MiB, at * MiB);
    closeSync(fd);
    return path;
  }

  test("the data map names the pieces written and nothing else", async () => {
    const path = sparseImage("map");
    const map = (await DataMap.of(path))!;
    assert.ok(map, "python3 and SEEK_DATA give a map here");
    for (const [at] of PIECES) assert.equal(map.nextData(at * MiB), at * MiB, `data at ${at} MiB`);
    assert.equal(map.nextData(1 * MiB), Math.floor((37.53125 * MiB) / 4096) * 4096, "the hole after the first piece ends where the second begins");
    assert.equal(map.nextData(210 * MiB), (DISK_MIB - 1) * MiB);
    // In whole 64 KiB blocks: the hole ends at the block holding the second piece's first byte; a block of data ends none.
    const block = 64 * 1024;
    assert.equal(map.holeEnd(1 * MiB, block, DISK_MIB * MiB), 37.5 * MiB);
    assert.equal(map.holeEnd(203 * MiB, block, DISK_MIB * MiB), (DISK_MIB - 1) * MiB);
    assert.equal(map.holeEnd(200 * MiB, block, DISK_MIB * MiB), 200 * MiB, "a block with data is no hole");
    const dense = join(dir, "dense.img");
    writeFileSync(dense, Buffer.alloc(MiB, 1));
    assert.equal(await DataMap.of(dense), undefined, "a file without holes has no map (nothing to skip)");
  });

  for (const nbd of [false, true]) {
    test(`${nbd ? "NBD (tracked)" : "scanned"} disk: the replica equals the image, and the CLI agent read less than half the disk`, async () => {
      const name = nbd ? "sparse-nbd" : "sparse-scan";
      const body = enableBody(name);
      body.vm.disks = [{ id: "os", sizeBytes: DISK_MIB * MiB }];
      const res = await stack.api("POST", "replicated-items", body);
      assert.equal(res.status, 201, JSON.stringify(res.body));
      const image = sparseImage(name);
      const agent = runChild([
        CLI,
        "--url",
        stack.url,
        "agent",
        "--token",
        res.body.agentRegistration.token,
        "--disk",
        `os=${image}`,
        "--state-dir",
        join(dir, `${name}-state`),
        ...(nbd ? ["--nbd", join(dir, `${name}.sock`)] : []),
      ]);
      try {
        await until("Protected", async () => (await stack.api("GET", `replicated-items/${res.body.id}`)).body.state === "Protected", 120_000, agent.output);
        const read = bytesRead(agent.child.pid!);
        assert.ok(
          read < (DISK_MIB * MiB) / 2,
          `the agent read ${(read / MiB).toFixed(1)} MiB for a ${DISK_MIB} MiB disk holding ${PIECES.reduce((n, p) => n + p[1], 0)} MiB`,
        );
        assert.doesNotMatch(agent.output(), /no map of where/);
        const replicas = await stack.services.storage.replicas();
        const replica = await replicas.getPageBlobClient(replicaBlobName(res.body.id, "os")).downloadToBuffer(0, DISK_MIB * MiB);
        assert.ok(replica.equals(readFileSync(image)), "the replica equals the image");
      } finally {
        assert.equal(await stopChild(agent.child), 0, agent.output());
      }
    });
  }
});
