// infra/ read as text (no Bicep compiler here): the app settings satisfy the settings schema, every identity-based
// connection has its roles on the account it names, no key or SAS is in app settings, and azure.yaml, host.json,
// package.json and the Bicep agree.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { CONNECTIONS, IDENTITY_SUFFIXES, loadConfig, SETTING_NAMES, SettingsError, type ConnectionName } from "../../shared/config/settings";
import { queueMessageText } from "../../shared/storage/names";
import { FAILOVER_CONTAINER } from "../../shared/storage/names";
import { REPLICAS_CONTAINER } from "../../shared/storage/names";
import { REPLICATION_POISON_QUEUE } from "../../shared/storage/names";
import { REPLICATION_QUEUE } from "../../shared/storage/names";
import { HOST_NODE_ARGS } from "../../local/process";

const ROOT = resolve(__dirname, "..", "..", "..");
const read = (path: string) => readFileSync(join(ROOT, path), "utf8");
const INFRA = ["infra/main.bicep", ...readdirSync(join(ROOT, "infra/app")).map((f) => `infra/app/${f}`)];

/** The `var <name> = { … }` object of a Bicep file, as key → raw Bicep expression. */
function bicepObject(text: string, name: string): Map<string, string> {
  const start = text.indexOf(`var ${name} = {`);
  assert.ok(start >= 0, `var ${name} in the Bicep`);
  const body = text.slice(text.indexOf("{", start) + 1, text.indexOf("\n}", start));
  const out = new Map<string, string>();
  for (const line of body.split("\n")) {
    const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+?)\s*$/.exec(line);
    if (m) out.set(m[1]!, m[2]!);
  }
  return out;
}

/** Values for the parameters of api.bicep, as main.bicep would pass them after deployment. */
const SAMPLE_PARAMS: Record<string, string> = {
  identityClientId: "0e5c1b1e-1111-4222-8333-944444444444",
  controlBlobUri: "https://stsrabc.blob.core.windows.net/",
  controlQueueUri: "https://stsrabc.queue.core.windows.net/",
  controlTableUri: "https://stsrabc.table.core.windows.net/",
  cacheBlobUri: "https://stsrcabc.blob.core.windows.net/",
  replicaStorageId: "/subscriptions/aaaaaaaa-0000-4000-8000-000000000001/resourceGroups/rg-dr/providers/Microsoft.Storage/storageAccounts/stsrabc",
  applicationInsightsConnectionString:
    "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://westus-0.in.applicationinsights.azure.com/",
  subscriptionId: "aaaaaaaa-0000-4000-8000-000000000001",
  sourceSubscriptionId: "bbbbbbbb-0000-4000-8000-000000000002",
  taskHub: "siterecovery",
};

/** A Bicep value: a parameter, a string literal (with `${param}` interpolation). */
function evaluate(expr: string): string {
  if (expr in SAMPLE_PARAMS) return SAMPLE_PARAMS[expr]!;
  const literal = /^'(.*)'$/.exec(expr);
  assert.ok(literal, `an app setting is a parameter or a string literal: ${expr}`);
  return literal[1]!.replace(/\$\{([A-Za-z0-9_]+)\}/g, (_, p: string) => {
    assert.ok(p in SAMPLE_PARAMS, `parameter ${p} has a sample value`);
    return SAMPLE_PARAMS[p]!;
  });
}

const apiBicep = read("infra/app/api.bicep");
const settings = bicepObject(apiBicep, "appSettings");
const env = Object.fromEntries([...settings].map(([k, v]) => [k, evaluate(v)]));

test("azure.yaml names the Functions service and the infra folder azd provisions", () => {
  const yaml = read("azure.yaml");
  assert.match(yaml, /^services:\n  api:\n    project: \.\n    language: ts\n    host: function$/m);
  assert.match(yaml, /^infra:\n  provider: bicep\n  path: infra\n  module: main$/m);
  assert.ok(existsSync(join(ROOT, "infra/main.bicep")) && existsSync(join(ROOT, "infra/main.parameters.json")));
  assert.match(read("infra/main.bicep"), /^targetScope = 'subscription'$/m);
  // azd deploys to the app tagged with the service's name.
  assert.match(apiBicep, /'azd-service-name': 'api'/);
  const parameters = JSON.parse(read("infra/main.parameters.json")) as { parameters: Record<string, unknown> };
  for (const m of read("infra/main.bicep").matchAll(/^param (\w+) string$/gm))
    assert.ok(m[1]! in parameters.parameters, `required parameter ${m[1]} is in main.parameters.json`);
});

test("the Bicep's app settings satisfy the settings schema: the app would start keyless, with the ARM fabric", () => {
  const config = loadConfig(env);
  for (const account of [config.storage.control, config.storage.replica, config.storage.cache]) {
    assert.deepEqual(account.auth, { kind: "identity", credential: "managedidentity", clientId: SAMPLE_PARAMS.identityClientId });
  }
  assert.equal(config.storage.control.name, "stsrabc");
  assert.equal(config.storage.replica.blobUrl, "https://stsrabc.blob.core.windows.net");
  assert.equal(config.storage.cache.blobUrl, "https://stsrcabc.blob.core.windows.net", "the cache is the source-region account");
  assert.deepEqual(config.fabric, {
    kind: "arm",
    subscriptionId: SAMPLE_PARAMS.subscriptionId,
    sourceSubscriptionId: SAMPLE_PARAMS.sourceSubscriptionId,
    clientId: SAMPLE_PARAMS.identityClientId,
    replicaStorageId: SAMPLE_PARAMS.replicaStorageId,
    endpoint: "https://management.azure.com",
  });
});

test("every app setting the schema cannot do without is set by the Bicep: dropping any one of them fails the schema, by name", () => {
  // The schema decides what is required: each setting whose absence it refuses.
  const required = [...settings.keys()].filter((k) => {
    const { [k]: _dropped, ...rest } = env;
    try {
      loadConfig(rest);
      return false;
    } catch (e) {
      assert.ok(e instanceof SettingsError);
      assert.ok(
        e.problems.some((p) => p.setting.startsWith(k.split("__")[0]!) || p.setting === k),
        `dropping ${k} is reported by name: ${e.message}`,
      );
      return true;
    }
  });
  for (const k of [
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AZURE_SUBSCRIPTION_ID",
    "REPLICA_STORAGE_RESOURCE_ID",
  ]) {
    assert.ok(required.includes(k), `${k} is required and set`);
  }
  // And nothing the Bicep sets is unknown to the app (a typo would be silently ignored).
  // Settings the platform reads (Application Insights; the Functions host, for the Node worker's flags).
  const platform = new Set(["APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "languageWorkers__node__arguments"]);
  for (const k of settings.keys()) assert.ok(SETTING_NAMES.includes(k) || platform.has(k), `${k} is a setting the app reads`);
});

test("no account key, keyed connection string or SAS anywhere in the app settings or infra/", () => {
  for (const [k, v] of Object.entries(env)) {
    assert.doesNotMatch(v, /AccountKey=|SharedAccessSignature=|[?&]sig=|\bsv=\d/i, `${k} holds no secret`);
  }
  for (const name of Object.keys(CONNECTIONS)) assert.ok(!settings.has(name), `${name} is identity-based, not a connection string`);
  for (const file of INFRA) assert.doesNotMatch(read(file), /listKeys\(|\.listKeys|primaryKey|listAccountSas|listServiceSas/, `${file} reads no key`);
  assert.match(read("infra/app/storage.bicep"), /name: cacheName[\s\S]*allowSharedKeyAccess: false/, "the cache account refuses shared keys");
});

const rbac = read("infra/app/rbac.bicep");
const roleIds = bicepObject(rbac, "roles");
const roleId = (name: string) => roleIds.get(name)?.replace(/'/g, "");

/** Role ids assigned to the identity on an account (`scope: <account>`), through loops over role lists too. */
function rolesOn(account: string): Set<string> {
  const out = new Set<string>();
  for (const block of rbac.split(/^resource /m).slice(1)) {
    if (!new RegExp(`^\\s*scope: ${account}$`, "m").test(block) || !/identityPrincipalId/.test(block.split("\n")[0] + block)) continue;
    if (/principalId: userPrincipalId/.test(block)) continue;
    const loop = /\[for role in (\w+):/.exec(block);
    const names = loop
      ? [...(new RegExp(`var ${loop[1]} = \\[([^\\]]+)\\]`).exec(rbac)?.[1] ?? "").matchAll(/roles\.(\w+)/g)].map((m) => m[1]!)
      : [...block.matchAll(/roles\.(\w+)/g)].map((m) => m[1]!);
    for (const n of names) out.add(roleId(n)!);
  }
  return out;
}

test("every identity-based connection has its data roles on the account it names, and the delegation rights behind the agents' SAS", () => {
  const BLOB_WRITERS = [roleId("storageBlobDataOwner"), roleId("storageBlobDataContributor")];
  const byService: Record<string, string[]> = {
    blob: BLOB_WRITERS.map(String),
    queue: [roleId("storageQueueDataContributor")!],
    table: [roleId("storageTableDataContributor")!],
  };
  // The account a connection names, from the Bicep parameter behind its blob URI.
  const accountOf = (conn: ConnectionName) => (settings.get(`${conn}__blobServiceUri`) === "cacheBlobUri" ? "cache" : "control");
  for (const conn of Object.keys(CONNECTIONS) as ConnectionName[]) {
    const granted = rolesOn(accountOf(conn));
    for (const service of CONNECTIONS[conn].services) {
      assert.ok(
        byService[service]!.some((r) => granted.has(r)),
        `${conn} (${accountOf(conn)}): a ${service} data role`,
      );
    }
  }
  assert.equal(accountOf("CACHE_STORAGE"), "cache");
  // User delegation SAS: the blob key (Blob Data Owner/Contributor include generateUserDelegationKey), the queue key.
  assert.ok(BLOB_WRITERS.some((r) => rolesOn("cache").has(r!)));
  assert.ok(rolesOn("control").has(roleId("storageQueueDelegator")!), "Storage Queue Delegator on the control account");
  assert.equal(roleId("storageQueueDelegator"), "7ee386e9-84f0-448e-80a6-f185f6533131");
  assert.match(rbac, /scope: insights[\s\S]*monitoringMetricsPublisher/, "Application Insights with the identity (Authorization=AAD)");
  assert.equal(env.APPLICATIONINSIGHTS_AUTHENTICATION_STRING, `ClientId=${SAMPLE_PARAMS.identityClientId};Authorization=AAD`);
  // All three connections and the fabric sign in as the one user-assigned identity.
  for (const conn of Object.keys(CONNECTIONS)) assert.equal(settings.get(`${conn}__clientId`), "identityClientId");
  assert.equal(settings.get("AZURE_CLIENT_ID"), "identityClientId");
  assert.ok(IDENTITY_SUFFIXES.includes("clientId"));
});

test("the fabric's custom role covers every kind of ARM call the ARM fabric makes, at subscription scope", () => {
  const rights = read("infra/app/fabric-rights.bicep");
  assert.match(rights, /^targetScope = 'subscription'$/m);
  for (const action of [
    "Microsoft.Resources/subscriptions/resourceGroups/write",
    "Microsoft.Network/virtualNetworks/write",
    "Microsoft.Network/virtualNetworks/subnets/join/action",
    "Microsoft.Network/virtualNetworks/CheckIpAddressAvailability/read",
    "Microsoft.Network/networkInterfaces/write",
    "Microsoft.Network/networkInterfaces/join/action",
    "Microsoft.Compute/availabilitySets/write",
    "Microsoft.Compute/disks/write",
    "Microsoft.Compute/virtualMachines/write",
    "Microsoft.Compute/virtualMachines/start/action",
    "Microsoft.Compute/virtualMachines/deallocate/action",
    "Microsoft.Compute/virtualMachines/delete",
    "Microsoft.Compute/disks/delete",
  ]) {
    assert.ok(rights.includes(`'${action}'`), action);
  }
  assert.doesNotMatch(rights, /roleAssignments\/write|listKeys|'\*'/, "no rights beyond the fabric's");
});

test("host.json and the Bicep agree: Node 20, the task hub setting, base64 queue messages, the queues and containers the app uses, no host overrides", () => {
  const host = JSON.parse(read("host.json")) as {
    extensionBundle: { version: string };
    extensions: { queues: { messageEncoding: string }; durableTask: { hubName: string } };
    functionTimeout: string;
  };
  const pkg = JSON.parse(read("package.json")) as { engines: { node: string } };
  assert.match(apiBicep, /var runtimeName = 'node'/);
  const version = /var runtimeVersion = '(\d+)'/.exec(apiBicep)?.[1];
  assert.equal(version, /(\d+)/.exec(pkg.engines.node)?.[1], "the Flex runtime is the Node major package.json names");
  assert.equal(host.extensionBundle.version, "[4.*, 5.0.0)", "the v4 Node programming model's bundle");
  assert.equal(host.extensions.durableTask.hubName, "%DURABLE_TASK_HUB%");
  assert.ok(settings.has("DURABLE_TASK_HUB"), "the task hub setting host.json reads is set");
  assert.equal(loadConfig(env).taskHub, SAMPLE_PARAMS.taskHub);
  assert.equal(host.extensions.queues.messageEncoding, "base64");
  assert.equal(Buffer.from(queueMessageText({ v: 1 }), "base64").toString(), '{"v":1}', "the app writes what the trigger decodes");
  const storageBicep = read("infra/app/storage.bicep");
  assert.match(storageBicep, new RegExp(`var replicationQueue = '${REPLICATION_QUEUE}'`));
  assert.match(storageBicep, /name: '\$\{replicationQueue\}-poison'/);
  assert.equal(REPLICATION_POISON_QUEUE, `${REPLICATION_QUEUE}-poison`);
  for (const c of [REPLICAS_CONTAINER, FAILOVER_CONTAINER]) assert.match(storageBicep, new RegExp(`'${c}'`));
  assert.match(apiBicep, /name: 'FC1'[\s\S]*tier: 'FlexConsumption'/);
  // host.json is the one source of host settings: no AzureFunctionsJobHost__ override, no worker settings Flex refuses.
  for (const k of settings.keys())
    assert.doesNotMatch(k, /^AzureFunctionsJobHost__|^FUNCTIONS_WORKER_RUNTIME$|^FUNCTIONS_EXTENSION_VERSION$|^WEBSITE_NODE_DEFAULT_VERSION$/);
  assert.match(host.functionTimeout, /^\d{2}:\d{2}:\d{2}$/, "a bounded timeout (Flex allows unbounded; site-recovery keeps one)");
});

test("the host's Node flags are the same locally (npm start, the host process, func start) and in the Function App's worker arguments", () => {
  const flags = HOST_NODE_ARGS.join(" ");
  assert.equal(settings.get("languageWorkers__node__arguments"), `'${flags}'`);
  const sample = JSON.parse(read("local.settings.sample.json")) as { Values: Record<string, string> };
  assert.equal(sample.Values.languageWorkers__node__arguments, flags);
  const pkg = JSON.parse(read("package.json")) as { scripts: { start: string } };
  assert.equal(pkg.scripts.start, `node ${flags} dist/cli/main.js start`);
});
