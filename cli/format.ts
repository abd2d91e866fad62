// How the CLI speaks to people: tables, colours (only on a terminal), durations, sizes, progress bars.

/** Colours only when stdout is a terminal and NO_COLOR is not set (https://no-color.org); FORCE_COLOR=1 forces them. */
export function useColour(stream: { isTTY?: boolean } = process.stdout, env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== "") return false;
  if (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== "" && env.FORCE_COLOR !== "0") return true;
  return Boolean(stream.isTTY);
}

const CODES = { red: 31, green: 32, yellow: 33, blue: 34, magenta: 35, cyan: 36, grey: 90, bold: 1 } as const;
export type Colour = keyof typeof CODES;

export class Style {
  constructor(readonly colour: boolean) {}

  paint(text: string, c: Colour): string {
    return this.colour ? `\x1b[${CODES[c]}m${text}\x1b[0m` : text;
  }

  /** Healthy/Succeeded green, Warning/InProgress yellow, Critical/Failed red; anything else as it is. */
  status(text: string): string {
    if (/^(Healthy|Succeeded|Completed|Protected|running|cleared)$/.test(text)) return this.paint(text, "green");
    if (/^(Warning|InProgress|Running|Pending|InitialReplication|TestFailover|FailingOver|Reprotecting)$/.test(text)) return this.paint(text, "yellow");
    if (/^(Critical|Failed|Terminated|ResyncRequired|EnableFailed)$/.test(text)) return this.paint(text, "red");
    return text;
  }
}

const ANSI = /\x1b\[[0-9;]*m/g;
export const visibleLength = (s: string) => s.replace(ANSI, "").length;

/** Columns padded to their widest cell (colour codes do not count), like kubectl and az table output. */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => visibleLength(r[c] ?? ""))));
  return [header, ...rows]
    .map((r) =>
      r
        .map((cell, c) => cell + " ".repeat(Math.max(0, widths[c]! - visibleLength(cell))))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** 42 s, 12 min, 3 h 5 min, 2 d 4 h. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "-";
  if (seconds < 10) return `${Math.round(seconds * 10) / 10} s`;
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 48 * 3600) {
    const h = Math.floor(seconds / 3600);
    const m = Math.round((seconds - h * 3600) / 60);
    return m ? `${h} h ${m} min` : `${h} h`;
  }
  const d = Math.floor(seconds / 86400);
  return `${d} d ${Math.round((seconds - d * 86400) / 3600)} h`;
}

/** 512 B, 4.0 KiB, 1.5 MiB, 2.0 GiB. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** `[██████░░░░░░░░░░]  38.2%` on a terminal; `[######----------]  38.2%` elsewhere (any font, any log). */
export function progressBar(percent: number, width = 20, unicode = true): string {
  const p = Math.max(0, Math.min(100, percent));
  const full = Math.round((p / 100) * width);
  const [on, off] = unicode ? ["█", "░"] : ["#", "-"];
  return `[${on.repeat(full)}${off.repeat(width - full)}] ${p.toFixed(1).padStart(5)}%`;
}

/** `04:01:10Z` today, else `2026-12-05 04:01Z`. */
export function formatTime(iso: string | null | undefined, now = new Date()): string {
  if (!iso) return "-";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const s = d.toISOString();
  return s.slice(0, 10) === now.toISOString().slice(0, 10) ? `${s.slice(11, 19)}Z` : `${s.slice(0, 10)} ${s.slice(11, 16)}Z`;
}

export const shortId = (id: string) => id.slice(0, 8);
export const printJson = (v: unknown) => console.log(JSON.stringify(v, null, 2));
