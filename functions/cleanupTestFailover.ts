// POST /api/replicated-items/{itemId}/test-failover-cleanup: removes the test VM, NIC and disks; the item stays protected.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler } from "./http";
import { itemView } from "../shared/contract/views";
import { itemIdParam } from "../shared/contract/api";

export const cleanupTestFailover = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "cleanupTestFailover",
  route: "replicated-items/{itemId}/test-failover-cleanup",
  methods: ["POST"],
  authLevel: "function",
  handler: jsonHandler(async (request) => {
    const s = services();
    const { item, removed } = await s.failover.cleanupTestFailover(itemIdParam(request.params.itemId));
    return { body: { ...itemView(item, await s.items.listDisks(item.id)), removed } };
  }),
});
