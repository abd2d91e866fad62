// The item view reads the agent's heartbeat while the agent replaces it: a read never fails because the blob changed size mid-read.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import { HEARTBEAT_BLOB } from "../../shared/protection/agent-protocol";
import { cacheContainerName } from "../../shared/protection/items";

let stack: TestStack;
before(async () => {
  stack = await startTestStack();
});
after(async () => {
  await stack?.stop();
});

test("GET of an item while its heartbeat is rewritten at changing sizes: always 200, the heartbeat one of those written", async () => {
  const created = await stack.api("POST", "replicated-items", enableBody("hb-1"));
  assert.equal(created.status, 201);
  const id = created.body.id as string;
  const blob = stack.services.storage.cacheBlobs.getContainerClient(cacheContainerName(id)).getBlockBlobClient(HEARTBEAT_BLOB);
  // Heartbeats of alternating lengths (the agent's issues list grows and shrinks).
  const beat = (n: number) =>
    JSON.stringify({
      agentVersion: "test",
      time: new Date(Date.UTC(2026, 0, 1, 0, 0, n % 60)).toISOString(),
      disks: {},
      health: {
        status: "Healthy",
        issues: Array.from({ length: n % 7 }, (_, k) => ({ code: `C${k}`, message: "x".repeat(40 * k), since: "2026-01-01T00:00:00Z" })),
      },
    });
  let writing = true;
  let written = 0;
  const writer = (async () => {
    for (let n = 0; writing; n++) {
      const text = beat(n);
      await blob.upload(text, Buffer.byteLength(text));
      written++;
    }
  })();
  let reads = 0;
  try {
    while (reads < 150) {
      const res = await stack.api("GET", `replicated-items/${id}`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      if (res.body.heartbeat) assert.equal(res.body.heartbeat.agentVersion, "test");
      reads++;
    }
  } finally {
    writing = false;
    await writer;
  }
  assert.ok(written > 20, `the heartbeat was rewritten during the reads (${written} times)`);
});
