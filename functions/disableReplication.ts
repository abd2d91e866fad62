// DELETE /api/replicated-items/{itemId}: stop protecting a VM and remove everything replication made for it.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler } from "./http";
import { itemIdParam } from "../shared/contract/api";

export const disableReplication = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "disableReplication",
  route: "replicated-items/{itemId}",
  methods: ["DELETE"],
  authLevel: "function",
  handler: jsonHandler(async (request) => ({ status: 202, body: await services().protection.disable(itemIdParam(request.params.itemId)) })),
});
