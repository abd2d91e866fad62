// A live workload for end-to-end tests: writers on tracked disks that await every write and keep a byte model of each disk.
import { WritesRefusedError, type Agent } from "../../agent";
import { rng } from "./batches";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface WorkloadOptions {
  disks: string[];
  diskBytes: number;
  /** Largest write (bytes, default 32 KiB). */
  maxWrite?: number;
  /** What the disks hold before the first write (keyed `<itemId>/<diskId>`); zeros otherwise. */
  initial?: Map<string, Buffer>;
  /**
   * Each disk's writer is paced to at most this many bytes per second (default 1 MiB/s). Unpaced, a writer in the
   * same process as the stack outruns apply whenever the machine is busy, and the backlog (not the code under test)
   * decides whether a tag is sealed in time.
   */
  bytesPerSecondPerDisk?: number;
}

/**
 * Each model holds exactly the acknowledged writes: a write is copied into it only once the disk resolved it. A write
 * the disk refuses (a planned failover's shutdown) ends that disk's writer; `refused` counts them. Any other failure
 * ends the writer too, and `stop` rejects with it.
 */
export class Workload {
  readonly models = new Map<string, Buffer>();
  refused = 0;
  acknowledged = 0;
  private failure: unknown;
  private running = true;
  private paused: Promise<void> | undefined;
  private resume: (() => void) | undefined;
  private inFlight = 0;
  private idle: (() => void)[] = [];
  private readonly loops: Promise<void>[] = [];

  constructor(vms: { itemId: string; agent: Agent }[], seed: number, opts: WorkloadOptions) {
    const next = rng(seed);
    const maxWrite = opts.maxWrite ?? 32 * 1024;
    const rate = opts.bytesPerSecondPerDisk ?? 1024 * 1024;
    for (const { itemId, agent } of vms) {
      for (const id of opts.disks) {
        const model = Buffer.alloc(opts.diskBytes);
        opts.initial?.get(`${itemId}/${id}`)?.copy(model);
        this.models.set(`${itemId}/${id}`, model);
        const disk = agent.trackedDisk(id);
        this.loops.push(
          (async () => {
            while (this.running) {
              if (this.paused) await this.paused;
              if (!this.running) break;
              this.inFlight++;
              const len = 1 + Math.floor(next() * maxWrite);
              const offset = Math.floor(next() * (model.length - len));
              const data = Buffer.alloc(len, Math.floor(next() * 256));
              let ok = true;
              try {
                await disk.write(offset, data);
                data.copy(model, offset);
                this.acknowledged++;
              } catch (e) {
                ok = false;
                if (e instanceof WritesRefusedError) this.refused++;
                else this.failure ??= e;
              } finally {
                if (--this.inFlight === 0) for (const f of this.idle.splice(0)) f();
              }
              if (!ok) break;
              // Paced after each write (no catching up after a pause: that would be a burst).
              await sleep(Math.max(1, (len / rate) * 1000));
            }
          })(),
        );
      }
    }
  }

  /** No write in flight and none starts until `go`: the models are the disks now. */
  async pause(): Promise<void> {
    this.paused = new Promise((r) => (this.resume = r));
    if (this.inFlight > 0) await new Promise<void>((r) => this.idle.push(r));
  }

  go(): void {
    this.paused = undefined;
    this.resume?.();
  }

  copy(): Map<string, Buffer> {
    return new Map([...this.models].map(([k, v]) => [k, Buffer.from(v)]));
  }

  async stop(): Promise<void> {
    this.running = false;
    this.go();
    await Promise.all(this.loops);
    if (this.failure !== undefined) throw this.failure;
  }
}
