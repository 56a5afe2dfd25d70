// The embedding examples as users would drive them: a client identifies and
// dispatches over newline-delimited JSON on TCP, and over the in-memory host
// with a virtual clock.

import { spawn } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { memoryHub } from '../examples/embed-memory.ts';
import { startTcpHub, type TcpHub } from '../examples/embed-tcp.ts';

type Frame = { op?: number; close?: number; [field: string]: unknown };

/** A line-oriented TCP client that collects parsed lines. */
async function tcpClient(port: number) {
  const socket: Socket = connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.setEncoding('utf8');
  const lines: Frame[] = [];
  let buffered = '';
  let ended = false;
  socket.on('data', (chunk: string) => {
    buffered += chunk;
    for (let i = buffered.indexOf('\n'); i >= 0; i = buffered.indexOf('\n')) {
      lines.push(JSON.parse(buffered.slice(0, i)));
      buffered = buffered.slice(i + 1);
    }
  });
  socket.on('close', () => (ended = true));
  return {
    lines,
    socket,
    get ended() {
      return ended;
    },
    send: (frame: object) => socket.write(`${JSON.stringify(frame)}\n`),
    async until(pred: (frame: Frame) => boolean): Promise<Frame> {
      for (let waited = 0; waited < 5_000; waited += 10) {
        const found = lines.find(pred);
        if (found) return found;
        await new Promise((r) => setTimeout(r, 10));
      }
      throw new Error(`no matching line; got ${JSON.stringify(lines)}`);
    },
  };
}

describe('embed-tcp: the core over newline-delimited JSON on TCP', () => {
  let hub: TcpHub | undefined;
  afterEach(async () => {
    await hub?.shutdown(1_000);
    hub = undefined;
  });

  it('says HELLO, identifies, routes a dispatch and acknowledges it', async () => {
    hub = await startTcpHub({ password: 'pw', log: () => {} });
    const api = await tcpClient(hub.port);
    const gateway = await tcpClient(hub.port);
    const hello = await api.until((f) => f.op === 0);
    expect(hello.d).toMatchObject({ heartbeat_interval: 45_000 });

    api.send({ op: 1, d: { app_name: 'api', client_id: 'api-1', password: 'pw' } });
    gateway.send({ op: 1, d: { app_name: 'gateway', client_id: 'gw-1', password: 'pw', metadata: { users: ['42'] } } });
    expect(await api.until((f) => f.op === 2)).toEqual({ op: 2, d: "hi i'm dad" });
    await gateway.until((f) => f.op === 2);

    api.send({ op: 8, e: 'USER_UPDATED', d: { id: '42' }, to: { app_name: 'gateway', query: { users: '42' } }, nonce: 'n-1' });
    expect(await gateway.until((f) => f.e === 'USER_UPDATED')).toEqual({
      op: 8,
      e: 'USER_UPDATED',
      d: { id: '42' },
      from: { app_name: 'api', client_id: 'api-1' },
      nonce: 'n-1',
      s: 1,
    });
    expect(await api.until((f) => f.e === 'NERVE_ACK')).toMatchObject({ nonce: 'n-1', d: { delivered: 1, queued: 0 } });

    api.send({ op: 3 });
    expect(await api.until((f) => f.op === 4)).toEqual({ op: 4 });
    api.socket.destroy();
    gateway.socket.destroy();
  });

  it('ends a connection with NO_U_TBH and a close line on a wrong password', async () => {
    hub = await startTcpHub({ password: 'pw', log: () => {} });
    const client = await tcpClient(hub.port);
    client.send({ op: 1, d: { app_name: 'api', client_id: 'api-1', password: 'nope' } });
    expect(await client.until((f) => f.op === 6)).toMatchObject({ op: 6 });
    expect(await client.until((f) => f.close !== undefined)).toMatchObject({ close: 4401 });
    for (let i = 0; i < 100 && !client.ended; i++) await new Promise((r) => setTimeout(r, 10));
    expect(client.ended).toBe(true);
  });

  it('answers a line longer than the payload limit with NO_U_TBH and 4413, before it ends', async () => {
    hub = await startTcpHub({ password: 'pw', log: () => {}, limits: { maxPayload: 1024 } });
    const client = await tcpClient(hub.port);
    client.socket.write(`{"op":3,"d":"${'x'.repeat(4096)}`);
    expect(await client.until((f) => f.op === 6)).toMatchObject({ d: expect.stringContaining('1024') });
    expect(await client.until((f) => f.close !== undefined)).toMatchObject({ close: 4413 });
  });

  it('sends GO_AWAY and closes with 1001 on shutdown', async () => {
    hub = await startTcpHub({ password: 'pw', log: () => {} });
    const client = await tcpClient(hub.port);
    await client.until((f) => f.op === 0);
    client.socket.on('end', () => client.socket.end());
    await hub.shutdown(2_000);
    hub = undefined;
    expect(client.lines.slice(-2)).toEqual([{ op: 5, d: 'go away.' }, { close: 1001, reason: 'go away.' }]);
  });
});

describe('embed-tcp as a program', () => {
  it('listens, serves a client, and exits 0 after GO_AWAY on SIGTERM', async () => {
    const root = fileURLToPath(new URL('..', import.meta.url));
    const child = spawn(`${root}node_modules/.bin/tsx`, ['examples/embed-tcp.ts'], {
      cwd: root,
      env: { ...process.env, NERVE_PASSWORD: 'pw', NERVE_TCP_PORT: '0' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      const port = await new Promise<number>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('embed-tcp did not start')), 20_000);
        child.stdout!.on('data', (chunk: Buffer) => {
          for (const line of chunk.toString().split('\n')) {
            if (line.includes('"listening"')) {
              clearTimeout(timer);
              resolve(JSON.parse(line).port);
            }
          }
        });
      });
      const client = await tcpClient(port);
      client.socket.on('end', () => client.socket.end());
      client.send({ op: 1, d: { app_name: 'api', client_id: 'api-1', password: 'pw' } });
      await client.until((f) => f.op === 2);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(await client.until((f) => f.op === 5)).toEqual({ op: 5, d: 'go away.' });
      expect(await client.until((f) => f.close !== undefined)).toEqual({ close: 1001, reason: 'go away.' });
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});

describe('embed-memory: the core with a virtual clock', () => {
  it('delivers between two connections and times out a silent one without sleeping', () => {
    const hub = memoryHub({ password: 'pw', heartbeatInterval: 1_000 });
    const a = hub.connect();
    const b = hub.connect();
    a.send({ op: 1, d: { app_name: 'a', client_id: 'a1', password: 'pw' } });
    b.send({ op: 1, d: { app_name: 'b', client_id: 'b1', password: 'pw' } });
    a.send({ op: 8, e: 'PING', d: 1, to: { app_name: 'b' } });
    expect(b.inbox.at(-1)).toMatchObject({ op: 8, e: 'PING', d: 1, s: 1 });

    hub.advance(1_400);
    a.send({ op: 3 });
    expect(a.inbox.at(-1)).toEqual({ op: 4 });
    hub.advance(200); // b is now 1.6 intervals past its last heartbeat (HELLO)
    expect(b.closed).toMatchObject({ code: 4408 });
    expect(a.closed).toBeUndefined();
  });
});
