// Builds the dashboard into dist/: one script and one stylesheet with content-hashed names,
// and an index.html that loads them with Subresource Integrity (sha384). No inline script or
// style anywhere, so the gateway's CSP (script-src 'self'; style-src 'self') holds.
import { createHash } from "node:crypto";
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ? process.argv[2] : join(here, "dist");
const assets = join(out, "assets");

rmSync(out, { recursive: true, force: true });
mkdirSync(assets, { recursive: true });

const result = await esbuild.build({
  entryPoints: { app: join(here, "src/main.jsx") },
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "iife",
  target: ["chrome110", "firefox115", "safari16"],
  jsx: "automatic",
  jsxImportSource: "preact",
  entryNames: "[name]-[hash]",
  outdir: assets,
  metafile: true,
  legalComments: "external",
  logLevel: "warning",
});

const built = Object.keys(result.metafile.outputs);
const pick = (ext) => {
  const file = built.find((f) => f.endsWith(ext) && !f.endsWith(".LEGAL.txt"));
  if (!file) throw new Error(`esbuild wrote no ${ext} file`);
  return file;
};
const sri = (file) =>
  "sha384-" + createHash("sha384").update(readFileSync(file)).digest("base64");

const js = pick(".js");
const css = pick(".css");
cpSync(join(here, "static"), assets, { recursive: true });

const html = readFileSync(join(here, "index.html"), "utf8")
  .replace("{{CSS}}", `/assets/${basename(css)}`)
  .replace("{{CSS_SRI}}", sri(css))
  .replace("{{JS}}", `/assets/${basename(js)}`)
  .replace("{{JS_SRI}}", sri(js));
if (html.includes("{{")) throw new Error("index.html has a placeholder left");
writeFileSync(join(out, "index.html"), html);
console.log(`dashboard built: ${basename(js)}, ${basename(css)} -> ${out}`);
