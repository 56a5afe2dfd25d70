// The baseline relays speak enough of Nerve's wire format for bench/load.ts,
// on every runtime: HELLO, WELCOME, heartbeat ACKs, and dispatches by
// client_id, round robin and mode all with `from`, `nonce` and a rising `s`.

import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { resolve } from 'node:path';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ENTRIES, runCommand, type Runtime } from '../bench/entries.ts';

const root = resolve(import.meta.dirname, '..');
const PASSWORD = 'baseline-test';

function start(runtime: Runtime): Promise<{ child: ChildProcess; port: number }> {
  const [cmd, ...args] = runCommand(root, runtime, ENTRIES.baseline[runtime]);
  const child = spawn(cmd!, args, {
    cwd: root,
    env: { ...process.env, DENO_DIR: resolve(root, '.deno-dir'), NERVE_PORT: '0', NERVE_PASSWORD: PASSWORD },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`${runtime} baseline did not start`)), 30_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (!line.includes('"listening"')) return;
      clearTimeout(timer);
      done({ child, port: JSON.parse(line).port });
    });
    child.once('exit', (code) => fail(new Error(`${runtime} baseline exited with ${code}`)));
  });
}

/** A client that keeps every frame; `next()` waits for the next one. */
class Peer {
  readonly frames: any[] = [];
  private waiting: ((frame: any) => void) | undefined;
  readonly ws: WebSocket;
  constructor(port: number) {
    this.ws = new WebSocket(`ws://127.0.0.1:${port}/`);
    this.ws.on('message', (data) => {
      const frame = JSON.parse(String(data));
      if (this.waiting) {
        const resolve = this.waiting;
        this.waiting = undefined;
        resolve(frame);
      } else this.frames.push(frame);
    });
  }
  next(): Promise<any> {
    if (this.frames.length) return Promise.resolve(this.frames.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no frame within 3 s')), 3000);
      this.waiting = (frame) => {
        clearTimeout(timer);
        resolve(frame);
      };
    });
  }
  send(frame: object): void {
    this.ws.send(JSON.stringify(frame));
  }
}

for (const runtime of ['node', 'bun', 'deno'] as const) {
  describe(`${runtime} baseline relay`, () => {
    let server: { child: ChildProcess; port: number };
    const peers: Peer[] = [];
    beforeAll(async () => {
      server = await start(runtime);
    });
    afterAll(() => {
      for (const peer of peers) peer.ws.terminate();
      server?.child.kill('SIGKILL');
    });

    async function join(app: string, id: string): Promise<Peer> {
      const peer = new Peer(server.port);
      peers.push(peer);
      expect((await peer.next()).op).toBe(0);
      peer.send({ op: 1, d: { app_name: app, client_id: id, password: PASSWORD } });
      expect(await peer.next()).toEqual({ op: 2, d: "hi i'm dad" });
      return peer;
    }

    it('greets, welcomes and answers heartbeats', async () => {
      const peer = new Peer(server.port);
      peers.push(peer);
      expect((await peer.next()).d).toMatchObject({ heartbeat_interval: expect.any(Number) });
      peer.send({ op: 3 });
      expect(await peer.next()).toEqual({ op: 4 });
    });

    it('routes by client_id, round robin and to all, with from, nonce and s', async () => {
      const sender = await join('api', 'a1');
      const g1 = await join('gw', 'g1');
      const g2 = await join('gw', 'g2');
      const from = { app_name: 'api', client_id: 'a1' };

      sender.send({ op: 8, e: 'ONE', d: { x: 1 }, to: { app_name: 'gw', client_id: 'g2' }, nonce: 'n1' });
      sender.send({ op: 8, e: 'ONE', d: { x: 2 }, to: { app_name: 'gw', client_id: 'g2' } });
      expect(await g2.next()).toEqual({ op: 8, e: 'ONE', d: { x: 1 }, from, nonce: 'n1', s: 1 });
      expect(await g2.next()).toEqual({ op: 8, e: 'ONE', d: { x: 2 }, from, s: 2 });

      sender.send({ op: 8, e: 'RR', d: 1, to: { app_name: 'gw' } });
      sender.send({ op: 8, e: 'RR', d: 2, to: { app_name: 'gw' } });
      const picked = await Promise.all([g1.next(), g2.next()]);
      expect(picked.map((f) => f.d).sort()).toEqual([1, 2]);

      g1.send({ op: 8, e: 'ALL', d: null, to: { app_name: 'gw', mode: 'all' } });
      const all = await g2.next();
      expect(all).toMatchObject({ op: 8, e: 'ALL', d: null, from: { app_name: 'gw', client_id: 'g1' }, s: expect.any(Number) });
      sender.send({ op: 3 });
      expect(await sender.next()).toEqual({ op: 4 });
      expect(g1.frames, 'the sender of a mode-all dispatch is not among its recipients').toEqual([]);
    });
  });
}
