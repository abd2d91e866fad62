#!/usr/bin/env node
// Entry point of the `site-recovery` command: the compiled CLI (npm run build writes dist/).
const path = require("node:path");
const fs = require("node:fs");
const entry = path.join(__dirname, "..", "dist", "cli", "main.js");
if (!fs.existsSync(entry)) {
  console.error("site-recovery is not built yet: run `npm run build` (npm start and npm test build it too).");
  process.exit(1);
}
require(entry).main();
