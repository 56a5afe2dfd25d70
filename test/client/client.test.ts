// The client SDK against a real Nerve server process: request/reply, broadcast,
// resume after a dropped socket, server restarts, GO_AWAY and refused logins.

import { execFileSync } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NerveError } from '../../src/client/index.ts';
import { RUNTIMES, startServer, type RunningServer } from '../support/server.ts';
import { closeAll, collect, controlledSocket, makeClient, nextState, sleep } from './helpers.ts';

const fastServer = {
  NERVE_HEARTBEAT_INTERVAL: '300',
  NERVE_QUEUE_TTL: '300',
  NERVE_RESUME_WINDOW: '10000',
};

async function httpDispatch(server: RunningServer, body: object): Promise<{ delivered: number; queued: number }> {
  const response = await fetch(`${server.http}/dispatch`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${server.password}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(response.status).toBe(200);
  return (await response.json()) as { delivered: number; queued: number };
}

/** client_ids the hub lists for an app, connected or waiting to be resumed. */
async function listedClients(server: RunningServer, appName: string): Promise<string[]> {
  const response = await fetch(`${server.http}/clients?app_name=${appName}`, { headers: { Authorization: `Bearer ${server.password}` } });
  return ((await response.json()) as { client_id: string }[]).map((client) => client.client_id);
}

/**
 * Kills the server like a crash would: the process and any it started (a
 * launcher's runtime binary, tsx's esbuild), none of them given a chance to
 * say goodbye.
 */
async function crash(server: RunningServer): Promise<void> {
  let children: string[] = [];
  try {
    children = execFileSync('pgrep', ['-P', String(server.child.pid)], { encoding: 'utf8' }).trim().split('\n');
  } catch {
    // no child process: the server is the process itself
  }
  for (const pid of children) process.kill(Number(pid), 'SIGKILL');
  await server.stop('SIGKILL');
}

async function workerOf(server: RunningServer): Promise<string> {
  const health = (await (await fetch(`${server.http}/health`)).json()) as { worker: string };
  return health.worker;
}

afterEach(closeAll);

describe.each(RUNTIMES)('client SDK against a %s server', (runtime) => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startServer(runtime, fastServer);
  });
  afterAll(() => server.stop());

  const connected = async (appName: string, clientId: string, options: object = {}) => {
    const client = makeClient({ url: server.url, password: server.password, appName, clientId, ...options });
    await client.connect();
    return client;
  };

  it('answers a request across two clients, whatever wire format each side uses', async () => {
    const api = await connected('api', 'api-rr', { format: 'msgpack', compression: 'zlib' });
    const gateway = await connected('gateway', 'gw-rr', { compression: 'zlib' });
    const seen: unknown[] = [];
    api.on('USER_GET', (data, message) => {
      seen.push(message.from);
      api.reply(message, { id: (data as { id: string }).id, name: 'Ada', tags: ['a', 'b'] });
    });

    expect(gateway.worker).toBe(await workerOf(server));
    const user = await gateway.request('USER_GET', { id: '42' }, { app_name: 'api' }, { timeout: 5_000 });
    expect(user).toEqual({ id: '42', name: 'Ada', tags: ['a', 'b'] });
    expect(seen).toEqual([{ app_name: 'gateway', client_id: 'gw-rr' }]);
  });

  it('gathers one reply per matching client with requestAll(), and repliers never see the hub\'s ACK for their replies', async () => {
    const api = await connected('api', 'api-all');
    const gateways = await Promise.all(
      ['eu-1', 'eu-2', 'us-1'].map((id) => connected('gateway', `gw-all-${id}`, { metadata: { region: id.slice(0, 2) } })),
    );
    const acksAtRepliers = gateways.map((gateway) => collect(gateway, 'NERVE_ACK'));
    for (const gateway of gateways) {
      gateway.on('WHO_IS_THERE', (data, message) => gateway.reply(message, gateway.clientId));
    }
    const acksAtApi = collect(api, 'NERVE_ACK');

    const replies = await api.requestAll('WHO_IS_THERE', null, { app_name: 'gateway', query: { region: 'eu' } }, { timeout: 5_000 });
    expect(replies.map((reply) => reply.data).sort()).toEqual(['gw-all-eu-1', 'gw-all-eu-2']);
    expect(replies.map((reply) => reply.from.client_id).sort()).toEqual(['gw-all-eu-1', 'gw-all-eu-2']);
    expect(await acksAtApi.until(1)).toEqual([{ delivered: 2, queued: 0 }]);
    expect(await api.requestAll('WHO_IS_THERE', null, { app_name: 'gateway', query: { region: 'mars' } })).toEqual([]);

    // request() to mode all takes the first answer; the hub has long ACKed every reply by the time this one returns.
    const first = await api.request('WHO_IS_THERE', null, { app_name: 'gateway', mode: 'all' }, { timeout: 5_000 });
    expect(['gw-all-eu-1', 'gw-all-eu-2', 'gw-all-us-1']).toContain(first);
    await api.request('WHO_IS_THERE', null, { app_name: 'gateway', client_id: 'gw-all-us-1' }, { timeout: 5_000 });
    expect(acksAtRepliers.map((acks) => acks.received)).toEqual([[], [], []]);
  });

  it('keeps every wire format connected across heartbeat intervals', async () => {
    const wires = [{}, { compression: 'zlib' }, { format: 'msgpack' }, { format: 'msgpack', compression: 'zlib' }];
    const clients = await Promise.all(wires.map((wire, i) => connected('gateway', `gw-beat-${i}`, wire)));
    const changes: string[] = [];
    for (const client of clients) client.onState((state) => changes.push(state));
    // Past the 1.5 × interval server timeout several times over: a heartbeat it cannot read would have cost the connection.
    await sleep(1_200);
    expect(changes).toEqual([]);
    expect(clients.map((client) => client.state)).toEqual(['ready', 'ready', 'ready', 'ready']);
  });

  it('rejects a request that nobody picks up with NERVE_UNDELIVERABLE once the queue TTL passes', async () => {
    const gateway = await connected('gateway', 'gw-undeliverable');
    const answer = gateway.request('USER_GET', { id: '42' }, { app_name: 'api', client_id: 'nobody-here' });
    const error = (await answer.catch((error: unknown) => error)) as NerveError;
    expect(error).toBeInstanceOf(NerveError);
    expect(error.code).toBe('UNDELIVERABLE');
    expect(error.data).toMatchObject({ e: 'USER_GET' });
  });

  it('broadcasts with mode all to every client whose metadata matches, and follows metadata changes', async () => {
    const api = await connected('api', 'api-bc');
    const a = await connected('gateway', 'gw-bc-a', { metadata: { users: ['42', '7'] } });
    const b = await connected('gateway', 'gw-bc-b', { metadata: { users: ['42'] } });
    const c = await connected('gateway', 'gw-bc-c', { metadata: { users: ['9'] } });
    const [atA, atB, atC] = [a, b, c].map((client) => collect(client, 'USER_UPDATED'));

    api.dispatch('USER_UPDATED', { id: '42' }, { app_name: 'gateway', query: { users: '42' }, mode: 'all' });
    // A broadcast to everyone afterwards: once C has it, C would already have had the first one.
    api.dispatch('USER_UPDATED', { id: 'all' }, { app_name: 'gateway', mode: 'all' });
    expect(await atA.until(2)).toEqual([{ id: '42' }, { id: 'all' }]);
    expect(await atB.until(2)).toEqual([{ id: '42' }, { id: 'all' }]);
    expect(await atC.until(1)).toEqual([{ id: 'all' }]);

    // The server applies C's metadata before C's next frame, so routing sees it once API has heard from C.
    const synced = new Promise((resolve) => api.on('SYNCED', resolve));
    c.setMetadata({ users: ['9', '42'] });
    c.dispatch('SYNCED', null, { app_name: 'api' });
    await synced;
    expect(c.metadata).toEqual({ users: ['9', '42'] });
    api.dispatch('USER_UPDATED', { id: '42-again' }, { app_name: 'gateway', query: { users: '42' }, mode: 'all' });
    expect(await atC.until(2)).toEqual([{ id: 'all' }, { id: '42-again' }]);
  });

  it('resumes after an abrupt drop and gets what was sent meanwhile exactly once, in order', async () => {
    const control = controlledSocket();
    const gateway = await connected('gateway', 'gw-resume', { WebSocket: control.WebSocket, metadata: { shard: 'r' } });
    const events = collect<number>(gateway, 'TICK');
    const to = { app_name: 'gateway', client_id: 'gw-resume' };
    for (const n of [1, 2, 3]) await httpDispatch(server, { e: 'TICK', d: n, to });
    await events.until(3);

    control.offline = true;
    const reconnecting = nextState(gateway, 'reconnecting');
    control.cut();
    await reconnecting;
    // Broadcasts are never re-queued for a fresh session: only resuming this one can deliver them.
    const broadcast = { app_name: 'gateway', query: { shard: 'r' }, mode: 'all' };
    for (const n of [4, 5, 6, 7]) {
      expect(await httpDispatch(server, { e: 'TICK', d: n, to: broadcast })).toEqual({ delivered: 1, queued: 0 });
    }

    const ready = nextState(gateway, 'ready');
    control.offline = false;
    await ready;
    await httpDispatch(server, { e: 'TICK', d: 8, to });
    // 8 arrives after any replay, so by then a duplicate would already be in the list.
    expect(await events.until(8)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('surfaces a wrong password as NerveError 4401 and does not retry', async () => {
    const states: string[] = [];
    const client = makeClient({ url: server.url, password: 'wrong', appName: 'gateway', clientId: 'gw-auth' });
    client.onState((state) => states.push(state));
    const closed = nextState(client, 'closed');
    const error = (await client.connect().catch((error: unknown) => error)) as NerveError;
    expect(error).toBeInstanceOf(NerveError);
    expect(error.code).toBe(4401);
    expect(client.state).toBe('closed');
    expect((await closed).error).toBe(error);
    expect(states).toEqual(['connecting', 'closed']);
  });

  it('refuses a second live connection for the same client_id with 4409', async () => {
    await connected('gateway', 'gw-twice');
    const twin = makeClient({ url: server.url, password: server.password, appName: 'gateway', clientId: 'gw-twice' });
    await expect(twin.connect()).rejects.toMatchObject({ name: 'NerveError', code: 4409 });
  });

  it('ends its session on close(), so later messages for it are held instead of delivered', async () => {
    const gateway = await connected('gateway', 'gw-close');
    const closed = nextState(gateway, 'closed');
    await gateway.close();
    expect(await closed).toEqual({ code: 1000 });
    expect(gateway.state).toBe('closed');
    // The client's close event can come before the hub has handled the same close; /clients shows when it has.
    await expect.poll(() => listedClients(server, 'gateway'), { timeout: 5_000 }).not.toContain('gw-close');
    const result = await httpDispatch(server, { e: 'TICK', d: 1, to: { app_name: 'gateway', client_id: 'gw-close' } });
    expect(result).toEqual({ delivered: 0, queued: 1 });
  });
});

describe.each(RUNTIMES)('client SDK across %s server restarts', (runtime) => {
  const servers: RunningServer[] = [];
  const start = async (env: Record<string, string> = {}) => {
    const server = await startServer(runtime, { ...fastServer, ...env });
    servers.push(server);
    return server;
  };
  afterEach(async () => {
    await closeAll();
    await Promise.all(servers.splice(0).map((server) => server.stop()));
  });

  it('reconnects after the server process dies and is started again on the same port', async () => {
    const first = await start();
    const gateway = makeClient({ url: first.url, password: first.password, appName: 'gateway', clientId: 'gw-restart' });
    await gateway.connect();
    const events = collect<string>(gateway, 'TICK');
    const to = { app_name: 'gateway', client_id: 'gw-restart' };
    await httpDispatch(first, { e: 'TICK', d: 'before-1', to });
    await httpDispatch(first, { e: 'TICK', d: 'before-2', to });
    await events.until(2);

    const reconnecting = nextState(gateway, 'reconnecting');
    await crash(first);
    expect((await reconnecting).code).toBe(1006);

    const ready = nextState(gateway, 'ready');
    const second = await start({ NERVE_PORT: String(first.port) });
    expect((await ready).worker).toBe(await workerOf(second));
    // The new process numbers this fresh session from 1 again; the client must not take that for a replay.
    await httpDispatch(second, { e: 'TICK', d: 'after-1', to });
    expect(await events.until(3)).toEqual(['before-1', 'before-2', 'after-1']);
  });

  // A Worker gets no signal to stop on, so there is no GO_AWAY to test there (docs/cloudflare.md).
  it.skipIf(runtime === 'cloudflare')('on GO_AWAY reports reconnecting and comes back when another server takes the port', async () => {
    const first = await start();
    const gateway = makeClient({
      url: first.url,
      password: first.password,
      appName: 'gateway',
      clientId: 'gw-goaway',
      metadata: { region: 'eu' },
    });
    await gateway.connect();
    const firstWorker = gateway.worker;

    const reconnecting = nextState(gateway, 'reconnecting');
    const stopped = first.stop('SIGTERM');
    expect(await reconnecting).toMatchObject({ code: 1001, delay: 0 });
    expect(await stopped).toBe(0);

    const ready = nextState(gateway, 'ready');
    const second = await start({ NERVE_PORT: String(first.port) });
    await ready;
    expect(gateway.worker).not.toBe(firstWorker);
    expect(gateway.worker).toBe(await workerOf(second));

    // Metadata was re-sent in IDENTIFY, so metadata routing works on the new server.
    const events = collect(gateway, 'HELLO_EU');
    await httpDispatch(second, { e: 'HELLO_EU', d: 1, to: { app_name: 'gateway', query: { region: 'eu' }, mode: 'all' } });
    expect(await events.until(1)).toEqual([1]);
  });
});
