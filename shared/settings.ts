// Settings: one zod schema over process.env, parsed once at start into a typed Config.
import { Cron } from "croner";
import { z } from "zod";

/** A storage account as reached through a shared-key connection string. */
export interface StorageAccount {
  name: string;
  key: string;
  blobUrl: string;
  queueUrl: string;
  tableUrl: string;
  connectionString: string;
}

export const DEV_ACCOUNT = "devstoreaccount1";
export const DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/** Parses a storage connection string (shared key, or UseDevelopmentStorage=true); throws a one-line reason. */
export function parseConnectionString(cs: string): StorageAccount {
  const parts = new Map<string, string>();
  for (const piece of cs.split(";")) {
    const i = piece.indexOf("=");
    if (i > 0) parts.set(piece.slice(0, i).trim().toLowerCase(), piece.slice(i + 1).trim());
  }
  if (parts.get("usedevelopmentstorage")?.toLowerCase() === "true") {
    const proxy = parts.get("developmentstorageproxyuri") ?? "http://127.0.0.1";
    return {
      name: DEV_ACCOUNT,
      key: DEV_KEY,
      blobUrl: `${proxy}:10000/${DEV_ACCOUNT}`,
      queueUrl: `${proxy}:10001/${DEV_ACCOUNT}`,
      tableUrl: `${proxy}:10002/${DEV_ACCOUNT}`,
      connectionString: cs,
    };
  }
  const name = parts.get("accountname");
  const key = parts.get("accountkey");
  if (!name) throw new Error("has no AccountName");
  if (!key) throw new Error("has no AccountKey (site-recovery signs agent SAS URLs with the account key)");
  const protocol = parts.get("defaultendpointsprotocol") ?? "https";
  const suffix = parts.get("endpointsuffix") ?? "core.windows.net";
  const endpoint = (service: string) =>
    (parts.get(`${service}endpoint`) ?? `${protocol}://${name}.${service}.${suffix}`).replace(/\/+$/, "");
  return {
    name,
    key,
    blobUrl: endpoint("blob"),
    queueUrl: endpoint("queue"),
    tableUrl: endpoint("table"),
    connectionString: cs,
  };
}

const emptyIsUnset = (v: unknown) => (typeof v === "string" && v.trim() === "" ? undefined : v);

const connectionString = z.string().transform((cs, ctx) => {
  try {
    return parseConnectionString(cs);
  } catch (e) {
    ctx.addIssue({ code: "custom", message: `not a usable storage connection string: ${(e as Error).message}` });
    return z.NEVER;
  }
});

const intSetting = (min: number, max: number, dflt: number) =>
  z.preprocess(emptyIsUnset, z.coerce.number().int().min(min).max(max).default(dflt));

/** An NCRONTAB expression as the Functions timer trigger takes it: six fields, seconds first, evaluated in UTC. */
const ncrontab = (dflt: string) =>
  z.preprocess(
    emptyIsUnset,
    z
      .string()
      .trim()
      .default(dflt)
      .superRefine((expr, ctx) => {
        if (expr.split(/\s+/).length !== 6) {
          ctx.addIssue({ code: "custom", message: "a six-field NCRONTAB expression (seconds first), e.g. */30 * * * * *" });
          return;
        }
        try {
          new Cron(expr, { paused: true, legacyMode: false, timezone: "UTC" }).stop();
        } catch (e) {
          ctx.addIssue({ code: "custom", message: `not a valid NCRONTAB expression: ${(e as Error).message}` });
        }
      }),
  );

const settingsSchema = z.object({
  AzureWebJobsStorage: z.preprocess(emptyIsUnset, connectionString),
  REPLICA_STORAGE: z.preprocess(emptyIsUnset, connectionString.optional()),
  CACHE_STORAGE: z.preprocess(emptyIsUnset, connectionString.optional()),
  DURABLE_TASK_HUB: z.preprocess(
    emptyIsUnset,
    z.string().regex(/^[A-Za-z][A-Za-z0-9]{2,44}$/, "3-45 letters and digits, starting with a letter").default("siterecovery"),
  ),
  AGENT_TOKEN_TTL_HOURS: intSetting(1, 720, 24),
  AGENT_SAS_TTL_HOURS: intSetting(1, 8760, 168),
  AGENT_CHECKIN_SECONDS: intSetting(1, 3600, 30),
  MAX_REQUEST_BYTES: intSetting(1024, 100 * 1024 * 1024, 1024 * 1024),
  SWEEP_SCHEDULE: ncrontab("*/30 * * * * *"),
  SWEEP_STALL_SECONDS: intSetting(0, 86400, 30),
  SEAL_SCHEDULE: ncrontab("*/15 * * * * *"),
  RPO_CRITICAL_MINUTES: intSetting(1, 1440, 60),
  FAILOVER_CACHE_TIMEOUT_SECONDS: intSetting(1, 3600, 20),
});

export interface Config {
  storage: {
    /** Control plane: tables, the replication queue, durable state (target region). */
    control: StorageAccount;
    /** Replica and failover disks (target region). */
    replica: StorageAccount;
    /** The agents' cache (source region). */
    cache: StorageAccount;
  };
  taskHub: string;
  agent: { tokenTtlHours: number; sasTtlHours: number; checkinSeconds: number };
  http: { maxRequestBytes: number };
  /** The cache sweep: how often it runs, and how long a disk with batches waiting may make no progress before it is re-kicked. */
  sweep: { schedule: string; stallSeconds: number };
  /** The sealing pass (thinning, pruning, RPO health); points themselves are sealed as tags arrive. */
  recoveryPoints: { sealSchedule: string; rpoCriticalMinutes: number };
  /** A failover to `latest` falls back to the latest processed point when the source cache does not answer for this long. */
  failover: { cacheTimeoutSeconds: number };
}

/** Every missing or malformed setting, reported by name, all at once. */
export class SettingsError extends Error {
  constructor(readonly problems: { setting: string; message: string }[]) {
    super(`invalid settings:\n${problems.map((p) => `  ${p.setting}: ${p.message}`).join("\n")}`);
    this.name = "SettingsError";
  }
}

/** Reports each issue under the name of the setting it concerns. */
export function zodProblems(error: z.ZodError): { setting: string; message: string }[] {
  return error.issues.map((i) => ({
    setting: String(i.path[0] ?? "(settings)"),
    message: i.code === "invalid_type" && i.input === undefined ? "is required but not set" : i.message,
  }));
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = settingsSchema.safeParse(env, { reportInput: true });
  if (!parsed.success) throw new SettingsError(zodProblems(parsed.error));
  const s = parsed.data;
  return {
    storage: {
      control: s.AzureWebJobsStorage,
      replica: s.REPLICA_STORAGE ?? s.AzureWebJobsStorage,
      cache: s.CACHE_STORAGE ?? s.AzureWebJobsStorage,
    },
    taskHub: s.DURABLE_TASK_HUB,
    agent: { tokenTtlHours: s.AGENT_TOKEN_TTL_HOURS, sasTtlHours: s.AGENT_SAS_TTL_HOURS, checkinSeconds: s.AGENT_CHECKIN_SECONDS },
    http: { maxRequestBytes: s.MAX_REQUEST_BYTES },
    sweep: { schedule: s.SWEEP_SCHEDULE, stallSeconds: s.SWEEP_STALL_SECONDS },
    recoveryPoints: { sealSchedule: s.SEAL_SCHEDULE, rpoCriticalMinutes: s.RPO_CRITICAL_MINUTES },
    failover: { cacheTimeoutSeconds: s.FAILOVER_CACHE_TIMEOUT_SECONDS },
  };
}

/** Timer schedules, as the function table needs them before (and without) the rest of the settings. */
export interface TimerSchedules {
  sweep: string;
  seal: string;
}

/**
 * Reads only the schedule settings, with the same defaults and checks as loadConfig: the function table is built
 * without touching storage settings, and a literal schedule registers on any host, even one whose app settings
 * lack the entry (an unresolvable `%NAME%` would leave the timer in error under `func start`).
 */
export function timerSchedules(env: NodeJS.ProcessEnv = process.env): TimerSchedules {
  const parsed = settingsSchema.pick({ SWEEP_SCHEDULE: true, SEAL_SCHEDULE: true }).safeParse(env, { reportInput: true });
  if (!parsed.success) throw new SettingsError(zodProblems(parsed.error));
  return { sweep: parsed.data.SWEEP_SCHEDULE, seal: parsed.data.SEAL_SCHEDULE };
}
