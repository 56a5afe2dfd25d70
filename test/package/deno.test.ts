// Nerve for Deno and JSR: deno.json names the package and its exports at the
// package.json version, `deno publish --dry-run` accepts it (types, slow
// types, every import resolvable), and `deno task start` serves.

import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
const deno = `${root}node_modules/.bin/deno`;
const denoEnv = { ...process.env, DENO_DIR: `${root}.deno-dir`, NO_COLOR: '1' };
const read = (file: string) => JSON.parse(readFileSync(`${root}${file}`, 'utf8')) as Record<string, unknown>;

describe('deno.json', () => {
  it('carries the name, the package.json version, a license and the exports Deno users need', () => {
    const denoJson = read('deno.json');
    expect(denoJson['name']).toMatch(/^@[a-z0-9-]+\/[a-z0-9-]+$/);
    expect(denoJson['version']).toBe(read('package.json')['version']);
    expect(denoJson['license']).toBe(read('package.json')['license']);
    expect(Object.keys(denoJson['exports'] as object).sort()).toEqual(['./client', './core', './deno', './host']);
  });

  it('passes deno publish --dry-run', () => {
    const result = spawnSync(deno, ['publish', '--dry-run', '--allow-dirty'], { cwd: root, env: denoEnv, encoding: 'utf8', timeout: 60_000 });
    expect(result.stderr + result.stdout).toContain('Success Dry run complete');
    expect(result.status).toBe(0);
  }, 90_000);

  it('deno task start serves Nerve', async () => {
    const child = spawn(deno, ['task', 'start'], {
      cwd: root,
      env: { ...denoEnv, NERVE_PORT: '0', NERVE_PASSWORD: 'pw' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const output: string[] = [];
    try {
      const listening = await new Promise<{ port: number }>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`deno task start did not listen:\n${output.join('')}`)), 30_000);
        const onData = (chunk: Buffer) => {
          output.push(chunk.toString());
          const line = output.join('').split('\n').find((text) => text.includes('"msg":"listening"'));
          if (line) {
            clearTimeout(timer);
            resolve(JSON.parse(line));
          }
        };
        child.stdout.on('data', onData);
        child.stderr.on('data', onData);
        child.once('exit', (code) => reject(new Error(`deno task start exited with ${code}:\n${output.join('')}`)));
      });
      const health = await fetch(`http://127.0.0.1:${listening.port}/health`);
      expect(await health.json()).toMatchObject({ status: 'ok' });
    } finally {
      // deno task runs the server as its child; the task forwards the signal.
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
  }, 60_000);
});
