// `npm run build` (and `prepack`): the published package's JavaScript and
// declarations in dist/, one file per source file, by tsc alone. Each host is
// compiled against its own runtime's types, which cannot share one program.

import { spawnSync } from 'node:child_process';
import { chmodSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dist = join(root, 'dist');

// Shared files are emitted by each program alike; the main one runs last so its output is what stays.
const PROGRAMS = ['tsconfig.build-cloudflare.json', 'tsconfig.build-bun.json', 'tsconfig.build.json'];

/**
 * tsc rewrites `./x.ts` to `./x.js` in JavaScript but keeps it in declarations,
 * which TypeScript before 5.7 (and any tool reading them as plain ES module
 * graphs) cannot follow; the `.js` form resolves everywhere.
 */
function rewriteDeclarationImports(dir: string): number {
  let files = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) files += rewriteDeclarationImports(path);
    else if (entry.name.endsWith('.d.ts')) {
      const text = readFileSync(path, 'utf8');
      const rewritten = text.replace(/((?:from|import)\s*\(?\s*['"])(\.{1,2}\/[^'"]+)\.ts(['"])/g, '$1$2.js$3');
      if (rewritten !== text) writeFileSync(path, rewritten);
      files++;
    }
  }
  return files;
}

const started = performance.now();
// Built beside dist/ and swapped in at the end, so a pack running meanwhile sees the old tree or the new one, never half of one.
const staging = join(root, `dist.${process.pid}.tmp`);
rmSync(staging, { recursive: true, force: true });
for (const program of PROGRAMS) {
  const result = spawnSync(join(root, 'node_modules/.bin/tsc'), ['-p', program, '--outDir', staging], { cwd: root, stdio: 'inherit' });
  if (result.status !== 0) {
    rmSync(staging, { recursive: true, force: true });
    console.error(`build: tsc -p ${program} failed`);
    process.exit(1);
  }
}
const declarations = rewriteDeclarationImports(staging);
chmodSync(join(staging, 'src/cli.js'), 0o755);
rmSync(dist, { recursive: true, force: true });
renameSync(staging, dist);
console.log(`build: dist/ with ${declarations} declaration files in ${Math.round(performance.now() - started)} ms`);
