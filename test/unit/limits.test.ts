// Bounds that other parts rely on: the durable runtime's concurrency limit, and the drain deadline inside the activity timeout.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Semaphore } from "../../local/durable/runtime";
import { DRAIN_DEADLINE_MS } from "../../shared/failover/steps";

test("the durable runtime's semaphore never admits more than its limit, even when a caller arrives between a release and the waiter's wake-up", async () => {
  const sem = new Semaphore(1);
  let active = 0;
  let peak = 0;
  const task = async () => {
    active++;
    peak = Math.max(peak, active);
    await new Promise((r) => setImmediate(r));
    active--;
  };
  let release!: () => void;
  const holder = sem.use(() => new Promise<void>((r) => (release = r)));
  const waiter = sem.use(task);
  // The holder's task ends, and in the very next microtask a new caller arrives: before the waiter has woken up.
  release();
  const newcomer = Promise.resolve().then(() => sem.use(task));
  await Promise.all([holder, waiter, newcomer]);
  assert.equal(peak, 1);
});

test("a drain for 'latest' gives up before the host's functionTimeout would kill its activity", () => {
  const host = JSON.parse(readFileSync(join(__dirname, "..", "..", "..", "host.json"), "utf8")) as { functionTimeout: string };
  const [h, m, s] = host.functionTimeout.split(":").map(Number);
  const timeoutMs = ((h ?? 0) * 3600 + (m ?? 0) * 60 + (s ?? 0)) * 1000;
  assert.ok(DRAIN_DEADLINE_MS <= timeoutMs - 60_000, `drain deadline ${DRAIN_DEADLINE_MS} ms vs functionTimeout ${timeoutMs} ms`);
});
