// POST /api/recovery-plans: a named plan of ordered item groups, validated whole before it is stored.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler, readJson } from "./http";

export const createRecoveryPlan = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "createRecoveryPlan",
  route: "recovery-plans",
  methods: ["POST"],
  authLevel: "function",
  handler: jsonHandler(async (request) => {
    const s = services();
    const plan = await s.plans.create(await readJson(request, s.config.http.maxRequestBytes));
    return { status: 201, headers: { location: `/api/recovery-plans/${plan.id}` }, body: plan };
  }),
});
