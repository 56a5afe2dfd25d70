// The Deno host's type-check: tsc covers Node, Bun and Workers, but only
// `deno check` knows Deno's globals. It checks every adapters/ file written for
// Deno, and what they import, offline against the npm-installed node_modules.

import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '..');

/** The files `npm run start:deno` and `deno task start` run. */
function entries(): string[] {
  const scripts = [
    JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).scripts?.['start:deno'],
    JSON.parse(readFileSync(join(root, 'deno.json'), 'utf8')).tasks?.start,
  ];
  return scripts.flatMap((script) => (typeof script === 'string' ? [...script.matchAll(/\S+\.ts\b/g)].map((m) => m[0]) : []));
}

/** Every adapters/ file named for Deno or using its global, plus the entries, whatever they are called. */
function denoFiles(): string[] {
  const found = new Set(entries());
  for (const name of readdirSync(join(root, 'adapters'))) {
    if (!name.endsWith('.ts')) continue;
    const path = `adapters/${name}`;
    if (name.startsWith('deno') || /\bDeno\.\w/.test(readFileSync(join(root, path), 'utf8'))) found.add(path);
  }
  return [...found].sort();
}

describe('deno check', () => {
  it('knows which files are the Deno host', () => {
    const files = denoFiles();
    expect(entries().length, 'package.json start:deno and deno.json\'s start task name their entry file').toBe(2);
    for (const entry of entries()) expect(files).toContain(entry);
  });

  it('finds no type errors in the Deno host', () => {
    const files = denoFiles();
    // --cached-only and --no-remote: nothing is downloaded; deno.json's
    // "nodeModulesDir": "manual" resolves npm imports from node_modules.
    const r = spawnSync(join(root, 'node_modules/.bin/deno'), ['check', '--cached-only', '--no-remote', ...files], {
      cwd: root,
      encoding: 'utf8',
      env: { ...process.env, DENO_DIR: join(root, '.deno-dir'), NO_COLOR: '1' },
      timeout: 180_000,
    });
    expect(r.error, 'deno could not be run').toBeUndefined();
    expect(r.status, `deno check ${files.join(' ')}\n${r.stderr}${r.stdout}`).toBe(0);
  }, 200_000);
});
