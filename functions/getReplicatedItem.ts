// GET /api/replicated-items/{itemId}: one item's state, health, target resources, and each disk's live replication status.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler } from "./http";
import { itemView } from "../shared/contract/views";
import { readReplicationStatus } from "../shared/replication/status";
import { itemIdParam } from "../shared/contract/api";

export const getReplicatedItem = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "getReplicatedItem",
  route: "replicated-items/{itemId}",
  methods: ["GET"],
  authLevel: "function",
  handler: jsonHandler(async (request) => {
    const s = services();
    const item = await s.protection.get(itemIdParam(request.params.itemId));
    const disks = await s.items.listDisks(item.id);
    const [status, points] = await Promise.all([readReplicationStatus(s.storage, item, disks), s.points.summary(item)]);
    return { body: itemView(item, disks, status, points) };
  }),
});
