// Reads exact byte counts from a socket, one read at a time: large ones straight into the caller's buffer, small ones through one reused staging buffer, with reading stopped while enough is buffered (backpressure).
import { Socket } from "node:net";

/** The client went away (or the server is closing the connection) before the bytes asked for arrived. */
export class ConnectionClosedError extends Error {
  override readonly name = "ConnectionClosedError";
}

/** Bytes read ahead of what is asked for (small requests that follow one another), and the least room a read gets. */
const STAGING_BYTES = 256 * 1024;
const MIN_ROOM = 64 * 1024;
/** Reading stops once this much is buffered and nobody waits for it. */
const READ_AHEAD_BYTES = 128 * 1024;
/** What is left of a pending read that goes straight into its buffer rather than through the staging buffer. */
const DIRECT_MIN = 16 * 1024;

interface Want {
  n: number;
  out: Buffer;
  filled: number;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

/**
 * Two ways to be fed. `ByteReader.adopt` re-wraps an accepted socket so that the kernel copies into the reader's own
 * buffers (Node's `onread`): a large WRITE payload lands in its pooled buffer as it arrives — no buffer allocated per
 * socket read and no second copy. Under bulk writes those per-read 64 KiB buffers were most of what V8's collector
 * chased (a quarter of the agent's main thread went to collections). `new ByteReader(socket)` reads a socket made
 * elsewhere through its 'data' events (the tests' client).
 */
export class ByteReader {
  private staging = Buffer.allocUnsafe(STAGING_BYTES);
  /** Unconsumed bytes are staging[head, tail). */
  private head = 0;
  private tail = 0;
  private want: Want | undefined;
  /** onread mode: the pending read whose buffer the next socket read lands in; undefined when it lands in `staging` at `tail`. */
  private direct: Want | undefined;
  private reading = true;
  private ended: Error | undefined;
  private socket!: Socket;

  constructor(socket?: Socket) {
    if (!socket) return;
    this.socket = socket;
    socket.on("data", (d: Buffer) => this.chunk(d));
    this.watch(socket);
  }

  /**
   * The accepted `socket` (from a server made with `pauseOnConnect`, so that nothing was read yet) as a socket whose
   * reads land in the reader's buffers, and the reader. Node offers `onread` only to sockets it connects itself, so the
   * connection's handle is moved to a new Socket that has it; the original object lets go of the handle without closing
   * it (and leaves its server's connection count). Where that is not possible the socket is read through 'data' events.
   */
  static adopt(socket: Socket): { socket: Socket; reader: ByteReader } {
    const inner = socket as unknown as { _handle?: unknown };
    const handle = inner._handle;
    if (!handle || socket.destroyed) {
      socket.resume();
      return { socket, reader: new ByteReader(socket) };
    }
    const reader = new ByteReader();
    inner._handle = null;
    socket.destroy();
    const adopted = new Socket({
      handle,
      readable: true,
      writable: true,
      onread: { buffer: () => reader.nextBuffer(), callback: (n: number) => reader.landed(n) },
    } as ConstructorParameters<typeof Socket>[0]);
    reader.socket = adopted;
    reader.watch(adopted);
    // Flowing, so that the end of the stream is seen (the data itself goes to the onread callback, never to 'data').
    adopted.resume();
    return { socket: adopted, reader };
  }

  private watch(socket: Socket): void {
    // What arrived before the end can still be read (a client may send its last requests and close); no more comes.
    socket.once("end", () => this.end(new ConnectionClosedError("the client closed the connection")));
    socket.once("close", () => this.end(new ConnectionClosedError("the connection closed")));
    socket.on("error", (e) => this.end(new ConnectionClosedError(`the connection failed: ${e.message}`)));
  }

  /**
   * Resolves with exactly `n` bytes; rejects with ConnectionClosedError if they never all arrive. One read at a time.
   * Into `into` (at least `n` bytes) when given, else a new buffer.
   */
  read(n: number, into?: Buffer): Promise<Buffer> {
    if (this.want) return Promise.reject(new Error("ByteReader: a read is already pending"));
    const out = (into && into.length >= n ? into : Buffer.allocUnsafe(n)).subarray(0, n);
    const have = Math.min(n, this.tail - this.head);
    this.staging.copy(out, 0, this.head, this.head + have);
    this.head += have;
    if (have === n) {
      this.resumeIfRoom();
      return Promise.resolve(out);
    }
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      this.want = { n, out, filled: have, resolve, reject };
      this.resumeIfRoom();
    });
  }

  /** Ends reading: a pending read (and every later one) rejects with `why`; bytes buffered are dropped. */
  abort(why: Error): void {
    if (!this.ended) this.ended = why;
    this.head = this.tail;
    const w = this.want;
    this.want = undefined;
    w?.reject(this.ended);
  }

  private end(why: Error): void {
    this.ended ??= why;
    const w = this.want;
    if (w) {
      this.want = undefined;
      w.reject(this.ended);
    }
  }

  /** onread: where the next socket read lands. Called after every read, before anything else runs. */
  private nextBuffer(): Buffer {
    const w = this.want;
    if (w && this.head === this.tail && w.n - w.filled >= DIRECT_MIN) {
      this.direct = w;
      return w.out.subarray(w.filled);
    }
    this.direct = undefined;
    this.makeRoom();
    return this.staging.subarray(this.tail);
  }

  /** onread: `n` bytes landed in the buffer nextBuffer gave. False stops reading (enough is buffered). */
  private landed(n: number): boolean {
    const d = this.direct;
    if (d) {
      // Into a pending read's own buffer (unless that read was abandoned meanwhile: then they are dropped).
      if (d === this.want) {
        d.filled += n;
        if (d.filled === d.n) this.settle(d);
      }
    } else {
      // Only `head` moves between nextBuffer and here (reads consume), so the bytes are at `tail`.
      this.tail += n;
      this.feed();
    }
    return this.wantsMore();
  }

  /** 'data' mode: a chunk Node read for us. */
  private chunk(d: Buffer): void {
    this.makeRoom(d.length);
    d.copy(this.staging, this.tail);
    this.tail += d.length;
    this.feed();
    if (!this.wantsMore()) this.stop();
  }

  /** Moves staged bytes into the pending read. */
  private feed(): void {
    const w = this.want;
    if (!w) return;
    const k = Math.min(w.n - w.filled, this.tail - this.head);
    this.staging.copy(w.out, w.filled, this.head, this.head + k);
    this.head += k;
    w.filled += k;
    if (w.filled === w.n) this.settle(w);
  }

  private settle(w: Want): void {
    this.want = undefined;
    w.resolve(w.out);
  }

  /** Keep reading while a read waits or little is buffered. */
  private wantsMore(): boolean {
    this.reading = this.want !== undefined || this.tail - this.head < READ_AHEAD_BYTES;
    return this.reading;
  }

  private stop(): void {
    this.reading = false;
    this.socket.pause();
  }

  private resumeIfRoom(): void {
    if (!this.reading && !this.ended && this.wantsMore()) this.socket.resume();
  }

  /** Moves the unconsumed bytes to the front of the staging buffer, and grows it if `need` (or MIN_ROOM) does not fit after them. */
  private makeRoom(need = MIN_ROOM): void {
    if (this.head === this.tail) this.head = this.tail = 0;
    else if (this.head > 0 && this.staging.length - this.tail < need) {
      this.staging.copy(this.staging, 0, this.head, this.tail);
      this.tail -= this.head;
      this.head = 0;
    }
    if (this.staging.length - this.tail < need) {
      const bigger = Buffer.allocUnsafe(Math.max(2 * this.staging.length, this.tail + need));
      this.staging.copy(bigger, 0, 0, this.tail);
      this.staging = bigger;
    }
  }
}
