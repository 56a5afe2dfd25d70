// `npm run start:cloudflare` hands every NERVE_* setting to the Worker, as
// the other runtimes read them from their environment: a heartbeat interval
// set in the environment is the one HELLO announces.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { workerVarArgs, wranglerDevArgs } from '../../scripts/start-cloudflare.ts';
import { freePort } from '../support/server.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));


describe('start:cloudflare', () => {
  it('passes every NERVE_* variable but the listen address as a Worker var', () => {
    const env = { NERVE_PORT: '7000', NERVE_HOST: '127.0.0.2', NERVE_PASSWORD: 'pw', NERVE_HEARTBEAT_INTERVAL: '2000', NERVE_RATE_LIMIT: '5', HOME: '/root' };
    expect(workerVarArgs(env)).toEqual(['--var', 'NERVE_PASSWORD:pw', '--var', 'NERVE_HEARTBEAT_INTERVAL:2000', '--var', 'NERVE_RATE_LIMIT:5']);
    expect(wranglerDevArgs(env, ['--persist-to', '/tmp/x'])).toEqual([
      'dev',
      '--ip',
      '127.0.0.2',
      '--port',
      '7000',
      '--show-interactive-dev-session=false',
      ...workerVarArgs(env),
      '--persist-to',
      '/tmp/x',
    ]);
  });

  it('serves with the heartbeat interval from NERVE_HEARTBEAT_INTERVAL', async () => {
    const port = await freePort();
    const storage = mkdtempSync(`${tmpdir()}/nerve-start-cf-`);
    const child = spawn('npm', ['run', 'start:cloudflare', '--', '--persist-to', storage], {
      cwd: root,
      env: { ...process.env, NERVE_PORT: String(port), NERVE_PASSWORD: 'cf-pw', NERVE_HEARTBEAT_INTERVAL: '2000' },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const output: string[] = [];
    const exited = new Promise((resolve) => child.once('exit', resolve));
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`wrangler dev did not start:\n${output.join('')}`)), 45_000);
        const onData = (chunk: Buffer) => {
          output.push(chunk.toString());
          if (output.join('').includes(`Ready on http://127.0.0.1:${port}`)) {
            clearTimeout(timer);
            resolve();
          }
        };
        child.stdout!.on('data', onData);
        child.stderr!.on('data', onData);
        child.once('exit', (code) => reject(new Error(`start:cloudflare exited with ${code}:\n${output.join('')}`)));
      });
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
      const frames: { op: number; d?: { heartbeat_interval?: number } }[] = [];
      await new Promise<void>((resolve, reject) => {
        ws.on('message', (data) => {
          const frame = JSON.parse(data.toString());
          frames.push(frame);
          if (frame.op === 0) ws.send(JSON.stringify({ op: 1, d: { app_name: 'cf', client_id: 'one', password: 'cf-pw' } }));
          else resolve();
        });
        ws.once('error', reject);
      });
      ws.terminate();
      expect(frames[0]).toMatchObject({ op: 0, d: { heartbeat_interval: 2000 } });
      expect(frames[1]).toMatchObject({ op: 2 });
    } finally {
      // npm and the script share a group; the script passes the signal on to wrangler's own group.
      process.kill(-child.pid!, 'SIGTERM');
      await exited;
      rmSync(storage, { recursive: true, force: true });
    }
  }, 60_000);
});
