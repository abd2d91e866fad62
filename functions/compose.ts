// The composition root: builds the storage clients, the fabric and the use cases once, from settings.
import { Agents } from "../shared/protection/agents";
import { LocalFabric } from "../shared/fabric/local";
import { ItemStore } from "../shared/storage/item-store";
import { Protection } from "../shared/protection/enable-disable";
import { RecoveryPoints } from "../shared/recovery-points/points";
import { RecoveryPlans } from "../shared/failover/recovery-plans";
import { FailoverPlanning } from "../shared/failover/start";
import { FailoverSteps } from "../shared/failover/steps";
import { Reprotection } from "../shared/protection/reprotect";
import { loadConfig, type Config } from "../shared/config/settings";
import { Storage } from "../shared/storage/clients";
import { TABLES } from "../shared/storage/names";
import type { Fabric } from "../shared/fabric/port";
import { ArmFabric } from "../shared/fabric/arm";
import { ArmClient } from "../shared/fabric/arm-client";
import { azureCredential } from "../shared/storage/identity";
import { Jobs } from "../shared/operations/jobs";
import { Alerts } from "../shared/operations/alerts";
import { ReplicationHistory } from "../shared/operations/history";
import { Monitoring } from "../shared/operations/monitoring";
import { Telemetry } from "../shared/operations/telemetry";

export interface Services {
  config: Config;
  storage: Storage;
  fabric: Fabric;
  items: ItemStore;
  protection: Protection;
  agents: Agents;
  points: RecoveryPoints;
  plans: RecoveryPlans;
  planning: FailoverPlanning;
  failover: FailoverSteps;
  jobs: Jobs;
  alerts: Alerts;
  history: ReplicationHistory;
  monitoring: Monitoring;
  telemetry: Telemetry;
  /** The services' clock (tests move it). */
  now: () => Date;
  reprotection: Reprotection;
}

export interface ServiceOverrides {
  fabric?: Fabric;
  now?: () => Date;
  /** Tests: shorter webhook retries. */
  alertRetry?: { attempts: number; baseDelayMs: number };
  log?: (line: string) => void;
}

export function createServices(config: Config, overrides: ServiceOverrides = {}): Services {
  const storage = new Storage(config);
  const fabric = overrides.fabric ?? fabricOf(config, storage);
  const items = new ItemStore(storage);
  const clock = overrides.now ? { now: overrides.now } : {};
  const jobs = new Jobs({ storage, retentionDays: config.monitoring.jobRetentionDays, ...clock });
  const log = overrides.log ?? ((line: string) => console.log(line));
  const alerts = new Alerts({
    storage,
    ...(config.monitoring.webhook ? { webhook: config.monitoring.webhook } : {}),
    ...(overrides.alertRetry ? { retry: overrides.alertRetry } : {}),
    retentionDays: config.monitoring.jobRetentionDays,
    log,
    ...clock,
  });
  const history = new ReplicationHistory(storage);
  const telemetry = new Telemetry({ exporter: config.monitoring.metricsExporter });
  const agents = new Agents({ config, storage, items, ...clock });
  const points = new RecoveryPoints({ storage, items, ...clock });
  const plans = new RecoveryPlans({ storage, items, ...clock });
  const protection = new Protection({ config, storage, fabric, items, agents, points, jobs, history, ...clock });
  const planning = new FailoverPlanning({ items, points, plans, ...clock });
  const failover = new FailoverSteps({
    config,
    storage,
    items,
    points,
    fabric,
    planning,
    agents,
    jobs,
    cacheTimeoutMs: config.failover.cacheTimeoutSeconds * 1000,
    ...clock,
  });
  const reprotection = new Reprotection({ config, storage, items, fabric, agents, jobs, ...clock });
  const monitoring = new Monitoring({
    config,
    storage,
    items,
    points,
    jobs,
    alerts,
    history,
    ...clock,
    onSample: (item, sample) => telemetry.sample(item, sample),
  });
  return {
    config,
    storage,
    fabric,
    items,
    protection,
    agents,
    points,
    plans,
    planning,
    failover,
    reprotection,
    jobs,
    alerts,
    history,
    monitoring,
    telemetry,
    now: overrides.now ?? (() => new Date()),
  };
}

/** LocalFabric (embedded default), or ARM with the Function App's identity; mappings are the control plane's records either way. */
function fabricOf(config: Config, storage: Storage): Fabric {
  const records = new LocalFabric(() => storage.table(TABLES.fabric));
  const f = config.fabric;
  if (f.kind === "local") return records;
  const credential = azureCredential({ credential: "default", ...(f.clientId ? { clientId: f.clientId } : {}) });
  return new ArmFabric({
    client: new ArmClient({ endpoint: f.endpoint, credential }),
    subscriptionId: f.subscriptionId,
    sourceSubscriptionId: f.sourceSubscriptionId,
    replicaStorageId: f.replicaStorageId,
    records,
  });
}

let current: Services | undefined;

/** The services of this process, built from process.env on first use. */
export function services(): Services {
  current ??= createServices(loadConfig());
  return current;
}
