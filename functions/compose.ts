// The composition root: builds the storage clients, the fabric and the use cases once, from settings.
import { Agents } from "../shared/agents";
import { LocalFabric } from "../shared/fabric/local";
import { ItemStore } from "../shared/items";
import { Protection } from "../shared/protection";
import { RecoveryPoints } from "../shared/recovery-points";
import { RecoveryPlans } from "../shared/recovery-plans";
import { FailoverPlanning } from "../shared/failover";
import { FailoverSteps } from "../shared/failover-steps";
import { loadConfig, type Config } from "../shared/settings";
import { Storage, TABLES } from "../shared/storage";
import type { Fabric } from "../shared/fabric/port";

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
}

export function createServices(config: Config, overrides: { fabric?: Fabric; now?: () => Date } = {}): Services {
  const storage = new Storage(config);
  const fabric = overrides.fabric ?? new LocalFabric(() => storage.table(TABLES.fabric));
  const items = new ItemStore(storage);
  const clock = overrides.now ? { now: overrides.now } : {};
  const agents = new Agents({ config, storage, items, ...clock });
  const points = new RecoveryPoints({ storage, items, ...clock });
  const plans = new RecoveryPlans({ storage, items, ...clock });
  const protection = new Protection({ config, storage, fabric, items, agents, points, ...clock });
  const planning = new FailoverPlanning({ items, points, plans, ...clock });
  const failover = new FailoverSteps({ config, storage, items, points, fabric, planning, agents, cacheTimeoutMs: config.failover.cacheTimeoutSeconds * 1000, ...clock });
  return { config, storage, fabric, items, protection, agents, points, plans, planning, failover };
}

let current: Services | undefined;

/** The services of this process, built from process.env on first use. */
export function services(): Services {
  current ??= createServices(loadConfig());
  return current;
}
