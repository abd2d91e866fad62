// POST /api/agents/register: the agent trades its registration token for SAS URLs scoped to its item.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler, readJson } from "./http";

export const registerAgent = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "registerAgent",
  route: "agents/register",
  methods: ["POST"],
  // The VM holds no function key: the registration token is its credential.
  authLevel: "anonymous",
  handler: jsonHandler(async (request) => {
    const s = services();
    return { body: await s.agents.register(await readJson(request, s.config.http.maxRequestBytes)) };
  }),
});
