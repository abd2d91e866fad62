// POST /api/replicated-items: protect a VM (target resources, replicas, cache) and hand out its agent token.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler, readJson } from "./http";
import { itemView } from "../shared/contract/views";

export const enableReplication = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "enableReplication",
  route: "replicated-items",
  methods: ["POST"],
  authLevel: "function",
  handler: jsonHandler(async (request) => {
    const s = services();
    const body = await readJson(request, s.config.http.maxRequestBytes);
    const { item, disks, agentRegistration } = await s.protection.enable(body);
    return {
      status: 201,
      headers: { location: `/api/replicated-items/${item.id}` },
      body: { ...itemView(item, disks), agentRegistration },
    };
  }),
});
