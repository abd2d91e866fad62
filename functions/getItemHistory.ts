// GET /api/replicated-items/{itemId}/history: RPO, lag, backlog and churn samples, oldest first; ?hours= (default 24, at most 360).
import { z } from "zod";
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler } from "./http";
import { itemIdParam, parseInput } from "../shared/contract/api";

const historyQuery = z.object({ hours: z.coerce.number().min(0.1).max(360).default(24) }).strict();

export const getItemHistory = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "getItemHistory",
  route: "replicated-items/{itemId}/history",
  methods: ["GET"],
  authLevel: "function",
  handler: jsonHandler(async (request) => {
    const s = services();
    const { hours } = parseInput(historyQuery, Object.fromEntries(request.query.entries()));
    const item = await s.protection.get(itemIdParam(request.params.itemId));
    const since = s.now().getTime() - hours * 3_600_000;
    return { body: { itemId: item.id, sampleSeconds: s.config.monitoring.historySampleSeconds, samples: await s.history.list(item.id, since) } };
  }),
});
