// GET /api/failovers/{instanceId}: a failover's runtime status, progress (custom status) and output.
import type { DurableClientHttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { errorResponse } from "./http";
import { FAILOVER_ORCHESTRATION } from "./failover";
import { NotFound } from "../shared/contract/errors";
import { instanceIdParam } from "../shared/contract/api";
import { instanceStatus } from "./instance-status";

export const getFailover = (_services: () => Services): DurableClientHttpFunctionSpec => ({
  kind: "http",
  name: "getFailover",
  route: "failovers/{instanceId}",
  methods: ["GET"],
  authLevel: "function",
  durableClient: true,
  handler: async (request, client, context) => {
    try {
      // Checked before it goes into the durable client's URL ('..' or '/' there would address another endpoint).
      const id = instanceIdParam(request.params.instanceId);
      const st = await instanceStatus(client, id, true);
      if (!st || st.name !== FAILOVER_ORCHESTRATION) throw new NotFound("failover", id);
      return {
        status: 200,
        jsonBody: {
          instanceId: st.instanceId,
          runtimeStatus: st.runtimeStatus,
          customStatus: st.customStatus ?? null,
          output: st.output ?? null,
          input: st.input ?? null,
          createdTime: st.createdTime,
          lastUpdatedTime: st.lastUpdatedTime,
        },
      };
    } catch (e) {
      return errorResponse(e, context);
    }
  },
});
