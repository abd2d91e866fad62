// The agents' SAS URLs: signed with the account key where the app has one, else user delegation SAS from its identity.
import {
  BlobSASPermissions,
  generateBlobSASQueryParameters,
  SASProtocol,
  StorageSharedKeyCredential,
  type UserDelegationKey as BlobDelegationKey,
} from "@azure/storage-blob";
import {
  generateQueueSASQueryParameters,
  QueueSASPermissions,
  SASProtocol as QueueSASProtocol,
  StorageSharedKeyCredential as QueueKeyCredential,
  type UserDelegationKey as QueueDelegationKey,
} from "@azure/storage-queue";
import type { BlobServiceClient } from "@azure/storage-blob";
import type { QueueServiceClient } from "@azure/storage-queue";
import type { StorageAccount, Config } from "../config/settings";
import { directionAccounts, type Direction } from "./names";
import type { SasPort, SignedSas } from "./ports";

/** Azure signs user delegation keys (and so their SAS) for at most 7 days from now. */
export const MAX_DELEGATION_MS = 7 * 24 * 3600_000;

/** Fetches a user delegation key valid from `startsOn` to `expiresOn` (the service's Get User Delegation Key). */
export type DelegationKeySource<K> = (startsOn: Date, expiresOn: Date) => Promise<K>;

/**
 * One user delegation key, fetched once and reused while it still covers most of the lifetime a SAS asks for: every
 * check-in of every agent would otherwise cost a round trip to the service and a token.
 */
export class DelegationKeyCache<K extends { signedExpiresOn: Date }> {
  private current: Promise<K> | undefined;

  constructor(
    private readonly fetch: DelegationKeySource<K>,
    private readonly now: () => Date,
  ) {}

  /** A key good until `wanted`, or as close to it as Azure allows (the SAS expires with its key). */
  async forSasUntil(wanted: Date): Promise<K> {
    const now = this.now().getTime();
    const capped = Math.min(wanted.getTime(), now + MAX_DELEGATION_MS - 60_000);
    if (this.current) {
      const key = await this.current.catch(() => undefined);
      // Keys are reused while they cover 90% of what is asked; then (or after a failure) a new one is fetched.
      if (key && key.signedExpiresOn.getTime() >= now + 0.9 * (capped - now)) return key;
    }
    const fetched = this.fetch(new Date(now - 5 * 60_000), new Date(now + MAX_DELEGATION_MS - 60_000));
    this.current = fetched;
    return fetched;
  }
}

export interface AgentSasDeps {
  cache: StorageAccount;
  control: StorageAccount;
  /** Get User Delegation Key on the cache account's blob service (identity-based cache only). */
  cacheBlobKey: DelegationKeySource<BlobDelegationKey>;
  /** Get User Delegation Key on the control account's queue service (identity-based control only). */
  controlQueueKey: DelegationKeySource<QueueDelegationKey>;
  now: () => Date;
}

/** Signs the two SAS an agent holds: create+write on its item's cache container, add on the replication queue. */
export class AgentSas {
  private readonly blobKeys: DelegationKeyCache<BlobDelegationKey>;
  private readonly queueKeys: DelegationKeyCache<QueueDelegationKey>;

  constructor(private readonly deps: AgentSasDeps) {
    this.blobKeys = new DelegationKeyCache(deps.cacheBlobKey, deps.now);
    this.queueKeys = new DelegationKeyCache(deps.controlQueueKey, deps.now);
  }

  /** Which kind of SAS each account gets. */
  mode(): { cache: "account-key" | "user-delegation"; queue: "account-key" | "user-delegation" } {
    return {
      cache: this.deps.cache.auth.kind === "key" ? "account-key" : "user-delegation",
      queue: this.deps.control.auth.kind === "key" ? "account-key" : "user-delegation",
    };
  }

  async cacheContainer(containerName: string, startsOn: Date, expiresOn: Date): Promise<SignedSas> {
    const { cache } = this.deps;
    const permissions = BlobSASPermissions.parse("cw");
    if (cache.auth.kind === "key") {
      const sas = generateBlobSASQueryParameters(
        { containerName, permissions, startsOn, expiresOn },
        new StorageSharedKeyCredential(cache.name, cache.auth.key),
      );
      return { sas: sas.toString(), expiresOn };
    }
    const key = await this.blobKeys.forSasUntil(expiresOn);
    const until = new Date(Math.min(expiresOn.getTime(), key.signedExpiresOn.getTime()));
    const sas = generateBlobSASQueryParameters(
      { containerName, permissions, startsOn, expiresOn: until, ...(cache.blobUrl.startsWith("https:") ? { protocol: SASProtocol.Https } : {}) },
      key,
      cache.name,
    );
    return { sas: sas.toString(), expiresOn: until };
  }

  async queue(queueName: string, startsOn: Date, expiresOn: Date): Promise<SignedSas> {
    const { control } = this.deps;
    const permissions = QueueSASPermissions.parse("a");
    if (control.auth.kind === "key") {
      const sas = generateQueueSASQueryParameters({ queueName, permissions, startsOn, expiresOn }, new QueueKeyCredential(control.name, control.auth.key));
      return { sas: sas.toString(), expiresOn };
    }
    const key = await this.queueKeys.forSasUntil(expiresOn);
    const until = new Date(Math.min(expiresOn.getTime(), key.signedExpiresOn.getTime()));
    const sas = generateQueueSASQueryParameters(
      { queueName, permissions, startsOn, expiresOn: until, ...(control.queueUrl.startsWith("https:") ? { protocol: QueueSASProtocol.Https } : {}) },
      key,
      control.name,
    );
    return { sas: sas.toString(), expiresOn: until };
  }
}

/**
 * A read SAS on one blob, for a server-side copy from another account (a re-protect's seed): the copy source is
 * authorized by its own URL, never by the destination's credential. Signed with the account key, else a user
 * delegation key from the app's identity.
 */
export async function blobReadSas(
  account: StorageAccount,
  containerName: string,
  blobName: string,
  delegationKey: DelegationKeySource<BlobDelegationKey>,
  now: Date,
  ttlMs = 24 * 3600_000,
): Promise<string> {
  const permissions = BlobSASPermissions.parse("r");
  const startsOn = new Date(now.getTime() - 5 * 60_000);
  const expiresOn = new Date(now.getTime() + ttlMs);
  if (account.auth.kind === "key") {
    return generateBlobSASQueryParameters(
      { containerName, blobName, permissions, startsOn, expiresOn },
      new StorageSharedKeyCredential(account.name, account.auth.key),
    ).toString();
  }
  const key = await delegationKey(startsOn, expiresOn);
  return generateBlobSASQueryParameters(
    { containerName, blobName, permissions, startsOn, expiresOn, ...(account.blobUrl.startsWith("https:") ? { protocol: SASProtocol.Https } : {}) },
    key,
    account.name,
  ).toString();
}

/** The SAS a running app hands out (`SasPort`), each signed by the account that holds what it grants. */
export class StorageSas implements SasPort {
  private readonly agents: Record<Direction, AgentSas>;

  constructor(
    private readonly config: Config,
    /** The blob service of the account holding a direction's cache or replicas (for delegation keys). */
    private readonly blobs: (direction: Direction, role: "cache" | "replica") => BlobServiceClient,
    queues: QueueServiceClient,
    now: () => Date = () => new Date(),
  ) {
    const signer = (direction: Direction) =>
      new AgentSas({
        cache: directionAccounts(config, direction).cache,
        control: config.storage.control,
        cacheBlobKey: (startsOn, expiresOn) => blobs(direction, "cache").getUserDelegationKey(startsOn, expiresOn),
        controlQueueKey: (startsOn, expiresOn) => queues.getUserDelegationKey(startsOn, expiresOn),
        now,
      });
    this.agents = { forward: signer("forward"), reverse: signer("reverse") };
  }

  cacheContainer(direction: Direction, containerName: string, startsOn: Date, expiresOn: Date): Promise<SignedSas> {
    return this.agents[direction].cacheContainer(containerName, startsOn, expiresOn);
  }

  /** Queues live in the control account, whichever the direction: either signer signs them alike. */
  queue(queueName: string, startsOn: Date, expiresOn: Date): Promise<SignedSas> {
    return this.agents.forward.queue(queueName, startsOn, expiresOn);
  }

  replicaRead(direction: Direction, containerName: string, blobName: string, now: Date): Promise<string> {
    const account = directionAccounts(this.config, direction).replica;
    return blobReadSas(account, containerName, blobName, (s, e) => this.blobs(direction, "replica").getUserDelegationKey(s, e), now);
  }
}
