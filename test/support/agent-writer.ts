// A process that writes through a tracked disk as fast as it can, for tests that kill it mid-stream (run with --agent-writer).
import { Agent } from "../../agent";

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
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
  const disk = agent.trackedDisk("os");
  console.log("started");
  for (let round = 1; ; round++) {
    await Promise.all(
      Array.from({ length: 8 }, () => {
        const len = 1 + Math.floor(next() * 32 * KiB);
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
