// Durable state in Azure Storage: one row per instance in `<hub>Instances`, and per instance a partition of `<hub>History` holding its checkpoint, its episodes and its inbox; big payloads spill into blobs.
import { createHash } from "node:crypto";
import { odata, TableClient, type TableEntity, type TableEntityResult, type TransactionAction } from "@azure/data-tables";
import { BlobServiceClient, type ContainerClient } from "@azure/storage-blob";
import type { ActionSignature, HistoryEvent } from "./history";

export type RuntimeStatus = "Pending" | "Running" | "Completed" | "Failed" | "Terminated" | "ContinuedAsNew" | "Canceled" | "Suspended";

export const TERMINAL: ReadonlySet<RuntimeStatus> = new Set<RuntimeStatus>(["Completed", "Failed", "Terminated", "Canceled"]);

/** Which parent task a sub-orchestration reports to. */
export interface ParentLink {
  instanceId: string;
  executionId: string;
  taskId: number;
}

/** What the status API shows; the Instances row holds exactly this. Payloads are JSON text. */
export interface InstanceRecord {
  instanceId: string;
  name: string;
  executionId: string;
  status: RuntimeStatus;
  input?: string;
  output?: string;
  customStatus?: string;
  createdTime: Date;
  lastUpdatedTime: Date;
  parent?: ParentLink;
}

/** The authoritative state of an instance (History row `state`): the record plus the driver's position. */
export interface Checkpoint extends InstanceRecord {
  /** Episodes committed in the current execution. */
  episodes: number;
  /** Timers the orchestrator cancelled (`timer.cancel()`), never delivered. */
  canceledTimers: number[];
  /** Set once loaded or written: the next write must match it. */
  etag?: string;
}

/** What one episode added to the history. */
export interface EpisodeRecord {
  number: number;
  events: HistoryEvent[];
  /** Signatures of the top-level actions this episode scheduled, for the replay check. */
  actions: ActionSignature[];
}

export type InboxKind = "completion" | "event" | "terminate";

/** A message waiting for the next episode: a task completion, an external event or a terminate request. */
export interface InboxMessage {
  /** Unique and deterministic for completions (`c:<execution>:<task>`), so a re-run activity overwrites rather than duplicates. */
  id: string;
  kind: InboxKind;
  /** Orders messages (raised events are delivered in the order they were raised). */
  sent: number;
  /** Completions belong to one execution; events and terminations to the instance. */
  executionId?: string;
  event?: HistoryEvent;
  reason?: string;
}

export interface LoadedInstance {
  checkpoint: Checkpoint;
  episodes: EpisodeRecord[];
  inbox: InboxMessage[];
  /** Row keys of earlier executions' episodes, to delete. */
  stale: string[];
}

export interface InstanceQuery {
  statuses?: RuntimeStatus[];
  createdFrom?: Date;
  createdTo?: Date;
}

/** The checkpoint write lost a race: someone else changed the instance since it was loaded. */
export class CheckpointConflict extends Error {
  constructor(instanceId: string) {
    super(`instance '${instanceId}' changed since it was loaded`);
    this.name = "CheckpointConflict";
  }
}

/** Azure allows 64 KiB per property; strings count in UTF-16, so 32 K characters. Beyond this a payload goes to a blob. */
export const INLINE_MAX_CHARS = 30_000;
/** Room left in a transaction (≤ 100 operations) after the episode row and the checkpoint. */
const MAX_DELETES_PER_COMMIT = 98;
const CHECKPOINT_ROW = "state";
const INSTANCE_ROW = "";
const EPISODE_PREFIX = "h:";
const INBOX_PREFIX = "i:";

/** Characters Azure Table keys cannot hold (and that Azurite answers with a 500). */
const BAD_KEY = /[/\\#?\u0000-\u001f\u007f-\u009f]/;

export function validInstanceId(id: string): boolean {
  return id.length > 0 && id.length <= 256 && !BAD_KEY.test(id) && id.trim() === id;
}

function statusCode(e: unknown): number | undefined {
  return typeof e === "object" && e !== null && "statusCode" in e && typeof e.statusCode === "number" ? e.statusCode : undefined;
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, "0");
}

export class DurableStore {
  readonly instancesTable: string;
  readonly historyTable: string;
  readonly containerName: string;
  private readonly instances: TableClient;
  private readonly history: TableClient;
  private readonly blobs: ContainerClient;
  private ready: Promise<void> | undefined;
  private containerReady: Promise<void> | undefined;
  /** Content-addressed payload blobs known to exist, so each is uploaded once. */
  private readonly written = new Set<string>();

  constructor(
    connectionString: string,
    readonly taskHub: string,
  ) {
    if (!/^[A-Za-z][A-Za-z0-9]{2,44}$/.test(taskHub)) throw new Error(`task hub name '${taskHub}' must be 3-45 letters and digits, starting with a letter`);
    this.instancesTable = `${taskHub}Instances`;
    this.historyTable = `${taskHub}History`;
    this.containerName = `${taskHub.toLowerCase()}-largemessages`;
    // Azurite speaks plain HTTP; the SDK refuses shared-key auth over it unless told.
    const insecure = /UseDevelopmentStorage=true|Endpoint=http:|DefaultEndpointsProtocol=http(;|$)/i.test(connectionString);
    // Bounded retries: the management API answers 503 quickly when storage is down (the runtime's loops retry anyway).
    const retryOptions = { maxRetries: 2, retryDelayInMs: 200, maxRetryDelayInMs: 1000 };
    this.instances = TableClient.fromConnectionString(connectionString, this.instancesTable, { allowInsecureConnection: insecure, retryOptions });
    this.history = TableClient.fromConnectionString(connectionString, this.historyTable, { allowInsecureConnection: insecure, retryOptions });
    this.blobs = BlobServiceClient.fromConnectionString(connectionString).getContainerClient(this.containerName);
  }

  /** Creates the two tables once (retried on the next call if it failed). */
  ensure(): Promise<void> {
    this.ready ??= Promise.all([this.instances.createTable(), this.history.createTable()]).then(
      () => undefined,
      (e: unknown) => {
        this.ready = undefined;
        throw e;
      },
    );
    return this.ready;
  }

  // -------------------------------------------------------------------------------------------
  // Instances table: the query side.

  async readInstance(instanceId: string): Promise<InstanceRecord | undefined> {
    await this.ensure();
    try {
      const e = await this.instances.getEntity<Record<string, unknown>>(instanceId, INSTANCE_ROW);
      return await this.toRecord(instanceId, e);
    } catch (err) {
      if (statusCode(err) === 404) return undefined;
      throw err;
    }
  }

  async writeInstance(record: InstanceRecord): Promise<void> {
    await this.ensure();
    const entity: TableEntity<Record<string, unknown>> = { partitionKey: record.instanceId, rowKey: INSTANCE_ROW, ...(await this.recordProperties(record)) };
    await this.instances.upsertEntity(entity, "Replace");
  }

  async listInstances(query: InstanceQuery = {}): Promise<InstanceRecord[]> {
    await this.ensure();
    const filters: string[] = [];
    if (query.statuses?.length) filters.push(`(${query.statuses.map((s) => odata`RuntimeStatus eq ${s}`).join(" or ")})`);
    if (query.createdFrom) filters.push(odata`CreatedTime ge ${query.createdFrom}`);
    if (query.createdTo) filters.push(odata`CreatedTime le ${query.createdTo}`);
    const out: InstanceRecord[] = [];
    const it = this.instances.listEntities<Record<string, unknown>>(filters.length ? { queryOptions: { filter: filters.join(" and ") } } : {});
    for await (const e of it) out.push(await this.toRecord(String(e.partitionKey), e));
    return out;
  }

  // -------------------------------------------------------------------------------------------
  // History partition: checkpoint, episodes, inbox.

  /** Everything of one instance in one query; undefined when it has no checkpoint. */
  async load(instanceId: string): Promise<LoadedInstance | undefined> {
    await this.ensure();
    let checkpointEntity: TableEntityResult<Record<string, unknown>> | undefined;
    const episodeEntities: TableEntityResult<Record<string, unknown>>[] = [];
    const inboxEntities: TableEntityResult<Record<string, unknown>>[] = [];
    const it = this.history.listEntities<Record<string, unknown>>({ queryOptions: { filter: odata`PartitionKey eq ${instanceId}` } });
    for await (const e of it) {
      const rk = String(e.rowKey);
      if (rk === CHECKPOINT_ROW) checkpointEntity = e;
      else if (rk.startsWith(EPISODE_PREFIX)) episodeEntities.push(e);
      else if (rk.startsWith(INBOX_PREFIX)) inboxEntities.push(e);
    }
    if (!checkpointEntity) return undefined;
    const record = await this.toRecord(instanceId, checkpointEntity);
    const checkpoint: Checkpoint = {
      ...record,
      episodes: Number(checkpointEntity.Episodes ?? 0),
      canceledTimers: JSON.parse((await this.payload(checkpointEntity, "CanceledTimers")) ?? "[]") as number[],
      ...(checkpointEntity.etag ? { etag: checkpointEntity.etag } : {}),
    };
    const prefix = `${EPISODE_PREFIX}${checkpoint.executionId}:`;
    const stale: string[] = [];
    const episodes: EpisodeRecord[] = [];
    for (const e of episodeEntities) {
      const rk = String(e.rowKey);
      if (!rk.startsWith(prefix)) {
        stale.push(rk);
        continue;
      }
      const n = Number(rk.slice(prefix.length));
      // Episodes past the checkpoint were written by a commit that lost its race; they are overwritten later.
      if (n > checkpoint.episodes) continue;
      episodes.push({
        number: n,
        events: JSON.parse((await this.payload(e, "Events")) ?? "[]") as HistoryEvent[],
        actions: JSON.parse((await this.payload(e, "Actions")) ?? "[]") as ActionSignature[],
      });
    }
    episodes.sort((a, b) => a.number - b.number);
    const inbox: InboxMessage[] = [];
    for (const e of inboxEntities) {
      const ev = await this.payload(e, "Event");
      inbox.push({
        id: String(e.rowKey).slice(INBOX_PREFIX.length),
        kind: String(e.Kind) as InboxKind,
        sent: Number(e.Sent ?? 0),
        ...(typeof e.ExecutionId === "string" ? { executionId: e.ExecutionId } : {}),
        ...(ev !== undefined ? { event: JSON.parse(ev) as HistoryEvent } : {}),
        ...(typeof e.Reason === "string" ? { reason: e.Reason } : {}),
      });
    }
    inbox.sort((a, b) => a.sent - b.sent || a.id.localeCompare(b.id));
    return { checkpoint, episodes, inbox, stale };
  }

  /** Writes a checkpoint unconditionally (a new instance or a new execution after its rows were cleared). */
  async createCheckpoint(cp: Checkpoint): Promise<string> {
    await this.ensure();
    const r = await this.history.upsertEntity(await this.checkpointEntity(cp), "Replace");
    return r.etag ?? "";
  }

  /**
   * One atomic step of an instance: its new episode row, the checkpoint (only if it still has the loaded ETag)
   * and the deletion of the inbox rows the episode consumed. Returns the checkpoint's new ETag.
   */
  async commit(cp: Checkpoint, episode: EpisodeRecord | undefined, consumed: string[]): Promise<string> {
    await this.ensure();
    const actions: TransactionAction[] = [];
    if (episode) {
      actions.push([
        "upsert",
        {
          partitionKey: cp.instanceId,
          rowKey: `${EPISODE_PREFIX}${cp.executionId}:${pad(episode.number, 6)}`,
          ...(await this.payloadProperties(cp.instanceId, "Events", JSON.stringify(episode.events))),
          ...(await this.payloadProperties(cp.instanceId, "Actions", JSON.stringify(episode.actions))),
        },
        "Replace",
      ]);
    }
    const checkpointIndex = actions.length;
    actions.push(["update", await this.checkpointEntity(cp), "Replace", { etag: cp.etag ?? "*" }]);
    const inTransaction = consumed.slice(0, MAX_DELETES_PER_COMMIT);
    for (const id of inTransaction) actions.push(["delete", { partitionKey: cp.instanceId, rowKey: `${INBOX_PREFIX}${id}` }]);
    let etag: string | undefined;
    try {
      const r = await this.history.submitTransaction(actions);
      etag = r.subResponses[checkpointIndex]?.etag?.trim();
    } catch (e) {
      if (statusCode(e) === 412) throw new CheckpointConflict(cp.instanceId);
      // A consumed row already gone (404) fails the whole batch: commit without the deletes, then delete one by one.
      if (statusCode(e) !== 404 || inTransaction.length === 0) throw e;
      return this.commit(cp, episode, []).then(async (t) => {
        await this.deleteInbox(cp.instanceId, consumed);
        return t;
      });
    }
    if (consumed.length > inTransaction.length) await this.deleteInbox(cp.instanceId, consumed.slice(inTransaction.length));
    return etag || (await this.history.getEntity(cp.instanceId, CHECKPOINT_ROW)).etag;
  }

  /** Idempotent: a message id is written once; a rewrite of the same completion replaces it. */
  async appendInbox(instanceId: string, m: InboxMessage): Promise<void> {
    await this.ensure();
    const entity: TableEntity<Record<string, unknown>> = {
      partitionKey: instanceId,
      rowKey: `${INBOX_PREFIX}${m.id}`,
      Kind: m.kind,
      Sent: m.sent,
      ...(m.executionId ? { ExecutionId: m.executionId } : {}),
      ...(m.reason !== undefined ? { Reason: m.reason.slice(0, INLINE_MAX_CHARS) } : {}),
      ...(m.event ? await this.payloadProperties(instanceId, "Event", JSON.stringify(m.event)) : {}),
    };
    await this.history.upsertEntity(entity, "Replace");
  }

  async deleteInbox(instanceId: string, ids: string[]): Promise<void> {
    await this.deleteRows(
      instanceId,
      ids.map((id) => `${INBOX_PREFIX}${id}`),
    );
  }

  /** Deletes rows of a partition, ignoring those already gone. */
  async deleteRows(instanceId: string, rowKeys: string[]): Promise<void> {
    for (let i = 0; i < rowKeys.length; i += 100) {
      const chunk = rowKeys.slice(i, i + 100);
      try {
        await this.history.submitTransaction(chunk.map((rowKey) => ["delete", { partitionKey: instanceId, rowKey }]));
      } catch {
        await Promise.all(chunk.map((rowKey) => this.history.deleteEntity(instanceId, rowKey).catch(() => undefined)));
      }
    }
  }

  /** Deletes the episode rows of a finished execution (after continueAsNew). */
  async deleteEpisodes(instanceId: string, executionId: string, count: number): Promise<void> {
    const keys: string[] = [];
    for (let n = 1; n <= count; n++) keys.push(`${EPISODE_PREFIX}${executionId}:${pad(n, 6)}`);
    await this.deleteRows(instanceId, keys);
  }

  /** Removes every trace of an instance: history partition, Instances row, payload blobs. */
  async purge(instanceId: string): Promise<void> {
    await this.ensure();
    const keys: string[] = [];
    const it = this.history.listEntities<Record<string, unknown>>({ queryOptions: { filter: odata`PartitionKey eq ${instanceId}`, select: ["RowKey"] } });
    for await (const e of it) keys.push(String(e.rowKey));
    await this.deleteRows(instanceId, keys);
    await this.instances.deleteEntity(instanceId, INSTANCE_ROW).catch((e: unknown) => {
      if (statusCode(e) !== 404) throw e;
    });
    if (this.containerReady || (await this.blobs.exists())) {
      for await (const b of this.blobs.listBlobsFlat({ prefix: `${blobPrefix(instanceId)}/` })) {
        await this.blobs.deleteBlob(b.name).catch(() => undefined);
        this.written.delete(b.name);
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Entities and payloads

  private async recordProperties(r: InstanceRecord): Promise<Record<string, unknown>> {
    return {
      Name: r.name,
      ExecutionId: r.executionId,
      RuntimeStatus: r.status,
      CreatedTime: r.createdTime,
      LastUpdatedTime: r.lastUpdatedTime,
      ...(r.parent ? { Parent: JSON.stringify(r.parent) } : {}),
      ...(r.input !== undefined ? await this.payloadProperties(r.instanceId, "Input", r.input) : {}),
      ...(r.output !== undefined ? await this.payloadProperties(r.instanceId, "Output", r.output) : {}),
      ...(r.customStatus !== undefined ? await this.payloadProperties(r.instanceId, "CustomStatus", r.customStatus) : {}),
    };
  }

  private async checkpointEntity(cp: Checkpoint): Promise<TableEntity<Record<string, unknown>>> {
    return {
      partitionKey: cp.instanceId,
      rowKey: CHECKPOINT_ROW,
      ...(await this.recordProperties(cp)),
      Episodes: cp.episodes,
      ...(await this.payloadProperties(cp.instanceId, "CanceledTimers", JSON.stringify(cp.canceledTimers))),
    };
  }

  private async toRecord(instanceId: string, e: Record<string, unknown>): Promise<InstanceRecord> {
    const input = await this.payload(e, "Input");
    const output = await this.payload(e, "Output");
    const customStatus = await this.payload(e, "CustomStatus");
    return {
      instanceId,
      name: String(e.Name ?? ""),
      executionId: String(e.ExecutionId ?? ""),
      status: String(e.RuntimeStatus ?? "Pending") as RuntimeStatus,
      createdTime: toDate(e.CreatedTime),
      lastUpdatedTime: toDate(e.LastUpdatedTime),
      ...(typeof e.Parent === "string" ? { parent: JSON.parse(e.Parent) as ParentLink } : {}),
      ...(input !== undefined ? { input } : {}),
      ...(output !== undefined ? { output } : {}),
      ...(customStatus !== undefined ? { customStatus } : {}),
    };
  }

  /** A payload inline when it fits a property, otherwise as a content-addressed blob (immutable, so rows can share it). */
  private async payloadProperties(instanceId: string, field: string, text: string): Promise<Record<string, string>> {
    if (text.length <= INLINE_MAX_CHARS) return { [field]: text };
    const name = `${blobPrefix(instanceId)}/${createHash("sha256").update(text).digest("hex")}.json`;
    if (!this.written.has(name)) {
      this.containerReady ??= this.blobs.createIfNotExists().then(
        () => undefined,
        (e: unknown) => {
          this.containerReady = undefined;
          throw e;
        },
      );
      await this.containerReady;
      const body = Buffer.from(text, "utf8");
      await this.blobs.getBlockBlobClient(name).upload(body, body.length, { blobHTTPHeaders: { blobContentType: "application/json" } });
      this.written.add(name);
    }
    return { [`${field}Blob`]: name };
  }

  private async payload(e: Record<string, unknown>, field: string): Promise<string | undefined> {
    const inline = e[field];
    if (typeof inline === "string") return inline;
    const blob = e[`${field}Blob`];
    if (typeof blob !== "string") return undefined;
    const buf = await this.blobs.getBlockBlobClient(blob).downloadToBuffer();
    this.written.add(blob);
    return buf.toString("utf8");
  }
}

function blobPrefix(instanceId: string): string {
  return encodeURIComponent(instanceId);
}

function toDate(v: unknown): Date {
  if (v instanceof Date) return v;
  const d = new Date(String(v ?? ""));
  return Number.isNaN(d.getTime()) ? new Date(0) : d;
}
