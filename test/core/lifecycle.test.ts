// Core rules of docs/protocol.md §2 (frames) to §5 (ABOUT_ME) and §10 (GO_AWAY):
// HELLO, IDENTIFY, heartbeats, timeouts, every error close in its order of
// checks, ABOUT_ME and GO_AWAY.

import { describe, expect, it } from 'vitest';
import { failure, framesTo, JSON_WIRE, Sim } from './harness.ts';

const HELLO = { op: 0, d: { heartbeat_interval: 45_000, worker: 'nerve-abc123' } };
const ident = (d: Record<string, unknown> = {}) => ({ op: 1, d: { app_name: 'api', client_id: 'api-1', password: 'pw', ...d } });

describe('connection lifecycle', () => {
  it('greets with HELLO carrying the interval and worker id', () => {
    const sim = new Sim();
    expect(sim.open(1)).toEqual([{ conn: 1, frame: HELLO }]);
  });

  it('answers IDENTIFY with WELCOME, exactly "hi i\'m dad"', () => {
    const sim = new Sim();
    sim.open(1);
    expect(sim.send(1, ident())).toEqual([{ conn: 1, frame: { op: 2, d: "hi i'm dad" } }]);
  });

  it('acks the canonical heartbeat with the canonical bytes, before and after IDENTIFY', () => {
    const sim = new Sim();
    sim.open(1);
    sim.send(1, '{"op":3}');
    expect(sim.raw).toEqual([{ type: 'send', conn: 1, data: '{"op":4}' }]);
    sim.send(1, ident());
    sim.send(1, { op: 3, d: 'ignored' });
    expect(sim.raw).toEqual([{ type: 'send', conn: 1, data: '{"op":4}' }]);
  });

  it('closes 4408 when no IDENTIFY arrives within one interval', () => {
    const sim = new Sim({ heartbeatInterval: 1_000 });
    sim.open(1);
    expect(sim.advance(999)).toEqual([]);
    expect(sim.advance(1)).toEqual(failure(1, 4408, 'identify timeout: no IDENTIFY within 1000 ms'));
  });

  it('heartbeats before IDENTIFY do not extend the identify deadline', () => {
    const sim = new Sim({ heartbeatInterval: 1_000 });
    sim.open(1);
    sim.advance(600);
    sim.send(1, '{"op":3}');
    expect(sim.advance(400)).toEqual(failure(1, 4408, 'identify timeout: no IDENTIFY within 1000 ms'));
  });

  it('closes 4408 after 1.5 intervals without a heartbeat, measured from the last one', () => {
    const sim = new Sim({ heartbeatInterval: 1_000 });
    sim.connect(1, 'api', 'a');
    expect(sim.advance(1_400)).toEqual([]);
    sim.send(1, '{"op":3}');
    expect(sim.advance(1_499)).toEqual([]);
    expect(sim.advance(1)).toEqual(failure(1, 4408, 'heartbeat timeout: no HEARTBEAT within 1500 ms'));
  });

  it('keeps steady clients alive indefinitely', () => {
    const sim = new Sim({ heartbeatInterval: 1_000 });
    sim.connect(1, 'api', 'a');
    for (let i = 0; i < 50; i++) {
      expect(sim.advance(1_000)).toEqual([]);
      sim.send(1, '{"op":3}');
    }
  });

  it('logs identify with the client identity', () => {
    const sim = new Sim();
    sim.open(7);
    const events = sim.sendWithLogs(7, ident());
    expect(events).toContainEqual({ log: 'identified', fields: { conn: 7, app_name: 'api', client_id: 'api-1' } });
  });
});

describe('errors: NO_U_TBH then close, in the documented order of checks', () => {
  const before: [string, string | object, number, string][] = [
    ['bad JSON', '{"op":', 4400, 'undecodable JSON frame'],
    ['a JSON array', '[1,2]', 4400, 'frame must be an object'],
    ['a JSON string', '"hello"', 4400, 'frame must be an object'],
    ['missing op', { d: 1 }, 4400, 'frame must have an integer op'],
    ['string op', { op: '1' }, 4400, 'frame must have an integer op'],
    ['fractional op', { op: 1.5 }, 4400, 'frame must have an integer op'],
    ['unknown op', { op: 42 }, 4400, 'unknown op 42'],
    ['HELLO from a client', { op: 0 }, 4400, 'op 0 (HELLO) is sent by the server only'],
    ['WELCOME from a client', { op: 2 }, 4400, 'op 2 (WELCOME) is sent by the server only'],
    ['HEARTBEAT_ACK from a client', { op: 4 }, 4400, 'op 4 (HEARTBEAT_ACK) is sent by the server only'],
    ['GO_AWAY from a client', { op: 5 }, 4400, 'op 5 (GO_AWAY) is sent by the server only'],
    ['NO_U_TBH from a client', { op: 6 }, 4400, 'op 6 (NO_U_TBH) is sent by the server only'],
    ['ABOUT_ME before IDENTIFY', { op: 7, d: {} }, 4403, 'ABOUT_ME before IDENTIFY'],
    ['DISPATCH before IDENTIFY', { op: 8, e: 'X', to: { app_name: 'a' } }, 4403, 'DISPATCH before IDENTIFY'],
    ['DISPATCH before IDENTIFY, even when invalid', { op: 8 }, 4403, 'DISPATCH before IDENTIFY'],
    ['IDENTIFY without d', { op: 1 }, 4400, 'IDENTIFY: d must be an object'],
    ['IDENTIFY with d an array', { op: 1, d: [] }, 4400, 'IDENTIFY: d must be an object'],
    ['IDENTIFY without app_name', { op: 1, d: { client_id: 'c', password: 'pw' } }, 4400, 'IDENTIFY: app_name is required'],
    ['IDENTIFY with empty app_name', ident({ app_name: '' }), 4400, 'IDENTIFY: app_name must be a non-empty string'],
    ['IDENTIFY with long app_name', ident({ app_name: 'a'.repeat(129) }), 4400, 'IDENTIFY: app_name must be at most 128 characters'],
    ['IDENTIFY with numeric client_id', ident({ client_id: 5 }), 4400, 'IDENTIFY: client_id must be a non-empty string'],
    ['IDENTIFY with non-string password', ident({ password: 1 }), 4400, 'IDENTIFY: password must be a string'],
    ['IDENTIFY with array metadata', ident({ metadata: [] }), 4400, 'IDENTIFY: metadata must be an object'],
    ['IDENTIFY with string reconnect', ident({ reconnect: 'yes' }), 4400, 'IDENTIFY: reconnect must be true or false'],
    ['IDENTIFY with negative seq', ident({ seq: -1 }), 4400, 'IDENTIFY: seq must not be negative'],
    ['IDENTIFY with a wrong password', ident({ password: 'nope' }), 4401, 'IDENTIFY: wrong password'],
    ['IDENTIFY with oversized metadata', ident({ metadata: { big: 'x'.repeat(70_000) } }), 4413, 'IDENTIFY: metadata would be 70010 bytes, over the limit of 65536'],
  ];
  it.each(before)('before IDENTIFY: %s', (_name, frame, code, reason) => {
    const sim = new Sim();
    sim.open(1);
    expect(sim.send(1, frame)).toEqual(failure(1, code, reason));
  });

  const after: [string, string | object, number, string][] = [
    ['a second IDENTIFY', ident(), 4403, 'IDENTIFY: already identified'],
    ['a second IDENTIFY, even invalid', { op: 1, d: 5 }, 4403, 'IDENTIFY: already identified'],
    ['ABOUT_ME with a non-object', { op: 7, d: [1] }, 4400, 'ABOUT_ME: d must be an object'],
    ['ABOUT_ME over the metadata limit', { op: 7, d: { big: 'x'.repeat(70_000) } }, 4413, 'ABOUT_ME: metadata would be 70010 bytes, over the limit of 65536'],
    ['DISPATCH without e', { op: 8, to: { app_name: 'a' } }, 4400, 'DISPATCH: e is required'],
    ['DISPATCH with an empty e', { op: 8, e: '', to: { app_name: 'a' } }, 4400, 'DISPATCH: e must be a non-empty string'],
    ['DISPATCH with a reserved e', { op: 8, e: 'NERVE_ACK', to: { app_name: 'a' } }, 4400, 'DISPATCH: e must not start with NERVE_ (reserved for server events)'],
    ['DISPATCH without to', { op: 8, e: 'X' }, 4400, 'DISPATCH: to is required'],
    ['DISPATCH with to not an object', { op: 8, e: 'X', to: 'api' }, 4400, 'DISPATCH: to must be an object'],
    ['DISPATCH with to an array', { op: 8, e: 'X', to: ['api'] }, 4400, 'DISPATCH: to must be an object'],
    ['DISPATCH without to.app_name', { op: 8, e: 'X', to: {} }, 4400, 'DISPATCH: to.app_name is required'],
    ['DISPATCH with a numeric to.client_id', { op: 8, e: 'X', to: { app_name: 'a', client_id: 3 } }, 4400, 'DISPATCH: to.client_id must be a non-empty string'],
    ['DISPATCH with a bad mode', { op: 8, e: 'X', to: { app_name: 'a', mode: 'some' } }, 4400, 'DISPATCH: to.mode must be "one" or "all"'],
    ['DISPATCH with a numeric nonce', { op: 8, e: 'X', to: { app_name: 'a' }, nonce: 1 }, 4400, 'DISPATCH: nonce must be a string'],
    ['DISPATCH with $where', { op: 8, e: 'X', to: { app_name: 'a', query: { $where: 'true' } } }, 4400, 'DISPATCH: to.query: unsupported query operator $where'],
    ['DISPATCH with a nested $function', { op: 8, e: 'X', to: { app_name: 'a', query: { x: { $function: {} } } } }, 4400, 'DISPATCH: to.query: unsupported query operator $function at x'],
    ['DISPATCH with $regex', { op: 8, e: 'X', to: { app_name: 'a', query: { x: { $regex: 'a' } } } }, 4400, 'DISPATCH: to.query: unsupported query operator $regex at x'],
    ['DISPATCH with $in not an array', { op: 8, e: 'X', to: { app_name: 'a', query: { x: { $in: 5 } } } }, 4400, 'DISPATCH: to.query: $in at x needs an array'],
    ['DISPATCH with $or of non-queries', { op: 8, e: 'X', to: { app_name: 'a', query: { $or: [1] } } }, 4400, 'DISPATCH: to.query: $or[0] needs a query object'],
    ['a server-only op after WELCOME', { op: 4 }, 4400, 'op 4 (HEARTBEAT_ACK) is sent by the server only'],
  ];
  it.each(after)('after WELCOME: %s', (_name, frame, code, reason) => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a');
    expect(sim.send(1, frame)).toEqual(failure(1, code, reason));
  });

  it('refuses a frame over the size limit with 4413, counting UTF-8 bytes', () => {
    const sim = new Sim({ maxPayload: 100 });
    sim.open(1);
    expect(sim.send(1, JSON.stringify({ op: 3, d: 'é'.repeat(45) }))).toEqual(failure(1, 4413, 'frame of 105 bytes exceeds the limit of 100 bytes'));
  });

  it('answers frames the transport refused like any bad frame', () => {
    const sim = new Sim({ maxPayload: 100 });
    sim.connect(1, 'api', 'a');
    expect(sim.refused(1, true)).toEqual(failure(1, 4413, 'frame exceeds the limit of 100 bytes'));
    sim.open(2);
    expect(sim.refused(2, false, 'invalid UTF-8 sequence')).toEqual(failure(2, 4400, 'malformed frame: invalid UTF-8 sequence'));
    expect(sim.state.sessions.size).toBe(0);
  });

  it('rate-limits with a token bucket: burst of two seconds, then 4429', () => {
    const sim = new Sim({ rateLimit: 5 });
    sim.open(1);
    for (let i = 0; i < 10; i++) expect(sim.send(1, '{"op":3}')).toEqual([{ conn: 1, frame: { op: 4 } }]);
    expect(sim.send(1, '{"op":3}')).toEqual(failure(1, 4429, 'rate limit exceeded: more than 5 frames per second'));
  });

  it('refills the rate-limit bucket with time', () => {
    const sim = new Sim({ rateLimit: 5 });
    sim.open(1);
    for (let i = 0; i < 10; i++) sim.send(1, '{"op":3}');
    sim.now += 200; // one token
    expect(sim.send(1, '{"op":3}')).toEqual([{ conn: 1, frame: { op: 4 } }]);
    expect(sim.send(1, '{"op":3}')[1]).toMatchObject({ close: 4429 });
  });

  it('ignores frames from a connection it is closing', () => {
    const sim = new Sim();
    sim.open(1);
    sim.send(1, '{"op":42}');
    expect(sim.send(1, ident())).toEqual([]);
  });

  it('truncates the close reason to 123 bytes but sends the whole reason in NO_U_TBH', () => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a');
    const events = sim.send(1, { op: 8, e: 'X', to: { app_name: 'a', query: { [`$${'x'.repeat(200)}`]: 1 } } });
    const reason = `DISPATCH: to.query: unsupported query operator $${'x'.repeat(200)}`;
    expect(events[0]).toEqual({ conn: 1, frame: { op: 6, d: reason } });
    expect(events[1]).toEqual({ conn: 1, close: 4400, reason: reason.slice(0, 123) });
  });

  it('never lets one connection\'s error disturb another', () => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a');
    sim.connect(2, 'api', 'b');
    sim.send(1, 'garbage');
    expect(sim.dispatch(2, 'PING', 1, { app_name: 'api', client_id: 'b' })).toEqual([
      { conn: 2, frame: { op: 8, e: 'PING', d: 1, from: { app_name: 'api', client_id: 'b' }, s: 1 } },
    ]);
  });
});

describe('duplicate identities', () => {
  it('refuses a second connection for the same (app_name, client_id) with 4409', () => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a');
    sim.open(2);
    expect(sim.send(2, ident({ client_id: 'a' }))).toEqual(failure(2, 4409, 'IDENTIFY: api/a is already connected'));
  });

  it('lets the same client_id exist in two apps', () => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a');
    expect(() => sim.connect(2, 'gateway', 'a')).not.toThrow();
  });

  it('reconnect: true takes the session over; the old connection gets 4409', () => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a');
    sim.open(2);
    expect(sim.send(2, ident({ client_id: 'a', reconnect: true }))).toEqual([
      ...failure(1, 4409, 'Session taken over by a new connection'),
      { conn: 2, frame: { op: 2, d: "hi i'm dad" } },
      { conn: 2, frame: { op: 8, e: 'NERVE_SESSION', d: { resumed: true, s: 0, replayed: 0 } } },
    ]);
    expect(sim.close(1, 4409)).toEqual([]);
    sim.connect(3, 'gw', 'g');
    expect(framesTo(sim.dispatch(3, 'X', 1, { app_name: 'api' }), 2)).toHaveLength(1);
  });
});

describe('ABOUT_ME', () => {
  it('shallow-merges, and null removes a key', () => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a', { metadata: { region: 'eu', load: 0.1 } });
    expect(sim.send(1, { op: 7, d: { load: 0.5, users: ['1'] } })).toEqual([]);
    expect(sim.send(1, { op: 7, d: { region: null } })).toEqual([]);
    expect(sim.state.sessions.get('api\u0000a')!.metadata).toEqual({ load: 0.5, users: ['1'] });
  });

  it('treats __proto__ as an ordinary key', () => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a');
    sim.send(1, '{"op":7,"d":{"__proto__":{"polluted":true}}}');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.keys(sim.state.sessions.get('api\u0000a')!.metadata)).toEqual(['__proto__']);
  });

  it('counts the limit on the merged metadata as JSON, exactly', () => {
    const sim = new Sim({ maxMetadata: 20 });
    sim.connect(1, 'api', 'a', { metadata: { a: 'xxxxx' } }); // {"a":"xxxxx"} = 13 bytes
    expect(sim.send(1, { op: 7, d: { b: 1 } })).toEqual([]); // {"a":"xxxxx","b":1} = 19
    expect(sim.send(1, { op: 7, d: { b: 12 } })).toEqual([]); // 20
    expect(sim.send(1, { op: 7, d: { b: 123 } })).toEqual(failure(1, 4413, 'ABOUT_ME: metadata would be 21 bytes, over the limit of 20'));
  });

  it('applies updates in order before the next frame is routed', () => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a', { metadata: { ready: false } });
    sim.connect(2, 'gw', 'g');
    sim.send(1, { op: 7, d: { ready: true } });
    const events = sim.dispatch(2, 'GO', null, { app_name: 'api', query: { ready: true } });
    expect(framesTo(events, 1)).toHaveLength(1);
  });
});

describe('GO_AWAY and shutdown', () => {
  it('sends GO_AWAY and closes every connection with 1001', () => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a');
    sim.open(2);
    expect(sim.shutdown()).toEqual([
      { conn: 1, frame: { op: 5, d: 'go away.' } },
      { conn: 1, close: 1001, reason: 'go away.' },
      { conn: 2, frame: { op: 5, d: 'go away.' } },
      { conn: 2, close: 1001, reason: 'go away.' },
    ]);
  });

  it('turns away connections that arrive while draining', () => {
    const sim = new Sim();
    sim.shutdown();
    expect(sim.open(1)).toEqual([
      { conn: 1, frame: { op: 5, d: 'go away.' } },
      { conn: 1, close: 1001, reason: 'go away.' },
    ]);
  });

  it('refuses HTTP dispatches while draining', () => {
    const sim = new Sim();
    sim.shutdown();
    expect(sim.httpDispatch({ e: 'X', to: { app_name: 'a' } })).toEqual([{ rejected: 'server is shutting down', status: 503 }]);
  });

  it('tells senders of held messages before it goes away', () => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a');
    sim.dispatch(1, 'LATER', 1, { app_name: 'nobody' }, 'n1');
    expect(sim.shutdown().slice(0, 1)).toEqual([
      { conn: 1, frame: { op: 8, e: 'NERVE_UNDELIVERABLE', nonce: 'n1', d: { reason: 'server is shutting down', e: 'LATER' } } },
    ]);
  });
});

describe('wire formats', () => {
  it('speaks msgpack and zlib, with the same frames', () => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a', {}, { format: 'msgpack', compression: 'zlib' });
    sim.connect(2, 'api', 'b', {}, { format: 'json', compression: 'zlib' });
    sim.connect(3, 'api', 'c', {}, { format: 'msgpack', compression: 'none' });
    const events = sim.dispatch(1, 'HI', { n: [1, 2] }, { app_name: 'api', mode: 'all' });
    const frame = (s: number, to: number) => ({ conn: to, frame: { op: 8, e: 'HI', d: { n: [1, 2] }, from: { app_name: 'api', client_id: 'a' }, s } });
    expect(events).toEqual([frame(1, 2), frame(1, 3)]);
  });

  it('sends text on plain JSON and binary otherwise', () => {
    const sim = new Sim();
    sim.open(1);
    expect(typeof (sim.raw[0] as { data: unknown }).data).toBe('string');
    sim.open(2, { format: 'json', compression: 'zlib' });
    expect((sim.raw[0] as { data: unknown }).data).toBeInstanceOf(Uint8Array);
  });

  it('accepts JSON in a binary frame on a JSON connection', () => {
    const sim = new Sim();
    sim.open(1);
    expect(sim.send(1, new TextEncoder().encode('{"op":3}'))).toEqual([{ conn: 1, frame: { op: 4 } }]);
  });

  it('refuses text frames on msgpack and zlib connections', () => {
    const sim = new Sim();
    sim.open(1, { format: 'msgpack', compression: 'none' });
    expect(sim.send(1, '{"op":3}')).toEqual(failure(1, 4400, 'text frame on a msgpack connection; send binary frames'));
    sim.open(2, { format: 'json', compression: 'zlib' });
    expect(sim.send(2, '{"op":3}')).toEqual(failure(2, 4400, 'text frame on a zlib connection; send binary frames'));
  });

  it('refuses undecodable msgpack, zlib and UTF-8', () => {
    const sim = new Sim();
    sim.open(1, { format: 'msgpack', compression: 'none' });
    expect(sim.send(1, Uint8Array.of(0x82, 0xa1))).toEqual(failure(1, 4400, 'undecodable msgpack frame'));
    sim.open(2, { format: 'json', compression: 'zlib' });
    expect(sim.send(2, Uint8Array.of(1, 2, 3))).toEqual(failure(2, 4400, 'undecodable zlib frame'));
    sim.open(3, JSON_WIRE);
    expect(sim.send(3, Uint8Array.of(0xff, 0xfe))).toEqual(failure(3, 4400, 'frame is not valid UTF-8'));
  });
});
