// Settings: one zod schema over process.env, parsed once at start into a typed Config.
import { Cron } from "croner";
import { z } from "zod";

/**
 * How a connection authenticates: with the account key (a connection string), or as a Microsoft Entra identity
 * (an identity-based connection, `<NAME>__blobServiceUri` … `__credential=managedidentity` `__clientId`).
 */
export type StorageAuth =
  { kind: "key"; key: string; connectionString: string } | { kind: "identity"; credential: "managedidentity" | "default"; clientId?: string };

/** A storage account: its endpoints and how to authenticate to them. */
export interface StorageAccount {
  name: string;
  blobUrl: string;
  queueUrl: string;
  tableUrl: string;
  auth: StorageAuth;
}

/** A storage account reached through a shared-key connection string. */
export type KeyedStorageAccount = StorageAccount & { auth: { kind: "key" } };

export const DEV_ACCOUNT = "devstoreaccount1";
export const DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/** Parses a storage connection string (shared key, or UseDevelopmentStorage=true); throws a one-line reason. */
export function parseConnectionString(cs: string): KeyedStorageAccount {
  const parts = new Map<string, string>();
  for (const piece of cs.split(";")) {
    const i = piece.indexOf("=");
    if (i > 0) parts.set(piece.slice(0, i).trim().toLowerCase(), piece.slice(i + 1).trim());
  }
  if (parts.get("usedevelopmentstorage")?.toLowerCase() === "true") {
    const proxy = parts.get("developmentstorageproxyuri") ?? "http://127.0.0.1";
    return {
      name: DEV_ACCOUNT,
      blobUrl: `${proxy}:10000/${DEV_ACCOUNT}`,
      queueUrl: `${proxy}:10001/${DEV_ACCOUNT}`,
      tableUrl: `${proxy}:10002/${DEV_ACCOUNT}`,
      auth: { kind: "key", key: DEV_KEY, connectionString: cs },
    };
  }
  const name = parts.get("accountname");
  const key = parts.get("accountkey");
  if (!name) throw new Error("has no AccountName");
  if (!key) throw new Error("has no AccountKey (site-recovery signs agent SAS URLs with the account key)");
  const protocol = parts.get("defaultendpointsprotocol") ?? "https";
  const suffix = parts.get("endpointsuffix") ?? "core.windows.net";
  const endpoint = (service: string) => (parts.get(`${service}endpoint`) ?? `${protocol}://${name}.${service}.${suffix}`).replace(/\/+$/, "");
  return {
    name,
    blobUrl: endpoint("blob"),
    queueUrl: endpoint("queue"),
    tableUrl: endpoint("table"),
    auth: { kind: "key", key, connectionString: cs },
  };
}

const emptyIsUnset = (v: unknown) => (typeof v === "string" && v.trim() === "" ? undefined : v);

const optionalText = z.preprocess(emptyIsUnset, z.string().trim().optional());

const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const optionalGuid = z.preprocess(emptyIsUnset, z.string().trim().regex(GUID, "a GUID, e.g. 00000000-0000-0000-0000-000000000000").optional());

/** The three storage connections: the control plane needs every service, the others only blobs. */
export const CONNECTIONS = {
  AzureWebJobsStorage: { services: ["blob", "queue", "table"] },
  REPLICA_STORAGE: { services: ["blob"] },
  CACHE_STORAGE: { services: ["blob"] },
} as const;
export type ConnectionName = keyof typeof CONNECTIONS;
const CONNECTION_NAMES = Object.keys(CONNECTIONS) as ConnectionName[];

/** The `<NAME>__…` settings of an identity-based connection, as the Functions host reads them. */
export const IDENTITY_SUFFIXES = ["accountName", "blobServiceUri", "queueServiceUri", "tableServiceUri", "credential", "clientId"] as const;
type IdentitySuffix = (typeof IDENTITY_SUFFIXES)[number];

const identityShape = (name: ConnectionName) =>
  Object.fromEntries(IDENTITY_SUFFIXES.map((suffix) => [`${name}__${suffix}`, optionalText])) as Record<
    `${ConnectionName}__${IdentitySuffix}`,
    typeof optionalText
  >;

const intSetting = (min: number, max: number, dflt: number) => z.preprocess(emptyIsUnset, z.coerce.number().int().min(min).max(max).default(dflt));

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

const STORAGE_ACCOUNT_ID = /^\/subscriptions\/[0-9a-f-]{36}\/resourceGroups\/[^/]+\/providers\/Microsoft\.Storage\/storageAccounts\/[a-z0-9]{3,24}$/i;

/** Every setting the app reads, each with its check; connections and the fabric are assembled from them below. */
export const settingsSchema = z.object({
  AzureWebJobsStorage: optionalText,
  REPLICA_STORAGE: optionalText,
  CACHE_STORAGE: optionalText,
  ...identityShape("AzureWebJobsStorage"),
  ...identityShape("REPLICA_STORAGE"),
  ...identityShape("CACHE_STORAGE"),
  DURABLE_TASK_HUB: z.preprocess(
    emptyIsUnset,
    z
      .string()
      .regex(/^[A-Za-z][A-Za-z0-9]{2,44}$/, "3-45 letters and digits, starting with a letter")
      .default("siterecovery"),
  ),
  AGENT_TOKEN_TTL_HOURS: intSetting(1, 720, 24),
  AGENT_SAS_TTL_HOURS: intSetting(1, 8760, 168),
  AGENT_CHECKIN_SECONDS: intSetting(1, 3600, 30),
  MAX_REQUEST_BYTES: intSetting(1024, 100 * 1024 * 1024, 1024 * 1024),
  SWEEP_SCHEDULE: ncrontab("*/30 * * * * *"),
  SWEEP_STALL_SECONDS: intSetting(0, 86400, 30),
  APPLY_MAX_BATCHES_PER_RUN: intSetting(1, 1_000_000, 50_000),
  SEAL_SCHEDULE: ncrontab("*/15 * * * * *"),
  RPO_CRITICAL_MINUTES: intSetting(1, 1440, 60),
  RPO_ALERT_MINUTES: intSetting(1, 1440, 30),
  DRILL_REMINDER_DAYS: intSetting(1, 3650, 180),
  AGENT_HEARTBEAT_LOST_MINUTES: intSetting(1, 1440, 10),
  JOB_RETENTION_DAYS: intSetting(1, 365, 30),
  HISTORY_SAMPLE_SECONDS: intSetting(5, 3600, 60),
  ALERT_WEBHOOK_URL: z.preprocess(emptyIsUnset, z.url({ protocol: /^https?$/ }).optional()),
  ALERT_WEBHOOK_SECRET: z.preprocess(emptyIsUnset, z.string().min(16, "at least 16 characters (it signs every alert)").optional()),
  METRICS_EXPORTER: z.preprocess(emptyIsUnset, z.enum(["none", "console"]).default("none")),
  FAILOVER_CACHE_TIMEOUT_SECONDS: intSetting(1, 3600, 20),
  FABRIC: z.preprocess(emptyIsUnset, z.enum(["local", "arm"]).default("local")),
  AZURE_SUBSCRIPTION_ID: optionalGuid,
  AZURE_SOURCE_SUBSCRIPTION_ID: optionalGuid,
  AZURE_CLIENT_ID: optionalGuid,
  REPLICA_STORAGE_RESOURCE_ID: z.preprocess(
    emptyIsUnset,
    z
      .string()
      .trim()
      .regex(STORAGE_ACCOUNT_ID, "the replica storage account's resource id, /subscriptions/…/providers/Microsoft.Storage/storageAccounts/<name>")
      .optional(),
  ),
  ARM_ENDPOINT: z.preprocess(emptyIsUnset, z.url({ protocol: /^https?$/ }).default("https://management.azure.com")),
});
type RawSettings = z.infer<typeof settingsSchema>;

/** The connection settings alone: plain optional text, so they are checked even when another setting is bad. */
const connectionSchema = settingsSchema.pick(
  Object.fromEntries(
    Object.keys(settingsSchema.shape)
      .filter((k) => CONNECTION_NAMES.some((c) => k === c || k.startsWith(`${c}__`)))
      .map((k) => [k, true]),
  ) as {
    [K in ConnectionName | `${ConnectionName}__${IdentitySuffix}`]: true;
  },
);
type ConnectionSettings = z.infer<typeof connectionSchema>;

/** The names of every setting the schema reads. */
export const SETTING_NAMES: readonly string[] = Object.keys(settingsSchema.shape);

type Problem = { setting: string; message: string };

const isLoopback = (host: string) => host === "localhost" || host === "127.0.0.1" || host === "[::1]";

/** A service endpoint of an identity-based connection: https (plain http only for a local emulator). */
function serviceUri(value: string, setting: string, problems: Problem[]): string | undefined {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    problems.push({ setting, message: "not a URL, e.g. https://<account>.blob.core.windows.net" });
    return undefined;
  }
  if (url.protocol !== "https:" && !(url.protocol === "http:" && isLoopback(url.hostname))) {
    problems.push({ setting, message: "must be an https URL (tokens are never sent in clear)" });
    return undefined;
  }
  return value.replace(/\/+$/, "");
}

/** `https://acct.blob.core.windows.net` → `https://acct.queue.core.windows.net`; undefined for other shapes. */
function sibling(blobUrl: string, service: "queue" | "table"): string | undefined {
  const url = new URL(blobUrl);
  if (!/^[a-z0-9]+\.blob\./i.test(url.hostname)) return undefined;
  url.hostname = url.hostname.replace(/\.blob\./i, `.${service}.`);
  return url.toString().replace(/\/+$/, "");
}

/**
 * A path-style account on a loopback or IP host: a local emulator (Azurite). Its server-side copy across accounts
 * verifies the source by downloading it whole (and fails past ~512 MiB): a copy to do there goes through the client.
 */
export function isEmulatedAccount(account: StorageAccount): boolean {
  const host = new URL(account.blobUrl).hostname;
  return isLoopback(host) || /^\d+\.\d+\.\d+\.\d+$/.test(host);
}

/** The account name: the host's first label (`acct.blob.core.windows.net`), or a path-style emulator's first segment. */
function accountNameOf(blobUrl: string): string {
  const url = new URL(blobUrl);
  return isLoopback(url.hostname) || /^\d+\.\d+\.\d+\.\d+$/.test(url.hostname) ? (url.pathname.split("/")[1] ?? "") : url.hostname.split(".")[0]!;
}

/**
 * One connection from its settings: a connection string, or an identity-based connection (`<NAME>__accountName`, or
 * the service URIs it needs; `__credential=managedidentity` with `__clientId` for a user-assigned identity).
 * Undefined when nothing of it is set (or it is unusable: then `problems` says why, by setting name).
 */
function connection(name: ConnectionName, s: ConnectionSettings, problems: Problem[]): StorageAccount | undefined {
  const value = (suffix: IdentitySuffix) => s[`${name}__${suffix}`];
  const given = IDENTITY_SUFFIXES.filter((suffix) => value(suffix) !== undefined);
  const cs = s[name];
  if (cs !== undefined) {
    if (given.length > 0) {
      problems.push({
        setting: name,
        message: `set both as a connection string and as an identity-based connection (${given.map((g) => `${name}__${g}`).join(", ")}); keep one`,
      });
      return undefined;
    }
    try {
      return parseConnectionString(cs);
    } catch (e) {
      problems.push({ setting: name, message: `not a usable storage connection string: ${(e as Error).message}` });
      return undefined;
    }
  }
  if (given.length === 0) return undefined;

  const before = problems.length;
  const credential = value("credential");
  const clientId = value("clientId");
  if (credential !== undefined && credential.toLowerCase() !== "managedidentity") {
    problems.push({ setting: `${name}__credential`, message: "the only credential type is managedidentity" });
  }
  if (clientId !== undefined && credential?.toLowerCase() !== "managedidentity") {
    problems.push({ setting: `${name}__credential`, message: `must be managedidentity when ${name}__clientId is set` });
  }
  if (clientId !== undefined && !GUID.test(clientId))
    problems.push({ setting: `${name}__clientId`, message: "the user-assigned identity's client id, a GUID" });

  const accountName = value("accountName");
  if (accountName !== undefined && !/^[a-z0-9]{3,24}$/.test(accountName)) {
    problems.push({ setting: `${name}__accountName`, message: "3-24 lower-case letters and digits" });
  }
  const urls: Partial<Record<"blob" | "queue" | "table", string>> = {};
  for (const service of ["blob", "queue", "table"] as const) {
    const setting = `${name}__${service}ServiceUri`;
    const explicit = value(`${service}ServiceUri`);
    if (explicit !== undefined) urls[service] = serviceUri(explicit, setting, problems);
    else if (accountName !== undefined) urls[service] = `https://${accountName}.${service}.core.windows.net`;
  }
  const needs: readonly string[] = CONNECTIONS[name].services;
  for (const service of ["blob", "queue", "table"] as const) {
    if (urls[service] !== undefined || value(`${service}ServiceUri`) !== undefined) continue;
    // Only blobs are needed here: the other endpoints follow the blob one's name where they can.
    const derived = service !== "blob" && !needs.includes(service) && urls.blob !== undefined ? sibling(urls.blob, service) : undefined;
    if (derived !== undefined) urls[service] = derived;
    else if (needs.includes(service) || urls.blob !== undefined || service === "blob") {
      problems.push({
        setting: `${name}__${service}ServiceUri`,
        message: `is required for an identity-based connection (${given.map((g) => `${name}__${g}`).join(", ")} given), unless ${name}__accountName is set`,
      });
    }
  }
  if (problems.length > before || !urls.blob || !urls.queue || !urls.table) return undefined;
  return {
    name: accountName ?? accountNameOf(urls.blob),
    blobUrl: urls.blob,
    queueUrl: urls.queue,
    tableUrl: urls.table,
    auth: { kind: "identity", credential: credential === undefined ? "default" : "managedidentity", ...(clientId !== undefined ? { clientId } : {}) },
  };
}

/** Where site-recovery creates the target resources: Table Storage (embedded default) or Azure Resource Manager. */
export type FabricConfig =
  | { kind: "local" }
  | {
      kind: "arm";
      /** The target subscription (where the Function App runs and failed-over VMs are created). */
      subscriptionId: string;
      /** The protected VMs' subscription (their networks are read, planned failover powers them off). */
      sourceSubscriptionId: string;
      /** The user-assigned identity to sign in with; DefaultAzureCredential otherwise. */
      clientId?: string;
      /** The replica account's resource id: managed disks are imported from its failover VHDs. */
      replicaStorageId: string;
      endpoint: string;
    };

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
  /** Apply: how many batches one leased run writes before it lets the disk go (re-announced, for any instance to take). */
  apply: { maxBatchesPerRun: number };
  /** The sealing pass (thinning, pruning, RPO health); points themselves are sealed as tags arrive. */
  recoveryPoints: { sealSchedule: string; rpoCriticalMinutes: number };
  /** What operators are told: alert thresholds, where alerts go, how long jobs and history are kept. */
  monitoring: {
    rpoAlertMinutes: number;
    drillReminderDays: number;
    heartbeatLostMinutes: number;
    jobRetentionDays: number;
    historySampleSeconds: number;
    webhook?: { url: string; secret: string };
    metricsExporter: "none" | "console";
  };
  /** A failover to `latest` falls back to the latest processed point when the source cache does not answer for this long. */
  failover: { cacheTimeoutSeconds: number };
  fabric: FabricConfig;
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
  const problems = parsed.success ? [] : zodProblems(parsed.error);
  const connections = connectionSchema.safeParse(env);
  const [control, replica, cache] = connections.success ? CONNECTION_NAMES.map((name) => connection(name, connections.data, problems)) : [];
  if (!control && !problems.some((p) => p.setting.startsWith("AzureWebJobsStorage"))) {
    problems.push({
      setting: "AzureWebJobsStorage",
      message:
        "is required but not set (a connection string, or an identity-based connection: AzureWebJobsStorage__accountName or __blobServiceUri/__queueServiceUri/__tableServiceUri)",
    });
  }
  if (!parsed.success) throw new SettingsError(problems);
  const s = parsed.data;
  const fabric = fabricConfig(s, problems);
  if (s.ALERT_WEBHOOK_URL && !s.ALERT_WEBHOOK_SECRET) {
    problems.push({
      setting: "ALERT_WEBHOOK_SECRET",
      message: "is required when ALERT_WEBHOOK_URL is set (every alert is signed with it, header x-site-recovery-signature)",
    });
  }
  if (problems.length > 0 || !control || !fabric) throw new SettingsError(problems);
  return {
    storage: { control, replica: replica ?? control, cache: cache ?? control },
    taskHub: s.DURABLE_TASK_HUB,
    agent: { tokenTtlHours: s.AGENT_TOKEN_TTL_HOURS, sasTtlHours: s.AGENT_SAS_TTL_HOURS, checkinSeconds: s.AGENT_CHECKIN_SECONDS },
    http: { maxRequestBytes: s.MAX_REQUEST_BYTES },
    sweep: { schedule: s.SWEEP_SCHEDULE, stallSeconds: s.SWEEP_STALL_SECONDS },
    apply: { maxBatchesPerRun: s.APPLY_MAX_BATCHES_PER_RUN },
    recoveryPoints: { sealSchedule: s.SEAL_SCHEDULE, rpoCriticalMinutes: s.RPO_CRITICAL_MINUTES },
    failover: { cacheTimeoutSeconds: s.FAILOVER_CACHE_TIMEOUT_SECONDS },
    monitoring: {
      rpoAlertMinutes: s.RPO_ALERT_MINUTES,
      drillReminderDays: s.DRILL_REMINDER_DAYS,
      heartbeatLostMinutes: s.AGENT_HEARTBEAT_LOST_MINUTES,
      jobRetentionDays: s.JOB_RETENTION_DAYS,
      historySampleSeconds: s.HISTORY_SAMPLE_SECONDS,
      ...(s.ALERT_WEBHOOK_URL && s.ALERT_WEBHOOK_SECRET ? { webhook: { url: s.ALERT_WEBHOOK_URL, secret: s.ALERT_WEBHOOK_SECRET } } : {}),
      metricsExporter: s.METRICS_EXPORTER,
    },
    fabric,
  };
}

function fabricConfig(s: RawSettings, problems: Problem[]): FabricConfig | undefined {
  if (s.FABRIC === "local") return { kind: "local" };
  const before = problems.length;
  if (!s.AZURE_SUBSCRIPTION_ID) problems.push({ setting: "AZURE_SUBSCRIPTION_ID", message: "is required when FABRIC=arm (the target subscription)" });
  if (!s.REPLICA_STORAGE_RESOURCE_ID) {
    problems.push({
      setting: "REPLICA_STORAGE_RESOURCE_ID",
      message: "is required when FABRIC=arm (managed disks are imported from the replica account's VHDs)",
    });
  }
  if (problems.length > before || !s.AZURE_SUBSCRIPTION_ID || !s.REPLICA_STORAGE_RESOURCE_ID) return undefined;
  return {
    kind: "arm",
    subscriptionId: s.AZURE_SUBSCRIPTION_ID,
    sourceSubscriptionId: s.AZURE_SOURCE_SUBSCRIPTION_ID ?? s.AZURE_SUBSCRIPTION_ID,
    ...(s.AZURE_CLIENT_ID ? { clientId: s.AZURE_CLIENT_ID } : {}),
    replicaStorageId: s.REPLICA_STORAGE_RESOURCE_ID,
    endpoint: s.ARM_ENDPOINT.replace(/\/+$/, ""),
  };
}

/** One line for an operator: how the app reaches storage, and so which kind of SAS its agents get. */
export function describeStorageAuth(config: Config): string {
  const { control, replica, cache } = config.storage;
  const how = (a: StorageAccount) => (a.auth.kind === "key" ? "account key" : `identity (${a.auth.credential}${a.auth.clientId ? ` ${a.auth.clientId}` : ""})`);
  const sas = (a: StorageAccount) => (a.auth.kind === "key" ? "account-key SAS" : "user delegation SAS");
  return (
    `Storage: control ${control.name} by ${how(control)}, replicas ${replica.name} by ${how(replica)}, cache ${cache.name} by ${how(cache)}; ` +
    `agents get ${sas(cache)} for the cache and ${sas(control)} for the queue.`
  );
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
