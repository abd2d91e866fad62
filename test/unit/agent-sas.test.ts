// Agents' SAS: account-key SAS for keyed connections, user delegation SAS (blob and queue) for identity-based ones.
import { test } from "node:test";
import assert from "node:assert/strict";
import { AgentSas, DelegationKeyCache, MAX_DELEGATION_MS } from "../../shared/storage/sas";
import { parseConnectionString, type StorageAccount } from "../../shared/config/settings";

const T0 = new Date("2030-01-01T00:00:00Z");
const HOUR = 3600_000;

interface FakeKey {
  signedObjectId: string;
  signedTenantId: string;
  signedStartsOn: Date;
  signedExpiresOn: Date;
  signedService: string;
  signedVersion: string;
  value: string;
}

/** A stand-in for the service's Get User Delegation Key: records each call, returns a key for the asked window. */
function fakeKeySource(service: string) {
  const calls: { startsOn: Date; expiresOn: Date }[] = [];
  const source = async (startsOn: Date, expiresOn: Date): Promise<FakeKey> => {
    calls.push({ startsOn, expiresOn });
    return {
      signedObjectId: "oid-of-the-app",
      signedTenantId: "tenant",
      signedStartsOn: startsOn,
      signedExpiresOn: expiresOn,
      signedService: service,
      signedVersion: "2025-07-05",
      value: Buffer.alloc(32, calls.length).toString("base64"),
    };
  };
  return { calls, source };
}

const identityAccount = (name: string): StorageAccount => ({
  name,
  blobUrl: `https://${name}.blob.core.windows.net`,
  queueUrl: `https://${name}.queue.core.windows.net`,
  tableUrl: `https://${name}.table.core.windows.net`,
  auth: { kind: "identity", credential: "managedidentity", clientId: "11111111-2222-3333-4444-555555555555" },
});

test("a user delegation key is fetched once, reused while it covers 90% of the asked lifetime, and never for more than 7 days", async () => {
  let now = T0;
  const { calls, source } = fakeKeySource("b");
  const keys = new DelegationKeyCache(source, () => now);
  const first = await keys.forSasUntil(new Date(T0.getTime() + 168 * HOUR));
  assert.equal(calls.length, 1);
  assert.ok(first.signedExpiresOn.getTime() <= T0.getTime() + MAX_DELEGATION_MS, "at most 7 days");
  now = new Date(T0.getTime() + 30_000);
  assert.equal(await keys.forSasUntil(new Date(now.getTime() + 168 * HOUR)), first, "reused half a minute later");
  now = new Date(T0.getTime() + 24 * HOUR);
  const later = await keys.forSasUntil(new Date(now.getTime() + 168 * HOUR));
  assert.equal(calls.length, 2, "a day later the key no longer covers the lifetime asked: a new one");
  assert.notEqual(later, first);
});

test("identity-based accounts: the cache SAS and the queue SAS are user delegation SAS, scoped as the key-signed ones, expiring with their key", async () => {
  const blob = fakeKeySource("b");
  const queue = fakeKeySource("q");
  const sas = new AgentSas({
    cache: identityAccount("src"),
    control: identityAccount("ctl"),
    cacheBlobKey: blob.source,
    controlQueueKey: queue.source,
    now: () => T0,
  });
  assert.deepEqual(sas.mode(), { cache: "user-delegation", queue: "user-delegation" });
  const startsOn = new Date(T0.getTime() - 5 * 60_000);
  const asked = new Date(T0.getTime() + 30 * 24 * HOUR); // more than a delegation key may cover

  const c = await sas.cacheContainer("cache-item1", startsOn, asked);
  const cq = new URLSearchParams(c.sas);
  assert.equal(cq.get("sr"), "c", "container scope");
  assert.equal(cq.get("sp"), "cw", "create + write only");
  assert.equal(cq.get("skoid"), "oid-of-the-app", "signed by the app's identity's delegation key");
  assert.equal(cq.get("spr"), "https");
  assert.ok(cq.get("sig"));
  assert.ok(c.expiresOn.getTime() <= T0.getTime() + MAX_DELEGATION_MS, "clipped to the key's 7 days");
  assert.equal(new Date(cq.get("se")!).getTime(), Math.floor(c.expiresOn.getTime() / 1000) * 1000);

  const q = await sas.queue("replication-batches", startsOn, asked);
  const qq = new URLSearchParams(q.sas);
  assert.equal(qq.get("sp"), "a", "add only");
  assert.equal(qq.get("skoid"), "oid-of-the-app");
  assert.equal(qq.get("sks"), "q", "a queue service delegation key");
  assert.equal(blob.calls.length + queue.calls.length, 2);
});

test("keyed accounts (the local stack): account-key SAS, no delegation key asked for", async () => {
  const account = parseConnectionString("UseDevelopmentStorage=true");
  const unused = async (): Promise<FakeKey> => assert.fail("no delegation key for a keyed account");
  const sas = new AgentSas({ cache: account, control: account, cacheBlobKey: unused, controlQueueKey: unused, now: () => T0 });
  assert.deepEqual(sas.mode(), { cache: "account-key", queue: "account-key" });
  const expiresOn = new Date(T0.getTime() + 8760 * HOUR);
  const c = await sas.cacheContainer("cache-item1", T0, expiresOn);
  assert.equal(new URLSearchParams(c.sas).get("skoid"), null);
  assert.equal(c.expiresOn, expiresOn, "an account-key SAS may outlive 7 days");
  assert.equal(new URLSearchParams((await sas.queue("replication-batches", T0, expiresOn)).sas).get("sp"), "a");
});
