// One client connection: the handshake, then the transmission loop — requests read in order, run concurrently on the export, answered with simple replies.
import type { Socket } from "node:net";
import { ByteReader, ConnectionClosedError } from "./byte-reader";
import { nbdErrorOf, type NbdExport } from "./disk-export";
import { negotiate, type BlockSizes } from "./handshake";
import type { ByteBudget, PayloadPool } from "./payload-pool";
import { Cmd, CmdFlag, decodeRequest, encodeSimpleReply, NbdErr, ProtocolViolation, REQUEST_BYTES, REQUEST_MAGIC, type Request } from "./protocol";
import { describe } from "../retry";

export interface ConnectionOptions {
  /** The largest READ or WRITE payload accepted (and advertised as the maximum block size). */
  maxPayloadBytes: number;
  /** Requests running at once on this connection; the next one is read when one finishes. */
  maxInFlight: number;
  /** Payload bytes (written or to be read back) held at once by this connection's running requests. */
  maxBytesInFlight: number;
  /** Where WRITE payloads are gathered (shared by the server's connections). */
  payloads?: PayloadPool;
  /** Payload bytes held at once by all the server's connections. */
  budget?: ByteBudget;
  log: (line: string) => void;
}

/** How long a client gets to read its last replies once the server closes the connection, before it is cut off. */
const CLOSE_GRACE_MS = 2000;

export class NbdConnection {
  private readonly reader: ByteReader;
  private readonly socket: Socket;
  private closing = false;
  private inFlight = 0;
  private bytesInFlight = 0;
  private waiters: (() => void)[] = [];
  private exportName = "";
  /** Resolves once the connection is closed and every request it accepted has been answered (or its client is gone). */
  readonly done: Promise<void>;

  /** `accepted`: a socket from a server made with `pauseOnConnect` (see ByteReader.adopt); `socket` is what replaces it. */
  constructor(
    accepted: Socket,
    private readonly byName: ReadonlyMap<string, NbdExport>,
    private readonly opts: ConnectionOptions,
    private readonly peer: string,
  ) {
    ({ socket: this.socket, reader: this.reader } = ByteReader.adopt(accepted));
    this.done = this.run();
  }

  /** Stops reading requests; the ones running finish and are answered, then the connection is closed. */
  close(): Promise<void> {
    this.closing = true;
    this.reader.abort(new ConnectionClosedError("the server is stopping"));
    this.wake();
    return this.done;
  }

  /** TCP: replies go out at once (no Nagle delay). */
  setNoDelay(): void {
    this.socket.setNoDelay(true);
  }

  private log(line: string): void {
    this.opts.log(`nbd ${this.peer}${this.exportName ? ` (${this.exportName})` : ""}: ${line}`);
  }

  private async run(): Promise<void> {
    try {
      const sizes: BlockSizes = { min: 1, preferred: 4096, max: this.opts.maxPayloadBytes };
      const exp = await negotiate({ reader: this.reader, send: (b) => this.send(b), log: (l) => this.log(l) }, this.byName, sizes);
      if (exp && !this.closing) {
        this.exportName = exp.name;
        await this.transmit(exp);
      }
    } catch (e) {
      if (e instanceof ProtocolViolation) this.log(`closing the connection: ${e.message}`);
      else if (!(e instanceof ConnectionClosedError)) this.log(`closing the connection: ${describe(e)}`);
    }
    while (this.inFlight > 0) await new Promise<void>((r) => this.waiters.push(r));
    await this.end();
  }

  private async end(): Promise<void> {
    if (this.socket.destroyed) return;
    const closed = new Promise<void>((r) => this.socket.once("close", () => r()));
    this.socket.end();
    const timer = setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS);
    await closed;
    clearTimeout(timer);
  }

  private send(data: Buffer, payload?: Buffer): void {
    if (!this.socket.writable) return;
    this.socket.cork();
    this.socket.write(data);
    if (payload) this.socket.write(payload);
    this.socket.uncork();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Waits until another request may run (always at least one). */
  private async room(): Promise<void> {
    while (!this.closing && this.inFlight > 0 && (this.inFlight >= this.opts.maxInFlight || this.bytesInFlight >= this.opts.maxBytesInFlight)) {
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  private async transmit(exp: NbdExport): Promise<void> {
    const { maxPayloadBytes } = this.opts;
    for (;;) {
      await this.room();
      if (this.closing) return;
      const req = decodeRequest(await this.reader.read(REQUEST_BYTES));
      if (req.magic !== REQUEST_MAGIC) throw new ProtocolViolation(`bad request magic 0x${req.magic.toString(16)}`);
      const fua = (req.flags & CmdFlag.FUA) !== 0;
      const past = req.offset + req.length > exp.size;
      const fail = (error: number) => this.send(encodeSimpleReply(error, req.handle));
      switch (req.type) {
        case Cmd.DISC:
          // No reply; what is running finishes (run waits for it) before the connection closes.
          return;
        case Cmd.WRITE: {
          if (req.length > maxPayloadBytes) {
            // The payload cannot be skipped safely: answer, then close.
            fail(NbdErr.EINVAL);
            throw new ProtocolViolation(`WRITE of ${req.length} bytes (at most ${maxPayloadBytes})`);
          }
          // Read whole before anything is applied: a client that vanishes mid-payload leaves no trace on the disk.
          await this.opts.budget?.acquire(req.length);
          const pooled = this.opts.payloads?.take(req.length);
          const data = await this.reader.read(req.length, pooled).catch((e: unknown) => {
            this.opts.budget?.release(req.length);
            throw e;
          });
          // Given back once the request is answered: nothing holds a payload after its write resolves.
          const giveBack = pooled && data.buffer === pooled.buffer ? () => this.opts.payloads!.give(pooled) : undefined;
          if (pooled && !giveBack) this.opts.payloads!.give(pooled);
          if ((req.flags & ~CmdFlag.FUA) !== 0) fail(NbdErr.EINVAL);
          else if (past) fail(NbdErr.ENOSPC);
          else {
            this.start(req, req.length, () => exp.write(req.offset, data, fua), giveBack);
            break;
          }
          giveBack?.();
          this.opts.budget?.release(req.length);
          break;
        }
        case Cmd.READ:
          if ((req.flags & ~CmdFlag.FUA) !== 0 || req.length > maxPayloadBytes || past) fail(NbdErr.EINVAL);
          else {
            await this.opts.budget?.acquire(req.length);
            this.start(req, req.length, () => exp.read(req.offset, req.length));
          }
          break;
        case Cmd.FLUSH:
          if ((req.flags & ~CmdFlag.FUA) !== 0 || req.offset !== 0 || req.length !== 0) fail(NbdErr.EINVAL);
          else this.start(req, 0, () => exp.flush());
          break;
        case Cmd.TRIM:
          if ((req.flags & ~CmdFlag.FUA) !== 0 || past) fail(NbdErr.EINVAL);
          else this.start(req, 0, () => exp.trim(req.offset, req.length));
          break;
        case Cmd.WRITE_ZEROES:
          // FAST_ZERO is not advertised: a client that sends it anyway gets EINVAL.
          if ((req.flags & ~(CmdFlag.FUA | CmdFlag.NO_HOLE)) !== 0) fail(NbdErr.EINVAL);
          else if (past) fail(NbdErr.ENOSPC);
          else this.start(req, 0, () => exp.writeZeroes(req.offset, req.length, fua));
          break;
        default:
          fail(NbdErr.EINVAL);
      }
    }
  }

  /** Runs a request now (its place in the export's order is taken by this call) and answers it when it settles. */
  private start(req: Request, bytes: number, op: () => Promise<Buffer | void>, done?: () => void): void {
    this.inFlight++;
    this.bytesInFlight += bytes;
    op()
      .then(
        (data) => this.send(encodeSimpleReply(0, req.handle), data ?? undefined),
        (e: unknown) => {
          const errno = nbdErrorOf(e);
          if (errno === NbdErr.EIO) this.log(`request type ${req.type} at ${req.offset} (+${req.length}) failed: ${describe(e)}`);
          this.send(encodeSimpleReply(errno, req.handle));
        },
      )
      .then(async () => {
        // A slow reader of replies holds its requests' slots: the connection stops reading new ones.
        if (this.socket.writableNeedDrain && !this.socket.destroyed) {
          await new Promise<void>((r) => {
            const done = () => {
              this.socket.off("drain", done);
              this.socket.off("close", done);
              r();
            };
            this.socket.on("drain", done);
            this.socket.on("close", done);
          });
        }
      })
      .finally(() => {
        done?.();
        // Only READ and WRITE pass payload bytes here, the ones they acquired.
        if (bytes > 0) this.opts.budget?.release(bytes);
        this.inFlight--;
        this.bytesInFlight -= bytes;
        this.wake();
      })
      .catch(() => undefined);
  }
}
