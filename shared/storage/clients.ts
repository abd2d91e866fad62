// Typed storage clients for the three accounts (control, replica, cache), built once from Config.
import { BlobServiceClient, StorageSharedKeyCredential, ContainerClient } from "@azure/storage-blob";
import { QueueServiceClient, StorageSharedKeyCredential as QueueKeyCredential, QueueClient } from "@azure/storage-queue";
import { AzureNamedKeyCredential, TableClient, TableServiceClient } from "@azure/data-tables";
import type { TokenCredential } from "@azure/identity";
import { azureCredential } from "./identity";
import type { Config, StorageAccount } from "../config/settings";
import { FAILOVER_CONTAINER, REPLICAS_CONTAINER, REPLICATION_QUEUE, type Direction, type TableName } from "./names";
import type { StoragePort } from "./ports";
import { StorageSas } from "./sas";

export {
  directionAccounts,
  regionsAreDistinct,
  FAILOVER_CONTAINER,
  flipped,
  queueMessageText,
  REPLICAS_CONTAINER,
  REPLICATION_POISON_QUEUE,
  REPLICATION_QUEUE,
  TABLES,
} from "./names";
export type { Direction, TableName } from "./names";

const isHttp = (url: string) => url.startsWith("http:");

/**
 * Retries are bounded (the SDKs' defaults wait 4-7 s on an unreachable account): a request answers 503 quickly when
 * storage is down, and queue-triggered work is retried by the host instead.
 */
export const STORAGE_RETRY = { maxTries: 3, retryDelayInMs: 200, maxRetryDelayInMs: 1000 } as const;
const TABLE_RETRY = {
  maxRetries: STORAGE_RETRY.maxTries - 1,
  retryDelayInMs: STORAGE_RETRY.retryDelayInMs,
  maxRetryDelayInMs: STORAGE_RETRY.maxRetryDelayInMs,
};

/** The Entra credential of an identity-based connection; undefined for a keyed one. */
export function tokenCredential(account: StorageAccount): TokenCredential | undefined {
  return account.auth.kind === "identity" ? azureCredential(account.auth) : undefined;
}

export function blobService(account: StorageAccount): BlobServiceClient {
  const a = account.auth;
  return new BlobServiceClient(account.blobUrl, a.kind === "key" ? new StorageSharedKeyCredential(account.name, a.key) : azureCredential(a), {
    retryOptions: STORAGE_RETRY,
  });
}

export function queueService(account: StorageAccount): QueueServiceClient {
  const a = account.auth;
  return new QueueServiceClient(account.queueUrl, a.kind === "key" ? new QueueKeyCredential(account.name, a.key) : azureCredential(a), {
    retryOptions: STORAGE_RETRY,
  });
}

export function tableClient(account: StorageAccount, table: string): TableClient {
  const a = account.auth;
  const options = { allowInsecureConnection: isHttp(account.tableUrl), retryOptions: TABLE_RETRY };
  return a.kind === "key"
    ? new TableClient(account.tableUrl, table, new AzureNamedKeyCredential(account.name, a.key), options)
    : new TableClient(account.tableUrl, table, azureCredential(a), options);
}

export function tableService(account: StorageAccount): TableServiceClient {
  const a = account.auth;
  const options = { allowInsecureConnection: isHttp(account.tableUrl), retryOptions: TABLE_RETRY };
  return a.kind === "key"
    ? new TableServiceClient(account.tableUrl, new AzureNamedKeyCredential(account.name, a.key), options)
    : new TableServiceClient(account.tableUrl, azureCredential(a), options);
}

/** The storage a running app uses; tables and containers are created on first use, once. */
export class Storage implements StoragePort {
  /** The recovery region's blobs (REPLICA_STORAGE): forward replicas and failover disks, the reverse cache. */
  readonly replicaBlobs: BlobServiceClient;
  /** The original region's blobs (CACHE_STORAGE): the forward cache, reverse replicas and failback disks. */
  readonly cacheBlobs: BlobServiceClient;
  readonly controlQueues: QueueServiceClient;
  private readonly tables = new Map<string, Promise<TableClient>>();
  private readonly containers = new Map<string, Promise<ContainerClient>>();
  private queue: Promise<QueueClient> | undefined;
  readonly sas: StorageSas;

  constructor(readonly config: Config) {
    this.replicaBlobs = blobService(config.storage.replica);
    this.cacheBlobs = blobService(config.storage.cache);
    this.controlQueues = queueService(config.storage.control);
    this.sas = new StorageSas(config, (direction, role) => (role === "cache" ? this.cache(direction) : this.replicaService(direction)), this.controlQueues);
  }

  table(name: TableName): Promise<TableClient> {
    let t = this.tables.get(name);
    if (!t) {
      const client = tableClient(this.config.storage.control, name);
      t = client.createTable().then(() => client);
      t.catch(() => this.tables.delete(name));
      this.tables.set(name, t);
    }
    return t;
  }

  /** The blob service holding a direction's cache containers (the region the VM replicates from). */
  cache(direction: Direction): BlobServiceClient {
    return direction === "forward" ? this.cacheBlobs : this.replicaBlobs;
  }

  /** The blob service holding a direction's replicas and failover disks (the region the VM replicates to). */
  replicaService(direction: Direction): BlobServiceClient {
    return direction === "forward" ? this.replicaBlobs : this.cacheBlobs;
  }

  /** `forward` unless said: the production code always says (the compiler checked every call before the default). */
  replicas(direction: Direction = "forward"): Promise<ContainerClient> {
    return this.ensureContainer(this.replicaService(direction), REPLICAS_CONTAINER);
  }

  /** Failover disks (`failover/<vm>-<disk>-<time>.vhd`), next to the replicas they are copied from. */
  failover(direction: Direction = "forward"): Promise<ContainerClient> {
    return this.ensureContainer(this.replicaService(direction), FAILOVER_CONTAINER);
  }

  private ensureContainer(service: BlobServiceClient, name: string): Promise<ContainerClient> {
    const key = `${service.url}|${name}`;
    let c = this.containers.get(key);
    if (!c) {
      const client = service.getContainerClient(name);
      c = client.createIfNotExists().then(() => client);
      c.catch(() => this.containers.delete(key));
      this.containers.set(key, c);
    }
    return c;
  }

  /** Created on first use, once per process: every re-announced batch would otherwise pay a round trip. */
  replicationQueue(): Promise<QueueClient> {
    if (!this.queue) {
      const q = this.controlQueues.getQueueClient(REPLICATION_QUEUE);
      this.queue = q.createIfNotExists().then(() => q);
      this.queue.catch(() => (this.queue = undefined));
    }
    return this.queue;
  }
}
