// What the stages need of storage, in their own terms: no Azure SDK here. The adapters (clients.ts) satisfy these with
// the SDK's clients — the compiler checks it where they are handed over — and tests may hand anything that does.
import type { Direction } from "./names";

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

// Blobs, in the SDK's shapes (so its clients satisfy these unchanged) but only what the stages call.

/** Preconditions of a blob request: the lease held, the ETag read, the watermark (blob sequence number) it follows. */
export interface BlobConditions {
  leaseId?: string;
  ifMatch?: string;
  ifSequenceNumberEqualTo?: number;
}

export type CopyStatus = "pending" | "success" | "aborted" | "failed";

export interface BlobProperties {
  etag?: string;
  contentLength?: number;
  /** A page blob's sequence number: the replica's watermark. */
  blobSequenceNumber?: number;
  metadata?: Record<string, string>;
  copyStatus?: CopyStatus;
  copyProgress?: string;
  lastModified?: Date;
}

export interface BlobDownload {
  readableStreamBody?: NodeJS.ReadableStream;
  contentLength?: number;
  etag?: string;
  /** Set on a blob that a copy made (until its next upload). */
  copyId?: string;
  copySource?: string;
}

/** A blob as a listing returns it. */
export interface ListedBlob {
  name: string;
  properties: { contentLength?: number; lastModified: Date; createdOn?: Date; copyStatus?: CopyStatus; copyId?: string; copySource?: string };
  metadata?: Record<string, string>;
}

/** A listing: item by item, or page by page (`segment.blobItems`). */
export interface BlobListing extends AsyncIterable<ListedBlob> {
  byPage(settings?: { maxPageSize?: number }): AsyncIterable<{ segment: { blobItems: ListedBlob[] } }>;
}

/** A blob's lease: one holder writes at a time. */
export interface LeasePort {
  readonly leaseId: string;
  acquireLease(durationSeconds: number): Promise<unknown>;
  renewLease(): Promise<unknown>;
  releaseLease(): Promise<unknown>;
  breakLease(breakPeriodSeconds: number): Promise<unknown>;
}

/** A server-side copy once started: its first state, not waited on. */
export interface CopyPoller {
  stopPolling(): void;
  getOperationState(): { result?: { copyStatus?: CopyStatus } };
}

export interface BlobPort {
  readonly name: string;
  readonly url: string;
  getProperties(options?: { conditions?: BlobConditions }): Promise<BlobProperties>;
  download(offset?: number, count?: number): Promise<BlobDownload>;
  downloadToBuffer(offset?: number, count?: number, options?: { conditions?: BlobConditions }): Promise<Buffer>;
  exists(): Promise<boolean>;
  setMetadata(metadata: Record<string, string>, options?: { conditions?: BlobConditions }): Promise<unknown>;
  delete(): Promise<unknown>;
  deleteIfExists(options?: { deleteSnapshots?: "include" | "only" }): Promise<{ succeeded: boolean }>;
  getBlobLeaseClient(proposedLeaseId?: string): LeasePort;
  beginCopyFromURL(copySource: string, options?: { metadata?: Record<string, string> }): Promise<CopyPoller>;
}

export interface PageBlobPort extends BlobPort {
  create(size: number, options?: { blobSequenceNumber?: number; metadata?: Record<string, string> }): Promise<unknown>;
  uploadPages(body: Buffer, offset: number, count: number, options?: { conditions?: BlobConditions }): Promise<unknown>;
  listPageRanges(offset?: number, count?: number): { byPage(): AsyncIterable<{ pageRange?: { start: number; end: number }[] }> };
  /** Sets the sequence number (the watermark) in a step of its own, after the pages it covers. */
  updateSequenceNumber(action: "update", sequenceNumber: number, options?: { conditions?: BlobConditions }): Promise<{ etag?: string }>;
  createSnapshot(options?: { conditions?: BlobConditions; metadata?: Record<string, string> }): Promise<{ snapshot?: string }>;
  withSnapshot(snapshot: string): PageBlobPort;
}

export interface BlockBlobPort extends BlobPort {
  uploadData(data: Buffer, options?: { metadata?: Record<string, string> }): Promise<unknown>;
}

export interface ContainerPort {
  readonly containerName: string;
  readonly url: string;
  getBlobClient(name: string): BlobPort;
  getPageBlobClient(name: string): PageBlobPort;
  getBlockBlobClient(name: string): BlockBlobPort;
  listBlobsFlat(options?: { prefix?: string; includeMetadata?: boolean; includeCopy?: boolean }): BlobListing;
  create(options?: { metadata?: Record<string, string> }): Promise<unknown>;
  createIfNotExists(options?: { metadata?: Record<string, string> }): Promise<unknown>;
  deleteIfExists(): Promise<{ succeeded: boolean }>;
  exists(): Promise<boolean>;
}

/** One account's blob service. */
export interface BlobServicePort {
  readonly url: string;
  getContainerClient(name: string): ContainerPort;
}

/** The replication queue, as apply re-announces a batch on it. */
export interface QueuePort {
  sendMessage(text: string, options?: { visibilityTimeout?: number }): Promise<unknown>;
}

/** A SAS query string (without '?') and when it stops working. */
export interface SignedSas {
  sas: string;
  expiresOn: Date;
}

/** Signs what the agents and the re-protect's copy are handed: signed with the account key, or delegated from the app's identity. */
export interface SasPort {
  /** Create+write on one cache container, in the account that holds `direction`'s cache. */
  cacheContainer(direction: Direction, containerName: string, startsOn: Date, expiresOn: Date): Promise<SignedSas>;
  /** Add on one queue of the control account. */
  queue(queueName: string, startsOn: Date, expiresOn: Date): Promise<SignedSas>;
  /** Read on one blob of the account that holds `direction`'s replicas (a copy source in another account). */
  replicaRead(direction: Direction, containerName: string, blobName: string, now: Date): Promise<string>;
}

/**
 * The storage a stage is handed: the control account's tables and queue, and per direction the account of its cache
 * and the account of its replicas (storage is symmetric across the two regions; `names.ts` says which is which).
 */
export interface StoragePort extends Tables {
  /** The blob service holding a direction's cache containers (the region the VM replicates from). */
  cache(direction: Direction): BlobServicePort;
  /** The blob service holding a direction's replicas and failover disks (the region the VM replicates to). */
  replicaService(direction: Direction): BlobServicePort;
  /** The replicas container of a direction, created on first use. */
  replicas(direction: Direction): Promise<ContainerPort>;
  /** The failover disks' container of a direction, next to its replicas. */
  failover(direction: Direction): Promise<ContainerPort>;
  replicationQueue(): Promise<QueuePort>;
  readonly sas: SasPort;
}
