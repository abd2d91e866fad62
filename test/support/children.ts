// Child processes and polling for tests that drive the real commands: every child is killed when its test file ends.
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";

/** The built CLI (`site-recovery`), as `npx site-recovery` runs it. */
export const CLI = join(__dirname, "..", "..", "cli", "main.js");

const children = new Set<ChildProcess>();

/** A child process with its output collected; `node` args by default, or any command. */
export function runChild(args: string[], command: string = process.execPath): { child: ChildProcess; output: () => string } {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  child.once("exit", () => children.delete(child));
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  return { child, output: () => out };
}

/** Stops a child with `signal` and resolves with its exit code (at once if it already exited). */
export async function stopChild(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const exited = once(child, "exit");
  child.kill(signal);
  const [code] = (await exited) as [number | null];
  return code;
}

/** Kills every child still running (a file's `after`). */
export async function killChildren(): Promise<void> {
  await Promise.all([...children].map((c) => stopChild(c, "SIGKILL")));
}

/** Polls `check` until it is true; the failure names what was last seen. */
export async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 60_000, seen: () => string = () => ""): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${seen() ? `: ${seen()}` : ""}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
