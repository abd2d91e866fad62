// A process that writes through a tracked disk as fast as it can, for tests that kill it mid-stream (run with --agent-writer).
import { Agent } from "../../agent";
import { rng } from "./batches";

const KiB = 1024;

async function main(url: string, token: string, stateDir: string, image: string, seed: number): Promise<void> {
  const agent = await Agent.start({
    url,
    token,
    stateDir,
    disks: [{ id: "os", path: image, kind: "tracked" }],
    sealIntervalMs: 50,
    maxBatchBytes: 256 * KiB,
    checkinIntervalMs: 1000,
  });
  const next = rng(seed);
  const disk = agent.trackedDisk("os");
  console.log("started");
  for (let round = 1; ; round++) {
    await Promise.all(
      Array.from({ length: 8 }, () => {
        // At least 4 bytes: each write carries its round number.
        const len = 4 + Math.floor(next() * (32 * KiB - 4));
        const data = Buffer.alloc(len, Math.floor(next() * 256));
        data.writeUInt32LE(round, 0);
        return disk.write(Math.floor(next() * (disk.sizeBytes - len)), data);
      }),
    );
    if (round % 25 === 0) console.log(`acked ${round}`);
  }
}

// Loaded by the test runner too (it runs every file under test/): only the flag starts the writer.
if (process.argv[2] === "--agent-writer") {
  const [url, token, stateDir, image, seed] = process.argv.slice(3);
  main(url!, token!, stateDir!, image!, Number(seed)).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
