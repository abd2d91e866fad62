// GET /api/dashboard: the operator's page, and GET /api/dashboard/{*asset}: its static files from web/ (served by the app itself, key-protected).
import { readFile } from "node:fs/promises";
import { extname, join, normalize, sep } from "node:path";
import type { HttpFunctionSpec } from "./spec";
import type { Services } from "./compose";
import { errorResponse } from "./http";
import { NotFound } from "../shared/contract/errors";

/** web/ at the package root (this file runs from dist/functions/). */
export const WEB_ROOT = join(__dirname, "..", "..", "web");

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".png": "image/png",
  ".svg": "image/svg+xml",
};

/** A function key as the host accepts it: the page passes it on to its assets and API calls, so it is checked before it goes into HTML. */
const KEY_SHAPE = /^[A-Za-z0-9_\-=+/.]{1,200}$/;

const SECURITY_HEADERS = {
  "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
};

/** The page, with the key it was opened with (?code=) carried to its assets; the page's script reads it from its own URL for the API. */
export const dashboard = (_services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "dashboard",
  route: "dashboard",
  methods: ["GET"],
  authLevel: "function",
  handler: async (request, context) => {
    try {
      const code = request.query.get("code");
      const suffix = code && KEY_SHAPE.test(code) ? `?code=${encodeURIComponent(code)}` : "";
      const html = (await readFile(join(WEB_ROOT, "index.html"), "utf8")).replace(/\{\{ASSET_QUERY\}\}/g, suffix);
      return { status: 200, headers: { "content-type": TYPES[".html"]!, ...SECURITY_HEADERS }, body: html };
    } catch (e) {
      return errorResponse(e, context);
    }
  },
});

export const dashboardAsset = (_services: () => Services): HttpFunctionSpec => ({
  kind: "http",
  name: "dashboardAsset",
  route: "dashboard/{*asset}",
  methods: ["GET"],
  authLevel: "function",
  handler: async (request, context) => {
    try {
      const asset = request.params.asset ?? "";
      const path = normalize(join(WEB_ROOT, asset));
      const type = TYPES[extname(path)];
      // Only files under web/, of the kinds the page uses; nothing else of the package is reachable.
      if (!asset || !type || !path.startsWith(WEB_ROOT + sep) || asset.split("/").some((s) => s.startsWith("."))) throw new NotFound("asset", asset);
      const body = await readFile(path).catch((e: NodeJS.ErrnoException) => {
        if (e.code === "ENOENT" || e.code === "EISDIR") throw new NotFound("asset", asset);
        throw e;
      });
      return { status: 200, headers: { "content-type": type, ...SECURITY_HEADERS, "cache-control": "max-age=300" }, body };
    } catch (e) {
      return errorResponse(e, context);
    }
  },
});
