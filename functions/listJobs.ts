// GET /api/jobs: every operation (enable, disable, failover, commit, cleanup, re-protect, resync), newest first; ?itemId= &type= &state= &limit=.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler } from "./http";
import { parseInput } from "../shared/contract/api";
import { jobQuerySchema } from "../shared/operations/jobs";

export const listJobs = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "listJobs",
  route: "jobs",
  methods: ["GET"],
  authLevel: "function",
  handler: jsonHandler(async (request) => {
    const query = parseInput(jobQuerySchema, Object.fromEntries(request.query.entries()));
    return { body: await services().jobs.list(query) };
  }),
});
