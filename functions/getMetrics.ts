// GET /api/metrics: the app's OpenTelemetry metrics as they stand (RPO, lag, backlog, applied bytes, failover duration), one line each, for a person or a script.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { errorResponse } from "./http";

export const getMetrics = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "getMetrics",
  route: "metrics",
  methods: ["GET"],
  authLevel: "function",
  handler: async (_request, context) => {
    try {
      const lines = await services().telemetry.lines();
      return { status: 200, headers: { "content-type": "text/plain; charset=utf-8" }, body: lines.join("\n") + (lines.length ? "\n" : "") };
    } catch (e) {
      return errorResponse(e, context);
    }
  },
});
