// POST /api/replicated-items/{itemId}/reprotect: turns a committed item around (400/404/409, nothing started), starts the re-protect orchestration → 202 with the item and the agent's token.
import { randomUUID } from "node:crypto";
import type { DurableClientHttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { errorResponse, readJson } from "./http";
import { itemView } from "../shared/contract/views";
import { REPROTECT_ORCHESTRATION } from "./reprotect";
import { itemIdParam } from "../shared/contract/api";
import type { JobHandle } from "../shared/operations/jobs";

export const reprotectItem = (services: () => Services): DurableClientHttpFunctionSpec => ({
  kind: "http",
  name: "reprotectItem",
  route: "replicated-items/{itemId}/reprotect",
  methods: ["POST"],
  authLevel: "function",
  durableClient: true,
  handler: async (request, client, context) => {
    try {
      const s = services();
      const itemId = itemIdParam(request.params.itemId);
      const body = await readJson(request, s.config.http.maxRequestBytes, { optional: true });
      const instanceId = randomUUID();
      const { input, item, agentRegistration } = await s.reprotection.accept(itemId, body, instanceId);
      // Accepted: a job from here on, named after the orchestration, ended by its completion or rollback.
      let job: JobHandle | undefined;
      try {
        job = await s.jobs.start("reprotect", [itemId], { id: instanceId, details: { from: input.from, to: input.to } });
        await client.startNew(REPROTECT_ORCHESTRATION, { instanceId, input });
      } catch (e) {
        await s.reprotection.unlock(input, (e as Error).message);
        await job?.fail(e);
        throw e;
      }
      context.log(`re-protect ${instanceId} started: ${itemId} ${input.from} → ${input.to}`);
      const origin = new URL(request.url).origin;
      return {
        status: 202,
        headers: { location: `${origin}/api/replicated-items/${itemId}/reprotect`, "retry-after": "5" },
        jsonBody: {
          ...itemView(item, await s.items.listDisks(itemId)),
          direction: input.to,
          agentRegistration,
          job: { id: instanceId, type: "reprotect", statusQueryGetUri: `${origin}/api/replicated-items/${itemId}/reprotect` },
        },
      };
    } catch (e) {
      return errorResponse(e, context);
    }
  },
});
