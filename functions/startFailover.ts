// POST /api/failovers: validates and locks the selection (400/404/409, nothing started), then starts the failover orchestration → 202 check-status.
import { randomUUID } from "node:crypto";
import type { DurableClientHttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { errorResponse, readJson } from "./http";
import { FAILOVER_ORCHESTRATION } from "./failover";
import type { JobHandle } from "../shared/operations/jobs";

export const startFailover = (services: () => Services): DurableClientHttpFunctionSpec => ({
  kind: "http",
  name: "startFailover",
  route: "failovers",
  methods: ["POST"],
  authLevel: "function",
  durableClient: true,
  handler: async (request, client, context) => {
    try {
      const s = services();
      const body = await readJson(request, s.config.http.maxRequestBytes);
      const instanceId = randomUUID();
      const input = await s.planning.accept(body, instanceId);
      // Accepted (the items are locked): a job from here on, named after the orchestration, ended by it.
      let job: JobHandle | undefined;
      try {
        job = await s.jobs.start("failover", input.stages.flat(), {
          id: instanceId,
          firstStep: "validating",
          details: { failoverType: input.type, recoveryPoint: input.recoveryPoint },
        });
        await client.startNew(FAILOVER_ORCHESTRATION, { instanceId, input });
      } catch (e) {
        await s.planning.unlock(input.stages.flat(), instanceId);
        await job?.fail(e);
        throw e;
      }
      context.log(`failover ${instanceId} started: ${input.type}, ${input.recoveryPoint}, items ${input.stages.map((g) => g.join(",")).join(" → ")}`);
      const r = client.createCheckStatusResponse(request, instanceId);
      return { status: r.status, headers: Object.fromEntries(r.headers.entries()), jsonBody: await r.json() };
    } catch (e) {
      return errorResponse(e, context);
    }
  },
});
