// GET /api/replicated-items/{itemId}/reprotect: the item's last re-protect as a job: runtime status, step, seeds, progress (compared, transferred, ETA), output.
import type { DurableClientHttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { errorResponse } from "./http";
import { itemIdParam } from "../shared/contract/api";
import { ApiError, NotFound } from "../shared/contract/errors";
import { instanceStatus } from "./instance-status";

export const getReprotect = (services: () => Services): DurableClientHttpFunctionSpec => ({
  kind: "http",
  name: "getReprotect",
  route: "replicated-items/{itemId}/reprotect",
  methods: ["GET"],
  authLevel: "function",
  durableClient: true,
  handler: async (request, client, context) => {
    try {
      const s = services();
      const itemId = itemIdParam(request.params.itemId);
      const found = await s.items.get(itemId);
      if (!found) throw new NotFound("replicatedItem", itemId);
      const r = found.item.reprotect;
      if (!r) throw new ApiError(404, "NotFound", `replicated item '${itemId}' has never been re-protected`, { itemId });
      const st = await instanceStatus(client, r.instanceId);
      const runtimeStatus = st?.runtimeStatus ?? (r.completedAt ? "Completed" : "Unknown");
      return {
        status: 200,
        jsonBody: {
          id: r.instanceId,
          type: "reprotect",
          itemIds: [itemId],
          state: runtimeStatus === "Completed" ? "Succeeded" : runtimeStatus === "Failed" || runtimeStatus === "Terminated" ? "Failed" : "InProgress",
          runtimeStatus,
          from: r.from,
          to: r.to,
          startedAt: r.startedAt,
          seededAt: r.seededAt ?? null,
          endedAt: r.completedAt ?? null,
          seeds: r.seeds ?? {},
          customStatus: st?.customStatus ?? null,
          output: st?.output ?? null,
          error: r.error ?? null,
        },
      };
    } catch (e) {
      return errorResponse(e, context);
    }
  },
});
