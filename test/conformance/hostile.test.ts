// Hostile probes, one case per kind of attack, on every runtime, each with its decided answer, then /health
// and a healthy request/reply pair checked at once. Slow readers are in slow-consumer.test.ts, the fuzz in
// test/core/fuzz.test.ts, the budget at scale in memory.test.ts; wrong passwords belong to the token tests.

import { beforeEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { TestClient, type Wire } from './client.ts';
import { connect, dispatchFrame, eventually, expectError, getClients, identified, KEEPALIVE, RUNTIMES, uid, useServer, type Runtime, type RunningServer } from './harness.ts';
import {
  askingHealth,
  deepArray,
  deepObject,
  deepQuery,
  expectErrorWithin,
  expectHealthy,
  EXTENSIONS,
  HEALTH_MS,
  healthyPair,
  MiB,
  mib,
  namesExtension,
  REDOS_VICTIM,
  sendPacked,
  serverRss,
  streamPost,
  stuckPeer,
  timedHealth,
  uint64,
  type Pair,
  type Raw,
} from './hostile-helpers.ts';

const MAX_PAYLOAD = 256 * 1024;
const QUEUE_MAX_BYTES = 256 * 1024;
const MAX_DEPTH = 32;
const MAX_OPERANDS = 256;
const MAX_TERMS = 512;

/** Held events outlive any burst below; one app's queue is small enough to fill with a few large queries. */
const HOSTILE_ENV = {
  NERVE_MAX_PAYLOAD: String(MAX_PAYLOAD),
  NERVE_QUEUE_TTL: '5000',
  NERVE_QUEUE_MAX_BYTES: String(QUEUE_MAX_BYTES),
};

const BUDGET = 8 * MiB;
const BUDGET_ENV = { NERVE_MAX_MEMORY: String(BUDGET), NERVE_QUEUE_TTL: '5000' };

const MAX_CONNECTIONS = 16;
const MAX_UNIDENTIFIED = 6;
const RATE_LIMIT = 20;
/** The identify timeout is the heartbeat interval: long enough to fill the caps before idle connections time out. */
const CAPS_HEARTBEAT = 5000;
/** Short enough to tell from the 2 s default, long enough to tell from an immediate drop. */
const CLOSE_GRACE = 700;

const CAPS_ENV = {
  NERVE_MAX_CONNECTIONS: String(MAX_CONNECTIONS),
  NERVE_MAX_UNIDENTIFIED: String(MAX_UNIDENTIFIED),
  NERVE_RATE_LIMIT: String(RATE_LIMIT),
  NERVE_HEARTBEAT_INTERVAL: String(CAPS_HEARTBEAT),
};

const MSGPACK_WIRES: Wire[] = [{ format: 'msgpack' }, { format: 'msgpack', compression: 'zlib' }];
const TO_QUERY = /^DISPATCH: to\.query: /;
const NAMES_DEPTH = new RegExp(`(depth|nest)[\\s\\S]*\\b${MAX_DEPTH}\\b|\\b${MAX_DEPTH}\\b[\\s\\S]*(depth|nest)`, 'i');

function post(server: RunningServer, body: string): Promise<Response> {
  return fetch(`${server.http}/dispatch`, {
    method: 'POST',
    headers: { authorization: `Bearer ${server.password}`, 'content-type': 'application/json' },
    body,
    signal: AbortSignal.timeout(10_000),
  });
}

/** Frames of op 8 among those that arrived before a HEARTBEAT_ACK: what a bystander received. */
async function dispatchesSeen(client: TestClient): Promise<any[]> {
  return (await client.sync()).filter((frame) => frame?.op === 8);
}

/** Starts one server for the describe and marks where each test's server output begins. */
function hostileServer(runtime: Runtime, env: Record<string, string>) {
  const server = useServer(runtime, env);
  let mark = 0;
  beforeEach(() => {
    mark = server().lines.length;
  });
  return { server, healthy: (pair?: Pair) => expectHealthy(server(), { pair, since: mark }) };
}

/** A connection that says HELLO and nothing more (heartbeats aside), on a given wire. */
async function unidentified(server: RunningServer, wire: Wire = {}, heartbeatEvery = 0): Promise<TestClient> {
  return (await connect(server, { ...wire, heartbeatEvery })).client;
}

/** Waits for every NERVE_ACK (and any immediate NERVE_UNDELIVERABLE) of `count` nonced dispatches. */
async function outcomes(sender: TestClient, count: number, timeout = 10_000): Promise<{ acks: Map<string, any>; undeliverable: Map<string, any> }> {
  const acks = new Map<string, any>();
  const undeliverable = new Map<string, any>();
  while (acks.size < count) {
    const frame = await sender.waitFor((f) => f?.op === 8 && (f.e === 'NERVE_ACK' || f.e === 'NERVE_UNDELIVERABLE'), timeout, `NERVE_ACK ${acks.size + 1} of ${count}`);
    (frame.e === 'NERVE_ACK' ? acks : undeliverable).set(frame.nonce, frame);
  }
  // A refusal is reported in the same step as its ACK: a barrier collects the rest.
  for (const frame of await sender.sync()) if (frame?.op === 8 && frame.e === 'NERVE_UNDELIVERABLE') undeliverable.set(frame.nonce, frame);
  return { acks, undeliverable };
}

/**
 * One connection past a cap: NO_U_TBH + 4503 over the socket; on Cloudflare,
 * where a socket accepted and closed in one event never finishes its close,
 * HTTP 503 before the upgrade (docs/cloudflare.md).
 */
async function expectAtCapacity(runtime: string, running: RunningServer): Promise<void> {
  if (runtime !== 'cloudflare') {
    await expectErrorWithin(new TestClient(running.url), 4503, /./);
    return;
  }
  const status = await new Promise<number>((resolve, reject) => {
    const ws = new WebSocket(running.url);
    ws.on('unexpected-response', (_request, response) => {
      resolve(response.statusCode ?? 0);
      ws.terminate();
    });
    ws.on('open', () => {
      resolve(101);
      ws.close();
    });
    ws.on('error', (error) => reject(error));
  });
  expect(status, 'an upgrade past the cap is refused with 503').toBe(503);
}

for (const runtime of RUNTIMES) {
  describe(`${runtime}: hostile frames`, () => {
    const { server, healthy } = hostileServer(runtime, HOSTILE_ENV);

    it('msgpack RegExp extension (0x78) as a query value: 4400 naming the extension, at once; nothing is matched or run', async () => {
      const app = uid('gw');
      // The string that takes ^(a+)+$ seconds to reject, should a RegExp ever reach a query.
      const victim = await identified(server(), app, 'victim', { metadata: { name: REDOS_VICTIM } });
      for (const wire of MSGPACK_WIRES) {
        const sender = await identified(server(), uid('api'), 'sender', wire);
        const started = performance.now();
        sendPacked(sender, { op: 8, e: 'EV', d: 1, to: { app_name: app, query: { name: EXTENSIONS.regexp('^(a+)+$') } }, nonce: 'redos' });
        await expectError(sender, 4400, namesExtension(0x78));
        expect(performance.now() - started, `refused within ${HEALTH_MS} ms`).toBeLessThan(HEALTH_MS);
        const inList = await identified(server(), uid('api'), 'sender', wire);
        sendPacked(inList, { op: 8, e: 'EV', d: 1, to: { app_name: app, query: { name: { $in: [EXTENSIONS.regexp('^(a+)+$')] } }, mode: 'all' } });
        await expectError(inList, 4400, namesExtension(0x78));
      }
      expect(await dispatchesSeen(victim)).toEqual([]);
      await healthy();
    });

    it('msgpack ArrayBuffer (0x74) and Set (0x73) in metadata or d: 4400 naming the extension; nothing is kept', async () => {
      const app = uid('gw');
      const recipient = await identified(server(), app, 'recipient');
      const cases: { where: string; type: number; value: Raw }[] = [
        { where: 'IDENTIFY metadata', type: 0x74, value: EXTENSIONS.arrayBuffer(32_000) },
        { where: 'IDENTIFY metadata', type: 0x73, value: EXTENSIONS.set(['a', 'b']) },
        { where: 'ABOUT_ME', type: 0x74, value: EXTENSIONS.arrayBuffer(32_000) },
        { where: 'ABOUT_ME', type: 0x73, value: EXTENSIONS.set([1, 2, 3]) },
        { where: 'd', type: 0x74, value: EXTENSIONS.arrayBuffer(32_000) },
        { where: 'd', type: 0x73, value: EXTENSIONS.set([1, 2, 3]) },
      ];
      for (const { where, type, value } of cases) {
        const clientId = uid('attacker');
        const attackerApp = uid('attackers');
        if (where === 'IDENTIFY metadata') {
          const client = await unidentified(server(), { format: 'msgpack' });
          sendPacked(client, { op: 1, d: { app_name: attackerApp, client_id: clientId, password: server().password, metadata: { blob: value } } });
          await expectError(client, 4400, namesExtension(type));
        } else {
          const client = await identified(server(), attackerApp, clientId, { format: 'msgpack' });
          if (where === 'ABOUT_ME') sendPacked(client, { op: 7, d: { blob: value } });
          else sendPacked(client, { op: 8, e: 'EV', d: { blob: value }, to: { app_name: app, client_id: 'recipient' }, nonce: 'x' });
          await expectError(client, 4400, namesExtension(type));
        }
        // An error close other than a timeout ends the session: nothing of it, or its metadata, stays.
        expect(await getClients(server(), attackerApp), `${where} ${type}`).toEqual([]);
      }
      expect(await dispatchesSeen(recipient)).toEqual([]);
      await healthy();
    });

    it('every other msgpack extension type in d (Error, undefined, timestamp, typed array, BigInt, unknown): 4400 naming it', async () => {
      const app = uid('gw');
      const recipient = await identified(server(), app, 'recipient');
      const cases: [number, Raw][] = [
        [0x65, EXTENSIONS.error('boom')],
        [0x00, EXTENSIONS.undefined()],
        [-1, EXTENSIONS.timestamp(1_700_000_000)],
        [0x74, EXTENSIONS.typedArray(4, 8)],
        [0x42, EXTENSIONS.bigint()],
        [0x70, EXTENSIONS.pointer()],
        [0x11, EXTENSIONS.unknown(0x11, 3)],
      ];
      for (const [type, value] of cases) {
        const sender = await identified(server(), uid('api'), 'sender', { format: 'msgpack' });
        sendPacked(sender, { op: 8, e: 'EV', d: { v: value }, to: { app_name: app, client_id: 'recipient' }, nonce: 'x' });
        await expectError(sender, 4400, namesExtension(type));
      }
      expect(await dispatchesSeen(recipient)).toEqual([]);
      await healthy();
    });

    it('msgpack uint64 beyond 2^53 (a time.time_ns()) in d: accepted as the nearest double and delivered, to JSON and msgpack readers', async () => {
      const app = uid('gw');
      const json = await identified(server(), app, 'json');
      const packed = await identified(server(), app, 'packed', { format: 'msgpack' });
      const sender = await identified(server(), uid('api'), 'sender', { format: 'msgpack' });
      const ns = 1_700_000_000_123_456_789n;
      const max = 2n ** 64n - 1n;
      for (const recipient of ['json', 'packed']) {
        sendPacked(sender, { op: 8, e: 'TIME', d: { ns: uint64(ns), max: uint64(max) }, to: { app_name: app, client_id: recipient }, nonce: recipient });
        expect((await sender.event('NERVE_ACK')).d).toEqual({ delivered: 1, queued: 0 });
      }
      for (const client of [json, packed]) {
        const event = await client.event('TIME');
        // Whatever integer or float encoding carries it back, the value is JSON.parse's.
        expect(Number(event.d.ns)).toBe(Number(ns));
        expect(Number(event.d.max)).toBe(Number(max));
      }
      expect(sender.log.some((r) => r.frame?.op === 6)).toBe(false);
      await healthy();
    });

    it('a query that compiles but cannot be matched ({"$gt":{}}): 4400 / HTTP 400 naming to.query; no partial fan-out; held queues keep flowing', async () => {
      const app = uid('gw');
      const r1 = await identified(server(), app, 'r1', { metadata: { load: 0.5, limits: { cpu: 4 } } });
      const r2 = await identified(server(), app, 'r2', { metadata: { load: 0.7, limits: { cpu: 8 } } });
      for (const query of [{ load: { $gt: {} } }, { 'limits.cpu': { $gte: { a: 1 } } }, { $or: [{ load: 0.5 }, { load: { $lt: {} } }] }]) {
        const sender = await identified(server(), uid('api'), 'sender');
        sender.send(dispatchFrame('EV', { app_name: app, query, mode: 'all' }, { nonce: 'bad' }));
        await expectError(sender, 4400, TO_QUERY);
        const res = await post(server(), JSON.stringify({ e: 'EV', to: { app_name: app, query, mode: 'all' } }));
        expect(res.status, JSON.stringify(query)).toBe(400);
        expect((await res.json()).error).toMatch(/to\.query/);
      }
      for (const recipient of [r1, r2]) expect(await dispatchesSeen(recipient)).toEqual([]);
      // Nothing was half-delivered either: the first event they do get is s 1.
      const sender = await identified(server(), uid('api'), 'sender');
      sender.send(dispatchFrame('OK', { app_name: app, query: { load: { $gt: 0 } }, mode: 'all' }, { nonce: 'good' }));
      expect((await sender.event('NERVE_ACK')).d).toEqual({ delivered: 2, queued: 0 });
      for (const recipient of [r1, r2]) expect(await recipient.event('OK')).toMatchObject({ s: 1, nonce: 'good' });

      // Before: held at the head of an app's queue it blocked it, and legitimate held events expired behind it.
      const later = uid('later');
      const bad = await identified(server(), uid('api'), 'bad');
      bad.send(dispatchFrame('EV', { app_name: later, query: { load: { $gt: {} } } }, { nonce: 'bad-held' }));
      await expectError(bad, 4400, TO_QUERY);
      const good = await identified(server(), uid('api'), 'good');
      for (let i = 0; i < 5; i++) good.send(dispatchFrame('HELD', { app_name: later, query: { load: { $lt: 1 } } }, { d: i, nonce: `held-${i}` }));
      const { acks } = await outcomes(good, 5);
      expect([...acks.values()].map((ack) => ack.d)).toEqual(Array(5).fill({ delivered: 0, queued: 1 }));
      const consumer = await identified(server(), later, 'consumer', { metadata: { load: 0.1 } });
      const held: any[] = [];
      while (held.length < 5) held.push(await consumer.event('HELD'));
      expect(held.map((f) => f.d)).toEqual([0, 1, 2, 3, 4]);
      expect(good.pending().filter((f) => f?.e === 'NERVE_UNDELIVERABLE')).toEqual([]);
      await healthy();
    });

    it(`held dispatches with a large to.query: the query counts against the app's queue (${QUEUE_MAX_BYTES} bytes); the rest is refused at once`, async () => {
      const app = uid('nobody-yet');
      const sender = await identified(server(), uid('api'), 'sender');
      const QUERY_BYTES = 40_000;
      const SENT = 20;
      for (let i = 0; i < SENT; i++) {
        sender.send(dispatchFrame('EV', { app_name: app, query: { name: `${'q'.repeat(QUERY_BYTES)}${i}` } }, { d: i, nonce: `q-${i}` }));
      }
      const { acks, undeliverable } = await outcomes(sender, SENT);
      const queued = [...acks.values()].filter((ack) => ack.d.queued === 1);
      const refused = [...acks.values()].filter((ack) => ack.d.delivered === 0 && ack.d.queued === 0);
      // Counted without its query, every one of these would fit.
      expect(queued.length).toBeGreaterThan(0);
      expect(queued.length * QUERY_BYTES).toBeLessThanOrEqual(QUEUE_MAX_BYTES);
      expect(queued.length + refused.length).toBe(SENT);
      for (const ack of refused) {
        expect(undeliverable.get(ack.nonce), `NERVE_UNDELIVERABLE for ${ack.nonce}`).toMatchObject({ d: { reason: expect.stringMatching(/full/), e: 'EV' } });
      }
      await healthy();
    });

    it(`$in / $nin / $all over ${MAX_OPERANDS} operands, or over ${MAX_TERMS} terms: 4400 / HTTP 400 naming to.query; a query at the limit answers at once over a crowd`, async () => {
      const app = uid('gw');
      const values = Array.from({ length: MAX_OPERANDS + 44 }, (_, i) => `t${i}`);
      // Each member holds all but one of the values, so a full $all scans every one of them.
      const crowd = await Promise.all(Array.from({ length: 20 }, (_, i) => identified(server(), app, `m${i}`, { metadata: { tags: values.slice(0, MAX_OPERANDS - 1) } })));
      const sender = await identified(server(), uid('api'), 'sender');
      const started = performance.now();
      sender.send(dispatchFrame('EV', { app_name: app, query: { tags: { $all: values.slice(0, MAX_OPERANDS) } }, mode: 'all' }, { nonce: 'at-limit' }));
      expect((await sender.event('NERVE_ACK')).d).toEqual({ delivered: 0, queued: 0 });
      expect(performance.now() - started, 'a query at the limits is answered promptly').toBeLessThan(HEALTH_MS);
      sender.send(dispatchFrame('EV', { app_name: app, query: { tags: { $in: values.slice(0, 100) } }, mode: 'all' }, { nonce: 'in' }));
      expect((await sender.event('NERVE_ACK')).d).toEqual({ delivered: 20, queued: 0 });

      const overLimit: Record<string, unknown>[] = [
        { tags: { $all: values.slice(0, MAX_OPERANDS + 1) } },
        { tags: { $in: values } },
        { tags: { $nin: values } },
        // Few conditions, but more operand values than a query may hold in all.
        { $and: [{ tags: { $in: values.slice(0, 200) } }, { tags: { $nin: values.slice(100, 300) } }, { tags: { $all: values.slice(40, 240) } }] },
        { $or: Array.from({ length: MAX_TERMS + 88 }, (_, i) => ({ tags: `t${i}` })) },
      ];
      for (const query of overLimit) {
        const attacker = await identified(server(), uid('api'), 'attacker');
        attacker.send(dispatchFrame('EV', { app_name: app, query, mode: 'all' }, { nonce: 'over' }));
        await expectError(attacker, 4400, TO_QUERY);
        const res = await post(server(), JSON.stringify({ e: 'EV', to: { app_name: app, query, mode: 'all' } }));
        expect(res.status).toBe(400);
        expect((await res.json()).error).toMatch(/to\.query/);
      }
      for (const member of crowd) expect((await dispatchesSeen(member)).map((f) => f.nonce)).toEqual(['in']);
      await healthy();
    });

    it(`nesting: ${MAX_DEPTH} levels (the frame is level 1) pass, deeper is 4400 naming the limit — d, metadata, queries, msgpack, HTTP; 10k deep never crashes`, async () => {
      const app = uid('gw');
      const recipient = await identified(server(), app, 'recipient');
      const nested = (levels: number): unknown => (levels === 0 ? 1 : [nested(levels - 1)]);

      // {"op":8,"d":[…]}: the frame is level 1, so d may hold 31 arrays.
      const sender = await identified(server(), uid('api'), 'sender');
      sender.send(dispatchFrame('DEEP', { app_name: app, client_id: 'recipient' }, { d: nested(MAX_DEPTH - 1), nonce: 'at-limit' }));
      expect((await sender.event('NERVE_ACK')).d).toEqual({ delivered: 1, queued: 0 });
      expect((await recipient.event('DEEP')).d).toEqual(nested(MAX_DEPTH - 1));
      sender.send(dispatchFrame('DEEP', { app_name: app, client_id: 'recipient' }, { d: nested(MAX_DEPTH), nonce: 'over' }));
      await expectError(sender, 4400, NAMES_DEPTH);

      const attempts: { what: string; wire: Wire; send: (client: TestClient) => void; identify?: boolean }[] = [
        { what: 'JSON d 10k deep', wire: {}, send: (c) => c.sendRaw(`{"op":8,"e":"EV","to":{"app_name":"${app}"},"d":${deepArray(10_000).json}}`) },
        { what: 'JSON d of 10k objects', wire: {}, send: (c) => c.sendRaw(`{"op":8,"e":"EV","to":{"app_name":"${app}"},"d":${deepObject(10_000).json}}`) },
        { what: 'msgpack d 10k deep', wire: { format: 'msgpack' }, send: (c) => sendPacked(c, { op: 8, e: 'EV', to: { app_name: app }, d: deepArray(10_000) }) },
        { what: '$and 10k deep', wire: {}, send: (c) => c.sendRaw(`{"op":8,"e":"EV","to":{"app_name":"${app}","query":${deepQuery(10_000, '$and').json}}}`) },
        { what: '$or 10k deep', wire: { format: 'msgpack' }, send: (c) => sendPacked(c, { op: 8, e: 'EV', to: { app_name: app, query: deepQuery(10_000, '$or') } }) },
        { what: '$not 10k deep', wire: {}, send: (c) => c.sendRaw(`{"op":8,"e":"EV","to":{"app_name":"${app}","query":${deepQuery(10_000, '$not').json}}}`) },
        { what: 'ABOUT_ME metadata 10k deep', wire: {}, send: (c) => c.sendRaw(`{"op":7,"d":{"m":${deepObject(10_000).json}}}`) },
        {
          what: 'IDENTIFY metadata 10k deep',
          wire: {},
          identify: false,
          send: (c) => c.sendRaw(`{"op":1,"d":{"app_name":"${uid('deep')}","client_id":"c","password":${JSON.stringify(server().password)},"metadata":{"m":${deepObject(10_000).json}}}}`),
        },
      ];
      for (const { what, wire, send, identify } of attempts) {
        const client = identify === false ? await unidentified(server(), wire) : await identified(server(), uid('api'), 'attacker', wire);
        send(client);
        const { reason } = await expectError(client, 4400, /./);
        expect(reason, what).toMatch(NAMES_DEPTH);
      }
      const res = await post(server(), `{"e":"EV","to":{"app_name":"${app}"},"d":${deepArray(10_000).json}}`);
      expect(res.status).toBe(400);
      expect((await res.json()).error).toMatch(NAMES_DEPTH);
      const deepQueryOverHttp = await post(server(), `{"e":"EV","to":{"app_name":"${app}","query":${deepQuery(10_000, '$and').json}}}`);
      expect(deepQueryOverHttp.status).toBe(400);
      expect(await dispatchesSeen(recipient)).toEqual([]);
      await healthy();
    });

    it(`POST /dispatch with a 64 MiB body (limit ${MAX_PAYLOAD / 1024} KiB), declared or chunked: 413 JSON, and the body is never held in memory`, async () => {
      const before = serverRss(server());
      const results = [];
      for (const chunked of [false, true]) {
        const result = await streamPost(server(), '/dispatch', 64 * MiB, { chunked });
        results.push(result);
        expect(result.status, `${chunked ? 'chunked' : 'declared'}: ${result.error ?? result.body.slice(0, 200)}`).toBe(413);
        expect(JSON.parse(result.body)).toEqual({ error: expect.any(String) });
      }
      const grown = serverRss(server()) - before;
      expect(grown, `RSS grew by ${mib(grown)} (written: ${results.map((r) => mib(r.written)).join(', ')})`).toBeLessThan(32 * MiB);
      // Exactly at the limit is still fine.
      const res = await post(server(), JSON.stringify({ e: 'EV', to: { app_name: uid('nobody'), mode: 'all' }, d: 'x'.repeat(MAX_PAYLOAD - 200) }));
      expect(res.status).toBe(200);
      await healthy();
    });
  });

  describe(`${runtime}: the global memory budget (NERVE_MAX_MEMORY ${mib(BUDGET)})`, () => {
    const { server, healthy } = hostileServer(runtime, BUDGET_ENV);

    it('large events held across 100 app names stop at the budget: the excess gets NERVE_UNDELIVERABLE "hub is full"', async () => {
      const sender = await identified(server(), uid('api'), 'sender');
      const EVENT_BYTES = 60_000;
      const APPS = 100;
      const PER_APP = 2;
      const apps = Array.from({ length: APPS }, () => uid('empty'));
      const payload = 'x'.repeat(EVENT_BYTES);
      for (let round = 0; round < PER_APP; round++) {
        for (const [i, app] of apps.entries()) sender.send(dispatchFrame('BIG', { app_name: app }, { d: payload, nonce: `${i}-${round}` }));
      }
      const { acks, undeliverable } = await outcomes(sender, APPS * PER_APP, 20_000);
      const queued = [...acks.values()].filter((ack) => ack.d.queued === 1).length;
      const refused = [...acks.values()].filter((ack) => ack.d.queued === 0 && ack.d.delivered === 0);
      expect(queued * EVENT_BYTES, `${queued} held`).toBeLessThanOrEqual(BUDGET);
      expect(refused.length).toBe(APPS * PER_APP - queued);
      expect(refused.length).toBeGreaterThan(0);
      for (const ack of refused) {
        expect(undeliverable.get(ack.nonce), `NERVE_UNDELIVERABLE for ${ack.nonce}`).toMatchObject({ d: { reason: expect.stringContaining('hub is full'), e: 'BIG' } });
      }
      // Held events still fill the budget; direct traffic must still flow.
      await healthy();
    });
  });

  // Its own hub: peers that never answer a close should meet a hub no earlier case has filled.
  describe(`${runtime}: connections the server closed`, () => {
    const { server, healthy } = hostileServer(runtime, CAPS_ENV);

    it('a connection the server closed stops counting at once, though its peer never answers the close', async () => {
      // Connections of the case before may still be closing: start from a count that holds still.
      const count = async () => (await fetch(`${server().http}/health`)).json().then((body: { connections: number }) => body.connections);
      let base = await count();
      for (let settled = 0; settled < 2; ) {
        await new Promise((resolve) => setTimeout(resolve, 150));
        const now = await count();
        settled = now === base ? settled + 1 : 0;
        base = now;
      }
      const peers = await Promise.all(Array.from({ length: 4 }, () => stuckPeer(server())));
      await eventually(() => timedHealth(server()), (h) => h.body.connections === base + peers.length, 3000, 'stuck peers counted');
      // Their identify timeout (5 s) sends NO_U_TBH and the close; the peers never reply. /health is asked
      // meanwhile: under wrangler dev, a GET after five idle seconds can hang in wrangler's proxy (askingHealth).
      const { value: codes, at: closedAt } = await askingHealth(server(), Promise.all(peers.map((peer) => peer.closeFrame)));
      expect(codes).toEqual(Array(peers.length).fill(4408));
      await eventually(() => timedHealth(server()), (h) => h.body.connections === base, 2000, '/health connections back to the base');
      expect(performance.now() - closedAt).toBeLessThan(1000);
      const metrics = await (await fetch(`${server().http}/metrics`)).text();
      expect(metrics).toMatch(new RegExp(`^nerve_connections\\{[^}]*\\} ${base}$`, 'm'));
      for (const peer of peers) peer.socket.destroy();
      await healthy();
    });

  });

  // Only Node's sockets wait for the peer's answer: Bun's close ends the TCP connection once its buffer is sent
  // (the grace bounds that wait: slow-consumer.test.ts), Deno and workerd run the closing handshake themselves.
  (runtime === 'node' ? describe : describe.skip)(`${runtime}: NERVE_CLOSE_GRACE`, () => {
    const { server, healthy } = hostileServer(runtime, { NERVE_HEARTBEAT_INTERVAL: '1000', NERVE_CLOSE_GRACE: String(CLOSE_GRACE) });

    it(`a peer that never answers the server's close is dropped ${CLOSE_GRACE} ms after it, not at the 2 s default`, async () => {
      const peer = await stuckPeer(server());
      const ended = new Promise<number>((resolve) => peer.socket.once('close', () => resolve(performance.now())));
      // The identify timeout sends NO_U_TBH and the close; the peer never replies.
      expect(await peer.closeFrame).toBe(4408);
      const closedAt = performance.now();
      const waited = (await ended) - closedAt;
      expect(waited, `dropped ${Math.round(waited)} ms after the close frame`).toBeGreaterThan(CLOSE_GRACE - 100);
      expect(waited, `dropped ${Math.round(waited)} ms after the close frame`).toBeLessThan(1_800);
      await healthy();
    });
  });

  describe(`${runtime}: connections that never identify, and HTTP under the rate limit`, () => {
    const { server, healthy } = hostileServer(runtime, CAPS_ENV);

    it(`at most ${MAX_UNIDENTIFIED} unidentified and ${MAX_CONNECTIONS} connections: one more gets NO_U_TBH + 4503; identified clients keep working`, async () => {
      const pair = await healthyPair(server());
      const idle: TestClient[] = [];
      for (let i = 0; i < MAX_UNIDENTIFIED; i++) idle.push(await unidentified(server(), {}, KEEPALIVE.heartbeatEvery));
      await expectAtCapacity(runtime, server());
      await pair.exchange();

      // Identifying frees an unidentified place; the total cap still counts it.
      for (const [i, client] of idle.entries()) {
        client.identify({ app_name: uid('idle'), client_id: `c${i}`, password: server().password });
        expect(await client.next()).toEqual({ op: 2, d: "hi i'm dad" });
      }
      const more: TestClient[] = [];
      const open = (await timedHealth(server())).body.connections as number;
      for (let i = open; i < MAX_CONNECTIONS; i++) more.push(await identified(server(), uid('more'), 'c'));
      await expectAtCapacity(runtime, server());
      await pair.exchange();

      // A place freed is a place taken.
      await more.pop()!.close(1000);
      await eventually(() => timedHealth(server()), (h) => h.body.connections < MAX_CONNECTIONS, 3000, 'a freed connection');
      const again = await identified(server(), uid('again'), 'c');
      await again.close(1000);
      await Promise.all([...idle, ...more].map((client) => client.close(1000)));
      await healthy(pair);
      await pair.close();
    });

    it(`POST /dispatch counts against NERVE_RATE_LIMIT (${RATE_LIMIT}/s, burst ${RATE_LIMIT * 2}): over it, 429 JSON`, async () => {
      const app = uid('nobody');
      const body = JSON.stringify({ e: 'EV', to: { app_name: app, mode: 'all' }, d: 1 });
      const statuses: number[] = [];
      const errors: unknown[] = [];
      for (let batch = 0; batch < 5; batch++) {
        const answers = await Promise.all(Array.from({ length: 30 }, () => post(server(), body)));
        for (const res of answers) {
          statuses.push(res.status);
          const json = await res.json();
          if (res.status === 429) errors.push(json);
        }
      }
      expect(statuses[0]).toBe(200);
      expect(statuses.filter((s) => s === 429).length, `statuses: ${JSON.stringify(statuses)}`).toBeGreaterThan(0);
      expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
      expect(errors[0]).toEqual({ error: expect.any(String) });
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect((await post(server(), body)).status, 'the bucket refills').toBe(200);
      await healthy();
    });
  });
}
