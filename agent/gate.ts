// Concurrency primitives of the agent: the disk's write gate (writes shared, seals exclusive) and a FIFO mutex.

/**
 * Writes enter shared and run concurrently; a seal enters exclusive, waits for the writes in flight, and holds new
 * ones back only while it reads the dirty bytes. A waiting seal goes before newly arriving writes, so seals are never
 * starved. The shared fast path allocates nothing.
 */
export class WriteGate {
  private shared = 0;
  private exclusive = false;
  private readonly exclusiveWaiters: (() => void)[] = [];
  private sharedWaiters: (() => void)[] = [];

  /** Undefined when entered at once (the common case); otherwise a promise that resolves once entered. */
  enterShared(): Promise<void> | undefined {
    if (!this.exclusive && this.exclusiveWaiters.length === 0) {
      this.shared++;
      return undefined;
    }
    return new Promise((resolve) => this.sharedWaiters.push(resolve));
  }

  leaveShared(): void {
    this.shared--;
    if (this.shared === 0 && this.exclusiveWaiters.length > 0) {
      this.exclusive = true;
      this.exclusiveWaiters.shift()!();
    }
  }

  enterExclusive(): Promise<void> {
    if (!this.exclusive && this.shared === 0) {
      this.exclusive = true;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.exclusiveWaiters.push(resolve));
  }

  leaveExclusive(): void {
    // Writes held back go first (a queued seal then waits for them), so back-to-back seals cannot starve writers.
    if (this.sharedWaiters.length === 0 && this.exclusiveWaiters.length > 0) {
      this.exclusiveWaiters.shift()!();
      return;
    }
    this.exclusive = false;
    const waiting = this.sharedWaiters;
    this.sharedWaiters = [];
    this.shared += waiting.length;
    for (const w of waiting) w();
  }
}

/** Runs tasks one at a time, in the order they were queued. */
export class Mutex {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.tail.then(task);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

/** A one-shot wake-up for a background loop: `wait` resolves on the next `notify` or after `ms`. */
export class Signal {
  private waiters: (() => void)[] = [];

  notify(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      timer.unref?.();
      this.waiters.push(done);
    });
  }
}
