// The agent's storage client (plain REST over SAS URLs) against Azurite: what it writes is what the service side reads,
// and storage's refusals reach the shipper's retry rules as the status codes they are.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type RequestListener } from "node:http";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BlobServiceClient } from "@azure/storage-blob";
import { QueueServiceClient } from "@azure/storage-queue";
import { CacheClient, StorageRequestError } from "../../agent/cache-client";
import { Health } from "../../agent/health";
import { classify, describe } from "../../agent/retry";
import { Shipper, UPLOAD_CHUNK_BYTES } from "../../agent/shipper";
import { Spool } from "../../agent/spool";
import { freePort } from "../../local/process";
import { parseConnectionString } from "../../shared/config/settings";
import { batchBlobName, decodeBatch, encodeBatchHeader } from "../../shared/replication/batch";
import { AgentSas } from "../../shared/storage/sas";
import { startTestStorage, type LocalStorage } from "../support/storage";

let storage: LocalStorage;
let blobs: BlobServiceClient;
let queues: QueueServiceClient;
let sas: AgentSas;
const HOUR = 3600_000;

before(async () => {
  storage = await startTestStorage();
  blobs = BlobServiceClient.fromConnectionString(storage.cache);
  queues = QueueServiceClient.fromConnectionString(storage.control);
  const unused = () => Promise.reject(new Error("keyed accounts need no delegation key"));
  sas = new AgentSas({
    cache: parseConnectionString(storage.cache),
    control: parseConnectionString(storage.control),
    cacheBlobKey: unused,
    controlQueueKey: unused,
    now: () => new Date(),
  });
});
after(async () => {
  await storage?.stop();
});

/** A container and a queue, and the endpoints an agent gets for them (SAS as the check-in signs them). */
async function endpoints(name: string, validForMs = HOUR) {
  const container = blobs.getContainerClient(name);
  await container.create();
  const queue = queues.getQueueClient(name);
  await queue.create();
  const from = new Date(Date.now() - 60_000);
  const until = new Date(Date.now() + validForMs);
  const c = await sas.cacheContainer(name, from, until);
  const q = await sas.queue(name, from, until);
  return { container, queue, urls: { containerUrl: `${container.url}?${c.sas}`, queueUrl: `${queue.url}?${q.sas}` } };
}

/** A client of endpoints on `port` of this machine (with `sas` as their query). */
function clientOn(port: number, timeoutMs: number, sas = "sv=x"): CacheClient {
  return new CacheClient(
    { containerUrl: `http://127.0.0.1:${port}/acct/c?${sas}`, queueUrl: `http://127.0.0.1:${port}/acct/q?${sas}` },
    { connections: 1, timeoutMs },
  );
}

/** An HTTP server on a free port standing in for storage; `close` also cuts the connections it still holds. */
async function standIn(handler: RequestListener): Promise<{ port: number; close: () => Promise<void> }> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as AddressInfo).port,
    close: async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

async function refusal(p: Promise<unknown>): Promise<StorageRequestError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  assert.ok(e instanceof StorageRequestError, `expected a refusal, got ${e === undefined ? "success" : describe(e)}`);
  return e;
}

test("a batch blob and its message: bytes, metadata and content type as the service side reads them", async () => {
  const { container, queue, urls } = await endpoints("cache-rest-1");
  const client = new CacheClient(urls, { connections: 2, timeoutMs: 30_000 });
  try {
    const data = randomBytes(4 * 1024 * 1024 + 123);
    await client.putBlob("os/0000000001.batch", data, { contentType: "application/octet-stream", metadata: { firstwritems: "17", lastwritems: "42" } });
    // Overwritten in place (a batch uploaded again after a lost answer).
    const again = randomBytes(1000);
    await client.putBlob("data 0/0000000002.batch", again, { contentType: "application/octet-stream" });
    await client.putBlob("data 0/0000000002.batch", data, { contentType: "application/octet-stream" });
    await client.putBlob("agent.json", JSON.stringify({ ok: "é" }), { contentType: "application/json" });
    const text = Buffer.from(JSON.stringify({ v: 1, itemId: "i", diskId: "os", seq: 1 })).toString("base64");
    await client.sendMessage(text);

    const b1 = container.getBlobClient("os/0000000001.batch");
    assert.ok((await b1.downloadToBuffer()).equals(data));
    const props = await b1.getProperties();
    assert.equal(props.contentType, "application/octet-stream");
    assert.deepEqual(props.metadata, { firstwritems: "17", lastwritems: "42" });
    assert.equal(props.blobType, "BlockBlob");
    assert.ok((await container.getBlobClient("data 0/0000000002.batch").downloadToBuffer()).equals(data));
    assert.equal((await container.getBlobClient("agent.json").downloadToBuffer()).toString("utf8"), JSON.stringify({ ok: "é" }));
    const got = await queue.receiveMessages();
    assert.deepEqual(
      got.receivedMessageItems.map((m) => m.messageText),
      [text],
    );
  } finally {
    client.close();
  }
});

test("a blob streamed through one reused buffer arrives whole; a body that fails midway leaves no blob", async () => {
  const { container, urls } = await endpoints("cache-rest-chunks");
  const client = new CacheClient(urls, { connections: 1, timeoutMs: 30_000 });
  try {
    const data = randomBytes(3 * 1024 * 1024 + 777);
    const buffer = Buffer.alloc(256 * 1024);
    let pieces = 0;
    await client.putBlobChunked(
      "os/0000000003.batch",
      data.length,
      async (send) => {
        for (let at = 0; at < data.length; at += buffer.length) {
          // The same buffer every time: a piece must be gone before the next overwrites it.
          const n = data.copy(buffer, 0, at, Math.min(at + buffer.length, data.length));
          await send(buffer.subarray(0, n));
          pieces++;
        }
      },
      { contentType: "application/octet-stream", metadata: { firstwritems: "5" } },
    );
    assert.equal(pieces, 13);
    const blob = container.getBlobClient("os/0000000003.batch");
    assert.ok((await blob.downloadToBuffer()).equals(data));
    assert.deepEqual((await blob.getProperties()).metadata, { firstwritems: "5" });

    // The spool file cannot be read halfway through: the request is cut off, and storage keeps nothing of it.
    const broken = client.putBlobChunked(
      "os/0000000004.batch",
      data.length,
      async (send) => {
        await send(data.subarray(0, 1024 * 1024));
        throw new Error("spool read failed");
      },
      { contentType: "application/octet-stream" },
    );
    await assert.rejects(broken, /spool read failed/);
    assert.equal(await container.getBlobClient("os/0000000004.batch").exists(), false);
    // The client goes on working after the cut.
    await client.putBlob("os/0000000005.batch", Buffer.alloc(10, 1), { contentType: "application/octet-stream" });
    assert.ok((await container.getBlobClient("os/0000000005.batch").downloadToBuffer()).equals(Buffer.alloc(10, 1)));
  } finally {
    client.close();
  }
});

test("refusals carry storage's status and code: a SAS for another container is 'credentials', a deleted container 'gone'", async () => {
  const a = await endpoints("cache-rest-2a");
  const b = await endpoints("cache-rest-2b");
  // The container's URL with another container's SAS: storage refuses the signature.
  const wrong = new CacheClient(
    { containerUrl: `${a.container.url}?${new URL(b.urls.containerUrl).search.slice(1)}`, queueUrl: a.urls.queueUrl },
    { connections: 1, timeoutMs: 30_000 },
  );
  const right = new CacheClient(a.urls, { connections: 1, timeoutMs: 30_000 });
  try {
    const e403 = await refusal(wrong.putBlob("os/1.batch", Buffer.alloc(512), { contentType: "application/octet-stream" }));
    assert.equal(e403.statusCode, 403);
    assert.equal(classify(e403), "credentials");
    assert.ok(!e403.message.includes("sig="), `the SAS stays out of messages: ${e403.message}`);

    await a.container.delete();
    const e404 = await refusal(right.putBlob("os/1.batch", Buffer.alloc(512), { contentType: "application/octet-stream" }));
    assert.equal(e404.statusCode, 404);
    assert.equal(e404.code, "ContainerNotFound");
    assert.equal(classify(e404), "gone");
    assert.match(describe(e404), /^404 ContainerNotFound: /);

    await a.queue.delete();
    const q404 = await refusal(right.sendMessage("eA=="));
    assert.equal(q404.statusCode, 404);
    assert.equal(classify(q404), "gone");
  } finally {
    wrong.close();
    right.close();
  }
});

test("an expired SAS is refused with 403, and new endpoints (a renewed SAS) are used from the next request on", async () => {
  const expired = await endpoints("cache-rest-3", -1000);
  const client = new CacheClient(expired.urls, { connections: 1, timeoutMs: 30_000 });
  try {
    const e = await refusal(client.putBlob("os/1.batch", Buffer.alloc(512, 7), { contentType: "application/octet-stream" }));
    assert.equal(e.statusCode, 403);
    assert.equal(classify(e), "credentials");
    const from = new Date(Date.now() - 60_000);
    const until = new Date(Date.now() + HOUR);
    client.setEndpoints({
      containerUrl: `${expired.container.url}?${(await sas.cacheContainer("cache-rest-3", from, until)).sas}`,
      queueUrl: `${expired.queue.url}?${(await sas.queue("cache-rest-3", from, until)).sas}`,
    });
    await client.putBlob("os/1.batch", Buffer.alloc(512, 7), { contentType: "application/octet-stream" });
    assert.ok((await expired.container.getBlobClient("os/1.batch").downloadToBuffer()).equals(Buffer.alloc(512, 7)));
  } finally {
    client.close();
  }
});

test("storage refusing a streamed upload before its body is whole: the refusal, the sending stopped, the client still usable", async () => {
  let requests = 0;
  const refusing = await standIn((req, res) => {
    requests++;
    if (req.url?.includes("/q/messages")) {
      req.resume();
      req.on("end", () => res.writeHead(201).end());
      return;
    }
    // At once, on the headers: as storage refuses a signature without reading the body.
    res.writeHead(403, { "x-ms-error-code": "AuthenticationFailed", "content-type": "application/xml" });
    res.end('<?xml version="1.0"?><Error><Code>AuthenticationFailed</Code><Message>Signature did not match.\nRequestId:x</Message></Error>');
  });
  const client = clientOn(refusing.port, 30_000, "sig=secret");
  try {
    const piece = Buffer.alloc(1024 * 1024, 3);
    const total = 64;
    let sent = 0;
    let bodyDone: Promise<void> | undefined;
    const e = await refusal(
      client.putBlobChunked(
        "os/1.batch",
        total * piece.length,
        (send) =>
          (bodyDone = (async () => {
            for (let i = 0; i < total; i++) {
              await send(piece);
              sent++;
            }
          })()),
        { contentType: "application/octet-stream" },
      ),
    );
    assert.equal(e.statusCode, 403);
    assert.equal(e.code, "AuthenticationFailed");
    assert.equal(classify(e), "credentials");
    assert.match(e.message, /: 403 Signature did not match\.$/);
    assert.ok(!e.message.includes("secret"), e.message);
    // The body had stopped (its last send failed) before the request settled: nothing writes the buffer afterwards.
    await assert.rejects(bodyDone!);
    assert.ok(sent < total, `${sent} of ${total} pieces sent`);
    await client.sendMessage("eA==");
    assert.equal(requests, 2);
  } finally {
    client.close();
    await refusing.close();
  }
});

test("a refused connection while a streamed body still waits for its first piece: the request fails with the refusal, nothing unhandled", async () => {
  // A port with nothing listening: the connection is refused at once.
  const port = await freePort();
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => unhandled.push(e);
  process.on("unhandledRejection", onUnhandled);
  const client = clientOn(port, 30_000);
  try {
    const upload = client.putBlobChunked(
      "os/1.batch",
      1024,
      async (send) => {
        // As a retried upload reads its first piece from the spool file again before sending it.
        await new Promise((r) => setTimeout(r, 200));
        await send(Buffer.alloc(1024));
      },
      { contentType: "application/octet-stream" },
    );
    await assert.rejects(upload, (e: NodeJS.ErrnoException) => e.code === "ECONNREFUSED");
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(unhandled, []);
  } finally {
    process.off("unhandledRejection", onUnhandled);
    client.close();
  }
});

test("a server that never answers: the request fails after its timeout; an abort ends it at once", async () => {
  const hung = await standIn(() => undefined);
  const client = clientOn(hung.port, 300);
  try {
    const t0 = Date.now();
    await assert.rejects(client.putBlob("os/1.batch", Buffer.alloc(100), { contentType: "application/octet-stream" }), /no progress within 0.3 s/);
    assert.ok(Date.now() - t0 < 10_000);
    const stop = new AbortController();
    const pending = client.sendMessage("eA==", stop.signal);
    setTimeout(() => stop.abort(), 50);
    await assert.rejects(pending, (e: Error) => e.name === "AbortError");
  } finally {
    client.close();
    await hung.close();
  }
});

test("the shipper streams a batch whose header alone is larger than its upload chunk: the blob is the spool file, its times in the metadata", async () => {
  const { container, queue, urls } = await endpoints("cache-rest-shipper");
  const dir = await mkdtemp(join(tmpdir(), "shipper-stream-"));
  const spool = new Spool(dir, 1024 * 1024 * 1024);
  const shipper = new Shipper({ itemId: "item-s", spool, health: new Health(), concurrency: 2, onCredentialsRefused: () => {}, log: () => {} }, urls);
  try {
    await spool.open("os", 1);
    // 12 bytes per extent in the header: 100,000 extents of one sector make a header of more than a chunk.
    const extents = Array.from({ length: 100_000 }, (_, i) => ({ offset: i * 1024, length: 512 }));
    const payload = randomBytes(extents.length * 512);
    const header = encodeBatchHeader(
      { itemId: "item-s", diskId: "os", seq: 1, extents, firstWriteMs: 1_700_000_000_123, lastWriteMs: 1_700_000_000_456 },
      payload,
    );
    assert.ok(header.length > UPLOAD_CHUNK_BYTES, `header ${header.length} bytes`);
    await spool.put("os", 1, [header, payload], header.length + payload.length);
    const file = await readFile(spool.path("os", 1));
    shipper.add("os", 1);
    await shipper.waitShipped("os", 1);

    const blob = container.getBlobClient(batchBlobName("os", 1));
    const got = await blob.downloadToBuffer();
    assert.ok(got.equals(file), "the blob equals the spool file");
    assert.equal(decodeBatch(got).header.extents.length, extents.length);
    assert.deepEqual((await blob.getProperties()).metadata, { firstwritems: "1700000000123", lastwritems: "1700000000456" });
    const messages = await queue.receiveMessages();
    assert.deepEqual(
      messages.receivedMessageItems.map((m) => JSON.parse(Buffer.from(m.messageText, "base64").toString())),
      [{ v: 1, itemId: "item-s", diskId: "os", seq: 1 }],
    );
    assert.equal(spool.stats("os").batches, 0, "shipped: gone from the spool");
  } finally {
    await shipper.stop(1000);
    await rm(dir, { recursive: true, force: true });
  }
});
