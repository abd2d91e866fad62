// Queue trigger: the host's QueueListener and QueueProcessor, reduced to what a single instance needs.
import { InvocationContext } from "@azure/functions";
import { QueueClient, type ReceivedMessageItem } from "@azure/storage-queue";
import type { QueueFunctionSpec } from "../functions/spec";
import { MIN_POLL_MS, QueueSettings } from "./host-json";

// ---------------------------------------------------------------------------------------------
// Queue trigger: the host's QueueListener and QueueProcessor, reduced to what a single instance needs.

export type Invoker = (run: (context: InvocationContext) => Promise<void>, triggerMetadata?: Record<string, unknown>) => Promise<void>;

export class QueueListener {
  readonly queueName: string;
  /** Messages received so far, so drainQueues can tell "quiet" from "busy between two checks". */
  received = 0;
  private client: QueueClient | undefined;
  private poison: QueueClient | undefined;
  private ensured: Promise<void> | undefined;
  private running = false;
  private loop: Promise<void> | undefined;
  private readonly processing = new Set<Promise<void>>();
  private wakeUp: (() => void) | undefined;
  private delayMs = MIN_POLL_MS;
  private polling: Promise<number> | undefined;

  constructor(
    private readonly spec: QueueFunctionSpec,
    private readonly settings: QueueSettings,
    private readonly env: NodeJS.ProcessEnv,
    private readonly invoke: Invoker,
    private readonly log: (line: string) => void,
  ) {
    this.queueName = spec.queueName.toLowerCase();
  }

  /** Resolves the connection setting like the host: the name, then `AzureWebJobs<name>`; none means AzureWebJobsStorage. */
  connect(): void {
    if (this.client) return;
    const setting = this.spec.connection || "AzureWebJobsStorage";
    const cs = this.env[setting] || this.env[`AzureWebJobs${setting}`];
    if (!cs) throw new Error(`function '${this.spec.name}': connection setting '${setting}' is not set`);
    try {
      this.client = new QueueClient(cs, this.queueName);
      this.poison = new QueueClient(cs, `${this.queueName}-poison`);
    } catch (e) {
      throw new Error(`function '${this.spec.name}': setting '${setting}' is not a usable connection string: ${(e as Error).message}`);
    }
  }

  start(): void {
    this.connect();
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wake();
    await this.loop;
    while (this.processing.size) await Promise.allSettled([...this.processing]);
  }

  get busy(): number {
    return this.processing.size;
  }

  wake(): void {
    this.delayMs = MIN_POLL_MS;
    this.wakeUp?.();
  }

  async approximateCount(): Promise<number> {
    this.connect();
    await this.ensureQueue();
    return (await this.client!.getProperties()).approximateMessagesCount ?? 0;
  }

  /** One receive; starts the handlers of what it got and returns how many. Never throws. */
  pollOnce(): Promise<number> {
    // Serialised, so a drain-triggered poll and the loop's own never race for the same slot.
    this.polling ??= this.receiveBatch().finally(() => (this.polling = undefined));
    return this.polling;
  }

  private async run(): Promise<void> {
    while (this.running) {
      const got = await this.pollOnce();
      if (!this.running) break;
      if (got > 0) {
        this.delayMs = MIN_POLL_MS;
        // Like the host: fetch again once the in-flight count falls to newBatchThreshold.
        while (this.running && this.processing.size > this.settings.newBatchThreshold) await Promise.race([...this.processing]);
        continue;
      }
      // Randomised exponential backoff between the floor and maxPollingInterval, as the host's strategy does.
      const wait = Math.min(this.delayMs, this.settings.maxPollingIntervalMs);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, wait);
        this.wakeUp = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wakeUp = undefined;
      this.delayMs = Math.min(this.delayMs * 2 * (0.8 + Math.random() * 0.4), this.settings.maxPollingIntervalMs);
    }
  }

  private ensureQueue(): Promise<void> {
    this.ensured ??= this.client!.createIfNotExists().then(
      () => undefined,
      (e: unknown) => {
        this.ensured = undefined;
        throw e;
      },
    );
    return this.ensured;
  }

  private async receiveBatch(): Promise<number> {
    let messages: ReceivedMessageItem[];
    try {
      this.connect();
      await this.ensureQueue();
      const r = await this.client!.receiveMessages({
        // Storage caps a receive at 32 messages, as the host's batchSize is.
        numberOfMessages: Math.max(1, Math.min(32, this.settings.batchSize)),
        visibilityTimeout: Math.max(1, Math.ceil(this.settings.messageLeaseMs / 1000)),
      });
      messages = r.receivedMessageItems;
    } catch {
      // Storage unreachable or the queue deleted underneath: back off and try again, as the host does.
      this.ensured = undefined;
      return 0;
    }
    for (const m of messages) {
      this.received++;
      const p = this.process(m).catch(() => undefined);
      this.processing.add(p);
      void p.finally(() => this.processing.delete(p));
    }
    return messages.length;
  }

  private async process(message: ReceivedMessageItem): Promise<void> {
    const client = this.client!;
    let popReceipt = message.popReceipt;
    // A message that already used up its attempts (say the host died mid-run) goes to poison without another run.
    if (message.dequeueCount > this.settings.maxDequeueCount) {
      await this.toPoison(message, popReceipt);
      return;
    }
    // Keep the message invisible while the handler runs, renewing at half the lease like the host.
    const leaseSeconds = Math.max(1, Math.ceil(this.settings.messageLeaseMs / 1000));
    let renewing: Promise<void> | undefined;
    const renew = setInterval(
      () => {
        // Each renewal needs the previous one's pop receipt: never two at once.
        if (renewing) return;
        renewing = client
          .updateMessage(message.messageId, popReceipt, undefined, leaseSeconds)
          .then(
            (r) => {
              if (r.popReceipt) popReceipt = r.popReceipt;
            },
            () => undefined,
          )
          .finally(() => (renewing = undefined));
      },
      Math.max(500, this.settings.messageLeaseMs / 2),
    );

    let ok = false;
    try {
      await this.invoke(
        async (context) => {
          await this.spec.handler(this.decode(message.messageText), context);
        },
        {
          id: message.messageId,
          dequeueCount: message.dequeueCount,
          insertionTime: message.insertedOn.toISOString(),
          expirationTime: message.expiresOn.toISOString(),
          nextVisibleTime: message.nextVisibleOn.toISOString(),
          popReceipt: message.popReceipt,
        },
      );
      ok = true;
    } catch {
      // Logged by invoke(); the outcome decides the message's fate below.
    } finally {
      clearInterval(renew);
      await renewing;
    }
    try {
      if (ok) await client.deleteMessage(message.messageId, popReceipt);
      else if (message.dequeueCount >= this.settings.maxDequeueCount) await this.toPoison(message, popReceipt);
      else await client.updateMessage(message.messageId, popReceipt, undefined, Math.round(this.settings.visibilityTimeoutMs / 1000));
    } catch {
      // Lost the pop receipt (the lease lapsed): the message reappears on its own and counts another dequeue.
    }
  }

  /** The message text goes over unchanged, still encoded, exactly as the host copies it. */
  private async toPoison(message: ReceivedMessageItem, popReceipt: string): Promise<void> {
    this.log(
      `[${new Date().toISOString()}] Message ${message.messageId} has reached MaxDequeueCount of ${this.settings.maxDequeueCount}. Moving message to queue '${this.queueName}-poison'.`,
    );
    await this.poison!.createIfNotExists();
    await this.poison!.sendMessage(message.messageText);
    await this.client!.deleteMessage(message.messageId, popReceipt);
  }

  /** base64 (the host's default encoding), then JSON when it parses: what `tryJsonParse` gives a v4 handler. */
  private decode(text: string): unknown {
    let decoded = text;
    if (this.settings.messageEncoding === "base64") {
      const compact = text.replace(/\s+/g, "");
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(compact) || compact.length % 4 !== 0) {
        throw new Error("queue message is not valid base64 (host.json messageEncoding is base64; producers must encode)");
      }
      decoded = Buffer.from(compact, "base64").toString("utf8");
    }
    try {
      return JSON.parse(decoded) as unknown;
    } catch {
      return decoded;
    }
  }
}
