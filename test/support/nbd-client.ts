// A hand-made NBD client for tests: speaks the protocol byte by byte, so that a test can also break it on purpose.
import { connect, type Socket } from "node:net";
import { execFile } from "node:child_process";
import { ByteReader, ConnectionClosedError } from "../../agent/nbd/byte-reader";
import { decodeSimpleReply, encodeInfoRequest, encodeOption, encodeRequest, Info, Opt, OPTION_REPLY_MAGIC, SIMPLE_REPLY_MAGIC } from "../../agent/nbd/protocol";

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export class RawNbdClient {
  readonly reader: ByteReader;
  /** Resolves when the server has closed the connection (or it failed). */
  readonly closed: Promise<void>;
  private handles = 0;

  private constructor(readonly socket: Socket) {
    this.reader = new ByteReader(socket);
    this.closed = new Promise((r) => socket.once("close", () => r()));
    socket.on("error", () => undefined);
  }

  static async connect(socketPath: string): Promise<RawNbdClient> {
    const s = connect(socketPath);
    await new Promise<void>((resolve, reject) => {
      s.once("connect", resolve);
      s.once("error", reject);
    });
    return new RawNbdClient(s);
  }

  /** Reads the server's greeting and sends the client flags (fixed newstyle, no zeroes). */
  async greet(): Promise<{ magic: bigint; opt: bigint; flags: number }> {
    const b = await this.reader.read(18);
    this.socket.write(Buffer.from([0, 0, 0, 3]));
    return { magic: b.readBigUInt64BE(0), opt: b.readBigUInt64BE(8), flags: b.readUInt16BE(16) };
  }

  send(data: Buffer): void {
    this.socket.write(data);
  }

  async optionReply(): Promise<OptionReply> {
    const h = await this.reader.read(20);
    if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error(`bad option reply magic ${h.toString("hex")}`);
    const length = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.reader.read(length) };
  }

  /** NBD_OPT_GO for `name`: the option replies up to the final one (ACK or an error). */
  async go(name: string): Promise<OptionReply[]> {
    this.send(encodeOption(Opt.GO, encodeInfoRequest(name, [Info.BLOCK_SIZE])));
    const replies: OptionReply[] = [];
    for (;;) {
      const r = await this.optionReply();
      replies.push(r);
      if (r.type !== 3) return replies;
    }
  }

  /** Connects, greets and enters transmission on `name`. */
  static async open(socketPath: string, name: string): Promise<RawNbdClient> {
    const c = await RawNbdClient.connect(socketPath);
    await c.greet();
    const replies = await c.go(name);
    const last = replies[replies.length - 1]!;
    if (last.type !== 1) throw new Error(`GO ${name} refused: ${last.type.toString(16)} ${last.data.toString()}`);
    return c;
  }

  /** Sends a request; returns its handle. */
  request(type: number, offset: number, length: number, opts: { flags?: number; payload?: Buffer; magic?: number } = {}): Buffer {
    const handle = Buffer.alloc(8);
    handle.writeBigUInt64BE(BigInt(++this.handles));
    this.send(encodeRequest({ type, flags: opts.flags ?? 0, handle, offset, length, ...(opts.magic !== undefined ? { magic: opts.magic } : {}) }));
    if (opts.payload) this.send(opts.payload);
    return handle;
  }

  /** The next simple reply, with `dataLength` bytes of data if it succeeded (a READ). */
  async reply(dataLength = 0): Promise<{ error: number; handle: Buffer; data: Buffer }> {
    const r = decodeSimpleReply(await this.reader.read(16));
    if (r.magic !== SIMPLE_REPLY_MAGIC) throw new Error(`bad reply magic 0x${r.magic.toString(16)}`);
    const data = r.error === 0 && dataLength > 0 ? await this.reader.read(dataLength) : Buffer.alloc(0);
    return { error: r.error, handle: r.handle, data };
  }

  /** True if the server closed the connection without sending anything more. */
  async closedWithoutReply(): Promise<boolean> {
    try {
      await this.reader.read(1);
      return false;
    } catch (e) {
      if (e instanceof ConnectionClosedError) return true;
      throw e;
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to its end (never throws for a non-zero exit; the caller asserts). Asynchronous: the agent under test may be in this process. */
export function runTool(cmd: string, args: string[], timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: "utf8", timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException & { code?: unknown }).code === "number" ? Number((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** `qemu-io -f raw -t writeback` with the given commands; throws with the output if it failed or a pattern did not match. */
export async function qemuIo(url: string, commands: string[], cache: "writeback" | "writethrough" = "writeback"): Promise<string> {
  const r = await runTool("qemu-io", ["-f", "raw", "-t", cache, ...commands.flatMap((c) => ["-c", c]), url]);
  const out = r.stdout + r.stderr;
  if (r.code !== 0 || /fail|error|mismatch/i.test(out)) throw new Error(`qemu-io ${commands.join("; ")} on ${url} (exit ${r.code}):\n${out}`);
  return out;
}

export const nbdUnixUrl = (socketPath: string, exportName: string) => `nbd+unix:///${exportName}?socket=${socketPath}`;
