// Alerts with a controlled clock: each condition is raised once by the sealing timer, cleared when it ends, and reaches a webhook started here (signature checked, retried after a 500).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { randomUUID, timingSafeEqual } from "node:crypto";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import { startFailover, waitFailover } from "../support/failover";
import { signAlert, SIGNATURE_HEADER, TIMESTAMP_HEADER, type Alert, type AlertEvent } from "../../shared/operations/alerts";
import { batchBlobName } from "../../shared/replication/batch";
import { recordPoisonMessage } from "../../shared/replication/poison";
import { cacheContainerName, clearIssues } from "../../shared/protection/items";
import { HEARTBEAT_BLOB } from "../../shared/protection/agent-protocol";

const SECRET = "webhook-secret-for-the-alert-tests";
const MIN = 60_000;
/** A schedule that never comes during a test: the test runs the sealing timer itself, after moving the clock. */
const NEVER = "0 0 0 1 1 *";

interface Received {
  event: AlertEvent;
  signatureValid: boolean;
  delivery: string;
}

describe("alerts (controlled clock, webhook started by the test)", () => {
  let stack: TestStack;
  let hook: Server;
  const received: Received[] = [];
  /** Answers 500 to the first delivery of every event: each must arrive through a retry. */
  const refusedOnce = new Set<string>();
  let deliveriesRefused = 0;

  before(async () => {
    hook = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        const delivery = String(req.headers["x-site-recovery-delivery"]);
        if (!refusedOnce.has(delivery)) {
          refusedOnce.add(delivery);
          deliveriesRefused++;
          res.writeHead(500).end("try again");
          return;
        }
        const expected = Buffer.from(signAlert(SECRET, String(req.headers[TIMESTAMP_HEADER]), body));
        const given = Buffer.from(String(req.headers[SIGNATURE_HEADER]));
        received.push({
          event: JSON.parse(body) as AlertEvent,
          signatureValid: given.length === expected.length && timingSafeEqual(given, expected),
          delivery,
        });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => hook.listen(0, "127.0.0.1", r));
    stack = await startTestStack({
      queues: false,
      env: {
        ALERT_WEBHOOK_URL: `http://127.0.0.1:${(hook.address() as AddressInfo).port}/hooks/dr`,
        ALERT_WEBHOOK_SECRET: SECRET,
        RPO_ALERT_MINUTES: "30",
        RPO_CRITICAL_MINUTES: "60",
        AGENT_HEARTBEAT_LOST_MINUTES: "10",
        DRILL_REMINDER_DAYS: "1",
        HISTORY_SAMPLE_SECONDS: "60",
        SEAL_SCHEDULE: NEVER,
        SWEEP_SCHEDULE: NEVER,
      },
    });
  });
  after(async () => {
    await stack?.stop();
    await new Promise((r) => hook?.close(r));
  });

  const now = () => new Date(Date.now() + stack.clock.offsetMs);
  const advance = (ms: number) => (stack.clock.offsetMs += ms);
  /** The existing timer: sealing, then the monitoring pass (alerts raised, cleared, delivered). */
  const pass = () => stack.host.runTimer("sealRecoveryPoints");

  const enable = async (name: string, policy: Record<string, unknown> = {}): Promise<string> => {
    const body = enableBody(name);
    const r = await stack.api("POST", "replicated-items", { ...body, policy: { ...body.policy, ...policy } });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return r.body.id as string;
  };
  const setProtected = async (id: string) => {
    for (const d of await stack.services.items.listDisks(id))
      await stack.services.items.updateDisk(id, d.id, (x) => ({ ...x, initialComplete: true, state: "Protected" }));
    await stack.services.items.updateItem(id, (i) => ({ ...i, state: "Protected" }));
  };
  /** A point at `agoMs` before the stack's now; a real snapshot of each replica when `real` (a failover copies it). */
  const point = async (id: string, kind: "crash" | "app" = "crash", agoMs = 0, real = false) => {
    const time = new Date(now().getTime() - agoMs).toISOString();
    const replicas = await stack.services.storage.replicas();
    const tag = { id: randomUUID(), kind, time, scope: "vm" as const };
    for (const d of await stack.services.items.listDisks(id)) {
      const snapshot = real ? (await replicas.getPageBlobClient(d.replicaBlob).createSnapshot()).snapshot! : "2020-01-01T00:00:00.0000000Z";
      await stack.services.points.recordArrival({ itemId: id, diskId: d.id, snapshot, seq: 1, tag });
    }
  };

  const alertsOf = async (itemId: string, code: string): Promise<Alert[]> => {
    const r = await stack.api("GET", `alerts?itemId=${itemId}`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return (r.body as Alert[]).filter((a) => a.code === code);
  };
  const eventsOf = (itemId: string, code: string) => received.filter((r) => r.event.alert.itemId === itemId && r.event.alert.code === code);

  /** Raised once however many passes see the condition; then cleared once the condition ends; both reach the webhook, signed. */
  async function raisedOnceThenCleared(itemId: string, code: string, severity: string, end: () => Promise<void>, message?: RegExp): Promise<void> {
    await pass();
    await pass();
    const raised = await alertsOf(itemId, code);
    assert.equal(raised.length, 1, `${code}: one alert over two passes: ${JSON.stringify(raised)}`);
    const a = raised[0]!;
    assert.equal(a.severity, severity);
    assert.equal(a.clearedAt, null);
    if (message) assert.match(a.message, message);
    assert.deepEqual(a.webhook.raised, { state: "delivered", attempts: 2 }, "delivered on the retry after the 500");
    assert.deepEqual(
      eventsOf(itemId, code).map((e) => e.event.event),
      ["raised"],
    );
    const open = (await stack.api("GET", `alerts?state=open&itemId=${itemId}`)).body as Alert[];
    assert.ok(
      open.some((x) => x.id === a.id),
      "listed as open",
    );

    await end();
    await pass();
    await pass();
    const after = await alertsOf(itemId, code);
    assert.equal(after.length, 1, `${code}: still one alert, now cleared`);
    assert.ok(after[0]!.clearedAt, `${code} cleared: ${JSON.stringify(after[0])}`);
    assert.equal(after[0]!.webhook.cleared.state, "delivered");
    const events = eventsOf(itemId, code);
    assert.deepEqual(
      events.map((e) => e.event.event),
      ["raised", "cleared"],
    );
    assert.ok(
      events.every((e) => e.signatureValid),
      "every delivery carries a valid HMAC signature",
    );
    assert.equal(events[1]!.event.alert.id, a.id);
  }

  test("RPO above the global threshold (30 min) is a Warning, cleared by a new point", async () => {
    const id = await enable("al-rpo");
    await setProtected(id);
    await point(id, "crash", MIN);
    await pass();
    assert.deepEqual(await alertsOf(id, "RpoThresholdExceeded"), [], "RPO 1 min: nothing");
    advance(31 * MIN);
    await raisedOnceThenCleared(id, "RpoThresholdExceeded", "Warning", () => point(id), /RPO is 32 min, above the 30 min threshold/);
  });

  test("an item's own RPO threshold wins over the global one", async () => {
    const id = await enable("al-rpo-own", { rpoAlertMinutes: 5 });
    await setProtected(id);
    await point(id);
    advance(6 * MIN);
    await raisedOnceThenCleared(id, "RpoThresholdExceeded", "Warning", () => point(id), /above the 5 min threshold/);
  });

  test("no crash-consistent point for RPO_CRITICAL_MINUTES is Critical (ASR 153007)", async () => {
    const id = await enable("al-crash");
    await setProtected(id);
    await point(id);
    advance(61 * MIN);
    await raisedOnceThenCleared(id, "NoCrashConsistentPoint", "Critical", () => point(id), /153007/);
  });

  test("no app-consistent point when the policy asks for one is a Warning (ASR 153006)", async () => {
    const id = await enable("al-app", { appConsistentFrequencyMinutes: 10 });
    await setProtected(id);
    await point(id, "app");
    advance(21 * MIN);
    await point(id, "crash");
    await raisedOnceThenCleared(id, "NoAppConsistentPoint", "Warning", () => point(id, "app"), /153006/);
  });

  test("an agent that stops sending heartbeats is Critical; its next heartbeat clears it", async () => {
    const id = await enable("al-heartbeat");
    const created = await stack.services.agents.issueToken(id);
    assert.equal((await stack.api("POST", "agents/register", { token: created.token })).status, 200);
    await pass();
    assert.deepEqual(await alertsOf(id, "AgentHeartbeatLost"), []);
    advance(11 * MIN);
    await raisedOnceThenCleared(id, "AgentHeartbeatLost", "Critical", async () => {
      const beat = JSON.stringify({ agentVersion: "test", time: now().toISOString(), disks: {}, health: { status: "Healthy", issues: [] } });
      await stack.services.storage.cacheBlobs
        .getContainerClient(cacheContainerName(id))
        .getBlockBlobClient(HEARTBEAT_BLOB)
        .upload(beat, Buffer.byteLength(beat));
    });
  });

  test("a cache backlog growing sample after sample (churn beyond what the pipeline applies) is a Warning, held while the lag still climbs with the backlog level, cleared once it is applied", async () => {
    const id = await enable("al-churn");
    const cache = stack.services.storage.cacheBlobs.getContainerClient(cacheContainerName(id));
    let seq = 0;
    for (let k = 0; k < 4; k++) {
      for (let n = 0; n < 3; n++) await cache.getBlockBlobClient(batchBlobName("os", ++seq)).upload(Buffer.alloc(64 * 1024), 64 * 1024);
      advance(61_000);
      await pass();
    }
    const history = (await stack.api("GET", `replicated-items/${id}/history`)).body;
    const backlog = history.samples.slice(-4).map((s: { backlogBytes: number }) => s.backlogBytes);
    assert.deepEqual(
      backlog,
      [3, 6, 9, 12].map((n) => n * 64 * 1024),
      "one sample per pass, the backlog growing",
    );
    assert.ok(
      history.samples.slice(-3).every((s: { churnBytesPerSecond: number }) => s.churnBytesPerSecond > 0),
      "churn measured",
    );
    // The same figures as OpenTelemetry gauges, printable over GET /api/metrics.
    const metrics = await fetch(`${stack.url}/api/metrics`).then((r) => r.text());
    assert.match(
      metrics,
      new RegExp(`^site_recovery\\.replication\\.backlog\\{item\\.id="${id}",vm\\.name="al-churn",replication\\.group=""\\} ${12 * 64 * 1024} By$`, "m"),
    );
    assert.match(metrics, new RegExp(`^site_recovery\\.replication\\.lag\\{item\\.id="${id}",`, "m"));
    await raisedOnceThenCleared(
      id,
      "ChurnBeyondCapacity",
      "Warning",
      async () => {
        // Throttled writers: the backlog holds level, nothing is applied, the oldest write waits longer every sample.
        for (let k = 0; k < 2; k++) {
          advance(61_000);
          await pass();
        }
        const held = await alertsOf(id, "ChurnBeyondCapacity");
        assert.equal(held.length, 1);
        assert.equal(held[0]!.clearedAt, null, "held while the lag climbs, though the backlog stopped growing");
        const level = (await stack.api("GET", `replicated-items/${id}/history`)).body.samples.slice(-3);
        assert.deepEqual(
          level.map((x: { backlogBytes: number }) => x.backlogBytes),
          [12, 12, 12].map((n) => n * 64 * 1024),
        );
        // Applied: nothing waits.
        for (let s = 1; s <= 12; s++) await cache.deleteBlob(batchBlobName("os", s));
        advance(61_000);
      },
      /backlog grew in each of the last 4 samples to 0\.8 MiB \(0\.8 MiB in the cache, 0\.0 MiB in the agent's spool/,
    );
  });

  test("what waits in the agent's spool counts as backlog: a spool growing sample after sample raises the alert, and it clears when the growth stops", async () => {
    const id = await enable("al-spool");
    const MiB = 1048576;
    const beat = async (spoolMiB: number) => {
      const disk = { nextSeq: 9, spoolBatches: spoolMiB, spoolBytes: spoolMiB * MiB, mode: "journal", dirtyBytes: 0 };
      const text = JSON.stringify({
        agentVersion: "test",
        time: now().toISOString(),
        disks: { os: { ...disk, initialReplication: { doneBytes: 0, totalBytes: MiB, complete: false } } },
        health: { status: "Healthy", issues: [] },
      });
      await stack.services.storage.cacheBlobs
        .getContainerClient(cacheContainerName(id))
        .getBlockBlobClient(HEARTBEAT_BLOB)
        .upload(text, Buffer.byteLength(text));
      advance(61_000);
      await pass();
    };
    // Nothing reaches the cache (the agent cannot upload fast enough): the spool grows.
    for (const mib of [1, 2, 3, 4]) await beat(mib);
    const history = (await stack.api("GET", `replicated-items/${id}/history`)).body;
    assert.deepEqual(
      history.samples.slice(-4).map((x: { spoolBytes: number; backlogBytes: number }) => [x.backlogBytes, x.spoolBytes / MiB]),
      [
        [0, 1],
        [0, 2],
        [0, 3],
        [0, 4],
      ],
    );
    const [raised, ...more] = await alertsOf(id, "ChurnBeyondCapacity");
    assert.equal(more.length, 0);
    assert.equal(raised?.clearedAt, null);
    assert.match(raised!.message, /grew in each of the last 4 samples to 4\.0 MiB \(0\.0 MiB in the cache, 4\.0 MiB in the agent's spool/);
    await beat(4); // [2, 3, 4, 4]: no longer growing
    const [after] = await alertsOf(id, "ChurnBeyondCapacity");
    assert.equal(after?.id, raised!.id);
    assert.notEqual(after?.clearedAt, null, "cleared once the backlog stops growing");
  });

  test("a poison message is a Warning until the item's issue is resolved", async () => {
    const id = await enable("al-poison");
    await recordPoisonMessage({ items: stack.services.items }, { v: 1, itemId: id, diskId: "os", seq: 3 });
    await raisedOnceThenCleared(id, "PoisonMessage", "Warning", async () => {
      // What apply does once the watermark passes the batch.
      await stack.services.items.updateItem(id, (i) => (clearIssues(i, (x) => x.code === "PoisonMessage"), i));
    });
  });

  test("a disk in ResyncRequired is Critical, with the reason, until the resync ends", async () => {
    const id = await enable("al-resync");
    await setProtected(id);
    await point(id);
    await stack.services.items.updateDisk(id, "data0", (d) => ({
      ...d,
      state: "ResyncRequired",
      resync: { id: "r1", reason: "batch 7 failed its checksum", origin: "apply", baseSeq: 6, since: now().toISOString() },
    }));
    await raisedOnceThenCleared(
      id,
      "DiskResyncRequired",
      "Critical",
      async () => {
        await stack.services.items.updateDisk(id, "data0", (d) => {
          delete d.resync;
          return { ...d, state: "Protected" };
        });
        await point(id);
      },
      /disk data0 needs a resync: batch 7 failed its checksum/,
    );
  });

  test("a failed job is Critical until the same operation succeeds on the item", async () => {
    const id = await enable("al-job");
    await assert.rejects(stack.services.jobs.run("resync", [id], async () => Promise.reject(new Error("the agent went away"))));
    await raisedOnceThenCleared(
      id,
      "JobFailed",
      "Critical",
      () => stack.services.jobs.run("resync", [id], async () => {}),
      /resync job .* failed: Error: the agent went away/,
    );
  });

  test("no drill (test failover and its cleanup) for DRILL_REMINDER_DAYS is a Warning; a drill clears it", async () => {
    const id = await enable("al-drill");
    await setProtected(id);
    advance(25 * 60 * MIN);
    await point(id, "crash", 0, true);
    await raisedOnceThenCleared(
      id,
      "DrillOverdue",
      "Warning",
      async () => {
        const fo = await startFailover(stack, { itemIds: [id], type: "test", recoveryPoint: "latest-processed" });
        assert.equal((await waitFailover(stack, fo)).runtimeStatus, "Completed");
        assert.equal((await stack.api("POST", `replicated-items/${id}/test-failover-cleanup`)).status, 200);
      },
      /no test failover .* for more than 1 days/,
    );
  });

  test("every event reached the webhook through a retry: one 500 per event, then delivered", () => {
    assert.ok(received.length >= 20);
    assert.equal(deliveriesRefused, received.length, "each delivered event was refused once first");
    assert.equal(new Set(received.map((r) => r.delivery)).size, received.length, "no event delivered twice");
  });

  test("GET /api/alerts refuses an unknown filter with 400 naming it", async () => {
    const r = await stack.api("GET", "alerts?state=maybe");
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, "InvalidInput");
    assert.match(JSON.stringify(r.body.error.details), /state/);
  });
});
