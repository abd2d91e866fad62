// The Functions host's entry point (package.json main): registers every function of the table with app.* / df.app.*.
import { app } from "@azure/functions";
import * as df from "durable-functions";
import { services } from "./compose";
import type { FunctionSpec } from "./spec";
import { functionTable } from "./table";

export function registerAll(table: FunctionSpec[]): void {
  for (const f of table) {
    switch (f.kind) {
      case "http":
        // df.app.client.http adds the durableClient input binding and hands the handler a DurableClient.
        if (f.durableClient) df.app.client.http(f.name, { route: f.route, methods: f.methods, authLevel: f.authLevel, handler: f.handler });
        else app.http(f.name, { route: f.route, methods: f.methods, authLevel: f.authLevel, handler: f.handler });
        break;
      case "queue":
        app.storageQueue(f.name, { queueName: f.queueName, connection: f.connection, handler: f.handler });
        break;
      case "timer":
        if (f.durableClient) df.app.client.timer(f.name, { schedule: f.schedule, runOnStartup: f.runOnStartup ?? false, handler: f.handler });
        else app.timer(f.name, { schedule: f.schedule, runOnStartup: f.runOnStartup ?? false, handler: f.handler });
        break;
      case "orchestration":
        df.app.orchestration(f.name, f.handler);
        break;
      case "activity":
        df.app.activity(f.name, { handler: f.handler });
        break;
    }
  }
}

// Settings are parsed now, at start, so that a misconfigured app fails to load with every bad setting named.
services();
registerAll(functionTable(services));
