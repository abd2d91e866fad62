// GET /api/replicated-items: every protected VM with its state and health.
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { jsonHandler } from "./http";
import { itemView } from "../shared/contract/views";

export const listReplicatedItems = (services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "listReplicatedItems",
  route: "replicated-items",
  methods: ["GET"],
  authLevel: "function",
  handler: jsonHandler(async () => {
    const s = services();
    const items = await s.items.list();
    const views = await Promise.all(items.map(async (i) => itemView(i, await s.items.listDisks(i.id), undefined, await s.points.summary(i))));
    return { body: views };
  }),
});
