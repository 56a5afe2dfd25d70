// The client's side of the wire protocol, checked against a scripted hub that
// can misbehave on purpose (never ACK a heartbeat, restart sequence numbers):
// things a healthy server cannot be made to do on demand.

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { WebSocketServer, type WebSocket as ServerSocket } from 'ws';
import { NerveClient, NerveError, type StateInfo } from '../../src/client/index.ts';
import { closeAll, collect, makeClient, nextState } from './helpers.ts';

interface Received {
  text: boolean;
  raw: string;
  frame: { op: number; d?: any; e?: string; to?: any; nonce?: string };
}

class ScriptedConnection {
  readonly frames: Received[] = [];
  #waiters: { op: number; resolve(frame: Received): void }[] = [];
  #seen = 0;

  constructor(readonly socket: ServerSocket) {
    socket.on('message', (data, isBinary) => {
      const raw = data.toString();
      const received: Received = { text: !isBinary, raw, frame: JSON.parse(raw) };
      this.frames.push(received);
      for (const waiter of [...this.#waiters]) {
        if (waiter.op === received.frame.op) {
          this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
          this.#seen = this.frames.length;
          waiter.resolve(received);
          return;
        }
      }
    });
  }

  send(frame: object): void {
    this.socket.send(JSON.stringify(frame));
  }

  /** The next frame with this op not yet returned by an earlier call. */
  next(op: number): Promise<Received> {
    const found = this.frames.slice(this.#seen).find((received) => received.frame.op === op);
    if (found) {
      this.#seen = this.frames.indexOf(found) + 1;
      return Promise.resolve(found);
    }
    return new Promise((resolve) => this.#waiters.push({ op, resolve }));
  }

  /** HELLO, wait for IDENTIFY, WELCOME; returns the IDENTIFY payload. */
  async handshake(heartbeatInterval = 60_000): Promise<any> {
    this.send({ op: 0, d: { heartbeat_interval: heartbeatInterval, worker: 'nerve-abc123' } });
    const identify = await this.next(1);
    this.send({ op: 2, d: "hi i'm dad" });
    return identify.frame.d;
  }

  dispatch(e: string, d: unknown, s: number, nonce?: string): void {
    this.send({ op: 8, e, d, from: { app_name: 'api', client_id: 'api-1' }, s, ...(nonce && { nonce }) });
  }
}

let hub: WebSocketServer;
let url: string;
let connections: ScriptedConnection[];
let connectionWaiters: ((connection: ScriptedConnection) => void)[];

function nextConnection(): Promise<ScriptedConnection> {
  return new Promise((resolve) => connectionWaiters.push(resolve));
}

/** connect() through a full handshake; resolves once the client is ready. */
async function connectClient(client: NerveClient<any, any>, heartbeatInterval?: number) {
  const accepted = nextConnection();
  const ready = client.connect();
  const connection = await accepted;
  const identify = await connection.handshake(heartbeatInterval);
  await ready;
  return { connection, identify };
}

beforeEach(async () => {
  connections = [];
  connectionWaiters = [];
  hub = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((resolve) => hub.once('listening', resolve));
  url = `ws://127.0.0.1:${(hub.address() as { port: number }).port}`;
  hub.on('connection', (socket) => {
    const connection = new ScriptedConnection(socket);
    connections.push(connection);
    connectionWaiters.shift()?.(connection);
  });
});

afterEach(async () => {
  await closeAll();
  for (const client of hub.clients) client.terminate();
  await new Promise((resolve) => hub.close(resolve));
});

describe('client protocol', () => {
  it('identifies with its metadata and heartbeats with the exact {"op":3} text', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw', metadata: { region: 'eu' } });
    const { connection, identify } = await connectClient(client, 30);
    expect(identify).toEqual({ app_name: 'gateway', client_id: 'gw-1', password: 'pw', metadata: { region: 'eu' } });
    expect(client.worker).toBe('nerve-abc123');

    const beat = await connection.next(3);
    expect(beat).toMatchObject({ text: true, raw: '{"op":3}' });
  });

  it('treats an unacknowledged heartbeat as a dead connection and resumes from the last s', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw' });
    const events = collect<number>(client, 'TICK');
    const { connection } = await connectClient(client, 40); // and never ACK a heartbeat
    connection.dispatch('TICK', 1, 1);
    connection.dispatch('TICK', 2, 2);
    await events.until(2);

    const reconnecting = nextState(client, 'reconnecting');
    const second = nextConnection();
    expect(await reconnecting).toMatchObject({ attempt: 1 });
    const resumed = await second;
    const identify = await resumed.handshake();
    expect(identify).toMatchObject({ reconnect: true, seq: 2 });

    // A replay that overlaps what was already handled must not reach handlers twice.
    resumed.dispatch('TICK', 2, 2);
    resumed.dispatch('TICK', 3, 3);
    expect(await events.until(3)).toEqual([1, 2, 3]);
  });

  it('accepts s = 1 after a reconnect as a fresh session rather than a duplicate', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw' });
    const events = collect<string>(client, 'TICK');
    const { connection } = await connectClient(client);
    connection.dispatch('TICK', 'old-1', 1);
    connection.dispatch('TICK', 'old-2', 2);
    await events.until(2);

    const second = nextConnection();
    connection.send({ op: 5, d: 'go away.' });
    connection.socket.close(1001);
    const restarted = await second;
    expect(await restarted.handshake()).toMatchObject({ reconnect: true, seq: 2 });
    restarted.dispatch('TICK', 'new-1', 1);
    restarted.dispatch('TICK', 'new-2', 2);
    expect(await events.until(4)).toEqual(['old-1', 'old-2', 'new-1', 'new-2']);
  });

  it('buffers dispatches and metadata changes while offline and sends them in order after WELCOME', async () => {
    const client = makeClient({
      url,
      appName: 'gateway',
      clientId: 'gw-1',
      password: 'pw',
      metadata: { region: 'eu', load: 1 },
      maxBufferedMessages: 3,
    });
    const { connection } = await connectClient(client);

    const reconnecting = nextState(client, 'reconnecting');
    connection.socket.terminate();
    await reconnecting;
    const second = nextConnection();
    client.dispatch('A', 1, { app_name: 'api' });
    client.setMetadata({ load: null, users: ['42'] });
    client.dispatch('B', 2, { app_name: 'api', mode: 'all', query: { region: 'eu' } });
    expect(() => client.dispatch('C', 3, { app_name: 'api' })).toThrow(
      expect.objectContaining({ name: 'NerveError', code: 'BUFFER_FULL' }),
    );

    const resumed = await second;
    const identify = await resumed.handshake();
    expect(identify.metadata).toEqual({ region: 'eu', users: ['42'] });
    await resumed.next(8);
    await resumed.next(8);
    const sent = resumed.frames.filter((received) => received.frame.op !== 3).map((received) => received.frame);
    expect(sent).toEqual([
      { op: 1, d: identify },
      { op: 8, e: 'A', d: 1, to: { app_name: 'api' } },
      { op: 7, d: { load: null, users: ['42'] } },
      { op: 8, e: 'B', d: 2, to: { app_name: 'api', mode: 'all', query: { region: 'eu' } } },
    ]);
  });

  it('rejects a request when the ACK says nobody got it, and on timeout', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw' });
    const { connection } = await connectClient(client);

    const nobody = client.request('USER_GET', { id: '42' }, { app_name: 'api', mode: 'all' });
    const sent = await connection.next(8);
    connection.send({ op: 8, e: 'NERVE_ACK', nonce: sent.frame.nonce, d: { delivered: 0, queued: 0 } });
    await expect(nobody).rejects.toMatchObject({ code: 'UNDELIVERABLE' });

    const slow = client.request('USER_GET', { id: '42' }, { app_name: 'api' }, { timeout: 30 });
    await expect(slow).rejects.toBeInstanceOf(NerveError);
    await expect(slow).rejects.toMatchObject({ code: 'TIMEOUT' });
  });

  it('hands a request to its handler once and does not mistake a late second reply for an event', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw' });
    const events = collect(client, 'USER_GET');
    const { connection } = await connectClient(client);

    const answer = client.request('USER_GET', { id: '42' }, { app_name: 'api', mode: 'all' });
    const { frame } = await connection.next(8);
    connection.dispatch('USER_GET', { name: 'first' }, 1, frame.nonce);
    connection.dispatch('USER_GET', { name: 'second' }, 2, frame.nonce);
    connection.dispatch('USER_GET', { id: '7' }, 3, 'someone-elses-nonce');
    expect(await answer).toEqual({ name: 'first' });
    expect(await events.until(1)).toEqual([{ id: '7' }]);
  });

  it('collects every reply to requestAll() until the ACK count is reached, and drops later ones', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw' });
    const events = collect(client, 'WHO_HAS');
    const { connection } = await connectClient(client);

    const answers = client.requestAll('WHO_HAS', { user: '42' }, { app_name: 'api', query: { region: 'eu' } });
    const { frame } = await connection.next(8);
    expect(frame.to).toEqual({ app_name: 'api', query: { region: 'eu' }, mode: 'all' });
    connection.send({ op: 8, e: 'NERVE_ACK', nonce: frame.nonce, d: { delivered: 2, queued: 0 } });
    connection.send({ op: 8, e: 'WHO_HAS', d: 'no', from: { app_name: 'api', client_id: 'api-1' }, nonce: frame.nonce, s: 1 });
    connection.send({ op: 8, e: 'WHO_HAS', d: 'yes', from: { app_name: 'api', client_id: 'api-2' }, nonce: frame.nonce, s: 2 });
    connection.send({ op: 8, e: 'WHO_HAS', d: 'late', from: { app_name: 'api', client_id: 'api-3' }, nonce: frame.nonce, s: 3 });
    connection.dispatch('WHO_HAS', 'a real request', 4, 'their-nonce');
    expect(await answers).toEqual([
      { from: { app_name: 'api', client_id: 'api-1' }, data: 'no' },
      { from: { app_name: 'api', client_id: 'api-2' }, data: 'yes' },
    ]);
    expect(await events.until(1)).toEqual(['a real request']);
  });

  it('resolves requestAll() with the replies so far on timeout, and with [] when nobody matched', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw' });
    const { connection } = await connectClient(client);

    const partial = client.requestAll('WHO_HAS', null, { app_name: 'api' }, { timeout: 100 });
    const asked = await connection.next(8);
    connection.send({ op: 8, e: 'NERVE_ACK', nonce: asked.frame.nonce, d: { delivered: 3, queued: 0 } });
    connection.dispatch('WHO_HAS', 'only me', 1, asked.frame.nonce);
    expect(await partial).toEqual([{ from: { app_name: 'api', client_id: 'api-1' }, data: 'only me' }]);

    const nobody = client.requestAll('WHO_HAS', null, { app_name: 'api' }, { timeout: 10_000 });
    const unheard = await connection.next(8);
    connection.send({ op: 8, e: 'NERVE_ACK', nonce: unheard.frame.nonce, d: { delivered: 0, queued: 0 } });
    expect(await nobody).toEqual([]);
    expect(() => client.requestAll('A', 1, { app_name: 'api', key: 'k' } as never)).toThrow(
      expect.objectContaining({ code: 'INVALID' }),
    );
  });

  it('replies with the request\'s event name and nonce, once, and keeps the hub\'s answers to its replies to itself', async () => {
    const client = makeClient({ url, appName: 'api', clientId: 'api-1', password: 'pw' });
    const acks = collect(client, 'NERVE_ACK');
    const undeliverable = collect(client, 'NERVE_UNDELIVERABLE');
    const replied: boolean[] = [];
    client.on('USER_GET', (data, message) => {
      replied.push(client.reply(message, { name: 'Ada' }));
      replied.push(client.reply(message, { name: 'twice' }));
    });
    const { connection } = await connectClient(client);

    connection.send({ op: 8, e: 'USER_GET', d: { id: '42' }, from: { app_name: 'gateway', client_id: 'gw-1' }, nonce: 'q-1', s: 1 });
    const reply = await connection.next(8);
    expect(reply.frame).toEqual({ op: 8, e: 'USER_GET', d: { name: 'Ada' }, to: { app_name: 'gateway', client_id: 'gw-1' }, nonce: 'q-1' });
    expect(replied).toEqual([true, false]);
    // What the hub says about a reply: its ACK, and NERVE_UNDELIVERABLE if the requester is gone for good.
    connection.send({ op: 8, e: 'NERVE_ACK', nonce: 'q-1', d: { delivered: 0, queued: 1 } });
    connection.send({ op: 8, e: 'NERVE_UNDELIVERABLE', nonce: 'q-1', d: { reason: 'gone', e: 'USER_GET' } });

    // Our own request's ACK still reaches NERVE_ACK handlers, after the ones above would have.
    const own = client.request('PING', null, { app_name: 'gateway' });
    const sent = await connection.next(8);
    connection.send({ op: 8, e: 'NERVE_ACK', nonce: sent.frame.nonce, d: { delivered: 1, queued: 0 } });
    expect(await acks.until(1)).toEqual([{ delivered: 1, queued: 0 }]);
    expect(undeliverable.received).toEqual([]);
    connection.dispatch('PING', 'pong', 2, sent.frame.nonce);
    expect(await own).toBe('pong');
  });

  it('hands a request addressed to its own client_id to its handler, then resolves with the reply', async () => {
    const client = makeClient({ url, appName: 'api', clientId: 'api-1', password: 'pw' });
    client.on('ECHO', (data, message) => client.reply(message, { echoed: data }));
    const { connection } = await connectClient(client);

    const answer = client.request('ECHO', 'hi', { app_name: 'api', client_id: 'api-1' });
    const request = await connection.next(8);
    const self = { app_name: 'api', client_id: 'api-1' };
    connection.send({ op: 8, e: 'ECHO', d: 'hi', from: self, nonce: request.frame.nonce, s: 1 });
    const reply = await connection.next(8);
    expect(reply.frame).toMatchObject({ e: 'ECHO', d: { echoed: 'hi' }, nonce: request.frame.nonce });
    connection.send({ op: 8, e: 'ECHO', d: reply.frame.d, from: self, nonce: request.frame.nonce, s: 2 });
    expect(await answer).toEqual({ echoed: 'hi' });
  });

  it('reconnects and resumes from the last s after 4507 (slow consumer)', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw' });
    const events = collect<number>(client, 'TICK');
    const { connection } = await connectClient(client);
    connection.dispatch('TICK', 1, 1);
    connection.dispatch('TICK', 2, 2);
    await events.until(2);

    const reconnecting = nextState(client, 'reconnecting');
    const second = nextConnection();
    connection.socket.close(4507, 'slow consumer: 1048576 bytes unsent');
    expect(await reconnecting).toMatchObject({ code: 4507, attempt: 1 });
    const resumed = await second;
    expect(await resumed.handshake()).toMatchObject({ reconnect: true, seq: 2 });
    resumed.dispatch('TICK', 3, 3);
    expect(await events.until(3)).toEqual([1, 2, 3]);
  });

  it('retries 4503 (hub at capacity) with a growing backoff until it is let in', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw', reconnectDelay: 40, maxReconnectDelay: 1_000 });
    const retries: { attempt?: number; delay?: number; code?: number }[] = [];
    client.onState((state, info) => {
      if (state === 'connecting' && info.code !== undefined) retries.push(info);
    });
    const ready = client.connect();
    for (let refused = 0; refused < 3; refused++) {
      const connection = await nextConnection();
      connection.send({ op: 6, d: 'hub at capacity' });
      connection.socket.close(4503, 'hub at capacity');
    }
    const admitted = await nextConnection();
    await admitted.handshake();
    await ready;
    expect(client.state).toBe('ready');
    expect(retries.map(({ attempt, code }) => ({ attempt, code }))).toEqual([
      { attempt: 1, code: 4503 },
      { attempt: 2, code: 4503 },
      { attempt: 3, code: 4503 },
    ]);
    // The ceiling doubles (40, 80, 160 ms) and jitter keeps each delay in its upper half.
    retries.forEach(({ delay }, i) => {
      expect(delay).toBeGreaterThanOrEqual(20 * 2 ** i);
      expect(delay).toBeLessThanOrEqual(40 * 2 ** i);
    });
  });

  it('starts counting s again after NERVE_SESSION says the session is fresh, even before any dispatch arrives', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw' });
    const sessions = collect(client, 'NERVE_SESSION');
    const ticks = collect(client, 'TICK');
    const { connection } = await connectClient(client);
    for (const s of [1, 2, 3]) connection.dispatch('TICK', s, s);
    await ticks.until(3);

    let next = nextConnection();
    connection.socket.terminate();
    const fresh = await next;
    expect(await fresh.handshake()).toMatchObject({ reconnect: true, seq: 3 });
    fresh.send({ op: 8, e: 'NERVE_SESSION', d: { resumed: false, s: 0, replayed: 0 } });
    await sessions.until(1);

    // Dropped again before the fresh session sent anything: seq 3 would be ahead of it (4400).
    next = nextConnection();
    fresh.socket.terminate();
    expect(await (await next).handshake()).toMatchObject({ reconnect: true, seq: 0 });
    expect(sessions.received).toEqual([{ resumed: false, s: 0, replayed: 0 }]);
  });

  it('waits as long as a refusal\'s reason asks before reconnecting', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw' });
    const retry = new Promise<StateInfo>((resolve) => client.onState((state, info) => info.code !== undefined && resolve(info)));
    const accepted = nextConnection();
    void client.connect().catch(() => undefined);
    const connection = await accepted;
    connection.send({ op: 0, d: { heartbeat_interval: 60_000, worker: 'nerve-abc123' } });
    await connection.next(1);
    connection.send({ op: 6, d: 'IDENTIFY: too many failed authentications from this address; retry in 2 s' });
    connection.socket.close(4429, 'IDENTIFY: too many failed authentications from this address; retry in 2 s');
    const info = await retry;
    expect(info).toMatchObject({ code: 4429, attempt: 1 });
    expect(info.delay).toBeGreaterThanOrEqual(2_000);
  });

  it('asks a token function for a fresh token on every attempt, and retries one 4401 with a new token', async () => {
    let issued = 0;
    const client = makeClient({ url, appName: 'web', clientId: 'user-42', token: async () => `token-${++issued}` });
    const { connection, identify } = await connectClient(client);
    expect(identify).toEqual({ app_name: 'web', client_id: 'user-42', token: 'token-1', metadata: {} });

    // The hub closes a live connection whose token expired; the session stays resumable.
    let next = nextConnection();
    connection.send({ op: 6, d: 'token expired' });
    connection.socket.close(4401, 'token expired');
    const renewed = await next;
    expect(await renewed.handshake()).toMatchObject({ token: 'token-2', reconnect: true });

    // A fresh token refused, then another: that is final.
    const closed = nextState(client, 'closed');
    next = nextConnection();
    renewed.socket.close(4401, 'token expired');
    const refusedOnce = await next;
    refusedOnce.send({ op: 0, d: { heartbeat_interval: 60_000, worker: 'nerve-abc123' } });
    expect((await refusedOnce.next(1)).frame.d).toMatchObject({ token: 'token-3' });
    refusedOnce.socket.close(4401, 'IDENTIFY: the token has expired');
    expect((await closed).error).toMatchObject({ code: 4401 });
    expect(issued).toBe(3);
  });

  it('gives up on an attempt whose token never comes, and asks again', async () => {
    const calls: number[] = [];
    const client = makeClient({
      url,
      appName: 'web',
      clientId: 'user-42',
      handshakeTimeout: 50,
      token: () => (calls.push(calls.length + 1) === 1 ? new Promise<string>(() => {}) : 'late-but-fresh'),
    });
    const { identify } = await connectClient(client);
    expect(identify.token).toBe('late-but-fresh');
    expect(calls).toEqual([1, 2]);
  });

  it('refuses options with both or neither of password and token', () => {
    const base = { url, appName: 'web', clientId: 'user-42', WebSocket: (() => {}) as never };
    expect(() => new NerveClient({ ...base })).toThrow(expect.objectContaining({ code: 'INVALID' }));
    expect(() => new NerveClient({ ...base, password: 'pw', token: 't' })).toThrow(expect.objectContaining({ code: 'INVALID' }));
  });

  it('reconnects after a 4413 on a live connection, but stops when IDENTIFY itself is over the limit', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw' });
    const { connection } = await connectClient(client);
    const next = nextConnection();
    client.setMetadata({ blob: 'x'.repeat(100) });
    await connection.next(7);
    connection.send({ op: 6, d: 'ABOUT_ME: metadata would be 70000 bytes, over the limit of 65536' });
    connection.socket.close(4413, 'ABOUT_ME: metadata would be 70000 bytes, over the limit of 65536');

    // The metadata it keeps is what the hub refused, so the next IDENTIFY is refused too: retrying cannot help.
    const closed = nextState(client, 'closed');
    const again = await next;
    again.send({ op: 0, d: { heartbeat_interval: 60_000, worker: 'nerve-abc123' } });
    expect((await again.next(1)).frame.d.metadata).toEqual({ blob: 'x'.repeat(100) });
    again.send({ op: 6, d: 'IDENTIFY: metadata would be 70000 bytes, over the limit of 65536' });
    again.socket.close(4413, 'IDENTIFY: metadata would be 70000 bytes, over the limit of 65536');
    expect((await closed).error).toMatchObject({ code: 4413 });
    expect(connections).toHaveLength(2);
  });

  it.each([
    [4400, 'IDENTIFY: app_name must be a non-empty string'],
    [4401, 'IDENTIFY: wrong password'],
    [4403, 'IDENTIFY: already identified'],
    [4409, 'IDENTIFY: gateway/gw-1 is already connected'],
  ])('surfaces NO_U_TBH + fatal close code %i as a typed error and does not retry', async (code, reason) => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'wrong' });
    const first = nextConnection();
    const ready = client.connect();
    const closed = nextState(client, 'closed');
    const connection = await first;
    connection.send({ op: 0, d: { heartbeat_interval: 60_000, worker: 'nerve-abc123' } });
    await connection.next(1);
    connection.send({ op: 6, d: reason });
    connection.socket.close(code, reason);

    await expect(ready).rejects.toMatchObject({ name: 'NerveError', code });
    await expect(ready).rejects.toThrow(reason);
    expect((await closed).error?.code).toBe(code);
    expect(client.state).toBe('closed');
    expect(connections).toHaveLength(1);
    expect(() => client.dispatch('A', 1, { app_name: 'api' })).toThrow(expect.objectContaining({ code: 'CLOSED' }));
  });

  it('refuses reserved and malformed event names before they reach the wire', () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'pw' });
    expect(() => client.dispatch('NERVE_ACK', 1, { app_name: 'api' })).toThrow(
      expect.objectContaining({ code: 'INVALID' }),
    );
    expect(() => client.dispatch('', 1, { app_name: 'api' })).toThrow(expect.objectContaining({ code: 'INVALID' }));
    expect(() => client.dispatch('A', 1, { app_name: '' })).toThrow(expect.objectContaining({ code: 'INVALID' }));
  });
});
