// POST /api/replicated-items/{itemId}/commit: makes a failover final; the item's recovery points are deleted.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler } from "./http";
import { itemView } from "../shared/contract/views";
import { itemIdParam } from "../shared/contract/api";

export const commitFailover = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "commitFailover",
  route: "replicated-items/{itemId}/commit",
  methods: ["POST"],
  authLevel: "function",
  handler: jsonHandler(async (request) => {
    const s = services();
    const item = await s.failover.commit(itemIdParam(request.params.itemId));
    return { body: itemView(item, await s.items.listDisks(item.id)) };
  }),
});
