// Telemetry: RPO, lag, backlog, applied bytes and failover duration as OpenTelemetry metrics, printable locally (METRICS_EXPORTER=console).
import type { Attributes, Meter } from "@opentelemetry/api";
import { ConsoleMetricExporter, MeterProvider, MetricReader, PeriodicExportingMetricReader, type ResourceMetrics } from "@opentelemetry/sdk-metrics";
import type { HistorySample } from "./history";
import type { ReplicatedItem } from "../protection/items";

export const METRIC_NAMES = {
  rpo: "site_recovery.rpo",
  lag: "site_recovery.replication.lag",
  backlog: "site_recovery.replication.backlog",
  applied: "site_recovery.replication.applied",
  failoverDuration: "site_recovery.failover.duration",
} as const;

export interface TelemetryOptions {
  /** `console`: every minute to stdout (the Functions log in Azure); `none`: kept in memory only (`collect()`). */
  exporter: "none" | "console";
  exportIntervalMs?: number;
}

/** A reader read on demand: what `collect()` returns, whatever the exporter. */
class OnDemandReader extends MetricReader {
  protected async onShutdown(): Promise<void> {}
  protected async onForceFlush(): Promise<void> {}
}

export class Telemetry {
  private readonly provider: MeterProvider;
  private readonly meter: Meter;
  private readonly onDemand: MetricReader;
  /** The newest sample per item: the gauges report them when read. */
  private readonly latest = new Map<string, { attrs: Attributes; sample: HistorySample }>();
  private readonly failoverDuration;

  constructor(o: TelemetryOptions) {
    this.onDemand = new OnDemandReader();
    const readers: MetricReader[] = [this.onDemand];
    if (o.exporter === "console") {
      readers.push(new PeriodicExportingMetricReader({ exporter: new ConsoleMetricExporter(), exportIntervalMillis: o.exportIntervalMs ?? 60_000 }));
    }
    this.provider = new MeterProvider({ readers });
    this.meter = this.provider.getMeter("site-recovery");
    const gauge = (name: string, unit: string, description: string, value: (s: HistorySample) => number | null) =>
      this.meter.createObservableGauge(name, { unit, description }).addCallback((r) => {
        for (const { attrs, sample } of this.latest.values()) {
          const v = value(sample);
          if (v !== null) r.observe(v, attrs);
        }
      });
    gauge(METRIC_NAMES.rpo, "s", "Age of the newest recovery point: the data-loss window if the source failed now", (s) => s.rpoSeconds);
    gauge(METRIC_NAMES.lag, "s", "Age of the oldest write not yet applied to the replicas", (s) => s.lagSeconds);
    gauge(METRIC_NAMES.backlog, "By", "Bytes waiting in the source cache", (s) => s.backlogBytes);
    this.meter.createObservableCounter(METRIC_NAMES.applied, { unit: "By", description: "Payload bytes applied to the replicas" }).addCallback((r) => {
      for (const { attrs, sample } of this.latest.values()) r.observe(sample.appliedBytes, attrs);
    });
    this.failoverDuration = this.meter.createHistogram(METRIC_NAMES.failoverDuration, {
      unit: "s",
      description: "Failover from request to the last VM running",
      advice: { explicitBucketBoundaries: [1, 5, 15, 30, 60, 120, 300, 600, 1800] },
    });
  }

  /** The monitoring pass's sample of an item. */
  sample(item: ReplicatedItem, sample: HistorySample): void {
    this.latest.set(item.id, { attrs: { "item.id": item.id, "vm.name": item.vm.name, "replication.group": item.replicationGroup ?? "" }, sample });
  }

  failoverEnded(seconds: number, attrs: { type: string; outcome: "Succeeded" | "Failed" }): void {
    this.failoverDuration.record(seconds, { "failover.type": attrs.type, "failover.outcome": attrs.outcome });
  }

  /** Every metric as it stands now. */
  async collect(): Promise<ResourceMetrics> {
    const { resourceMetrics } = await this.onDemand.collect();
    return resourceMetrics;
  }

  /** `name{attr="v",…} value` lines, for a person or a test. */
  async lines(): Promise<string[]> {
    const out: string[] = [];
    for (const scope of (await this.collect()).scopeMetrics) {
      for (const m of scope.metrics) {
        for (const p of m.dataPoints) {
          const attrs = Object.entries(p.attributes)
            .map(([k, v]) => `${k}="${String(v)}"`)
            .join(",");
          const v = p.value as number | { sum?: number; count: number };
          const shown = typeof v === "number" ? String(v) : `count=${v.count} sum=${v.sum ?? 0}`;
          out.push(`${m.descriptor.name}{${attrs}} ${shown} ${m.descriptor.unit}`.trim());
        }
      }
    }
    return out;
  }

  shutdown(): Promise<void> {
    return this.provider.shutdown();
  }
}
