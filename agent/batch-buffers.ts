// The memory of an agent's batches: the payload buffers of every disk and the spool writes that hold them, bounded agent-wide.

/**
 * Payload buffers for sealed batches, shared by all of an agent's disks, and the count of batches being written to the
 * spool (each holds its buffer until it is durable there). Bounding the pipeline agent-wide rather than per disk keeps
 * the agent's memory nearly the same whatever the number of disks: at most one open batch per disk plus `depth` batches
 * on their way to the spool. A buffer given back is kept for the next seal (the buffers in existence are the most that
 * were ever in use at once, which that bound caps), so a steady load allocates no new buffers: fresh 4 MiB buffers per
 * batch made collections a tenth of the agent's time, and fresh memory is costly to touch.
 */
export class BatchBuffers {
  private readonly free: Buffer[] = [];
  /** Spool writes in flight, as promises that settle (never reject) when the write does. */
  private readonly writing = new Set<Promise<void>>();

  constructor(
    /** The size of a buffer (the largest batch payload); larger requests get a buffer of their own, never kept. */
    readonly bufferBytes: number,
    /** Batches being written to the spool at once, over all disks. */
    readonly depth: number,
  ) {}

  /** A buffer for a payload of `bytes` (a kept one when there is one) and the call that gives it back. */
  take(bytes: number): { payload: Buffer; release: () => void } {
    let buffer = bytes <= this.bufferBytes ? this.free.pop() : undefined;
    buffer ??= Buffer.allocUnsafe(Math.max(bytes, this.bufferBytes));
    const kept = buffer;
    let released = false;
    return {
      payload: buffer.subarray(0, bytes),
      release: () => {
        if (released) return;
        released = true;
        if (kept.length === this.bufferBytes) this.free.push(kept);
      },
    };
  }

  /** A batch's spool write: counted until it settles. */
  track(write: Promise<unknown>): void {
    const settled: Promise<void> = write.then(
      () => void this.writing.delete(settled),
      () => void this.writing.delete(settled),
    );
    this.writing.add(settled);
  }

  /** Waits until fewer than `depth` batches of any disk are being written to the spool. */
  async room(): Promise<void> {
    while (this.writing.size >= this.depth) await Promise.race(this.writing);
  }

  /** Buffers kept idle for reuse. */
  get idle(): number {
    return this.free.length;
  }
}
