// Scan rounds: the scanned disks looked at, scanned in full and looked at again together. A round in which none
// changed (proved from outside: see quiet.ts) is one instant of every disk, and a tag cut right after it is a point.
import { AGENT_WARNINGS } from "../shared/protection/agent-protocol";
import type { BatchTag, TagKind } from "../shared/replication/batch";
import type { Health } from "./health";
import { changedBetween, type Look } from "./quiet";
import { sleep } from "./retry";
import type { ScannedDisk } from "./scanned-disk";
import { TrackedDisk } from "./tracked-disk";

/** After a scan round's passes, change notifications of writes that were still completing get this long to arrive. */
const SCAN_GRACE_MS = 250;
/** Scan rounds in a row that saw a change before the item's health says no consistent point can be cut from a scan. */
const NOISY_ROUNDS_BEFORE_WARNING = 3;

/** A scan round in which no scanned disk changed: its first looks and, per disk, the seq right after its pass. */
export interface QuietRound {
  quiet: true;
  first: Look[];
  afterSeq: number[];
}
export type ScanRound = QuietRound | { quiet: false; why: string };

export interface ScanRoundsDeps {
  scanned(): ScannedDisk[];
  tracked(): TrackedDisk[];
  health: Health;
  /** The NoConsistentScan warning appeared or cleared: the item's health should not wait for the next check-in. */
  healthChanged(): void;
  /** Test seam: runs while the round's passes run. */
  duringScanRound?: () => Promise<void> | void;
}

export class ScanRounds {
  /** Rounds in a row that saw a change. */
  private noisyRounds = 0;

  constructor(private readonly deps: ScanRoundsDeps) {}

  /**
   * Looks at every scanned disk, scans each in full, gives notifications a grace, and looks again: quiet if no look
   * differs. What the passes shipped brings the replicas to the disks as they were during the whole round.
   */
  async round(): Promise<ScanRound> {
    const disks = this.deps.scanned();
    const first = await Promise.all(disks.map((d) => d.look()));
    await Promise.all([...disks.map((d) => d.scanNow()), this.deps.duringScanRound?.()]);
    const afterSeq = disks.map((d) => d.nextSeq);
    await sleep(SCAN_GRACE_MS);
    const second = await Promise.all(disks.map((d) => d.look()));
    const why = disks
      .map((d, i) => changedBetween(first[i]!, second[i]!) ?? (d.nextSeq !== afterSeq[i] ? "shipped more since its pass" : undefined))
      .map((w, i) => (w ? `disk ${disks[i]!.id}: ${w}` : ""))
      .filter(Boolean)
      .join("; ");
    return why ? { quiet: false, why } : { quiet: true, first, afterSeq };
  }

  /** Counts rounds that saw changes; past a few in a row the item's health says why no point comes of the scans. */
  note(round: ScanRound): void {
    const { health } = this.deps;
    if (round.quiet) {
      this.noisyRounds = 0;
      if (!health.has(AGENT_WARNINGS.noConsistentScan)) return;
      health.clear(AGENT_WARNINGS.noConsistentScan);
      this.deps.healthChanged();
      return;
    }
    this.noisyRounds++;
    if (this.noisyRounds < NOISY_ROUNDS_BEFORE_WARNING) return;
    const fresh = !health.has(AGENT_WARNINGS.noConsistentScan);
    health.set(
      AGENT_WARNINGS.noConsistentScan,
      "Warning",
      `scanned disks changed during the last ${this.noisyRounds} scan passes (${round.why}): a scan yields a crash-consistent point only when a whole pass sees no write; serve busy disks through the agent (--nbd) for exact points`,
    );
    if (fresh) this.deps.healthChanged();
  }

  /**
   * Cuts a tag on every disk right after a quiet round: tracked disks are held at this instant, and the scanned disks
   * must still be unchanged since the round's first look (so the round's passes describe them now) and have shipped
   * nothing since. Resolves once the tagged batches are durable in the spool; undefined if anything moved.
   */
  async cutAfterQuiet(round: QuietRound, kind: TagKind, id: string): Promise<BatchTag | undefined> {
    const scanned = this.deps.scanned();
    const tracked = this.deps.tracked();
    if (scanned.some((d) => d.tagBlocker !== undefined)) return undefined;
    const hold = tracked.length > 0 ? await TrackedDisk.hold(tracked) : undefined;
    const commits: Promise<void>[] = [];
    let cut: BatchTag | undefined;
    try {
      if (hold && !hold.canTag()) return undefined;
      const now = await Promise.all(scanned.map((d) => d.look()));
      if (scanned.some((_, i) => changedBetween(round.first[i]!, now[i]!) !== undefined)) return undefined;
      const tag: BatchTag = { id, kind, scope: "vm", time: new Date().toISOString() };
      for (const [i, d] of scanned.entries()) {
        // A disk that shipped something since its pass: the tag stays incomplete, and no point comes of it.
        const sealed = await d.sealTag(tag, round.afterSeq[i]!);
        if (!sealed) return undefined;
        commits.push(sealed.committed);
      }
      if (hold && hold.cut(tag) !== tag) return undefined;
      cut = tag;
    } finally {
      hold?.release();
    }
    await Promise.all([...commits, ...(hold ? [hold.done] : [])]);
    return cut;
  }
}
