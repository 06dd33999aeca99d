// Builds the npm package's files from the one source the daemon serves:
// dist/wsheart.js is wsheart/static/wsheart.js followed by
// wsheart/static/wsheart.exports.js - the same bytes as the daemon's
// /wsheart.mjs (wsheart/pages.py joins them the same way) - and
// dist/wsheart.d.ts is wsheart/static/wsheart.d.ts without its `declare
// global` block (a module import defines no global).  Run by `npm pack`
// (prepack) and `npm run build`; no dependencies.  dist/ is not committed.

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";

const here = new URL(".", import.meta.url);
const source = (name) => readFileSync(new URL(`../wsheart/static/${name}`, here), "utf8");
const fail = (message) => {
  console.error(`js/build.mjs: ${message}`);
  process.exit(1);
};

const pkg = JSON.parse(readFileSync(new URL("package.json", here), "utf8"));
const library = source("wsheart.js");
const libraryVersion = /\bvar VERSION = "([^"]+)";/.exec(library)?.[1];
if (libraryVersion !== pkg.version) {
  fail(`package.json says version ${pkg.version}, wsheart.js says ${libraryVersion}: keep both equal to wsheart.__version__`);
}

const types = source("wsheart.d.ts");
const globalBlock = types.indexOf("\ndeclare global {");
if (globalBlock < 0 || !/^\s*\}\s*$/.test(types.slice(types.lastIndexOf("}")))) {
  fail("wsheart.d.ts no longer ends with its `declare global { ... }` block: update build.mjs");
}
const moduleTypes =
  types.slice(0, globalBlock).trimEnd() +
  "\n\n// (The classic script's global WsHeart is declared in the daemon's /wsheart.d.ts;\n" +
  "// an import defines none.)\n";

mkdirSync(new URL("dist/", here), { recursive: true });
writeFileSync(new URL("dist/wsheart.js", here), library + "\n" + source("wsheart.exports.js"));
writeFileSync(new URL("dist/wsheart.d.ts", here), moduleTypes);
console.log(`js/build.mjs: dist/wsheart.js and dist/wsheart.d.ts for wsheart ${pkg.version}`);
