// A VM whose program writes through the agent's library API, in a process of its own (the soak kills it): every write is reported to the soak before it is issued and when it is acknowledged.
import { Agent, WritesRefusedError } from "../agent";
import { rng } from "../test/support/batches";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const wallNow = () => performance.timeOrigin + performance.now();

export interface WriterConfig {
  url: string;
  /** First start only; a restart finds its registration in the state directory. */
  token?: string;
  stateDir: string;
  images: Record<string, string>;
  seed: number;
  bytesPerSecondPerDisk: number;
  maxWrite: number;
  groupHoldBoundMs?: number;
}

export type WriterMessage =
  | { type: "ready" }
  | { type: "send"; disk: string; offset: number; length: number; byte: number; at: number }
  | { type: "ack"; disk: string; at: number }
  | { type: "refused"; disk: string }
  | { type: "paused" }
  /** The agent is in a group prepare, held in its hook until `stall-over` (the soak stops the process meanwhile). */
  | { type: "prepare-held" }
  | { type: "failed"; disk: string; message: string };

export type WriterCommand =
  | { type: "pause" }
  | { type: "go" }
  | { type: "stop" }
  /** The next group prepare is held (and reported) until `stall-over`. */
  | { type: "arm-stall" }
  | { type: "disarm-stall" }
  | { type: "stall-over" };

async function main(config: WriterConfig): Promise<void> {
  const send = (m: WriterMessage) => process.send!(m);
  let stallArmed = false;
  let stallOver: (() => void) | undefined;
  const agent = await Agent.start({
    url: config.url,
    ...(config.token ? { token: config.token } : {}),
    stateDir: config.stateDir,
    disks: Object.entries(config.images).map(([id, path]) => ({ id, path, kind: "tracked" as const })),
    sealIntervalMs: 500,
    maxBatchBytes: 1024 * 1024,
    heartbeatIntervalMs: 1000,
    checkinIntervalMs: 1000,
    groupPort: 0,
    groupHost: "127.0.0.1",
    ...(config.groupHoldBoundMs ? { groupHoldBoundMs: config.groupHoldBoundMs } : {}),
    // The agent's hook before it holds its writes for a group tag: a member stalled in prepare when the soak asks.
    groupBeforeHold: async () => {
      if (!stallArmed) return;
      stallArmed = false;
      const over = new Promise<void>((r) => (stallOver = r));
      send({ type: "prepare-held" });
      await over;
    },
    log: (line) => console.log(line),
  });
  let paused: Promise<void> | undefined;
  let resume: () => void = () => undefined;
  let inFlight = 0;
  const idle: (() => void)[] = [];
  let running = true;
  const onCommand = async (c: WriterCommand) => {
    if (c.type === "pause") {
      paused ??= new Promise((r) => (resume = r));
      if (inFlight > 0) await new Promise<void>((r) => idle.push(r));
      send({ type: "paused" });
    } else if (c.type === "arm-stall") stallArmed = true;
    else if (c.type === "disarm-stall") stallArmed = false;
    else if (c.type === "stall-over") {
      stallOver?.();
      stallOver = undefined;
    } else if (c.type === "go") {
      paused = undefined;
      resume();
    } else {
      running = false;
      resume();
      await agent.stop();
      process.exit(0);
    }
  };
  process.on("message", (c: WriterCommand) => void onCommand(c));
  send({ type: "ready" });
  const next = rng(config.seed);
  await Promise.all(
    Object.keys(config.images).map(async (diskId) => {
      const disk = agent.trackedDisk(diskId);
      while (running) {
        if (paused) await paused;
        if (!running) break;
        const length = 1 + Math.floor(next() * config.maxWrite);
        const offset = Math.floor(next() * (disk.sizeBytes - length));
        const byte = Math.floor(next() * 256);
        inFlight++;
        send({ type: "send", disk: diskId, offset, length, byte, at: wallNow() });
        try {
          await disk.write(offset, Buffer.alloc(length, byte));
          send({ type: "ack", disk: diskId, at: wallNow() });
        } catch (e) {
          if (e instanceof WritesRefusedError) send({ type: "refused", disk: diskId });
          else send({ type: "failed", disk: diskId, message: String(e) });
          if (--inFlight === 0) for (const f of idle.splice(0)) f();
          return;
        }
        if (--inFlight === 0) for (const f of idle.splice(0)) f();
        await sleep(Math.max(1, (length / config.bytesPerSecondPerDisk) * 1000));
      }
    }),
  );
}

// Started by the soak with the flag and its configuration as JSON.
if (process.argv[2] === "--soak-writer") {
  main(JSON.parse(process.argv[3]!) as WriterConfig).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
