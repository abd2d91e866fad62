// The one table of functions: the Functions host registers it (index.ts) and the local host drives it.
import type { Services } from "./compose";
import type { FunctionSpec } from "./spec";
import { disableReplication } from "./disableReplication";
import { enableReplication } from "./enableReplication";
import { getReplicatedItem } from "./getReplicatedItem";
import { listReplicatedItems } from "./listReplicatedItems";
import { registerAgent } from "./registerAgent";
import { agentCheckin } from "./agentCheckin";
import { resyncManifest } from "./resyncManifest";

export function functionTable(services: () => Services): FunctionSpec[] {
  return [
    enableReplication(services),
    listReplicatedItems(services),
    getReplicatedItem(services),
    disableReplication(services),
    registerAgent(services),
    agentCheckin(services),
    resyncManifest(services),
  ];
}
