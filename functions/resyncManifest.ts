// POST /api/agents/resync-manifest: block checksums of a halted replica, so the agent ships only blocks that differ.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler, readJson } from "./http";

export const resyncManifest = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "resyncManifest",
  route: "agents/resync-manifest",
  methods: ["POST"],
  // The agent authenticates with its agent key in the body, not a function key.
  authLevel: "anonymous",
  handler: jsonHandler(async (request) => {
    const s = services();
    return { body: await s.agents.resyncManifest(await readJson(request, s.config.http.maxRequestBytes)) };
  }),
});
