// The SDK is runtime-neutral: the same source runs under Deno, Bun and workerd
// with their own global WebSocket, against the Node server.

import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Miniflare } from 'miniflare';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundleForWorkers } from '../support/bundle.ts';
import { startServer, type RunningServer } from '../support/server.ts';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../..', import.meta.url));
const script = 'test/client/runtime-smoke.ts';

const runtimes = {
  deno: [`${root}node_modules/.bin/deno`, 'run', '-A', script],
  bun: [`${root}node_modules/.bin/bun`, 'run', script],
};

describe('client SDK on other runtimes', () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startServer('node');
  });
  afterAll(() => server.stop());

  const workerOf = async () => ((await (await fetch(`${server.http}/health`)).json()) as { worker: string }).worker;

  for (const [runtime, [cmd, ...args]] of Object.entries(runtimes)) {
    it(`does request/reply under ${runtime} with its global WebSocket`, async () => {
      const { stdout } = await run(cmd!, args, {
        cwd: root,
        timeout: 25_000,
        env: {
          ...process.env,
          DENO_DIR: `${root}.deno-dir`,
          NERVE_URL: server.url,
          NERVE_PASSWORD: server.password,
          SUFFIX: runtime,
        },
      });
      expect(JSON.parse(stdout.trim().split('\n').at(-1)!)).toEqual({ pong: runtime, worker: await workerOf() });
    });
  }

  it('does request/reply inside a Worker (workerd) with its global WebSocket', async () => {
    const worker = await bundleForWorkers('test/client/runtime-worker.ts');
    const mf = new Miniflare({ modules: true, script: worker, compatibilityDate: '2026-04-20', cf: false });
    try {
      const query = new URLSearchParams({ url: server.url, password: server.password });
      const response = await mf.dispatchFetch(`http://localhost/?${query}`);
      expect(await response.json()).toEqual({ pong: 'workerd', worker: await workerOf() });
    } finally {
      await mf.dispose();
    }
  });
});
