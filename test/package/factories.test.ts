// The Node host as a library: two hubs in one process, Nerve on a path of an
// existing node:http server and of a Hono app, the JSON 404 for an upgrade
// elsewhere, and a stop that leaves nothing behind to keep the process alive.

import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { createNodeHandler, createNodeServer, type NerveServer } from '../../adapters/node-host.ts';
import { NerveClient } from '../../src/client/index.ts';
import { loadConfig } from '../../src/host/config.ts';

const quiet = { log: () => {} };
const env = (extra: Record<string, string> = {}) => ({ NERVE_PORT: '0', NERVE_PASSWORD: 'pw', NERVE_DRAIN_TIMEOUT: '1000', ...extra });

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function client(url: string, clientId: string, appName = 'svc'): NerveClient {
  const nerve = new NerveClient({ url, appName, clientId, password: 'pw', WebSocket });
  cleanups.push(() => nerve.close());
  return nerve;
}

/** A request from one client answered by another, through the hub at `url`. */
async function roundTrip(url: string): Promise<unknown> {
  const responder = client(url, 'responder', 'echo');
  responder.on('PING', (data, message) => responder.reply(message, { pong: data }));
  await responder.connect();
  const asker = client(url, 'asker', 'api');
  await asker.connect();
  return asker.request('PING', 7, { app_name: 'echo' }, { timeout: 5_000 });
}

/** What an upgrade request to `url` gets back: status and body, or `101` when it was accepted. */
function upgradeAnswer(url: string, origin?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, origin === undefined ? {} : { origin });
    ws.once('open', () => {
      ws.terminate();
      resolve({ status: 101, body: '' });
    });
    ws.once('unexpected-response', (_request, response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => (body += chunk.toString()));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    ws.once('error', reject);
  });
}

const listen = (server: Server) =>
  new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));

describe('createNodeServer', () => {
  it('runs two hubs in one process, each with its own port, config and clients', async () => {
    const first = await createNodeServer(env({ NERVE_HEARTBEAT_INTERVAL: '1111' }), quiet).start();
    cleanups.push(() => first.stop());
    const second = await createNodeServer(loadConfig(env({ NERVE_HEARTBEAT_INTERVAL: '2222' })), quiet).start();
    cleanups.push(() => second.stop());

    expect(first.port).not.toBe(second.port);
    expect(first.url).toBe(`ws://127.0.0.1:${first.port}/`);
    expect(await roundTrip(first.url)).toEqual({ pong: 7 });
    const hello = await new Promise<{ d: { heartbeat_interval: number } }>((resolve) => {
      const ws = new WebSocket(second.url);
      ws.once('message', (data) => {
        ws.terminate();
        resolve(JSON.parse(data.toString()));
      });
    });
    expect(hello.d.heartbeat_interval).toBe(2222);
    expect(first.hub.clients().map((c) => c.client_id).sort()).toEqual(['asker', 'responder']);
    expect(second.hub.clients()).toEqual([]);
  });

  it('answers an upgrade on an unknown path with the JSON 404 every runtime gives', async () => {
    const server = await createNodeServer(env(), quiet).start();
    cleanups.push(() => server.stop());
    expect(await upgradeAnswer(`ws://127.0.0.1:${server.port}/nope`)).toEqual({ status: 404, body: JSON.stringify({ error: 'no route GET /nope' }) });
    expect(await upgradeAnswer(`ws://127.0.0.1:${server.port}/?format=xml`)).toMatchObject({ status: 400 });
  });

  it('holds browsers to NERVE_ALLOWED_ORIGINS on upgrade, as the Hono app does on the other runtimes', async () => {
    const server = await createNodeServer(env({ NERVE_ALLOWED_ORIGINS: 'https://app.example.com' }), quiet).start();
    cleanups.push(() => server.stop());
    expect(await upgradeAnswer(server.url, 'https://evil.example.com')).toMatchObject({ status: 403 });
    expect((await upgradeAnswer(server.url, 'https://app.example.com')).status).toBe(101);
    expect((await upgradeAnswer(server.url)).status).toBe(101);
  });

  it('stops cleanly: clients get GO_AWAY and 1001', async () => {
    const server = await createNodeServer(env(), quiet).start();
    const ws = new WebSocket(server.url);
    const frames: { op: number }[] = [];
    ws.on('message', (data) => frames.push(JSON.parse(data.toString())));
    const closed = new Promise<number>((resolve) => ws.once('close', resolve));
    await new Promise((resolve) => ws.once('open', resolve));
    await server.stop();
    expect(await closed).toBe(1001);
    expect(frames.map((frame) => frame.op)).toEqual([0, 5]);
    expect(server.hub.health()).toMatchObject({ status: 'draining', connections: 0 });
  });

  it('leaves no handle behind: a process that stops its hubs exits by itself, at once', async () => {
    const child = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('fixtures/stop-and-exit.ts', import.meta.url))], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    const exitedAt = Date.now();
    expect(child.stderr).toBe('');
    const report = JSON.parse(child.stdout) as { stopped: boolean; codes: number[]; at: number };
    expect(report).toMatchObject({ stopped: true, codes: [1001, 1001] });
    expect(child.status).toBe(0);
    // A timer left armed (the hub's, a close grace, a drain timeout) would hold the exit back by seconds.
    expect(exitedAt - report.at).toBeLessThan(1_000);
  });

  it('reports a port that is taken as an error from start()', async () => {
    const taken = await createNodeServer(env(), quiet).start();
    cleanups.push(() => taken.stop());
    await expect(createNodeServer(env({ NERVE_PORT: String(taken.port) }), quiet).start()).rejects.toThrow(/EADDRINUSE/);
  });
});

describe('createNodeHandler', () => {
  it('mounts Nerve on a path of an existing node:http server, next to its own routes', async () => {
    const nerve = createNodeHandler(env(), { ...quiet, path: '/nerve' });
    const server = createServer((request, response) =>
      nerve.listener(request, response, () => response.writeHead(200, { 'content-type': 'text/plain' }).end('mine')),
    );
    nerve.attach(server);
    const port = await listen(server);
    cleanups.push(async () => {
      await nerve.close();
      await new Promise((resolve) => server.close(resolve));
    });

    expect(await (await fetch(`http://127.0.0.1:${port}/other`)).text()).toBe('mine');
    expect(await (await fetch(`http://127.0.0.1:${port}/nerve/health`)).json()).toMatchObject({ status: 'ok', connections: 0 });
    expect(await roundTrip(`ws://127.0.0.1:${port}/nerve`)).toEqual({ pong: 7 });
    expect((await upgradeAnswer(`ws://127.0.0.1:${port}/nerve/`)).status).toBe(101);
    const clients = await fetch(`http://127.0.0.1:${port}/nerve/clients`, { headers: { authorization: 'Bearer pw' } });
    expect(((await clients.json()) as unknown[]).length).toBe(2);
  });

  it('leaves upgrades on other paths to the server’s other listeners', async () => {
    const nerve = createNodeHandler(env(), { ...quiet, path: '/nerve' });
    const server = createServer();
    const detach = nerve.attach(server);
    const others: string[] = [];
    server.on('upgrade', (request, socket) => {
      if (request.url?.startsWith('/nerve')) return;
      others.push(request.url ?? '');
      socket.end('HTTP/1.1 418 I am a teapot\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    });
    const port = await listen(server);
    cleanups.push(async () => {
      detach();
      await nerve.close();
      await new Promise((resolve) => server.close(resolve));
    });
    expect((await upgradeAnswer(`ws://127.0.0.1:${port}/elsewhere`)).status).toBe(418);
    expect(others).toEqual(['/elsewhere']);
    expect((await upgradeAnswer(`ws://127.0.0.1:${port}/nerve`)).status).toBe(101);
  });

  it('mounts Nerve in a Hono app on @hono/node-server', async () => {
    const nerve = createNodeHandler(env(), { ...quiet, path: '/hub' });
    const app = new Hono();
    app.get('/', (c) => c.text('home'));
    app.route('/', nerve.app);
    const server = await new Promise<Server>((resolve) => {
      const started = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(started as Server));
    });
    nerve.attach(server);
    const port = (server.address() as AddressInfo).port;
    cleanups.push(async () => {
      await nerve.close();
      await new Promise((resolve) => server.close(resolve));
    });
    expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toBe('home');
    expect(await (await fetch(`http://127.0.0.1:${port}/hub/health`)).json()).toMatchObject({ status: 'ok' });
    expect(await roundTrip(`ws://127.0.0.1:${port}/hub`)).toEqual({ pong: 7 });
  });
});

// A type-level check that every factory's handle has the same shape.
export type HandlesAgree = NerveServer extends Pick<Awaited<ReturnType<ReturnType<typeof createNodeServer>['start']>>, keyof NerveServer> ? true : never;
