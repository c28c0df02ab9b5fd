#!/usr/bin/env node
// Builds the package: type declarations (tsc) into dist/types and the
// browser bundle (esbuild, one ES module, no dependencies) into
// dist/herald.js. The bundle is committed so that `cargo build` embeds it
// without Node; `--check` builds into a temporary directory instead and
// fails when the committed dist/ differs from what the sources build.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const check = process.argv.includes("--check");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));

async function buildInto(out) {
  rmSync(join(out, "types"), { recursive: true, force: true });
  execFileSync(
    process.execPath,
    [join(root, "node_modules/typescript/bin/tsc"), "-p", join(root, "tsconfig.json"), "--declarationDir", join(out, "types")],
    { stdio: "inherit", cwd: root },
  );
  await build({
    entryPoints: [join(root, "src/index.ts")],
    outfile: join(out, "herald.js"),
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2020",
    charset: "utf8",
    legalComments: "none",
    logLevel: "warning",
    banner: {
      js: `// Herald browser client ${pkg.version}: built from clients/js/src by scripts/build.mjs; do not edit.`,
    },
  });
}

function files(dir) {
  if (!existsSync(dir)) return [];
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...files(path));
    else out.push(path);
  }
  return out;
}

if (!check) {
  await buildInto(join(root, "dist"));
  console.log(`built dist/herald.js (${statSync(join(root, "dist/herald.js")).size} bytes) and dist/types`);
} else {
  const tmp = mkdtempSync(join(tmpdir(), "herald-dist-"));
  try {
    await buildInto(tmp);
    const committed = join(root, "dist");
    const want = new Set(files(tmp).map((f) => relative(tmp, f)));
    const have = new Set(files(committed).map((f) => relative(committed, f)));
    const problems = [];
    for (const f of want) {
      if (!have.has(f)) problems.push(`missing: dist/${f}`);
      else if (!readFileSync(join(tmp, f)).equals(readFileSync(join(committed, f)))) problems.push(`differs: dist/${f}`);
    }
    for (const f of have) if (!want.has(f)) problems.push(`not built by the sources: dist/${f}`);
    if (problems.length > 0) {
      console.error("clients/js/dist is not what the sources build:\n  " + problems.join("\n  "));
      console.error("Run `npm run build` in clients/js and commit dist/.");
      process.exit(1);
    }
    console.log(`dist/ is up to date (${want.size} files)`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
