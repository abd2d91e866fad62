// GET /api/recovery-plans: every recovery plan, oldest first.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler } from "./http";

export const listRecoveryPlans = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "listRecoveryPlans",
  route: "recovery-plans",
  methods: ["GET"],
  authLevel: "function",
  handler: jsonHandler(async () => ({ body: await services().plans.list() })),
});
