// Alerts: conditions the monitoring pass finds, each raised once, cleared when it ends, and POSTed signed to ALERT_WEBHOOK_URL.
import { setTimeout as sleep } from "node:timers/promises";
import { createHmac, randomUUID } from "node:crypto";
import { z } from "zod";
import { isConflict, isNotFound } from "../contract/errors";
import { TABLES } from "../storage/names";
import type { EntityTable, Tables } from "../storage/ports";

/** Every alert code, with its severity and the ASR error it stands for where there is one. */
export const ALERT_CODES = {
  RpoThresholdExceeded: { severity: "Warning" },
  NoCrashConsistentPoint: { severity: "Critical", asr: 153007 },
  NoAppConsistentPoint: { severity: "Warning", asr: 153006 },
  AgentHeartbeatLost: { severity: "Critical" },
  ChurnBeyondCapacity: { severity: "Warning" },
  PoisonMessage: { severity: "Warning" },
  DiskResyncRequired: { severity: "Critical" },
  JobFailed: { severity: "Critical" },
  DrillOverdue: { severity: "Warning" },
} as const;
export type AlertCode = keyof typeof ALERT_CODES;
export type Severity = "Warning" | "Critical";

/** A condition that holds now; `subject` tells apart two of one code on one item (e.g. the failed job's type). */
export interface AlertCondition {
  itemId: string;
  code: AlertCode;
  message: string;
  subject?: string;
  vm?: string;
}

export type DeliveryState = "none" | "pending" | "delivered" | "failed";

export interface Alert {
  id: string;
  itemId: string;
  vm: string | null;
  code: AlertCode;
  severity: Severity;
  message: string;
  subject: string | null;
  raisedAt: string;
  clearedAt: string | null;
  /** Webhook delivery of the raise and of the clear. */
  webhook: { raised: { state: DeliveryState; attempts: number }; cleared: { state: DeliveryState; attempts: number } };
}

export const alertQuerySchema = z
  .object({
    itemId: z
      .string()
      .regex(/^[A-Za-z0-9_-]{1,64}$/, "an item id")
      .optional(),
    state: z.enum(["open", "cleared"]).optional(),
    limit: z.coerce.number().int().min(1).max(1000).optional(),
  })
  .strict();
export type AlertQuery = z.infer<typeof alertQuerySchema>;

/** What the webhook receives: one event per POST. */
export interface AlertEvent {
  event: "raised" | "cleared";
  alert: Omit<Alert, "webhook">;
}

export const SIGNATURE_HEADER = "x-site-recovery-signature";
export const TIMESTAMP_HEADER = "x-site-recovery-timestamp";

/** `sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`: a receiver checks it and the timestamp's age (replays). */
export function signAlert(secret: string, timestamp: string, body: string): string {
  return `sha256=${createHmac("sha256", secret).update(`${timestamp}.${body}`).digest("hex")}`;
}

interface AlertEntity {
  partitionKey: "alert" | "open";
  rowKey: string;
  body: string;
}

export interface AlertsDeps {
  storage: Tables;
  webhook?: { url: string; secret: string };
  now?: () => Date;
  /** Attempts per event per pass, and the first backoff (doubling). */
  retry?: { attempts: number; baseDelayMs: number };
  /** An event not delivered after this many attempts in all is given up (state `failed`). */
  maxAttempts?: number;
  /** Cleared alerts older than this are pruned. */
  retentionDays?: number;
  log?: (line: string) => void;
}

const keyOf = (c: { itemId: string; code: string; subject?: string | null }) => `${c.itemId}|${c.code}|${c.subject ?? ""}`;

export interface ReconcileReport {
  raised: Alert[];
  cleared: Alert[];
}

export class Alerts {
  private readonly now: () => Date;

  constructor(private readonly deps: AlertsDeps) {
    this.now = deps.now ?? (() => new Date());
  }

  private table(): Promise<EntityTable> {
    return this.deps.storage.table(TABLES.alerts);
  }

  /** Newest first. */
  async list(q: AlertQuery = {}): Promise<Alert[]> {
    const t = await this.table();
    const out: Alert[] = [];
    for await (const e of t.listEntities<AlertEntity>({ queryOptions: { filter: "PartitionKey eq 'alert'" } })) {
      const a = JSON.parse(e.body) as Alert;
      if (q.itemId && a.itemId !== q.itemId) continue;
      if (q.state === "open" && a.clearedAt) continue;
      if (q.state === "cleared" && !a.clearedAt) continue;
      out.push(a);
    }
    out.sort((a, b) => b.raisedAt.localeCompare(a.raisedAt) || b.id.localeCompare(a.id));
    return q.limit ? out.slice(0, q.limit) : out;
  }

  /**
   * Makes the open alerts match the conditions that hold now: a new condition is raised (once: the open index is
   * created with createEntity, so two passes cannot both raise it), an open alert whose condition ended is cleared.
   */
  async reconcile(active: AlertCondition[]): Promise<ReconcileReport> {
    const t = await this.table();
    const at = this.now().toISOString();
    const open = new Map<string, string>();
    for await (const e of t.listEntities<AlertEntity>({ queryOptions: { filter: "PartitionKey eq 'open'" } })) open.set(e.rowKey, e.body);
    const report: ReconcileReport = { raised: [], cleared: [] };
    const pending: DeliveryState = this.deps.webhook ? "pending" : "none";
    const wanted = new Map(active.map((c) => [keyOf(c), c]));
    for (const [key, c] of wanted) {
      if (open.has(key)) continue;
      const alert: Alert = {
        id: randomUUID(),
        itemId: c.itemId,
        vm: c.vm ?? null,
        code: c.code,
        severity: ALERT_CODES[c.code].severity,
        message: c.message,
        subject: c.subject ?? null,
        raisedAt: at,
        clearedAt: null,
        webhook: { raised: { state: pending, attempts: 0 }, cleared: { state: "none", attempts: 0 } },
      };
      try {
        await t.createEntity<AlertEntity>({ partitionKey: "open", rowKey: key, body: alert.id });
      } catch (e) {
        if (isConflict(e)) continue;
        throw e;
      }
      await t.upsertEntity<AlertEntity>({ partitionKey: "alert", rowKey: alert.id, body: JSON.stringify(alert) }, "Replace");
      report.raised.push(alert);
      this.deps.log?.(`alert raised: ${alert.code} on ${alert.itemId}: ${alert.message}`);
    }
    for (const [key, id] of open) {
      if (wanted.has(key)) continue;
      const cleared = await this.update(id, (a) => {
        if (a.clearedAt) return undefined;
        a.clearedAt = at;
        a.webhook.cleared = { state: pending, attempts: 0 };
        return a;
      });
      await t.deleteEntity("open", key).catch((e: unknown) => (isNotFound(e) ? undefined : Promise.reject(e)));
      if (cleared?.clearedAt === at) {
        report.cleared.push(cleared);
        this.deps.log?.(`alert cleared: ${cleared.code} on ${cleared.itemId}`);
      }
    }
    return report;
  }

  /** POSTs every pending event to the webhook (raise before clear), retrying each with backoff; returns how many got through. */
  async deliver(): Promise<number> {
    const hook = this.deps.webhook;
    if (!hook) return 0;
    let delivered = 0;
    const all = (await this.list()).reverse();
    for (const a of all) {
      for (const event of ["raised", "cleared"] as const) {
        if (a.webhook[event].state !== "pending") continue;
        if (event === "cleared" && a.webhook.raised.state === "pending") continue; // in order: the raise first
        const { ok, attempts } = await this.post(hook, event, a);
        const updated = await this.update(a.id, (x) => {
          const total = x.webhook[event].attempts + attempts;
          x.webhook[event] = { state: ok ? "delivered" : total >= (this.deps.maxAttempts ?? 20) ? "failed" : "pending", attempts: total };
          return x;
        });
        if (updated) a.webhook = updated.webhook;
        if (ok) delivered++;
      }
    }
    return delivered;
  }

  private async post(hook: { url: string; secret: string }, event: "raised" | "cleared", a: Alert): Promise<{ ok: boolean; attempts: number }> {
    const { webhook: _w, ...alert } = a;
    const body = JSON.stringify({ event, alert } satisfies AlertEvent);
    const { attempts, baseDelayMs } = this.deps.retry ?? { attempts: 4, baseDelayMs: 250 };
    for (let n = 1; n <= attempts; n++) {
      const timestamp = String(Math.floor(this.now().getTime() / 1000));
      try {
        const res = await fetch(hook.url, {
          method: "POST",
          headers: {
            "content-type": "application/json",
            "x-site-recovery-event": event,
            "x-site-recovery-delivery": `${a.id}:${event}`,
            [TIMESTAMP_HEADER]: timestamp,
            [SIGNATURE_HEADER]: signAlert(hook.secret, timestamp, body),
          },
          body,
          signal: AbortSignal.timeout(5000),
        });
        await res.arrayBuffer().catch(() => undefined);
        if (res.ok) return { ok: true, attempts: n };
        // A 4xx other than 408/429 is the receiver refusing this event: retrying now will not change its mind.
        if (res.status < 500 && res.status !== 408 && res.status !== 429) {
          this.deps.log?.(`alert webhook refused ${event} ${a.id}: HTTP ${res.status}`);
          return { ok: false, attempts: n };
        }
        this.deps.log?.(`alert webhook answered HTTP ${res.status} to ${event} ${a.id} (attempt ${n}/${attempts})`);
      } catch (e) {
        this.deps.log?.(`alert webhook unreachable for ${event} ${a.id} (attempt ${n}/${attempts}): ${(e as Error).message}`);
      }
      if (n < attempts) await sleep(baseDelayMs * 2 ** (n - 1));
    }
    return { ok: false, attempts };
  }

  /** Deletes cleared alerts past the retention; returns how many. */
  async prune(): Promise<number> {
    const cutoff = this.now().getTime() - (this.deps.retentionDays ?? 30) * 86_400_000;
    const t = await this.table();
    let n = 0;
    for (const a of await this.list({ state: "cleared" })) {
      if (Date.parse(a.clearedAt!) >= cutoff || a.webhook.cleared.state === "pending") continue;
      await t.deleteEntity("alert", a.id).catch((e: unknown) => (isNotFound(e) ? undefined : Promise.reject(e)));
      n++;
    }
    return n;
  }

  private async update(id: string, change: (a: Alert) => Alert | undefined): Promise<Alert | undefined> {
    const t = await this.table();
    for (let attempt = 0; ; attempt++) {
      let e: AlertEntity & { etag: string };
      try {
        e = await t.getEntity<AlertEntity>("alert", id);
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
      const next = change(JSON.parse(e.body) as Alert);
      if (!next) return JSON.parse(e.body) as Alert;
      try {
        await t.updateEntity<AlertEntity>({ partitionKey: "alert", rowKey: id, body: JSON.stringify(next) }, "Replace", { etag: e.etag });
        return next;
      } catch (err) {
        if ((err as { statusCode?: number }).statusCode !== 412 || attempt >= 20) throw err;
      }
    }
  }
}
