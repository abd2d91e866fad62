// Jobs: every operation an operator starts (enable, disable, failover, commit, cleanup, re-protect, resync) recorded with its steps and outcome.
import { randomUUID } from "node:crypto";
import { z } from "zod";
import { ApiError, isNotFound } from "../contract/errors";
import { TABLES } from "../storage/names";
import type { EntityTable, Tables } from "../storage/ports";

export const JOB_TYPES = ["enable", "disable", "failover", "commit", "test-failover-cleanup", "reprotect", "resync"] as const;
export type JobType = (typeof JOB_TYPES)[number];
export const JOB_STATES = ["InProgress", "Succeeded", "Failed"] as const;
export type JobState = (typeof JOB_STATES)[number];

export interface JobStep {
  name: string;
  state: JobState;
  startedAt: string;
  endedAt: string | null;
}

export interface JobError {
  code: string;
  message: string;
}

export interface Job {
  id: string;
  type: JobType;
  itemIds: string[];
  state: JobState;
  startedAt: string;
  endedAt: string | null;
  durationSeconds: number | null;
  steps: JobStep[];
  error: JobError | null;
  /** What the operation was asked, e.g. a failover's type and recovery point. */
  details?: Record<string, string | number | boolean>;
}

/** `GET /api/jobs` query: every filter optional. */
export const jobQuerySchema = z
  .object({
    itemId: z
      .string()
      .regex(/^[A-Za-z0-9_-]{1,64}$/, "an item id")
      .optional(),
    type: z.enum(JOB_TYPES).optional(),
    state: z.enum(JOB_STATES).optional(),
    limit: z.coerce.number().int().min(1).max(1000).optional(),
  })
  .strict();
export type JobQuery = z.infer<typeof jobQuerySchema>;

interface JobEntity {
  partitionKey: "job";
  rowKey: string;
  startedAt: string;
  body: string;
}

/** The code and first line of what made an operation fail. */
export function jobErrorOf(e: unknown): JobError {
  if (e instanceof ApiError) return { code: e.code, message: e.message };
  const code = typeof (e as { code?: unknown })?.code === "string" ? (e as { code: string }).code : e instanceof Error ? e.name : "Error";
  const message = e instanceof Error ? e.message : String(e);
  return { code, message: message.split("\n")[0]!.trim() };
}

/** A running job: each `step` ends the previous one; `succeed` or `fail` ends the job. */
export class JobHandle {
  constructor(
    private readonly jobs: Jobs,
    readonly id: string,
  ) {}

  step(name: string): Promise<void> {
    return this.jobs.step(this.id, name);
  }

  async succeed(): Promise<void> {
    await this.jobs.end(this.id, "Succeeded");
  }

  async fail(error: unknown): Promise<void> {
    await this.jobs.end(this.id, "Failed", jobErrorOf(error));
  }
}

export interface JobsDeps {
  storage: Tables;
  /** Finished jobs older than this are pruned by the monitoring pass. */
  retentionDays: number;
  now?: () => Date;
}

export class Jobs {
  private readonly now: () => Date;

  constructor(private readonly deps: JobsDeps) {
    this.now = deps.now ?? (() => new Date());
  }

  private table(): Promise<EntityTable> {
    return this.deps.storage.table(TABLES.jobs);
  }

  /** Records a new job InProgress (with its first step, when given); `id` lets a durable instance id name it. */
  async start(type: JobType, itemIds: string[], opts: { id?: string; firstStep?: string; details?: Job["details"] } = {}): Promise<JobHandle> {
    const at = this.now().toISOString();
    const job: Job = {
      id: opts.id ?? randomUUID(),
      type,
      itemIds,
      state: "InProgress",
      startedAt: at,
      endedAt: null,
      durationSeconds: null,
      steps: opts.firstStep ? [{ name: opts.firstStep, state: "InProgress", startedAt: at, endedAt: null }] : [],
      error: null,
      ...(opts.details ? { details: opts.details } : {}),
    };
    const t = await this.table();
    await t.upsertEntity<JobEntity>({ partitionKey: "job", rowKey: job.id, startedAt: at, body: JSON.stringify(job) }, "Replace");
    return new JobHandle(this, job.id);
  }

  /**
   * The one call an operation needs: runs `work` as a job of `type` on `itemIds`; Succeeded when it resolves, Failed
   * with its error when it throws (rethrown). Call it once the request is accepted: a refusal (400, 404, 409) is no job.
   */
  async run<T>(type: JobType, itemIds: string[], work: (job: JobHandle) => Promise<T>, opts: { id?: string; details?: Job["details"] } = {}): Promise<T> {
    const job = await this.start(type, itemIds, opts);
    let result: T;
    try {
      result = await work(job);
    } catch (e) {
      await job.fail(e);
      throw e;
    }
    await job.succeed();
    return result;
  }

  async get(id: string): Promise<Job | undefined> {
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(id)) return undefined;
    const t = await this.table();
    try {
      return JSON.parse((await t.getEntity<JobEntity>("job", id)).body) as Job;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** Newest first. */
  async list(q: JobQuery = {}): Promise<Job[]> {
    const t = await this.table();
    const out: Job[] = [];
    for await (const e of t.listEntities<JobEntity>({ queryOptions: { filter: "PartitionKey eq 'job'" } })) {
      const j = JSON.parse(e.body) as Job;
      if (q.itemId && !j.itemIds.includes(q.itemId)) continue;
      if (q.type && j.type !== q.type) continue;
      if (q.state && j.state !== q.state) continue;
      out.push(j);
    }
    out.sort((a, b) => b.startedAt.localeCompare(a.startedAt) || b.id.localeCompare(a.id));
    return q.limit ? out.slice(0, q.limit) : out;
  }

  /** Ends the running step and starts `name`; naming the running step again is a no-op (retried activities). */
  async step(id: string, name: string): Promise<void> {
    const at = this.now().toISOString();
    await this.update(id, (j) => {
      if (j.state !== "InProgress" || j.steps.some((s) => s.name === name)) return undefined;
      closeSteps(j, "Succeeded", at);
      j.steps.push({ name, state: "InProgress", startedAt: at, endedAt: null });
      return j;
    });
  }

  /** Ends the job (once: a second end is ignored); `steps`, when given, replace the recorded ones (a durable orchestration keeps its own). */
  async end(id: string, state: Exclude<JobState, "InProgress">, error?: JobError, steps?: JobStep[]): Promise<Job | undefined> {
    const at = this.now();
    return this.update(id, (j) => {
      if (j.state !== "InProgress") return undefined;
      if (steps) j.steps = steps;
      closeSteps(j, state, at.toISOString());
      j.state = state;
      j.endedAt = at.toISOString();
      j.durationSeconds = Math.max(0, Math.round((at.getTime() - Date.parse(j.startedAt)) / 100) / 10);
      j.error = error ?? null;
      return j;
    });
  }

  /** Deletes finished jobs that ended before the retention window; returns how many. */
  async prune(): Promise<number> {
    const cutoff = this.now().getTime() - this.deps.retentionDays * 86_400_000;
    const t = await this.table();
    let pruned = 0;
    for (const j of await this.list()) {
      if (j.state === "InProgress" || !j.endedAt || Date.parse(j.endedAt) >= cutoff) continue;
      await t.deleteEntity("job", j.id).catch((e: unknown) => (isNotFound(e) ? undefined : Promise.reject(e)));
      pruned++;
    }
    return pruned;
  }

  private async update(id: string, change: (j: Job) => Job | undefined): Promise<Job | undefined> {
    const t = await this.table();
    for (let attempt = 0; ; attempt++) {
      let e: JobEntity & { etag: string };
      try {
        e = await t.getEntity<JobEntity>("job", id);
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
      const next = change(JSON.parse(e.body) as Job);
      if (!next) return JSON.parse(e.body) as Job;
      try {
        await t.updateEntity<JobEntity>({ partitionKey: "job", rowKey: id, startedAt: next.startedAt, body: JSON.stringify(next) }, "Replace", {
          etag: e.etag,
        });
        return next;
      } catch (err) {
        if ((err as { statusCode?: number }).statusCode !== 412 || attempt >= 20) throw err;
      }
    }
  }
}

function closeSteps(j: Job, state: Exclude<JobState, "InProgress">, at: string): void {
  for (const s of j.steps) {
    if (s.state !== "InProgress") continue;
    s.state = state;
    s.endedAt = at;
  }
}
