// A durable instance's status, or undefined when the durable extension does not know the instance.
import type * as df from "durable-functions";

/**
 * durable-functions 3.5's `getStatus` reports an unknown instance only as an Error whose message says "HTTP 404"
 * (no status or error type): this is the one place that reads it that way.
 */
export async function instanceStatus(client: df.DurableClient, instanceId: string, showInput = false): Promise<df.DurableOrchestrationStatus | undefined> {
  try {
    return await client.getStatus(instanceId, { showInput });
  } catch (e) {
    if (/HTTP 404/.test((e as Error).message)) return undefined;
    throw e;
  }
}
