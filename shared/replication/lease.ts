// The lease that makes one apply at a time the writer of a replica: renewed at a third of its duration, its loss noticed before writes are refused.
import type { LeasePort } from "../storage/ports";
import { isTransient } from "../contract/errors";

/** Renews the lease at a third of its duration; notes when it was lost so the run stops before its writes are refused. */
export class LeaseKeeper {
  lost = false;
  private readonly timer: NodeJS.Timeout;
  private renewing: Promise<unknown> | undefined;

  constructor(lease: LeasePort, seconds: number) {
    this.timer = setInterval(
      () => {
        if (this.renewing) return;
        this.renewing = lease
          .renewLease()
          .catch((e: unknown) => {
            // A transient failure leaves two more tries before the lease lapses; anything else means it is gone.
            if (!isTransient(e)) this.lost = true;
          })
          .finally(() => (this.renewing = undefined));
      },
      (seconds * 1000) / 3,
    );
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
