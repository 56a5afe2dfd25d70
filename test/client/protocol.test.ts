// The client's side of the wire protocol, checked against a scripted hub that
// can misbehave on purpose (never ACK a heartbeat, restart sequence numbers):
// things a healthy server cannot be made to do on demand.

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { WebSocketServer, type WebSocket as ServerSocket } from 'ws';
import { NerveClient, NerveError } from '../../src/client/index.ts';
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

  it('surfaces NO_U_TBH + a fatal close code as a typed error and does not retry', async () => {
    const client = makeClient({ url, appName: 'gateway', clientId: 'gw-1', password: 'wrong' });
    const first = nextConnection();
    const ready = client.connect();
    const closed = nextState(client, 'closed');
    const connection = await first;
    connection.send({ op: 0, d: { heartbeat_interval: 60_000, worker: 'nerve-abc123' } });
    await connection.next(1);
    connection.send({ op: 6, d: 'IDENTIFY: wrong password' });
    connection.socket.close(4401, 'IDENTIFY: wrong password');

    await expect(ready).rejects.toMatchObject({ name: 'NerveError', code: 4401 });
    await expect(ready).rejects.toThrow(/wrong password/);
    expect((await closed).error?.code).toBe(4401);
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
