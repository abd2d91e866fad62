// The group barrier over real TCP: one tag id at one instant for all members, or an abort for all.
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createServer, type AddressInfo } from "node:net";
import { GroupCoordinator, GroupMember, type BarrierParticipant } from "../../agent/group";

/** Timers fire late on a loaded machine: a hold may overrun its bound by this much (still short of the 300 ms stalls below). */
const SLACK_MS = 150;

class Recorder implements BarrierParticipant {
  holds: { from: number; to?: number }[] = [];
  cuts: { id: string; time: string; members: string[] }[] = [];
  holdDelayMs = 0;
  readyDelayMs = 0;
  readies = 0;
  async ready() {
    if (this.readyDelayMs) await sleep(this.readyDelayMs);
    this.readies++;
  }
  async hold() {
    if (this.holdDelayMs) await sleep(this.holdDelayMs);
    this.holds.push({ from: performance.now() });
  }
  async cut(tag: { id: string; time: string; members: string[] }) {
    this.cuts.push(tag);
  }
  release() {
    const h = this.holds.at(-1);
    if (h && h.to === undefined) h.to = performance.now();
  }
  heldLongestMs() {
    return Math.max(0, ...this.holds.map((h) => (h.to ?? performance.now()) - h.from));
  }
}

async function group(n: number, holdBoundMs: number, secret = "s3cret") {
  const parts = Array.from({ length: n }, () => new Recorder());
  const coordinator = new GroupCoordinator({ itemId: "item-0", secret, port: 0, host: "127.0.0.1", holdBoundMs, participant: parts[0]! });
  const port = await coordinator.listen();
  const members = parts.slice(1).map((p, i) => new GroupMember({ itemId: `item-${i + 1}`, secret, host: "127.0.0.1", port, participant: p }));
  for (const m of members) await m.connect();
  for (let i = 0; i < 100 && coordinator.memberIds().length < n - 1; i++) await sleep(10);
  return {
    parts,
    coordinator,
    members,
    close: async () => {
      for (const m of members) m.close();
      await coordinator.close();
    },
  };
}

test("every member cuts the same tag at the same instant, with the member list", async () => {
  const g = await group(3, 500);
  try {
    const out = await g.coordinator.tag("crash");
    assert.equal(out.committed, true, out.reason);
    for (let i = 0; i < 100 && g.parts.some((p) => p.cuts.length === 0); i++) await sleep(10);
    const cuts = g.parts.map((p) => p.cuts[0]);
    assert.ok(cuts.every((c) => c?.id === out.tagId && c.time === cuts[0]!.time));
    assert.deepEqual(cuts[0]!.members, ["item-0", "item-1", "item-2"]);
    for (const p of g.parts) assert.equal(p.holds.at(-1)?.to !== undefined, true, "released");
  } finally {
    await g.close();
  }
});

test("a member that stalls in prepare aborts the tag for all, nobody cuts, writes are held no longer than the bound, and the next tag succeeds", async () => {
  const bound = 100;
  const g = await group(3, bound);
  try {
    g.parts[2]!.holdDelayMs = 300;
    const out = await g.coordinator.tag("crash");
    assert.equal(out.committed, false);
    assert.match(out.reason ?? "", /item-2/);
    await sleep(400); // the stalled member acks late; its own bound releases it
    for (const p of g.parts) assert.equal(p.cuts.length, 0, "nothing half-cut");
    for (const p of g.parts) assert.ok(p.heldLongestMs() <= bound + SLACK_MS, `held ${p.heldLongestMs()} ms`);

    g.parts[2]!.holdDelayMs = 0;
    const next = await g.coordinator.tag("crash");
    assert.equal(next.committed, true, next.reason);
  } finally {
    await g.close();
  }
});

test("a member slow to get ready (holding nothing) does not abort the tag, and nobody's writes wait for it", async () => {
  const bound = 100;
  const g = await group(3, bound);
  try {
    g.parts[1]!.readyDelayMs = 300;
    const out = await g.coordinator.tag("crash");
    assert.equal(out.committed, true, out.reason);
    for (let i = 0; i < 100 && g.parts.some((p) => p.cuts.length === 0); i++) await sleep(10);
    for (const p of g.parts) {
      assert.equal(p.readies, 1, "every member got ready first");
      assert.equal(p.cuts[0]?.id, out.tagId);
      assert.ok(p.heldLongestMs() <= bound + SLACK_MS, `held ${p.heldLongestMs()} ms`);
    }
  } finally {
    await g.close();
  }
});

test("an agent without the group secret cannot join", async () => {
  const g = await group(1, 100);
  try {
    const intruder = new GroupMember({ itemId: "evil", secret: "wrong", host: "127.0.0.1", port: g.coordinator.port, participant: new Recorder() });
    await assert.rejects(intruder.connect());
    intruder.close();
    assert.deepEqual(g.coordinator.memberIds(), []);
  } finally {
    await g.close();
  }
});

test("a tag's first message arriving with the coordinator's welcome (one TCP read) is answered, not lost", async () => {
  // The coordinator's side by hand, so that the welcome and the first "ready" reach the member in one write: a
  // coordinator that starts a tag the moment a member has joined does exactly that on a loaded machine.
  const secret = "s3cret";
  const got: string[] = [];
  const server = createServer((socket) => {
    let buffer = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      buffer += chunk;
      for (let nl; (nl = buffer.indexOf("\n")) >= 0;) {
        const m = JSON.parse(buffer.slice(0, nl)) as { type: string; itemId: string; nonce: string };
        buffer = buffer.slice(nl + 1);
        got.push(m.type);
        if (m.type !== "hello") continue;
        const mac = createHmac("sha256", secret).update(["welcome", m.itemId, m.nonce].join("|")).digest("hex");
        socket.write(`${JSON.stringify({ type: "welcome", mac })}\n${JSON.stringify({ type: "ready", tagId: "t1" })}\n`);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  const part = new Recorder();
  const member = new GroupMember({ itemId: "item-1", secret, host: "127.0.0.1", port, participant: part });
  try {
    await member.connect();
    for (let i = 0; i < 100 && !got.includes("readied"); i++) await sleep(10);
    assert.deepEqual(got, ["hello", "readied"]);
    assert.equal(part.readies, 1);
  } finally {
    member.close();
    server.close();
  }
});
