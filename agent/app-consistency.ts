// App-consistent tags (ASR: app-consistent recovery points): pre-freeze script, an `app` tag, post-thaw script — with the freeze bounded.
import { spawn } from "node:child_process";
import { AGENT_WARNINGS } from "../shared/protection/agent-protocol";
import type { BatchTag, TagKind } from "../shared/replication/batch";
import type { Health } from "./health";

/** The agent health issue (and the item health issue the control plane raises from it); ASR reports 153006. */
export const APP_CONSISTENCY_FAILED = AGENT_WARNINGS.appConsistencyFailed;
export const DEFAULT_FREEZE_TIMEOUT_MS = 10_000;
/** The freeze bound may not exceed this: a workload frozen longer is an outage, not a backup. */
export const MAX_FREEZE_TIMEOUT_MS = 60_000;
const STDERR_TAIL_BYTES = 400;

export interface ScriptResult {
  ok: boolean;
  /** Exit code, or null when killed or never started. */
  code: number | null;
  timedOut: boolean;
  /** Why it failed, with the tail of its stderr. */
  detail: string;
}

/** After a script exits, how long its stderr may take to close (the last lines of a failure are the useful ones). */
const STDERR_GRACE_MS = 250;

/**
 * Runs argv without a shell, in its own process group. Past `timeoutMs` the whole group is killed (SIGKILL) and the
 * result is a failure at once: a grandchild still holding stderr open (e.g. `sleep` in a shell script) cannot hold the
 * caller beyond the bound, which is why the exit (and at most a short grace for stderr), not the close of the pipes, ends the wait.
 */
export function runScript(argv: string[], timeoutMs: number): Promise<ScriptResult> {
  return new Promise((resolve) => {
    let stderr = Buffer.alloc(0);
    let settled = false;
    const name = argv.join(" ");
    const finish = (r: ScriptResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(r);
    };
    const tail = () => {
      const t = stderr.toString("utf8").trim();
      return t ? `: ${t}` : "";
    };
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn(argv[0]!, argv.slice(1), { shell: false, detached: true, stdio: ["ignore", "ignore", "pipe"], windowsHide: true });
    } catch (e) {
      resolve({ ok: false, code: null, timedOut: false, detail: `'${name}' did not start: ${(e as Error).message}` });
      return;
    }
    const timer = setTimeout(() => {
      try {
        if (child.pid) process.kill(-child.pid, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
      finish({ ok: false, code: null, timedOut: true, detail: `'${name}' did not finish within ${timeoutMs} ms and was killed${tail()}` });
    }, timeoutMs);
    child.stderr!.on("data", (d: Buffer) => {
      stderr = Buffer.concat([stderr, d]);
      if (stderr.length > STDERR_TAIL_BYTES) stderr = stderr.subarray(stderr.length - STDERR_TAIL_BYTES);
    });
    child.on("error", (e) => finish({ ok: false, code: null, timedOut: false, detail: `'${name}' did not start: ${e.message}` }));
    let stderrClosed = false;
    child.stderr!.on("close", () => (stderrClosed = true));
    child.on("exit", (code, signal) => {
      const done = () =>
        finish(
          code === 0
            ? { ok: true, code: 0, timedOut: false, detail: "" }
            : { ok: false, code, timedOut: false, detail: `'${name}' ${code !== null ? `exited with code ${code}` : `was killed by ${signal}`}${tail()}` },
        );
      // The last of stderr may still be in the pipe: wait for it to close, but only briefly (a grandchild may hold it open).
      if (stderrClosed) return done();
      const grace = setTimeout(done, STDERR_GRACE_MS);
      child.stderr!.once("close", () => {
        clearTimeout(grace);
        done();
      });
    });
  });
}

export interface AppTagDeps {
  preFreeze: string[];
  postThaw?: string[];
  freezeTimeoutMs: number;
  /** Cuts a tag on every disk; `kindAtCut` is asked at the instant of the cut, under the disks' write locks. */
  cut: (kindAtCut: () => TagKind) => Promise<BatchTag | undefined>;
  health: Health;
  log: (line: string) => void;
}

/**
 * One app-consistent attempt. Pre-freeze (bounded); if it fails or times out: a crash tag instead and the
 * `AppConsistencyFailed` warning (post-thaw only after a timeout, in case the killed script froze something). Otherwise the tag is cut and post-thaw ALWAYS runs, at the
 * latest when the bound since the freeze ends: a tag whose instant falls after that is cut as `crash`, not `app`.
 */
export async function appConsistentTag(deps: AppTagDeps): Promise<BatchTag | undefined> {
  const bound = deps.freezeTimeoutMs;
  const pre = await runScript(deps.preFreeze, bound);
  if (!pre.ok) {
    // A pre-freeze killed at the bound may have frozen part of the workload: thaw, to be sure (a failing thaw of
    // what is not frozen is harmless). One that exited with an error said it froze nothing.
    const post = pre.timedOut && deps.postThaw?.length ? await runScript(deps.postThaw, bound) : undefined;
    const thaw = post && !post.ok ? `; post-thaw failed: ${post.detail}` : "";
    const message = `pre-freeze failed, a crash-consistent tag was cut instead: ${pre.detail}${thaw}`;
    deps.health.set(APP_CONSISTENCY_FAILED, "Warning", message);
    deps.log(message);
    return deps.cut(() => "crash");
  }
  const frozenAt = Date.now();
  let thawed = false;
  let cutError: unknown;
  let timer: NodeJS.Timeout | undefined;
  const cutting = deps
    .cut(() => (thawed || Date.now() - frozenAt >= bound ? "crash" : "app"))
    .catch((e) => {
      cutError = e;
      return undefined;
    });
  const overdue = new Promise<"overdue">((r) => (timer = setTimeout(() => r("overdue"), Math.max(0, bound - (Date.now() - frozenAt)))));
  const first = await Promise.race([cutting, overdue]);
  clearTimeout(timer);
  thawed = true;
  const post = deps.postThaw?.length ? await runScript(deps.postThaw, bound) : undefined;
  const tag = first === "overdue" ? await cutting : first;
  const problems: string[] = [];
  if (first === "overdue") problems.push(`the tag took longer than the ${bound} ms freeze bound: thawed before it was cut`);
  if (cutError) problems.push(`the tag failed: ${(cutError as Error).message ?? String(cutError)}`);
  if (post && !post.ok) problems.push(`post-thaw failed: ${post.detail}`);
  if (tag && tag.kind !== "app" && problems.length === 0) problems.push("the tag was cut after the freeze bound");
  if (problems.length > 0) {
    const message = `app-consistent tag failed${tag ? ` (tag ${tag.id} is ${tag.kind})` : ""}: ${problems.join("; ")}`;
    deps.health.set(APP_CONSISTENCY_FAILED, "Warning", message);
    deps.log(message);
  } else if (tag) {
    deps.health.clear(APP_CONSISTENCY_FAILED);
  }
  return tag;
}
