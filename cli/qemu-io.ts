// A long-lived `qemu-io` session on an NBD export: a real NBD client driven one command at a time, each resolving when qemu-io reports it done (the drill, benchmarks and tests write through the agent with it).
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";

/** What each command's completion looks like in qemu-io's output (flush prints nothing: a one-sector read follows it). */
const DONE = /^(wrote|read|discard) (\d+)\/(\d+) bytes at offset (\d+)$/;
const FAILED = /^(\w+) failed: (.*)$/;

export class QemuIoError extends Error {
  override readonly name = "QemuIoError";
}

export interface QemuIoOptions {
  /** `writeback`: plain writes (FUA only with `fua`); `writethrough` (qemu-io's default): FUA on every write. */
  cache?: "writeback" | "writethrough";
  /** The qemu-io binary (default: from PATH). */
  binary?: string;
}

/** One qemu-io process on `url` (e.g. `nbd+unix:///data0?socket=/run/agent.sock`); commands run one at a time, in order. */
export class QemuIo {
  private readonly waiters: { resolve: () => void; reject: (e: Error) => void; expect: string }[] = [];
  private buffered = "";
  private mismatch: string | undefined;
  private exited: Error | undefined;
  private readonly exit: Promise<void>;

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => this.onOutput(chunk));
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    this.exit = new Promise((resolve) =>
      child.once("close", (code, signal) => {
        this.exited = new QemuIoError(`qemu-io exited (${signal ?? code})${stderr ? `: ${stderr.trim()}` : ""}`);
        for (const w of this.waiters.splice(0)) w.reject(this.exited);
        resolve();
      }),
    );
    child.on("error", () => undefined);
  }

  static open(url: string, opts: QemuIoOptions = {}): QemuIo {
    const child = spawn(opts.binary ?? "qemu-io", ["-f", "raw", "-t", opts.cache ?? "writeback", url], { stdio: ["pipe", "pipe", "pipe"] });
    return new QemuIo(child);
  }

  /** Writes `length` bytes of `pattern` (one byte value) at `offset`; `fua`: durable before the reply. */
  write(offset: number, length: number, pattern: number, opts: { fua?: boolean } = {}): Promise<void> {
    return this.run(`write ${opts.fua ? "-f " : ""}-P ${pattern} ${offset} ${length}`, "wrote");
  }

  /** WRITE_ZEROES over the range. */
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.run(`write -z ${offset} ${length}`, "wrote");
  }

  /** Reads the range and checks that every byte is `pattern`. */
  readPattern(offset: number, length: number, pattern: number): Promise<void> {
    return this.run(`read -P ${pattern} ${offset} ${length}`, "read");
  }

  discard(offset: number, length: number): Promise<void> {
    return this.run(`discard ${offset} ${length}`, "discard");
  }

  /** FLUSH: every write acknowledged before it is durable once this resolves. */
  async flush(): Promise<void> {
    this.send("flush");
    await this.run("read 0 512", "read");
  }

  /** Ends the session (qemu-io sends NBD_CMD_DISC) and waits for the process. */
  async close(): Promise<void> {
    if (!this.exited) this.child.stdin.end("quit\n");
    await this.exit;
  }

  /** Kills the client without a disconnect (a VM that vanished). */
  async kill(): Promise<void> {
    this.child.kill("SIGKILL");
    await this.exit;
  }

  private run(command: string, expect: string): Promise<void> {
    if (this.exited) return Promise.reject(this.exited);
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject, expect });
      this.send(command);
    });
  }

  private send(command: string): void {
    this.child.stdin.write(`${command}\n`);
  }

  private onOutput(chunk: string): void {
    this.buffered += chunk;
    let nl: number;
    while ((nl = this.buffered.indexOf("\n")) >= 0) {
      const line = this.buffered
        .slice(0, nl)
        .trim()
        .replace(/^(?:qemu-io> )+/, "");
      this.buffered = this.buffered.slice(nl + 1);
      // A pattern mismatch is printed before the read's own completion line.
      if (line.startsWith("Pattern verification failed")) {
        this.mismatch ??= line;
        continue;
      }
      const done = DONE.exec(line);
      const failed = done ? undefined : FAILED.exec(line);
      if (!done && !failed) continue;
      const w = this.waiters.shift();
      const mismatch = this.mismatch;
      this.mismatch = undefined;
      if (!w) continue;
      if (done && done[1] === w.expect && done[2] === done[3] && !mismatch) w.resolve();
      else w.reject(new QemuIoError(`qemu-io: ${mismatch ?? line}`));
    }
  }
}
