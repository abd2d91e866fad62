// Settings are parsed once; every missing or malformed one is named, all at once.
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadConfig, parseConnectionString, SettingsError, DEV_ACCOUNT } from "../../shared/settings";

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
