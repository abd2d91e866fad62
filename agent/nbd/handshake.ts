// The fixed-newstyle handshake of one connection: greeting, client flags, option haggling until the client picks an export (GO or EXPORT_NAME) or leaves.
import type { ByteReader } from "./byte-reader";
import type { NbdExport } from "./disk-export";
import {
  CLIENT_FLAG_FIXED_NEWSTYLE,
  CLIENT_FLAG_NO_ZEROES,
  decodeInfoRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeOptionReply,
  encodeServerEntry,
  encodeServerHandshake,
  IHAVEOPT,
  MAX_NAME_BYTES,
  Opt,
  OPTION_HEADER_BYTES,
  ProtocolViolation,
  Rep,
  TFlag,
} from "./protocol";

/** The largest option the server reads (names are at most 4 KiB; nothing it supports needs more). */
const MAX_OPTION_BYTES = 64 * 1024;

/**
 * Every export is read-write with flush, FUA, trim and write-zeroes. CAN_MULTI_CONN: a FLUSH or FUA syncs the whole
 * image and write-ahead log, so it covers writes acknowledged on any connection.
 */
export const TRANSMISSION_FLAGS = TFlag.HAS_FLAGS | TFlag.SEND_FLUSH | TFlag.SEND_FUA | TFlag.SEND_TRIM | TFlag.SEND_WRITE_ZEROES | TFlag.CAN_MULTI_CONN;

export interface HandshakeIo {
  reader: ByteReader;
  send(data: Buffer): void;
  log(line: string): void;
}

export interface BlockSizes {
  min: number;
  preferred: number;
  max: number;
}

/** The export the client chose, or undefined if it aborted (the connection is then to be closed). Throws ProtocolViolation. */
export async function negotiate(io: HandshakeIo, byName: ReadonlyMap<string, NbdExport>, sizes: BlockSizes): Promise<NbdExport | undefined> {
  io.send(encodeServerHandshake());
  const clientFlags = (await io.reader.read(4)).readUInt32BE(0);
  if ((clientFlags & ~(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES)) !== 0)
    throw new ProtocolViolation(`unknown client flags 0x${clientFlags.toString(16)}`);
  const noZeroes = (clientFlags & CLIENT_FLAG_NO_ZEROES) !== 0;
  const names = () => [...byName.keys()].join(", ");

  for (;;) {
    const header = decodeOptionHeader(await io.reader.read(OPTION_HEADER_BYTES));
    if (header.magic !== IHAVEOPT) throw new ProtocolViolation(`bad option magic 0x${header.magic.toString(16)}`);
    if (header.length > MAX_OPTION_BYTES) throw new ProtocolViolation(`option ${header.option} of ${header.length} bytes (at most ${MAX_OPTION_BYTES})`);
    const data = await io.reader.read(header.length);
    const reply = (type: number, body?: Buffer) => io.send(encodeOptionReply(header.option, type, body));
    const error = (type: number, message: string) => reply(type, Buffer.from(message, "utf8"));

    switch (header.option) {
      case Opt.EXPORT_NAME: {
        const exp = byName.get(data.toString("utf8"));
        // No way to say why: the spec has the server close the session.
        if (!exp) throw new ProtocolViolation(`NBD_OPT_EXPORT_NAME for unknown export '${data.toString("utf8").slice(0, 100)}' (exports: ${names()})`);
        io.send(encodeExportNameReply(exp.size, TRANSMISSION_FLAGS, noZeroes));
        return exp;
      }
      case Opt.ABORT:
        reply(Rep.ACK);
        return undefined;
      case Opt.LIST:
        if (data.length !== 0) {
          error(Rep.ERR_INVALID, "NBD_OPT_LIST takes no data");
          break;
        }
        for (const name of byName.keys()) reply(Rep.SERVER, encodeServerEntry(name));
        reply(Rep.ACK);
        break;
      case Opt.INFO:
      case Opt.GO: {
        const req = decodeInfoRequest(data);
        if (!req || Buffer.byteLength(req.name) > MAX_NAME_BYTES) {
          error(Rep.ERR_INVALID, "malformed NBD_OPT_INFO/GO data");
          break;
        }
        const exp = byName.get(req.name);
        if (!exp) {
          error(
            Rep.ERR_UNKNOWN,
            req.name === "" ? `there is no default export: name one of ${names()}` : `no export named '${req.name.slice(0, 100)}' (exports: ${names()})`,
          );
          break;
        }
        reply(Rep.INFO, encodeInfoExport(exp.size, TRANSMISSION_FLAGS));
        // The defaults (minimum 1) are what the server enforces, so sending them unasked is harmless.
        reply(Rep.INFO, encodeInfoBlockSize(sizes.min, sizes.preferred, sizes.max));
        reply(Rep.ACK);
        if (header.option === Opt.GO) return exp;
        break;
      }
      default:
        // Structured replies, TLS, metadata contexts and anything newer: refused, and the client carries on without.
        error(Rep.ERR_UNSUP, `option ${header.option} is not supported`);
    }
  }
}
