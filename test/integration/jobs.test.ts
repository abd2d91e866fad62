// Every operation is a job (GET /api/jobs): enable, disable, failovers (one failing), commit, test-failover cleanup, and the one-call API re-protect and resync use.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import { startFailover, waitFailover } from "../support/failover";
import { FabricError, type Fabric } from "../../shared/fabric/port";
import type { Job } from "../../shared/operations/jobs";

/** Items whose name starts with this get a VM creation refused by the fabric (quota), as ARM would. */
const NO_QUOTA = "noquota-";

describe("jobs", () => {
  let stack: TestStack;
  before(async () => {
    stack = await startTestStack({
      fabric: (inner: Fabric): Fabric =>
        new Proxy(inner, {
          get(target, prop, receiver) {
            if (prop === "ensureVirtualMachine") {
              return async (spec: { name: string }) => {
                if (spec.name.startsWith(NO_QUOTA)) throw new FabricError("QuotaExceeded", `injected: no vCPU quota for ${spec.name} in westus`);
                return target.ensureVirtualMachine(spec as Parameters<Fabric["ensureVirtualMachine"]>[0]);
              };
            }
            const v = Reflect.get(target, prop, receiver);
            return typeof v === "function" ? v.bind(target) : v;
          },
        }),
    });
  });
  after(async () => {
    await stack?.stop();
  });

  const enable = async (name: string): Promise<string> => {
    const r = await stack.api("POST", "replicated-items", enableBody(name));
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return r.body.id as string;
  };

  /** Protected with one crash-consistent point whose snapshots really exist (a failover copies them). */
  const protect = async (itemId: string): Promise<void> => {
    const replicas = await stack.services.storage.replicas();
    const tag = { id: randomUUID(), kind: "crash" as const, time: new Date(Date.now() - 60_000).toISOString(), scope: "vm" as const };
    for (const d of await stack.services.items.listDisks(itemId)) {
      await stack.services.items.updateDisk(itemId, d.id, (x) => ({ ...x, initialComplete: true, state: "Protected" }));
      const blob = replicas.getPageBlobClient(d.replicaBlob);
      await blob.uploadPages(Buffer.alloc(512, 7), 0, 512);
      const { snapshot } = await blob.createSnapshot();
      await stack.services.points.recordArrival({ itemId, diskId: d.id, snapshot: snapshot!, seq: 1, tag });
    }
    await stack.services.items.updateItem(itemId, (i) => ({ ...i, state: "Protected" }));
  };

  const jobsOf = async (itemId: string): Promise<Job[]> => {
    const r = await stack.api("GET", `jobs?itemId=${itemId}`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body as Job[];
  };

  const assertEnded = (j: Job, state: "Succeeded" | "Failed") => {
    assert.equal(j.state, state, JSON.stringify(j));
    assert.ok(j.endedAt && Date.parse(j.endedAt) >= Date.parse(j.startedAt), "ended after it started");
    assert.equal(typeof j.durationSeconds, "number");
    assert.ok(j.steps.length > 0, "steps recorded");
    assert.ok(
      j.steps.every((s) => s.state !== "InProgress" && s.endedAt),
      `every step ended: ${JSON.stringify(j.steps)}`,
    );
    if (state === "Succeeded") {
      assert.equal(j.error, null);
      assert.ok(j.steps.every((s) => s.state === "Succeeded"));
    } else {
      assert.ok(j.error && j.error.code && j.error.message, "a failed job says why");
      assert.ok(
        j.steps.some((s) => s.state === "Failed"),
        "the step that failed is marked",
      );
    }
  };

  test("enable, test failover, its cleanup, unplanned failover, commit and disable each leave one job with its end state", async () => {
    const id = await enable("jobs-web");
    await protect(id);
    const test1 = await startFailover(stack, { itemIds: [id], type: "test", recoveryPoint: "latest-processed" });
    assert.equal((await waitFailover(stack, test1)).runtimeStatus, "Completed");
    assert.equal((await stack.api("POST", `replicated-items/${id}/test-failover-cleanup`)).status, 200);
    const real = await startFailover(stack, { itemIds: [id], type: "unplanned", recoveryPoint: "latest-processed" });
    assert.equal((await waitFailover(stack, real)).runtimeStatus, "Completed");
    assert.equal((await stack.api("POST", `replicated-items/${id}/commit`)).status, 200);
    assert.equal((await stack.api("DELETE", `replicated-items/${id}`)).status, 202);

    const jobs = await jobsOf(id);
    assert.deepEqual(
      jobs.map((j) => j.type),
      ["disable", "commit", "failover", "test-failover-cleanup", "failover", "enable"],
      "newest first, one job per operation",
    );
    for (const j of jobs) {
      assertEnded(j, "Succeeded");
      assert.deepEqual(j.itemIds, [id]);
    }
    const [, , unplanned, , test, enabled] = jobs;
    assert.equal(test!.id, test1, "a failover's job is named after its orchestration");
    assert.deepEqual(test!.details, { failoverType: "test", recoveryPoint: "latest-processed" });
    assert.equal(unplanned!.id, real);
    assert.deepEqual(
      unplanned!.steps.map((s) => s.name),
      ["validating", "choosing recovery points", "copying disks", "creating network interfaces", "creating VMs", "starting VMs"],
    );
    // The failover durations are telemetry too (OpenTelemetry histogram), printable over GET /api/metrics.
    const metrics = await fetch(`${stack.url}/api/metrics`).then((r) => r.text());
    assert.match(metrics, /^site_recovery\.failover\.duration\{failover\.type="test",failover\.outcome="Succeeded"\} count=1 sum=[\d.]+ s$/m);
    assert.match(metrics, /^site_recovery\.failover\.duration\{failover\.type="unplanned",failover\.outcome="Succeeded"\} count=1 /m);
    assert.deepEqual(
      enabled!.steps.map((s) => s.name),
      ["validating", "creating target resources", "creating replica disks and the cache", "issuing the agent's registration token"],
    );
  });

  test("a failover the fabric refuses is a Failed job naming the refusal and the step, and the item is rolled back", async () => {
    const id = await enable(`${NO_QUOTA}db`);
    await protect(id);
    const fo = await startFailover(stack, { itemIds: [id], type: "unplanned", recoveryPoint: "latest-processed" });
    assert.equal((await waitFailover(stack, fo)).runtimeStatus, "Failed");
    const [job] = await jobsOf(id);
    assert.equal(job!.id, fo);
    assert.equal(job!.type, "failover");
    assertEnded(job!, "Failed");
    assert.equal(job!.error!.code, "QuotaExceeded");
    assert.match(job!.error!.message, /no vCPU quota/);
    const failed = job!.steps.find((s) => s.state === "Failed")!;
    assert.equal(failed.name, "creating VMs");
    assert.equal(job!.steps[job!.steps.length - 1]!.name, "rolling back");
    assert.equal((await stack.api("GET", `replicated-items/${id}`)).body.state, "Protected");
  });

  test("an enable the fabric fails half-way is a Failed job; a refused request (400, 404, 409) is no job", async () => {
    const before = (await stack.api("GET", "jobs")).body as Job[];
    assert.equal((await stack.api("POST", "replicated-items", { vm: {} })).status, 400);
    assert.equal((await stack.api("DELETE", "replicated-items/nonexistent")).status, 404);
    assert.equal((await stack.api("POST", "replicated-items/nonexistent/commit")).status, 404);
    assert.deepEqual((await stack.api("GET", "jobs")).body, before, "no job for a refused request");

    const res = await stack.api("POST", "replicated-items", enableBody("jobs-bad", { target: { subnet: "no-such-subnet" } }));
    assert.equal(res.status, 409, JSON.stringify(res.body));
    const [job] = (await stack.api("GET", "jobs?type=enable&state=Failed")).body as Job[];
    assertEnded(job!, "Failed");
    assert.equal(job!.error!.code, "TargetSubnetMissing");
    assert.equal(job!.steps.find((s) => s.state === "Failed")!.name, "creating target resources");
  });

  test("GET /api/jobs filters by type, state and item, limits, and refuses an unknown filter with 400 naming it", async () => {
    const all = (await stack.api("GET", "jobs")).body as Job[];
    assert.ok(all.length >= 8);
    const sorted = [...all].sort((a, b) => b.startedAt.localeCompare(a.startedAt));
    assert.deepEqual(
      all.map((j) => j.id),
      sorted.map((j) => j.id),
      "newest first",
    );
    const failovers = (await stack.api("GET", "jobs?type=failover")).body as Job[];
    assert.ok(failovers.length >= 3 && failovers.every((j) => j.type === "failover"));
    assert.equal(((await stack.api("GET", "jobs?limit=2")).body as Job[]).length, 2);
    for (const [q, field] of [
      ["type=backup", "type"],
      ["state=Done", "state"],
      ["limit=0", "limit"],
      ["colour=red", "colour"],
    ] as const) {
      const r = await stack.api("GET", `jobs?${q}`);
      assert.equal(r.status, 400, q);
      assert.equal(r.body.error.code, "InvalidInput");
      assert.ok(JSON.stringify(r.body.error.details).includes(field), `${q}: ${JSON.stringify(r.body.error.details)}`);
    }
  });

  test("re-protect and resync record their job with one call: Succeeded with its steps, or Failed with the error rethrown", async () => {
    const id = await enable("jobs-reprotect");
    const out = await stack.services.jobs.run("reprotect", [id], async (job) => {
      await job.step("seeding the reverse replicas");
      await job.step("waiting for the differential sync");
      return 42;
    });
    assert.equal(out, 42);
    await assert.rejects(
      stack.services.jobs.run("resync", [id], async (job) => {
        await job.step("comparing checksums");
        throw new Error("the agent went away");
      }),
      /the agent went away/,
    );
    const [resync, reprotect] = await jobsOf(id);
    assertEnded(reprotect!, "Succeeded");
    assert.deepEqual(
      reprotect!.steps.map((s) => s.name),
      ["seeding the reverse replicas", "waiting for the differential sync"],
    );
    assertEnded(resync!, "Failed");
    assert.deepEqual(resync!.error, { code: "Error", message: "the agent went away" });
  });
});
