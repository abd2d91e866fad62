// The dashboard in headless Chromium (Debian's, driven by puppeteer-core) against a running test stack: items, the RPO chart and points, a test failover followed to completion, a raised alert, and the page when storage is down; a screenshot of each.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { startTestStack, type TestStack } from "../support/stack";
import { enableBody } from "../support/requests";
import { startFailover } from "../support/failover";

const KEY = "dashboard-test-key-0123456789";
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
/** Screenshots go here (dist/test/e2e → <repo>/test-output/dashboard), or under TEST_OUTPUT_DIR. */
export const SCREENSHOTS = join(process.env.TEST_OUTPUT_DIR ?? join(__dirname, "..", "..", "..", "test-output"), "dashboard");
const MIN = 60_000;
const NEVER = "0 0 0 1 1 *";

describe("the dashboard in headless Chromium", () => {
  let stack: TestStack;
  let browser: Browser;
  let page: Page;
  let profile: string;
  const ids: { web: string; db: string } = { web: "", db: "" };

  const now = () => new Date(Date.now() + stack.clock.offsetMs);
  const api = (method: string, path: string, body?: unknown) => stack.api(method, path, body, { "x-functions-key": KEY });
  const pass = () => stack.host.runTimer("sealRecoveryPoints");
  const shot = async (name: string) => {
    const path = join(SCREENSHOTS, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    assert.ok(existsSync(path));
  };

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `Chromium is needed at ${CHROMIUM} (Debian package chromium; .ci/run installs it)`);
    mkdirSync(SCREENSHOTS, { recursive: true });
    stack = await startTestStack({ functionKey: KEY, env: { SEAL_SCHEDULE: NEVER, HISTORY_SAMPLE_SECONDS: "60", RPO_CRITICAL_MINUTES: "60" } });
    for (const name of ["web-1", "db-1"] as const) {
      const body = enableBody(name, { replicationGroup: "app-tier" });
      const r = await api("POST", "replicated-items", {
        ...body,
        vm: { ...body.vm, network: { vnet: "prod-vnet", subnet: "web", privateIp: name === "web-1" ? "10.0.1.4" : "10.0.1.5" } },
      });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      ids[name === "web-1" ? "web" : "db"] = r.body.id;
    }
    // web-1: protected, with an hour of history and points every 10 minutes (real snapshots: a failover copies them).
    const replicas = await stack.services.storage.replicas();
    for (const d of await stack.services.items.listDisks(ids.web))
      await stack.services.items.updateDisk(ids.web, d.id, (x) => ({ ...x, initialComplete: true, state: "Protected" }));
    await stack.services.items.updateItem(ids.web, (i) => ({ ...i, state: "Protected" }));
    for (let k = 0; k < 7; k++) {
      if (k % 2 === 0) {
        const tag = {
          id: randomUUID(),
          kind: (k === 4 ? "app" : "crash") as "app" | "crash",
          time: new Date(now().getTime() - 30_000).toISOString(),
          scope: "vm" as const,
        };
        for (const d of await stack.services.items.listDisks(ids.web)) {
          const { snapshot } = await replicas.getPageBlobClient(d.replicaBlob).createSnapshot();
          await stack.services.points.recordArrival({ itemId: ids.web, diskId: d.id, snapshot: snapshot!, seq: 1, tag });
        }
      }
      await pass();
      stack.clock.offsetMs += 5 * MIN;
    }
    profile = mkdtempSync(join(tmpdir(), "sr-chromium-"));
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        `--user-data-dir=${profile}`,
      ],
    });
    page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 1000 });
  });
  after(async () => {
    await browser?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await stack?.host.stop();
    await stack?.azurite.stop().catch(() => undefined);
  });

  const texts = (selector: string) => page.$$eval(selector, (els) => els.map((e) => (e.textContent ?? "").trim()));

  test("the page and its assets need the function key, like every management route", async () => {
    for (const path of ["api/dashboard", "api/dashboard/app.js", "api/dashboard/vendor/uPlot.iife.min.js"]) {
      const res = await fetch(`${stack.url}/${path}`);
      assert.equal(res.status, 401, path);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, "Unauthorized");
    }
    const ok = await fetch(`${stack.url}/api/dashboard?code=${KEY}`);
    assert.equal(ok.status, 200);
    assert.match(ok.headers.get("content-type") ?? "", /text\/html/);
    assert.match(await ok.text(), new RegExp(`dashboard/app\\.js\\?code=${KEY}`), "assets carry the key");
    for (const path of ["../package.json", "..%2Fpackage.json", ".hidden.js", "vendor/nope.js"]) {
      assert.equal((await fetch(`${stack.url}/api/dashboard/${path}?code=${KEY}`)).status, 404, path);
    }
  });

  test("lists the items of the running stack with state, health, RPO and direction", async () => {
    await page.goto(`${stack.url}/api/dashboard?code=${KEY}&refresh=1000`);
    // Browser-side expressions are strings: the test is compiled without the DOM's types.
    await page.waitForFunction(`document.querySelectorAll("#items tbody tr").length === 2`);
    const rows = (await page.evaluate(
      `[...document.querySelectorAll("#items tbody tr")].map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent.trim()))`,
    )) as string[][];
    assert.deepEqual(
      rows.map((r) => [r[0], r[1], r[2], r[3], r[4]]),
      [
        ["web-1", "eastus → westus", "forward", "Protected", "Healthy"],
        ["db-1", "eastus → westus", "forward", "InitialReplication", "Healthy"],
      ],
    );
    assert.match(rows[0]![5]!, /^\d+ (s|min)$/, "web-1 shows its RPO");
    await shot("01-items");
  });

  test("shows the selected item's RPO chart and its recovery-point timeline", async () => {
    await page.click(`#items tbody tr[data-item="${ids.web}"]`);
    await page.waitForSelector("#rpo-chart canvas");
    await page.waitForSelector("#points-chart canvas");
    assert.equal((await texts("#points-count"))[0], "(4)");
    const legend = await texts("#rpo-chart .u-legend th");
    assert.ok(legend.includes("RPO s") && legend.includes("lag s"), JSON.stringify(legend));
    // uPlot drew something: the chart canvas is not blank.
    const inked = (await page.evaluate(`(() => {
      const c = document.querySelector("#rpo-chart canvas");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
      return n;
    })()`)) as number;
    assert.ok(inked > 500, `the RPO chart has ink (${inked} pixels)`);
    await shot("02-rpo-chart-and-points");
  });

  test("follows a test failover step by step to completion", async () => {
    const history = (await api("GET", `replicated-items/${ids.web}/history`)).body;
    assert.ok(history.samples.length >= 7);
    // web-1 alone (its group member is still copying: the group is failed over as a whole, so leave the group first).
    assert.equal((await api("PATCH", `replicated-items/${ids.web}`, { replicationGroup: null })).status, 200);
    const id = await startFailover({ ...stack, api }, { itemIds: [ids.web], type: "test", recoveryPoint: "latest-processed" });
    const seen = new Set<string>();
    await page.waitForFunction(
      `(document.querySelector("#failover-title")?.textContent ?? "").includes(${JSON.stringify(id.slice(0, 8))}) && document.querySelector("#failover-status")?.textContent === "Completed"`,
      { polling: 100, timeout: 60_000 },
    );
    for (const s of await texts("#failover-steps li")) seen.add(s);
    const steps = await page.$$eval("#failover-steps li", (lis) => lis.map((li) => li.getAttribute("data-step")));
    assert.deepEqual(steps, ["validating", "choosing recovery points", "copying disks", "creating network interfaces", "creating VMs", "starting VMs"]);
    const vmRow = await page.$$eval("#failover-vms tbody tr td", (tds) => tds.map((td) => (td.textContent ?? "").trim()));
    assert.equal(vmRow[0], "web-1");
    assert.equal(vmRow[1], "running");
    assert.equal(vmRow[2], "2/2 copied");
    await page.waitForFunction(`document.querySelector('#jobs tbody tr[data-job="failover"]')?.getAttribute("data-state") === "Succeeded"`);
    await shot("03-test-failover-completed");
  });

  test("shows a raised alert", async () => {
    assert.equal((await api("POST", `replicated-items/${ids.web}/test-failover-cleanup`)).status, 200);
    stack.clock.offsetMs += 61 * MIN;
    await pass();
    await page.waitForSelector('#alerts tbody tr[data-alert="NoCrashConsistentPoint"][data-open="true"]', { timeout: 20_000 });
    const row = await page.$$eval('#alerts tbody tr[data-alert="NoCrashConsistentPoint"] td', (tds) => tds.map((td) => (td.textContent ?? "").trim()));
    assert.equal(row[0], "Critical");
    assert.equal(row[1], "web-1");
    assert.match(row[3]!, /153007/);
    await page.waitForFunction(`[...document.querySelectorAll("#items tbody tr td")].some((td) => td.textContent === "Critical")`);
    await shot("04-alert-raised");
  });

  test("when storage is down the page says so, keeps what it showed, and recovers nothing it cannot", async () => {
    const before = await texts("#items tbody tr td:first-child");
    await stack.azurite.stop();
    await page.waitForFunction(`!document.querySelector("#banner").classList.contains("hidden")`, { timeout: 30_000 });
    const banner = (await texts("#banner"))[0]!;
    assert.match(banner, /The service did not answer: HTTP 503 .*StorageUnavailable/);
    assert.match(banner, /Showing what was loaded at/);
    assert.deepEqual(await texts("#items tbody tr td:first-child"), before, "the items last loaded stay on the page");
    await shot("05-storage-down");
  });
});
