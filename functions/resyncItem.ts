// POST /api/replicated-items/{itemId}/resync: a ResyncRequired item's waiting disks get a fresh differential resync (ASR's "Resynchronize") → 202 with the item.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler, readJson } from "./http";
import { itemView } from "../shared/contract/views";
import { itemIdParam } from "../shared/contract/api";

export const resyncItem = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "resyncItem",
  route: "replicated-items/{itemId}/resync",
  methods: ["POST"],
  authLevel: "function",
  handler: jsonHandler(async (request) => {
    const s = services();
    const itemId = itemIdParam(request.params.itemId);
    const item = await s.reprotection.requestResync(itemId, await readJson(request, s.config.http.maxRequestBytes, { optional: true }));
    return { status: 202, body: itemView(item, await s.items.listDisks(item.id)) };
  }),
});
