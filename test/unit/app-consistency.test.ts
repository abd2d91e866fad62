// The freeze bound of app-consistent tags, with a fake cut: post-thaw always runs, a tag past the bound is only crash.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { appConsistentTag, runScript, APP_CONSISTENCY_FAILED } from "../../agent/app-consistency";
import { Health } from "../../agent/health";
import type { BatchTag, TagKind } from "../../shared/replication/batch";

const fakeCut =
  (delayMs: number, fail = false) =>
  async (kindAtCut: () => TagKind): Promise<BatchTag | undefined> => {
    await new Promise((r) => setTimeout(r, delayMs));
    if (fail) throw new Error("spool gone");
    return { id: "t", kind: kindAtCut(), time: new Date().toISOString(), scope: "vm" };
  };

describe("app-consistent tag bound", () => {
  test("runScript: exit code and stderr tail; a missing program fails without throwing", async () => {
    const r = await runScript(["/bin/sh", "-c", "echo oops >&2; exit 3"], 2000);
    assert.deepEqual([r.ok, r.code, r.timedOut], [false, 3, false]);
    assert.match(r.detail, /exited with code 3: oops/);
    const missing = await runScript(["/nonexistent/freeze"], 2000);
    assert.equal(missing.ok, false);
    assert.match(missing.detail, /did not start/);
    assert.equal((await runScript(["/bin/true"], 2000)).ok, true);
  });

  test("a tag slower than the bound: thawed at the bound, the tag is cut as crash, the warning raised", async () => {
    const dir = mkdtempSync(join(tmpdir(), "freeze-"));
    try {
      const health = new Health();
      const thawMarker = join(dir, "thawed");
      let thawedBeforeCut = false;
      const started = Date.now();
      const tag = await appConsistentTag({
        preFreeze: ["/bin/true"],
        postThaw: ["/bin/sh", "-c", `touch ${thawMarker}`],
        freezeTimeoutMs: 300,
        health,
        log: () => {},
        cut: async (kindAtCut) => {
          await new Promise((r) => setTimeout(r, 800));
          thawedBeforeCut = existsSync(thawMarker);
          return { id: "t", kind: kindAtCut(), time: new Date().toISOString(), scope: "vm" };
        },
      });
      assert.equal(thawedBeforeCut, true, "post-thaw ran at the bound, before the slow cut finished");
      assert.equal(tag?.kind, "crash");
      assert.ok(Date.now() - started >= 800);
      assert.match(health.list().find((i) => i.code === APP_CONSISTENCY_FAILED)!.message, /longer than the 300 ms freeze bound/);
      assert.equal(readFileSync(thawMarker, "utf8"), "");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a cut that throws still thaws; success afterwards clears the warning", async () => {
    const dir = mkdtempSync(join(tmpdir(), "freeze-"));
    try {
      const health = new Health();
      const marker = join(dir, "thawed");
      const deps = { preFreeze: ["/bin/true"], postThaw: ["/bin/sh", "-c", `touch ${marker}`], freezeTimeoutMs: 2000, health, log: () => {} };
      assert.equal(await appConsistentTag({ ...deps, cut: fakeCut(10, true) }), undefined);
      assert.ok(existsSync(marker), "thawed although the cut failed");
      assert.match(health.list()[0]!.message, /the tag failed: spool gone/);
      const ok = await appConsistentTag({ ...deps, cut: fakeCut(10) });
      assert.equal(ok?.kind, "app");
      assert.equal(health.has(APP_CONSISTENCY_FAILED), false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a failing post-thaw is reported", async () => {
    const health = new Health();
    const tag = await appConsistentTag({ preFreeze: ["/bin/true"], postThaw: ["/bin/false"], freezeTimeoutMs: 2000, health, log: () => {}, cut: fakeCut(0) });
    assert.equal(tag?.kind, "app");
    assert.match(health.list()[0]!.message, /post-thaw failed: '\/bin\/false' exited with code 1/);
  });
});
