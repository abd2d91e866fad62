// Timer trigger: NCRONTAB (six fields, seconds first) through croner, never overlapping itself.
import { type Timer } from "@azure/functions";
import { Cron } from "croner";
import * as df from "durable-functions";
import type { TimerFunctionSpec } from "../functions/spec";
import { Invoker } from "./queues";

// ---------------------------------------------------------------------------------------------
// Timer trigger: NCRONTAB (six fields, seconds first) through croner, never overlapping itself.

export class TimerRunner {
  readonly name: string;
  private pattern: string | undefined;
  private job: Cron | undefined;
  private current: Promise<void> | undefined;
  private status: Timer["scheduleStatus"] | undefined;

  constructor(
    private readonly spec: TimerFunctionSpec,
    private readonly env: NodeJS.ProcessEnv,
    private readonly invoke: Invoker,
    private readonly log: (line: string) => void,
  ) {
    this.name = spec.name;
  }

  /** Resolves `%SETTING%` and validates the expression; throws a message naming the function. */
  prepare(): void {
    if (this.pattern) return;
    let schedule = this.spec.schedule.trim();
    const setting = /^%([^%]+)%$/.exec(schedule);
    if (setting) {
      const value = this.env[setting[1]];
      if (!value) throw new Error(`function '${this.name}': schedule setting '${setting[1]}' is not set`);
      schedule = value.trim();
    }
    if (schedule.split(/\s+/).length !== 6) {
      throw new Error(`function '${this.name}': schedule '${schedule}' is not a six-field NCRONTAB expression (seconds first)`);
    }
    try {
      // Validates without scheduling anything.
      new Cron(schedule, { paused: true, legacyMode: false, timezone: this.timezone() }).stop();
    } catch (e) {
      throw new Error(`function '${this.name}': invalid schedule '${schedule}': ${(e as Error).message}`);
    }
    this.pattern = schedule;
  }

  start(): void {
    this.prepare();
    const startedAt = new Date().toISOString();
    // NCRONTAB requires both day-of-month and day-of-week to match (croner's legacy mode would OR them).
    this.job = new Cron(this.pattern!, { legacyMode: false, timezone: this.timezone() }, (self) => {
      if (this.current) {
        this.log(
          `[${new Date().toISOString()}] Timer '${this.name}' is still running; skipping the occurrence at ${(self.currentRun() ?? new Date()).toISOString()}`,
        );
        return;
      }
      void this.runNow("schedule").catch(() => undefined);
    });
    this.status = { last: startedAt, next: this.job.nextRun()?.toISOString() ?? "", lastUpdated: startedAt };
    if (this.spec.runOnStartup) void this.runNow("startup").catch(() => undefined);
  }

  stop(): void {
    this.job?.stop();
    this.job = undefined;
  }

  /** Runs after any invocation of this timer already in progress; rejects if the handler fails. */
  async runNow(_reason: "schedule" | "startup" | "manual"): Promise<void> {
    while (this.current) await this.current.catch(() => undefined);
    const now = new Date().toISOString();
    const status = this.status ?? { last: now, next: this.job?.nextRun()?.toISOString() ?? "", lastUpdated: now };
    // The host keeps no past-due record locally (no schedule monitor across restarts), so nothing is past due.
    const timer: Timer = { isPastDue: false, schedule: { adjustForDST: true }, scheduleStatus: { ...status } };
    const spec = this.spec;
    const run = this.invoke(async (context) => (spec.durableClient ? spec.handler(timer, df.getClient(context), context) : spec.handler(timer, context)));
    this.current = run.catch(() => undefined);
    try {
      await run;
    } finally {
      this.current = undefined;
      const done = new Date().toISOString();
      this.status = { last: now, next: this.job?.nextRun()?.toISOString() ?? status.next, lastUpdated: done };
    }
  }

  /** Azure runs NCRONTAB in UTC unless WEBSITE_TIME_ZONE says otherwise. */
  private timezone(): string {
    return this.env.WEBSITE_TIME_ZONE || "UTC";
  }
}
