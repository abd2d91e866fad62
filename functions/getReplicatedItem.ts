// GET /api/replicated-items/{itemId}: one item's state, health, target resources and disks.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler } from "./http";
import { itemView } from "./views";

export const getReplicatedItem = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "getReplicatedItem",
  route: "replicated-items/{itemId}",
  methods: ["GET"],
  authLevel: "function",
  handler: jsonHandler(async (request) => {
    const s = services();
    const item = await s.protection.get(request.params.itemId ?? "");
    return { body: itemView(item, await s.items.listDisks(item.id)) };
  }),
});
