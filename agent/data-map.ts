// Where a sparse image file holds data: its holes read as zeros, so a copy need not read them (initial replication of a 16 GiB image with 256 MiB used then costs about what a 256 MiB image does).
import { execFile } from "node:child_process";
import { stat } from "node:fs/promises";
import type { Range } from "./ranges";

/**
 * The file's data extents by lseek(SEEK_DATA / SEEK_HOLE). Node has no lseek; python3 has, and every Azure Linux VM
 * carries it for its guest agent (waagent). Holes shorter than `gap` are reported as data (a fragmented file stays a
 * short list).
 */
const SCRIPT = `
import json, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
end = os.fstat(fd).st_size
gap = int(sys.argv[2])
out = []
at = 0
while at < end:
    try:
        start = os.lseek(fd, at, os.SEEK_DATA)
    except OSError:
        break
    stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
    if out and start - out[-1][1] < gap:
        out[-1][1] = stop
    else:
        out.append([start, stop])
    at = stop
print(json.dumps(out))
`;

const MERGE_GAP = 1024 * 1024;
const TIMEOUT_MS = 60_000;

/** The data extents of a regular file, sorted: what is outside them reads as zeros. */
export class DataMap {
  private constructor(private readonly ranges: Range[]) {}

  /**
   * The map of `path`, or undefined when there is none to be had (a block device, no python3, a filesystem without
   * SEEK_DATA): the caller then reads everything, as without a map. `why` hears the reason.
   */
  static async of(path: string, why?: (reason: string) => void): Promise<DataMap | undefined> {
    const st = await stat(path).catch(() => undefined);
    // A block device, or a file with every block allocated: nothing to skip.
    if (!st?.isFile() || st.blocks * 512 >= st.size) return undefined;
    try {
      const out = await new Promise<string>((resolve, reject) =>
        execFile("python3", ["-c", SCRIPT, path, String(MERGE_GAP)], { timeout: TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024 }, (e, stdout) =>
          e ? reject(e) : resolve(stdout),
        ),
      );
      const pairs = JSON.parse(out) as unknown;
      if (!Array.isArray(pairs) || !pairs.every((p) => Array.isArray(p) && p.length === 2 && p.every(Number.isSafeInteger))) {
        throw new Error("unexpected output");
      }
      return new DataMap((pairs as [number, number][]).map(([start, end]) => ({ start, end })));
    } catch (e) {
      why?.(`no map of where ${path} holds data (${(e as Error).message.split("\n")[0]}): every block is read`);
      return undefined;
    }
  }

  /** The first offset ≥ `offset` that may hold data (`offset` itself inside an extent; Infinity when only holes follow). */
  nextData(offset: number): number {
    let lo = 0;
    let hi = this.ranges.length;
    // The first extent that ends after offset.
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.ranges[mid]!.end <= offset) lo = mid + 1;
      else hi = mid;
    }
    const r = this.ranges[lo];
    if (!r) return Infinity;
    return Math.max(offset, r.start);
  }

  /**
   * Where the run of whole `block`-sized blocks of holes starting at `offset` (block-aligned) ends, bounded by `size`:
   * `offset` itself when its block may hold data. Those blocks read as zeros and need not be read.
   */
  holeEnd(offset: number, block: number, size: number): number {
    const data = Math.min(size, this.nextData(offset));
    return data === size ? size : Math.max(offset, Math.floor(data / block) * block);
  }
}
