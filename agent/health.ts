// The agent's health as the heartbeat reports it: open issues by code, each with since when.

export type Severity = "Warning" | "Critical";

export interface Issue {
  code: string;
  severity: Severity;
  message: string;
  since: string;
}

export class Health {
  private readonly issues = new Map<string, Issue>();

  constructor(private readonly onChange: () => void = () => {}) {}

  /** Opens (or rewords) an issue; `since` stays the time it was first seen. */
  set(code: string, severity: Severity, message: string): void {
    const open = this.issues.get(code);
    if (open && open.message === message && open.severity === severity) return;
    this.issues.set(code, { code, severity, message, since: open?.since ?? new Date().toISOString() });
    this.onChange();
  }

  clear(code: string): void {
    if (this.issues.delete(code)) this.onChange();
  }

  has(code: string): boolean {
    return this.issues.has(code);
  }

  get status(): "Healthy" | Severity {
    const all = [...this.issues.values()];
    if (all.some((i) => i.severity === "Critical")) return "Critical";
    return all.length > 0 ? "Warning" : "Healthy";
  }

  list(): Issue[] {
    return [...this.issues.values()];
  }
}
