// Small file helpers of the agent's state directory: atomic replace (write temp, rename), JSON read, the single-instance locks (pid files).
import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from "node:fs";
import { open, readFile, rename, unlink } from "node:fs/promises";
import type { z } from "zod";

/** Replaces `path` with `data`: a reader (or a restarted agent) sees the old content or the new, never a mix. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, opts: { fsync?: boolean; mode?: number } = {}): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  const fh = await open(tmp, "w", opts.mode ?? 0o644);
  try {
    await fh.writeFile(data);
    if (opts.fsync) await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

/** The file parsed with `schema`, undefined if it does not exist; a file that does not parse is an error naming it. */
export async function readJsonFile<S extends z.ZodTypeAny>(path: string, schema: S): Promise<z.infer<S> | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  const parsed = schema.safeParse(JSON.parse(text));
  if (!parsed.success) throw new Error(`${path} is not valid agent state: ${parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
  return parsed.data;
}

export async function removeIfExists(path: string): Promise<void> {
  await unlink(path).catch((e: NodeJS.ErrnoException) => (e.code === "ENOENT" ? undefined : Promise.reject(e)));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

const heldHere = new Set<string>();

/** One agent per state directory: a pid file, taken over when the process that wrote it is gone (e.g. killed). */
export function lockStateDir(path: string): () => void {
  return lockPidFile(path, (pid) =>
    pid === process.pid
      ? `an agent of this process is already using this state directory (${path})`
      : `another agent (pid ${pid}) is using this state directory (${path})`,
  );
}

/**
 * Takes the pid file `path` (created exclusively); one left by a process that is gone is taken over. Held by a live
 * process (this one included): an error with `busy(pid)` as its message. Returns the release.
 */
export function lockPidFile(path: string, busy: (holder: number) => string): () => void {
  if (heldHere.has(path)) throw new Error(busy(process.pid));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, "wx");
      writeSync(fd, String(process.pid));
      closeSync(fd);
      heldHere.add(path);
      return () => {
        heldHere.delete(path);
        try {
          if (readFileSync(path, "utf8") === String(process.pid)) unlinkSync(path);
        } catch {
          // already gone
        }
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      const holder = Number(readFileSync(path, "utf8"));
      if (holder && holder !== process.pid && alive(holder)) throw new Error(busy(holder));
      unlinkSync(path);
    }
  }
  throw new Error(`could not lock ${path}`);
}
