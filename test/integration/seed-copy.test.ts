// The one-pass seed copy against real Azurite (two accounts): the pages that hold data arrive byte for byte, each 64 KiB block's CRC32C is kept, and the kept checksums are served only while the replica is exactly that seed.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BlobServiceClient, type ContainerClient } from "@azure/storage-blob";
import { crc32c } from "@node-rs/crc32";
import { bindSeedChecksums, copySeedPages, readSeedChecksums, storeSeedChecksums } from "../../shared/protection/seed-copy";
import { startTestStorage, type LocalStorage } from "../support/storage";

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;
const DISK = 12 * MiB;

describe("seed copy", () => {
  let storage: LocalStorage;
  let from: ContainerClient;
  let to: ContainerClient;

  before(async () => {
    storage = await startTestStorage();
    from = BlobServiceClient.fromConnectionString(storage.control).getContainerClient("replicas");
    to = BlobServiceClient.fromConnectionString(storage.cache).getContainerClient("replicas");
    await from.createIfNotExists();
    await to.createIfNotExists();
  });
  after(async () => {
    await storage?.stop();
  });

  test("a sparse disk with a footer is copied byte for byte across accounts, its checksums kept and served until the replica changes", async () => {
    const source = from.getPageBlobClient("item/os.vhd");
    await source.create(DISK + 512);
    // Data in a few places (one straddling a 4 MiB chunk boundary, one block written with zeros), and a footer.
    const writes: [number, Buffer][] = [
      [0, Buffer.alloc(BLOCK, 7)],
      [4 * MiB - 1024, Buffer.alloc(3 * 1024, 9)],
      [6 * MiB, Buffer.alloc(BLOCK)],
      [9 * MiB + 512, Buffer.from(Array.from({ length: 200 * 1024 }, (_, i) => (i * 31) & 0xff))],
      [DISK, Buffer.alloc(512, 0xcf)],
    ];
    for (const [at, bytes] of writes) await source.uploadPages(bytes, at, bytes.length);
    const target = to.getPageBlobClient("item/os.vhd");

    const sums = await copySeedPages(source, target, DISK + 512, DISK);

    const want = await source.downloadToBuffer();
    assert.ok((await target.downloadToBuffer()).equals(want), "the copy equals the source, footer included");
    assert.equal(sums.length, (DISK / BLOCK) * 4);
    for (let b = 0; b < DISK / BLOCK; b++) assert.equal(sums.readUInt32LE(b * 4), crc32c(want.subarray(b * BLOCK, (b + 1) * BLOCK)), `block ${b}`);

    await storeSeedChecksums(to, "item", "os", "seed-1", sums);
    const etag = (await target.getProperties()).etag!;
    assert.equal(await readSeedChecksums(to, "item", "os", "seed-1", etag, 0, DISK), undefined, "not served before the hand-over binds them");
    assert.equal(await bindSeedChecksums(to, "item", "os", "seed-1", etag), true);
    const served = await readSeedChecksums(to, "item", "os", "seed-1", etag, 2 * MiB, 4 * MiB);
    assert.deepEqual(
      served,
      Array.from({ length: (4 * MiB) / BLOCK }, (_, i) => sums.readUInt32LE(((2 * MiB) / BLOCK + i) * 4)),
    );
    assert.equal(await readSeedChecksums(to, "item", "os", "seed-2", etag, 0, DISK), undefined, "another resync's");

    await target.uploadPages(Buffer.alloc(512, 1), BLOCK * 3, 512);
    const moved = (await target.getProperties()).etag!;
    assert.notEqual(moved, etag);
    assert.equal(await readSeedChecksums(to, "item", "os", "seed-1", moved, 0, DISK), undefined, "a replica written since is read, not trusted");
  });
});
