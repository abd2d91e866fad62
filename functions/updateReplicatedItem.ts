// PATCH /api/replicated-items/{itemId}: join or leave a replication group without re-enabling replication.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler, readJson } from "./http";
import { itemView } from "../shared/contract/views";
import { itemIdParam } from "../shared/contract/api";

export const updateReplicatedItem = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "updateReplicatedItem",
  route: "replicated-items/{itemId}",
  methods: ["PATCH"],
  authLevel: "function",
  handler: jsonHandler(async (request) => {
    const s = services();
    const item = await s.protection.update(itemIdParam(request.params.itemId), await readJson(request, s.config.http.maxRequestBytes));
    return { body: itemView(item, await s.items.listDisks(item.id)) };
  }),
});
