// The layering check (`npm run lint`): which folder may import which. The pipeline's layers are
//   agent/ (on the VM) → shared/replication/batch + shared/protection/agent-protocol only, and no Azure SDK;
//   shared/ (the decisions, by stage) → no functions/, local/, cli/, bench/, test/; no Azure SDK import outside the
//     adapters (shared/storage/, shared/fabric/) but the SDK *types* of the clients a stage is handed;
//   functions/ (wiring) → shared/ and functions/ (its composition root and the host-facing glue), nothing else;
//   no import cycles anywhere.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    { name: "no-cycles", severity: "error", comment: "An import cycle hides which module depends on which.", from: {}, to: { circular: true } },
    {
      name: "agent-stays-small",
      severity: "error",
      comment: "The agent runs on the protected VM: it shares only the batch format and the agent protocol with the control plane.",
      from: { path: "^agent/" },
      to: { path: "^(shared|functions|local|cli|bench|test)/", pathNot: "^shared/(replication/batch|protection/agent-protocol)\\.ts$" },
    },
    {
      name: "agent-no-azure-sdk",
      severity: "error",
      comment: "The agent's two storage calls are plain REST over SAS URLs (agent/cache-client.ts): the SDKs were a fifth of its memory.",
      from: { path: "^agent/" },
      to: { path: "@azure/" },
    },
    {
      name: "shared-below-hosts",
      severity: "error",
      comment: "The decisions do not know who hosts them (Functions, the local host, the CLI).",
      from: { path: "^shared/" },
      to: { path: "^(functions|local|cli|bench|test|agent)/" },
    },
    {
      name: "stages-import-no-sdk",
      severity: "error",
      comment: "Only the adapters (shared/storage, shared/fabric) import the Azure SDKs; a stage is handed ports, and names no SDK type.",
      from: { path: "^shared/", pathNot: "^shared/(storage|fabric)/" },
      to: { path: "@azure/" },
    },
    {
      name: "stages-see-ports",
      severity: "error",
      comment:
        "A stage reaches storage and the fabric through their ports (shared/storage/ports.ts, shared/fabric/port.ts); the composition root hands it the adapters.",
      from: { path: "^shared/", pathNot: "^shared/(storage|fabric)/" },
      to: { path: "^shared/(storage/(clients|sas|identity)|fabric/(arm|arm-client|local))\\.ts$" },
    },
    {
      name: "ports-are-plain",
      severity: "error",
      comment: "The ports, the storage names and the item store are plain TypeScript over the ports: no SDK, not even its types.",
      from: { path: "^shared/(storage/(ports|names|item-store)|fabric/port)\\.ts$" },
      to: { path: "@azure/" },
    },
    {
      name: "contract-is-plain",
      severity: "error",
      comment: "Request schemas, response types and the client are plain TypeScript: no SDK, not even its types.",
      from: { path: "^shared/(contract|config)/" },
      to: { path: "@azure/" },
    },
    {
      name: "functions-only-wire",
      severity: "error",
      comment: "functions/ wires triggers to shared/: it imports shared/, its own glue and the Functions/Durable SDKs only.",
      from: { path: "^functions/" },
      to: { path: "^(local|cli|bench|test|agent)/" },
    },
    {
      name: "product-not-tests",
      severity: "error",
      comment: "Nothing the product ships imports the tests.",
      from: { path: "^(agent|shared|functions|local|cli)/" },
      to: { path: "^test/" },
    },
  ],
  options: {
    tsConfig: { fileName: "tsconfig.json" },
    tsPreCompilationDeps: true,
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^dist/" },
  },
};
