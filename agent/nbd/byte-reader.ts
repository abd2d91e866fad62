// Reads exact byte counts from a socket, one read at a time, with the socket paused while nobody is reading (backpressure).
import type { Socket } from "node:net";

/** The client went away (or the server is closing the connection) before the bytes asked for arrived. */
export class ConnectionClosedError extends Error {
  override readonly name = "ConnectionClosedError";
}

export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want: { n: number; into: Buffer | undefined; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private ended: Error | undefined;

  constructor(private readonly socket: Socket) {
    socket.pause();
    socket.on("data", (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      this.serve();
    });
    // What arrived before the end can still be read (a client may send its last requests and close); no more comes.
    socket.once("end", () => this.end(new ConnectionClosedError("the client closed the connection")));
    socket.once("close", () => this.end(new ConnectionClosedError("the connection closed")));
    socket.on("error", (e) => this.end(new ConnectionClosedError(`the connection failed: ${e.message}`)));
  }

  /**
   * Resolves with exactly `n` bytes; rejects with ConnectionClosedError if they never all arrive. One read at a time.
   * Bytes that span several socket reads are gathered into `into` (at least `n` bytes) when given, else a new buffer.
   */
  read(n: number, into?: Buffer): Promise<Buffer> {
    if (this.want) return Promise.reject(new Error("ByteReader: a read is already pending"));
    if (this.buffered >= n) return Promise.resolve(this.take(n, into));
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      this.want = { n, into, resolve, reject };
      this.socket.resume();
    });
  }

  /** Ends reading: a pending read (and every later one) rejects with `why`; bytes buffered are dropped. */
  abort(why: Error): void {
    if (!this.ended) this.ended = why;
    this.chunks = [];
    this.buffered = 0;
    const w = this.want;
    this.want = undefined;
    w?.reject(this.ended);
  }

  private end(why: Error): void {
    this.ended ??= why;
    const w = this.want;
    if (w && this.buffered < w.n) {
      this.want = undefined;
      w.reject(this.ended);
    }
  }

  private serve(): void {
    const w = this.want;
    if (!w) {
      this.socket.pause();
      return;
    }
    if (this.buffered < w.n) return;
    this.want = undefined;
    this.socket.pause();
    w.resolve(this.take(w.n, w.into));
  }

  private take(n: number, into: Buffer | undefined): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = into && into.length >= n ? into.subarray(0, n) : Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    return out;
  }
}
