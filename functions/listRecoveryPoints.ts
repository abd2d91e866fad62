// GET /api/replicated-items/{itemId}/recovery-points: the item's points, newest first (its own and its group's).
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler } from "./http";
import { pointView } from "../shared/contract/views";
import { itemIdParam } from "../shared/contract/api";

export const listRecoveryPoints = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "listRecoveryPoints",
  route: "replicated-items/{itemId}/recovery-points",
  methods: ["GET"],
  authLevel: "function",
  handler: jsonHandler(async (request) => {
    const s = services();
    const item = await s.protection.get(itemIdParam(request.params.itemId));
    return { body: (await s.points.listForItem(item)).map((p) => pointView(p, item.id)) };
  }),
});
