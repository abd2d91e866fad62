// A batch message the host gave up on (moved to the poison queue), recorded as a warning on its item.
import { type BatchMessage } from "./batch";
import { raiseIssue } from "../protection/items";
import { type ItemStore } from "../storage/item-store";
import { REPLICATION_POISON_QUEUE } from "../storage/names";

/** Records a message the host gave up on (moved to the poison queue) as a warning on its item; false for an unknown item. */
export async function recordPoisonMessage(deps: { items: ItemStore; now?: () => Date }, message: BatchMessage): Promise<boolean> {
  const at = (deps.now ?? (() => new Date()))().toISOString();
  const item = await deps.items.updateItem(message.itemId, (i) => {
    if (i.state === "Disabling") return undefined;
    const open = i.health.issues.find((x) => x.code === "PoisonMessage" && x.diskId === message.diskId);
    raiseIssue(i, {
      code: "PoisonMessage",
      severity: "Warning",
      diskId: message.diskId,
      // The highest failed batch: the issue clears once the disk's watermark passes it.
      seq: Math.max(open?.seq ?? 0, message.seq),
      since: at,
      message: `disk '${message.diskId}': applying batch ${message.seq} failed on every delivery and its message was moved to ${REPLICATION_POISON_QUEUE}; the cache sweep keeps re-announcing the disk, see the function log for the error`,
    });
    i.updatedAt = at;
    return i;
  });
  return item !== undefined && item.state !== "Disabling";
}
