// Proves from outside that nobody wrote a scanned disk during a scan pass: file size and times paired with change notifications for image files, the kernel's write counters for block devices.
import { watch, type FSWatcher } from "node:fs";
import { open, readFile, stat, type FileHandle } from "node:fs/promises";

/**
 * How recent a file's modification time may be at the first look for the pass to count. The time is stamped when a
 * write begins and the notification fires when it completes: a write that began just before the first look may still
 * be copying during the pass, and only its notification (or this margin) gives it away. Filesystems with coarse
 * times (whole seconds) get a wider margin.
 */
const FILE_RECENT_MS = 2000;
const COARSE_FILE_RECENT_MS = 3000;

/** One look at a disk from outside. */
export type Look =
  | { kind: "file"; at: number; size: number; mtimeNs: bigint; events: number }
  | { kind: "device"; at: number; writes: number; sectors: number; discards: number; inFlight: number; error?: undefined }
  | { kind: "unknown"; at: number; why: string };

/** Why [first, second] is not a quiet interval, or undefined if it is. */
export function changedBetween(first: Look, second: Look): string | undefined {
  if (first.kind === "unknown") return first.why;
  if (second.kind === "unknown") return second.why;
  if (first.kind === "file" && second.kind === "file") {
    if (second.events !== first.events) return `${second.events - first.events} change notification(s) during the pass`;
    if (second.size !== first.size) return `size changed from ${first.size} to ${second.size} bytes`;
    if (second.mtimeNs !== first.mtimeNs) return "modification time changed during the pass";
    const coarse = first.mtimeNs % 1_000_000_000n === 0n;
    const ageMs = first.at - Number(first.mtimeNs / 1_000_000n);
    const margin = coarse ? COARSE_FILE_RECENT_MS : FILE_RECENT_MS;
    if (ageMs < margin) return `modified ${Math.max(0, ageMs)} ms before the pass began (a write may still have been in flight)`;
    return undefined;
  }
  if (first.kind === "device" && second.kind === "device") {
    if (first.inFlight > 0 || second.inFlight > 0) return `${Math.max(first.inFlight, second.inFlight)} write(s) in flight`;
    if (second.writes !== first.writes || second.sectors !== first.sectors) return `${second.writes - first.writes} write(s) completed during the pass`;
    if (second.discards !== first.discards) return `${second.discards - first.discards} discard(s) completed during the pass`;
    return undefined;
  }
  return "the disk changed kind during the pass";
}

/** Watches one scanned disk (an image file or a block device) for the evidence changedBetween needs. */
export class QuietProbe {
  /** Change notifications seen so far (NaN once the watcher failed: every look is then unknown). */
  private events = 0;
  private watcher: FSWatcher | undefined;

  private constructor(
    private readonly path: string,
    private readonly device: { statPath: string; inflightPath: string; fh: FileHandle } | undefined,
  ) {}

  static async open(path: string): Promise<QuietProbe> {
    const st = await stat(path);
    if (st.isBlockDevice()) {
      const major = (st.rdev >> 8) & 0xfff;
      const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
      const sys = `/sys/dev/block/${major}:${minor}`;
      // Opened to flush the device's page cache at each look: a buffered write to the device node is counted once written back.
      const fh = await open(path, "r");
      return new QuietProbe(path, { statPath: `${sys}/stat`, inflightPath: `${sys}/inflight`, fh });
    }
    const probe = new QuietProbe(path, undefined);
    // inotify: IN_MODIFY fires when a write completes.
    probe.watcher = watch(path, { persistent: false }, () => probe.events++);
    probe.watcher.on("error", () => (probe.events = Number.NaN));
    return probe;
  }

  async look(): Promise<Look> {
    const at = Date.now();
    try {
      if (this.device) {
        // Dirty pages of the device node itself (a buffered `dd of=/dev/…`) become counted writes.
        await this.device.fh.sync();
        const fields = (await readFile(this.device.statPath, "utf8")).trim().split(/\s+/).map(Number);
        const inflight = await readFile(this.device.inflightPath, "utf8")
          .then((s) => Number(s.trim().split(/\s+/)[1] ?? 0))
          .catch(() => fields[8] ?? 0);
        // Writes completed, less flushes (which some devices count as writes: the look's own flush would show up).
        const writes = (fields[4] ?? 0) - (fields[15] ?? 0);
        return { kind: "device", at, writes, sectors: fields[6] ?? 0, discards: fields[11] ?? 0, inFlight: inflight };
      }
      if (Number.isNaN(this.events)) return { kind: "unknown", at, why: `change notifications for ${this.path} failed` };
      const st = await stat(this.path, { bigint: true });
      return { kind: "file", at, size: Number(st.size), mtimeNs: st.mtimeNs, events: this.events };
    } catch (e) {
      return { kind: "unknown", at, why: `cannot look at ${this.path}: ${(e as Error).message}` };
    }
  }

  async close(): Promise<void> {
    this.watcher?.close();
    await this.device?.fh.close();
  }
}
