// GET /api/recovery-plans/{planId}: one recovery plan, or 404.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler } from "./http";

export const getRecoveryPlan = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "getRecoveryPlan",
  route: "recovery-plans/{planId}",
  methods: ["GET"],
  authLevel: "function",
  handler: jsonHandler(async (request) => ({ body: await services().plans.get(request.params.planId ?? "") })),
});
