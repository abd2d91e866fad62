// Reused buffers for WRITE payloads that span several socket reads, so that a steady write load allocates (and leaves V8's collector) nothing per request.

/** Payloads up to this size arrive in one socket read often enough, or are cheap to allocate: not pooled. */
const MIN_POOLED = 64 * 1024;

/** Buffers by size class (powers of two); at most `maxRetainedBytes` are kept idle, shared by every connection. */
export class PayloadPool {
  private readonly idle = new Map<number, Buffer[]>();
  private retained = 0;

  constructor(private readonly maxRetainedBytes: number) {}

  /** A buffer of at least `n` bytes for a payload (give it back with `give` once nothing uses it), or undefined if `n` is not pooled. */
  take(n: number): Buffer | undefined {
    if (n < MIN_POOLED) return undefined;
    const size = 2 ** Math.ceil(Math.log2(n));
    const b = this.idle.get(size)?.pop();
    if (b) {
      this.retained -= b.length;
      return b;
    }
    return Buffer.allocUnsafe(size);
  }

  give(b: Buffer): void {
    if (b.length > this.maxRetainedBytes) return;
    // Room is made by dropping idle buffers of other sizes: when the clients' request size changes (nbdcopy's 256 KiB
    // requests, then 1 MiB ones), the old size's buffers would otherwise fill the retention for good, and every
    // request of the new size would allocate a buffer of its own.
    for (const [size, list] of this.idle) {
      if (this.retained + b.length <= this.maxRetainedBytes) break;
      if (size === b.length) continue;
      while (list.length > 0 && this.retained + b.length > this.maxRetainedBytes) {
        list.pop();
        this.retained -= size;
      }
    }
    if (this.retained + b.length > this.maxRetainedBytes) return;
    let list = this.idle.get(b.length);
    if (!list) this.idle.set(b.length, (list = []));
    list.push(b);
    this.retained += b.length;
  }
}

/**
 * Payload bytes held at once by all of a server's connections (WRITE payloads being read and applied, READ replies
 * until they are sent): the server's memory does not grow with the number of connections (nbdcopy opens four, each
 * with up to 64 requests of 256 KiB in flight).
 */
export class ByteBudget {
  private used = 0;
  private waiters: (() => void)[] = [];

  constructor(readonly maxBytes: number) {}

  /** Resolves once `n` more bytes may be held; at once when none are, so that a request of any size goes through. */
  async acquire(n: number): Promise<void> {
    while (this.used > 0 && this.used + n > this.maxBytes) await new Promise<void>((r) => this.waiters.push(r));
    this.used += n;
  }

  release(n: number): void {
    this.used -= n;
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
