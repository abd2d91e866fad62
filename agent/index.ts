// The agent's public surface: start an Agent, write through its tracked disks or let it scan, watch its status.
export {
  Agent,
  AGENT_VERSION,
  DEFAULT_SPOOL_MAX_BYTES,
  DEFAULT_STATE_DIR,
  DEFAULT_UPLOAD_CONCURRENCY,
  SHUTDOWN_REFUSAL,
  type AgentDiskOption,
  type AgentOptions,
} from "./agent";
export { TrackedDisk, WritesRefusedError } from "./tracked-disk";
export { ScannedDisk, FINGERPRINT_BLOCK } from "./scanned-disk";
export { ReplicatedDisk, DEFAULT_TUNING, type DiskTuning } from "./disk";
export { BITMAP_BLOCK_BYTES } from "./bitmap";
export { statePaths } from "./state";
export { AGENT_V8_FLAGS, useAgentHeapSettings } from "./heap";
