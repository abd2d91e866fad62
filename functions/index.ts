// The Functions host's entry point (package.json main): registers every function of the table with app.*.
import { app } from "@azure/functions";
import { services } from "./compose";
import type { FunctionSpec } from "./spec";
import { functionTable } from "./table";

export function registerAll(table: FunctionSpec[]): void {
  for (const f of table) {
    switch (f.kind) {
      case "http":
        app.http(f.name, { route: f.route, methods: f.methods, authLevel: f.authLevel, handler: f.handler });
        break;
      case "queue":
        app.storageQueue(f.name, { queueName: f.queueName, connection: f.connection, handler: f.handler });
        break;
      case "timer":
        app.timer(f.name, { schedule: f.schedule, runOnStartup: f.runOnStartup ?? false, handler: f.handler });
        break;
    }
  }
}

// Settings are parsed now, at start, so that a misconfigured app fails to load with every bad setting named.
services();
registerAll(functionTable(services));
