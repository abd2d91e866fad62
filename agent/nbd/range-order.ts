// Requests on one export run concurrently, except that one overlapping an earlier write (or a write overlapping an earlier read) waits for it: receipt order where it matters.

interface Entry {
  start: number;
  end: number;
  writes: boolean;
  done: Promise<void>;
}

export class RangeOrder {
  private readonly active = new Set<Entry>();

  /**
   * Takes a turn on [start, end) now (the order of calls is the order of turns); resolves with `release` once every
   * earlier conflicting turn is released. Two turns conflict when their ranges overlap and at least one writes.
   */
  admit(start: number, end: number, writes: boolean): Promise<() => void> {
    const before: Promise<void>[] = [];
    for (const e of this.active) if ((writes || e.writes) && e.start < end && start < e.end) before.push(e.done);
    let release!: () => void;
    const entry: Entry = { start, end, writes, done: new Promise<void>((r) => (release = r)) };
    this.active.add(entry);
    const leave = () => {
      this.active.delete(entry);
      release();
    };
    if (before.length === 0) return Promise.resolve(leave);
    return Promise.all(before).then(() => leave);
  }

  get size(): number {
    return this.active.size;
  }
}
