// POST /api/agents/checkin: the agent renews its SAS URLs, reports resyncs, and receives resync commands.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler, readJson } from "./http";

export const agentCheckin = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "agentCheckin",
  route: "agents/checkin",
  methods: ["POST"],
  // The agent authenticates with its agent key in the body, not a function key.
  authLevel: "anonymous",
  handler: jsonHandler(async (request) => {
    const s = services();
    return { body: await s.agents.checkin(await readJson(request, s.config.http.maxRequestBytes)) };
  }),
});
