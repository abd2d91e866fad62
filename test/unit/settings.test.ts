// Settings are parsed once; every missing or malformed one is named, all at once.
import { test } from "node:test";
import assert from "node:assert/strict";
import { StorageSharedKeyCredential } from "@azure/storage-blob";
import { describeStorageAuth, loadConfig, parseConnectionString, SettingsError, DEV_ACCOUNT } from "../../shared/config/settings";
import { blobService, queueService, tokenCredential } from "../../shared/storage/clients";
import { azureCredential } from "../../shared/storage/identity";

const cs = (name: string) =>
  `DefaultEndpointsProtocol=http;AccountName=${name};AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/${name};QueueEndpoint=http://127.0.0.1:2/${name};TableEndpoint=http://127.0.0.1:3/${name};`;

test("replica and cache storage default to AzureWebJobsStorage", () => {
  const c = loadConfig({ AzureWebJobsStorage: cs("ctl") });
  assert.equal(c.storage.control.name, "ctl");
  assert.equal(c.storage.replica.name, "ctl");
  assert.equal(c.storage.cache.name, "ctl");
  assert.equal(c.taskHub, "siterecovery");
  assert.equal(c.agent.tokenTtlHours, 24);
});

test("each storage setting names its own account", () => {
  const c = loadConfig({ AzureWebJobsStorage: cs("ctl"), REPLICA_STORAGE: cs("rep"), CACHE_STORAGE: cs("src") });
  assert.deepEqual([c.storage.control.name, c.storage.replica.name, c.storage.cache.name], ["ctl", "rep", "src"]);
  assert.equal(c.storage.cache.blobUrl, "http://127.0.0.1:1/src");
});

test("every bad setting is reported by name, all at once", () => {
  try {
    loadConfig({ CACHE_STORAGE: "AccountName=x", DURABLE_TASK_HUB: "1bad", AGENT_TOKEN_TTL_HOURS: "soon" });
    assert.fail("expected a SettingsError");
  } catch (e) {
    assert.ok(e instanceof SettingsError);
    const names = e.problems.map((p) => p.setting).sort();
    assert.deepEqual(names, ["AGENT_TOKEN_TTL_HOURS", "AzureWebJobsStorage", "CACHE_STORAGE", "DURABLE_TASK_HUB"]);
    assert.match(e.message, /AzureWebJobsStorage: is required/);
    assert.match(e.message, /CACHE_STORAGE: .*AccountKey/);
  }
});

test("an empty optional setting counts as unset", () => {
  const c = loadConfig({ AzureWebJobsStorage: cs("ctl"), REPLICA_STORAGE: "", CACHE_STORAGE: " " });
  assert.equal(c.storage.replica.name, "ctl");
});

test("UseDevelopmentStorage=true is the local emulator's well-known account", () => {
  const a = parseConnectionString("UseDevelopmentStorage=true");
  assert.equal(a.name, DEV_ACCOUNT);
  assert.equal(a.blobUrl, `http://127.0.0.1:10000/${DEV_ACCOUNT}`);
  assert.equal(parseConnectionString("AccountName=acct;AccountKey=k").blobUrl, "https://acct.blob.core.windows.net");
});

// ---------------------------------------------------------------------------------------------
// Identity-based connections (keyless: `<NAME>__…` settings, as the Functions host reads them)

const CLIENT = "11111111-2222-3333-4444-555555555555";
const identity = (name: string, account: string, services = ["blob", "queue", "table"]) => ({
  [`${name}__credential`]: "managedidentity",
  [`${name}__clientId`]: CLIENT,
  ...Object.fromEntries(services.map((s) => [`${name}__${s}ServiceUri`, `https://${account}.${s}.core.windows.net/`])),
});

function problemsOf(env: NodeJS.ProcessEnv): { setting: string; message: string }[] {
  try {
    loadConfig(env);
  } catch (e) {
    assert.ok(e instanceof SettingsError, String(e));
    return e.problems;
  }
  return assert.fail("expected a SettingsError");
}

test("identity-based connections: service URIs, managed identity and client id are parsed; no key anywhere", () => {
  const c = loadConfig({
    ...identity("AzureWebJobsStorage", "ctl"),
    ...identity("REPLICA_STORAGE", "rep", ["blob"]),
    ...identity("CACHE_STORAGE", "src", ["blob"]),
  });
  assert.deepEqual(c.storage.control, {
    name: "ctl",
    blobUrl: "https://ctl.blob.core.windows.net",
    queueUrl: "https://ctl.queue.core.windows.net",
    tableUrl: "https://ctl.table.core.windows.net",
    auth: { kind: "identity", credential: "managedidentity", clientId: CLIENT },
  });
  assert.equal(c.storage.replica.name, "rep");
  // A blob-only connection's other endpoints follow the blob host's name.
  assert.equal(c.storage.cache.queueUrl, "https://src.queue.core.windows.net");
  assert.equal(c.storage.cache.auth.kind, "identity");
});

test("an identity-based connection by account name alone uses the public cloud endpoints and the default credential chain", () => {
  const c = loadConfig({ AzureWebJobsStorage__accountName: "ctlacct" });
  assert.equal(c.storage.control.tableUrl, "https://ctlacct.table.core.windows.net");
  assert.deepEqual(c.storage.control.auth, { kind: "identity", credential: "default" });
  assert.equal(c.storage.cache.name, "ctlacct", "cache defaults to the control connection");
});

test("half an identity-based connection is refused, naming each missing setting", () => {
  const p = problemsOf({ AzureWebJobsStorage__blobServiceUri: "https://ctl.blob.core.windows.net", AzureWebJobsStorage__credential: "managedidentity" });
  assert.deepEqual(p.map((x) => x.setting).sort(), ["AzureWebJobsStorage__queueServiceUri", "AzureWebJobsStorage__tableServiceUri"]);
  assert.match(p[0]!.message, /required for an identity-based connection/);

  const onlyId = problemsOf({ AzureWebJobsStorage: cs("ctl"), CACHE_STORAGE__clientId: CLIENT });
  assert.deepEqual(onlyId.map((x) => x.setting).sort(), ["CACHE_STORAGE__blobServiceUri", "CACHE_STORAGE__credential"]);
});

test("bad identity settings are each named: credential type, client id, http endpoint, account name, both forms at once", () => {
  const p = problemsOf({
    AzureWebJobsStorage: cs("ctl"),
    AzureWebJobsStorage__accountName: "ctl",
    REPLICA_STORAGE__credential: "password",
    REPLICA_STORAGE__blobServiceUri: "http://rep.blob.core.windows.net",
    CACHE_STORAGE__accountName: "Not_An_Account",
    CACHE_STORAGE__credential: "managedidentity",
    CACHE_STORAGE__clientId: "me",
  });
  const by = new Map(p.map((x) => [x.setting, x.message]));
  assert.match(by.get("AzureWebJobsStorage") ?? "", /both as a connection string and as an identity-based connection/);
  assert.match(by.get("REPLICA_STORAGE__credential") ?? "", /managedidentity/);
  assert.match(by.get("REPLICA_STORAGE__blobServiceUri") ?? "", /https/);
  assert.match(by.get("CACHE_STORAGE__accountName") ?? "", /lower-case/);
  assert.match(by.get("CACHE_STORAGE__clientId") ?? "", /GUID/);
});

test("storage clients of an identity-based connection carry a token credential, not a key", async () => {
  const c = loadConfig(identity("AzureWebJobsStorage", "ctl"));
  const blob = blobService(c.storage.control);
  assert.equal(typeof (blob.credential as { getToken?: unknown }).getToken, "function", "a TokenCredential");
  assert.ok(!(blob.credential instanceof StorageSharedKeyCredential));
  assert.equal(queueService(c.storage.control).url, "https://ctl.queue.core.windows.net");
  assert.equal(tokenCredential(c.storage.control), azureCredential({ credential: "managedidentity", clientId: CLIENT }), "one credential per identity, shared");
  assert.equal(tokenCredential(loadConfig({ AzureWebJobsStorage: cs("ctl") }).storage.control), undefined);
  assert.ok(blobService(loadConfig({ AzureWebJobsStorage: cs("ctl") }).storage.control).credential instanceof StorageSharedKeyCredential);
});

test("FABRIC=arm needs the target subscription and the replica account's resource id, each named when missing", () => {
  const p = problemsOf({ AzureWebJobsStorage: cs("ctl"), FABRIC: "arm", AZURE_CLIENT_ID: "nope" });
  assert.deepEqual(p.map((x) => x.setting).sort(), ["AZURE_CLIENT_ID"]);
  const q = problemsOf({ AzureWebJobsStorage: cs("ctl"), FABRIC: "arm" });
  assert.deepEqual(q.map((x) => x.setting).sort(), ["AZURE_SUBSCRIPTION_ID", "REPLICA_STORAGE_RESOURCE_ID"]);
  const sub = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
  const c = loadConfig({
    AzureWebJobsStorage: cs("ctl"),
    FABRIC: "arm",
    AZURE_SUBSCRIPTION_ID: sub,
    REPLICA_STORAGE_RESOURCE_ID: `/subscriptions/${sub}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/rep`,
  });
  assert.deepEqual(c.fabric, {
    kind: "arm",
    subscriptionId: sub,
    sourceSubscriptionId: sub,
    replicaStorageId: `/subscriptions/${sub}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/rep`,
    endpoint: "https://management.azure.com",
  });
  assert.deepEqual(loadConfig({ AzureWebJobsStorage: cs("ctl") }).fabric, { kind: "local" });
});

test("the start line says which SAS the agents get: account-key locally, user delegation with an identity", () => {
  assert.match(
    describeStorageAuth(loadConfig({ AzureWebJobsStorage: "UseDevelopmentStorage=true" })),
    /agents get account-key SAS for the cache and account-key SAS for the queue/,
  );
  assert.match(
    describeStorageAuth(loadConfig(identity("AzureWebJobsStorage", "ctl"))),
    /identity \(managedidentity 1111.*user delegation SAS for the cache and user delegation SAS for the queue/,
  );
});
