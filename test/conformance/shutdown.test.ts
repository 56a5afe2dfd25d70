// docs/protocol.md §10 (GO_AWAY and shutdown): on SIGTERM every connection gets
// GO_AWAY then 1001, held work is reported to its senders, new connections are
// refused, and the process exits 0 within the drain timeout.

import { connect as netConnect, type Socket } from 'node:net';
import WebSocket from 'ws';
import { describe, expect, it } from 'vitest';
import { startServer } from '../support/server.ts';
import { TestClient } from './client.ts';
import { dispatchFrame, FAST_ENV, identified, RUNTIMES, uid, type RunningServer } from './harness.ts';

// Runtimes with no process to signal: a Workers deploy or eviction closes the
// sockets itself, so SIGTERM behaviour cannot be driven from a test.
const NO_SIGNALS: readonly string[] = ['cloudflare'];

const DRAIN_TIMEOUT = 2000;

// Bun drops the TCP connection as soon as it has sent the close frame
// (uWebSockets' end()) and reports the socket closed, so a peer that never
// answers cannot hold the drain open: Bun exits at once, and there is no
// drain window in which to knock.
const NO_DRAIN_WINDOW: readonly string[] = ['bun'];

/** A WebSocket peer that completes the upgrade and then never answers the close handshake. */
function stuckPeer(server: RunningServer): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(server.port, '127.0.0.1', () => {
      socket.write(
        'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
      );
    });
    let head = '';
    const onData = (chunk: Buffer) => {
      head += chunk.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      socket.off('data', onData);
      // Keep reading (so the server's writes never block) but never reply.
      socket.on('data', () => {});
      if (head.startsWith('HTTP/1.1 101')) resolve(socket);
      else reject(new Error(`upgrade refused: ${head.split('\r\n')[0]}`));
    };
    socket.on('data', onData);
    socket.on('error', () => {});
  });
}

/**
 * What a new client sees: 'refused' (no TCP, or an HTTP error instead of an
 * upgrade), 'go away' (GO_AWAY as its first frame, which §10 also allows) or
 * 'served' (HELLO: the server took it on).
 */
function tryConnect(server: RunningServer): Promise<'refused' | 'go away' | 'served'> {
  return new Promise((resolve) => {
    const ws = new WebSocket(server.url);
    ws.on('message', (data) => {
      ws.terminate();
      resolve(JSON.parse(String(data)).op === 5 ? 'go away' : 'served');
    });
    ws.on('unexpected-response', () => resolve('refused'));
    ws.on('error', () => resolve('refused'));
  });
}

const isRunning = (server: RunningServer) => server.child.exitCode === null && server.child.signalCode === null;

for (const runtime of RUNTIMES) {
  describe.concurrent(`${runtime}: §10 shutdown`, () => {
    it.skipIf(NO_SIGNALS.includes(runtime))(
      'SIGTERM: GO_AWAY then 1001 on every connection in every format; held dispatches reported; exit 0',
      async () => {
        const server = await startServer(runtime, { ...FAST_ENV, NERVE_DRAIN_TIMEOUT: '10000' });
        try {
          const sender = await identified(server, uid('app'), 'json');
          const packed = await identified(server, uid('app'), 'packed', { format: 'msgpack', compression: 'zlib' });
          const anonymous = new TestClient(server.url, { compression: 'zlib' });
          expect((await anonymous.next()).op).toBe(0);
          sender.send(dispatchFrame('NOBODY', { app_name: uid('empty') }, { nonce: 'held-1' }));
          expect((await sender.event('NERVE_ACK')).d).toEqual({ delivered: 0, queued: 1 });

          const signalledAt = Date.now();
          const exited = server.stop('SIGTERM');

          const undeliverable = await sender.event('NERVE_UNDELIVERABLE');
          expect(undeliverable).toEqual({ op: 8, e: 'NERVE_UNDELIVERABLE', nonce: 'held-1', d: { reason: expect.stringMatching(/shut/), e: 'NOBODY' } });
          const goAway = await sender.nextRaw();
          expect(goAway).toMatchObject({ binary: false, raw: '{"op":5,"d":"go away."}' });
          expect(await sender.closed).toEqual({ code: 1001, reason: 'go away.' });
          for (const client of [packed, anonymous]) {
            expect(await client.next()).toEqual({ op: 5, d: 'go away.' });
            expect((await client.closed).code).toBe(1001);
          }
          // GO_AWAY is the one close without NO_U_TBH.
          for (const client of [sender, packed, anonymous]) expect(client.log.some((r) => r.frame.op === 6)).toBe(false);

          expect(await exited).toBe(0);
          // Every socket closed at once, so no need to wait for the drain timeout.
          expect(Date.now() - signalledAt).toBeLessThan(5000);
        } finally {
          await server.stop('SIGKILL');
        }
      },
    );

    it.skipIf(NO_SIGNALS.includes(runtime) || NO_DRAIN_WINDOW.includes(runtime))(
      'while draining, new connections are refused (or /health says 503), and the process exits 0 within the drain timeout',
      async () => {
        const server = await startServer(runtime, { ...FAST_ENV, NERVE_DRAIN_TIMEOUT: String(DRAIN_TIMEOUT) });
        try {
          const client = await identified(server, uid('app'), 'c');
          const stuck = await stuckPeer(server);
          const signalledAt = Date.now();
          const exited = server.stop('SIGTERM');
          expect(await client.next()).toEqual({ op: 5, d: 'go away.' });
          expect((await client.closed).code).toBe(1001);

          // The stuck peer keeps the drain going: the server must not take anyone new
          // meanwhile. A refusal only counts while the process is still there to refuse.
          expect(['refused', 'go away']).toContain(await tryConnect(server));
          const probe = await fetch(`${server.http}/health`).then(
            async (res) => ({ status: res.status, body: await res.json() }),
            () => 'refused' as const,
          );
          if (probe !== 'refused') expect(probe).toEqual({ status: 503, body: expect.objectContaining({ status: expect.not.stringMatching(/^ok$/) }) });
          expect(isRunning(server), 'still draining when the new connection was turned away').toBe(true);

          expect(await exited).toBe(0);
          // It waited for the stuck peer until the drain timeout, and no longer.
          expect(Date.now() - signalledAt).toBeGreaterThanOrEqual(DRAIN_TIMEOUT - 100);
          expect(Date.now() - signalledAt).toBeLessThan(DRAIN_TIMEOUT + 2000);
          stuck.destroy();
        } finally {
          await server.stop('SIGKILL');
        }
      },
    );

    it.runIf(NO_DRAIN_WINDOW.includes(runtime))('a peer that never answers the close handshake is dropped, and the process exits 0 at once', async () => {
      const server = await startServer(runtime, { ...FAST_ENV, NERVE_DRAIN_TIMEOUT: String(DRAIN_TIMEOUT) });
      try {
        const stuck = await stuckPeer(server);
        const dropped = new Promise<void>((resolve) => stuck.once('close', () => resolve()));
        const signalledAt = Date.now();
        expect(await server.stop('SIGTERM')).toBe(0);
        await dropped;
        expect(Date.now() - signalledAt).toBeLessThan(DRAIN_TIMEOUT);
      } finally {
        await server.stop('SIGKILL');
      }
    });
  });
}
