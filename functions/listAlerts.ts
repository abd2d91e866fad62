// GET /api/alerts: alerts raised by the monitoring pass, newest first; ?itemId= &state=open|cleared &limit=.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler } from "./http";
import { parseInput } from "../shared/contract/api";
import { alertQuerySchema } from "../shared/operations/alerts";

export const listAlerts = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "listAlerts",
  route: "alerts",
  methods: ["GET"],
  authLevel: "function",
  handler: jsonHandler(async (request) => {
    const query = parseInput(alertQuerySchema, Object.fromEntries(request.query.entries()));
    return { body: await services().alerts.list(query) };
  }),
});
