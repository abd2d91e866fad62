// What the stages need of storage, in their own terms: no Azure SDK here. The adapters (clients.ts) satisfy these with
// the SDK's clients — the compiler checks it where they are handed over — and tests may hand anything that does.

/** The keys every entity carries. */
export interface EntityKeys {
  partitionKey: string;
  rowKey: string;
}

/** An entity as read back: its properties, its ETag (for conditional writes) and, as the service returns them, its keys. */
export type StoredEntity<T> = T & { etag: string; partitionKey?: string; rowKey?: string; timestamp?: string };

export type UpdateMode = "Merge" | "Replace";

/** One action of an entity-group transaction (one partition, at most 100). */
export type TransactionAction =
  | ["create" | "delete", EntityKeys & Record<string, unknown>]
  | ["update" | "upsert", EntityKeys & Record<string, unknown>]
  | ["update" | "upsert", EntityKeys & Record<string, unknown>, UpdateMode];

/** A table of entities: the operations the stages use, no more. */
export interface EntityTable {
  createEntity<T extends object>(entity: T & EntityKeys): Promise<unknown>;
  getEntity<T extends object>(partitionKey: string, rowKey: string): Promise<StoredEntity<T>>;
  listEntities<T extends object>(options?: { queryOptions?: { filter?: string; select?: string[] } }): AsyncIterable<StoredEntity<T>>;
  updateEntity<T extends object>(entity: T & EntityKeys, mode?: UpdateMode, options?: { etag?: string }): Promise<{ etag?: string }>;
  upsertEntity<T extends object>(entity: T & EntityKeys, mode?: UpdateMode): Promise<unknown>;
  deleteEntity(partitionKey: string, rowKey: string, options?: { etag?: string }): Promise<unknown>;
  submitTransaction(actions: TransactionAction[]): Promise<unknown>;
}

/** Where the tables are (created on first use). */
export interface Tables {
  table(name: string): Promise<EntityTable>;
}
