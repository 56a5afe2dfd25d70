// Core rules of docs/protocol.md §6 (DISPATCH) and §7 (resume): queries,
// selection, acks, held queues, TTLs, sequence numbers, replay on resume, and
// requeue when a session ends.

import { describe, expect, it } from 'vitest';
import { failure, framesTo, Sim, type Event } from './harness.ts';

const from = (app_name: string, client_id: string) => ({ app_name, client_id });

/** Which connections received event `e` in a list of events. */
function receivers(events: Event[], e: string): number[] {
  return events.flatMap((event) => ('frame' in event && event.frame.e === e ? [event.conn] : []));
}

function hub(clients: [conn: number, app: string, id: string, metadata?: Record<string, unknown>][], config = {}): Sim {
  const sim = new Sim(config);
  for (const [conn, app, id, metadata] of clients) sim.connect(conn, app, id, metadata ? { metadata } : {});
  return sim;
}

describe('DISPATCH targets', () => {
  it('delivers to a client_id with e, d, from, nonce and s', () => {
    const sim = hub([[1, 'api', 'a'], [2, 'gw', 'g']]);
    expect(sim.dispatch(1, 'USER_UPDATED', { id: '42' }, { app_name: 'gw', client_id: 'g' }, 'req-1')).toEqual([
      { conn: 2, frame: { op: 8, e: 'USER_UPDATED', d: { id: '42' }, from: from('api', 'a'), nonce: 'req-1', s: 1 } },
      { conn: 1, frame: { op: 8, e: 'NERVE_ACK', nonce: 'req-1', d: { delivered: 1, queued: 0 } } },
    ]);
  });

  it('delivers an absent d as null', () => {
    const sim = hub([[1, 'api', 'a'], [2, 'gw', 'g']]);
    const [event] = sim.send(1, { op: 8, e: 'PING', to: { app_name: 'gw' } });
    expect(event).toEqual({ conn: 2, frame: { op: 8, e: 'PING', d: null, from: from('api', 'a'), s: 1 } });
  });

  it('mode all reaches every client of the app but the sender', () => {
    const sim = hub([[1, 'gw', 'a'], [2, 'gw', 'b'], [3, 'gw', 'c'], [4, 'api', 'x']]);
    expect(receivers(sim.dispatch(1, 'B', 1, { app_name: 'gw', mode: 'all' }), 'B')).toEqual([2, 3]);
  });

  it('reaches the sender itself only when to.client_id names it', () => {
    const sim = hub([[1, 'gw', 'a'], [2, 'gw', 'b']]);
    expect(receivers(sim.dispatch(1, 'ME', 1, { app_name: 'gw', client_id: 'a' }), 'ME')).toEqual([1]);
    expect(receivers(sim.dispatch(1, 'ONE', 1, { app_name: 'gw' }), 'ONE')).toEqual([2]);
    expect(receivers(sim.dispatch(1, 'ONE', 1, { app_name: 'gw' }), 'ONE')).toEqual([2]);
  });

  it('mode all with no match delivers to nobody and holds nothing', () => {
    const sim = hub([[1, 'api', 'a']]);
    expect(sim.dispatch(1, 'B', 1, { app_name: 'gw', mode: 'all' }, 'n')).toEqual([
      { conn: 1, frame: { op: 8, e: 'NERVE_ACK', nonce: 'n', d: { delivered: 0, queued: 0 } } },
    ]);
    expect(sim.advance(60_000)).toEqual([]);
  });
});

describe('queries over metadata', () => {
  const clients: [number, string, string, Record<string, unknown>][] = [
    [1, 'gw', 'eu-1', { region: 'eu', load: 0.2, users: ['1', '42'], shard: 0 }],
    [2, 'gw', 'eu-2', { region: 'eu', load: 0.9, users: ['7'], shard: 1 }],
    [3, 'gw', 'us-1', { region: 'us', load: 0.5, users: [], tags: ['a', 'b'] }],
  ];
  const cases: [string, Record<string, unknown>, number[]][] = [
    ['equality', { region: 'eu' }, [1, 2]],
    ['array contains (Mongo array rule)', { users: '42' }, [1]],
    ['$eq', { region: { $eq: 'us' } }, [3]],
    ['$ne', { region: { $ne: 'eu' } }, [3]],
    ['$gt', { load: { $gt: 0.4 } }, [2, 3]],
    ['$gte', { load: { $gte: 0.5 } }, [2, 3]],
    ['$lt', { load: { $lt: 0.5 } }, [1]],
    ['$lte', { load: { $lte: 0.5 } }, [1, 3]],
    ['$in', { region: { $in: ['us', 'ap'] } }, [3]],
    ['$nin', { region: { $nin: ['us'] } }, [1, 2]],
    ['$exists', { shard: { $exists: false } }, [3]],
    ['$all', { tags: { $all: ['a', 'b'] } }, [3]],
    ['$size', { users: { $size: 0 } }, [3]],
    ['$and', { $and: [{ region: 'eu' }, { load: { $lt: 0.5 } }] }, [1]],
    ['$or', { $or: [{ region: 'us' }, { shard: 1 }] }, [2, 3]],
    ['$nor', { $nor: [{ region: 'us' }, { shard: 1 }] }, [1]],
    ['$not', { load: { $not: { $gt: 0.4 } } }, [1]],
    ['nested field path', { 'users.0': '7' }, [2]],
  ];
  it.each(cases)('%s', (_name, query, expected) => {
    const sim = hub([...clients, [9, 'api', 'sender']]);
    expect(receivers(sim.dispatch(9, 'Q', null, { app_name: 'gw', mode: 'all', query }), 'Q')).toEqual(expected);
  });

  it('only scans the target app', () => {
    const sim = hub([[1, 'gw', 'g', { region: 'eu' }], [2, 'other', 'o', { region: 'eu' }], [9, 'api', 's']]);
    expect(receivers(sim.dispatch(9, 'Q', null, { app_name: 'gw', mode: 'all', query: { region: 'eu' } }), 'Q')).toEqual([1]);
  });

  it('applies a query together with client_id', () => {
    const sim = hub([[1, 'gw', 'g', { region: 'eu' }], [9, 'api', 's']]);
    expect(receivers(sim.dispatch(9, 'Q', null, { app_name: 'gw', client_id: 'g', query: { region: 'us' } }), 'Q')).toEqual([]);
    expect(receivers(sim.dispatch(9, 'Q', null, { app_name: 'gw', client_id: 'g', query: { region: 'eu' } }), 'Q')).toEqual([1]);
  });
});

describe('selection', () => {
  it('mode one round-robins over connected matches in identify order', () => {
    const sim = hub([[1, 'gw', 'a'], [2, 'gw', 'b'], [3, 'gw', 'c'], [9, 'api', 's']]);
    const picks = Array.from({ length: 6 }, () => receivers(sim.dispatch(9, 'RR', null, { app_name: 'gw' }), 'RR')[0]);
    expect(picks).toEqual([1, 2, 3, 1, 2, 3]);
  });

  it('shares one cursor per app across different queries', () => {
    const sim = hub([[1, 'gw', 'a', { x: 1 }], [2, 'gw', 'b', { x: 2 }], [3, 'gw', 'c', { x: 1 }], [9, 'api', 's']]);
    const pick = (query?: object) => receivers(sim.dispatch(9, 'RR', null, { app_name: 'gw', query }), 'RR')[0];
    expect([pick(), pick({ x: 1 }), pick(), pick({ x: 1 })]).toEqual([1, 3, 1, 3]);
  });

  it('skips disconnected sessions in mode one', () => {
    const sim = hub([[1, 'gw', 'a'], [2, 'gw', 'b'], [9, 'api', 's']]);
    sim.close(1, 1006);
    const picks = Array.from({ length: 3 }, () => receivers(sim.dispatch(9, 'RR', null, { app_name: 'gw' }), 'RR')[0]);
    expect(picks).toEqual([2, 2, 2]);
  });

  it('a key picks the same client while the matches do not change, and only moves keys of a leaver', () => {
    const clients: [number, string, string][] = Array.from({ length: 5 }, (_, i) => [i + 1, 'gw', `g${i}`]);
    const sim = hub([...clients, [9, 'api', 's']]);
    const pick = (key: string) => receivers(sim.dispatch(9, 'K', null, { app_name: 'gw', key }), 'K')[0]!;
    const keys = Array.from({ length: 40 }, (_, i) => `user-${i}`);
    const before = new Map(keys.map((key) => [key, pick(key)]));
    for (const key of keys) expect(pick(key)).toBe(before.get(key));
    expect(new Set(before.values()).size).toBeGreaterThan(2);
    sim.close(3, 1000);
    for (const key of keys) {
      if (before.get(key) !== 3) expect(pick(key)).toBe(before.get(key));
      else expect(pick(key)).not.toBe(3);
    }
  });
});

describe('held messages', () => {
  it('holds a mode-one dispatch until a client of the app identifies', () => {
    const sim = hub([[1, 'api', 'a']]);
    expect(sim.dispatch(1, 'LATE', 1, { app_name: 'gw' }, 'n')).toEqual([
      { conn: 1, frame: { op: 8, e: 'NERVE_ACK', nonce: 'n', d: { delivered: 0, queued: 1 } } },
    ]);
    sim.advance(10_000);
    expect(sim.connect(2, 'gw', 'g')).toEqual([
      { conn: 2, frame: { op: 8, e: 'LATE', d: 1, from: from('api', 'a'), nonce: 'n', s: 1 } },
    ]);
    expect(receivers(sim.advance(60_000), 'NERVE_UNDELIVERABLE')).toEqual([]);
  });

  it('delivers held messages in order when ABOUT_ME makes a client match', () => {
    const sim = hub([[1, 'api', 'a'], [2, 'gw', 'g', { ready: false }]]);
    sim.dispatch(1, 'FIRST', 1, { app_name: 'gw', query: { ready: true } });
    sim.dispatch(1, 'SECOND', 2, { app_name: 'gw', query: { ready: true } });
    expect(framesTo(sim.send(2, { op: 7, d: { ready: true } }), 2).map((f) => [f.e, f.s])).toEqual([
      ['FIRST', 1],
      ['SECOND', 2],
    ]);
  });

  it('holds a client_id dispatch for that client only', () => {
    const sim = hub([[1, 'api', 'a']]);
    sim.dispatch(1, 'FOR_G2', 1, { app_name: 'gw', client_id: 'g2' });
    expect(sim.connect(2, 'gw', 'g1')).toEqual([]);
    expect(framesTo(sim.connect(3, 'gw', 'g2'), 3).map((f) => f.e)).toEqual(['FOR_G2']);
  });

  it('reports NERVE_UNDELIVERABLE to the sender when the TTL ends', () => {
    const sim = hub([[1, 'api', 'a']], { queueTtl: 5_000 });
    sim.dispatch(1, 'LOST', 1, { app_name: 'gw', query: { region: 'eu' } }, 'n7');
    sim.dispatch(1, 'LOST_TOO', 1, { app_name: 'gw' });
    expect(sim.advance(4_999)).toEqual([]);
    expect(sim.advance(1)).toEqual([
      { conn: 1, frame: { op: 8, e: 'NERVE_UNDELIVERABLE', nonce: 'n7', d: { reason: 'no connected client of app gw matched the query within 5000 ms', e: 'LOST' } } },
      { conn: 1, frame: { op: 8, e: 'NERVE_UNDELIVERABLE', d: { reason: 'no connected client of app gw within 5000 ms', e: 'LOST_TOO' } } },
    ]);
  });

  it('refuses at once, never silently, when the queue is full by count or bytes', () => {
    const sim = hub([[1, 'api', 'a']], { queueMaxCount: 2, queueMaxBytes: 1_000 });
    sim.dispatch(1, 'ONE', 1, { app_name: 'gw' });
    sim.dispatch(1, 'TWO', 1, { app_name: 'gw' });
    expect(sim.dispatch(1, 'THREE', 1, { app_name: 'gw' }, 'n3')).toEqual([
      { conn: 1, frame: { op: 8, e: 'NERVE_UNDELIVERABLE', nonce: 'n3', d: { reason: 'queue for app gw is full', e: 'THREE' } } },
      { conn: 1, frame: { op: 8, e: 'NERVE_ACK', nonce: 'n3', d: { delivered: 0, queued: 0 } } },
    ]);
    expect(receivers(sim.dispatch(1, 'BIG', 'x'.repeat(2_000), { app_name: 'other' }), 'NERVE_UNDELIVERABLE')).toEqual([1]);
  });

  it('reports nothing when the sender has gone (it cannot be told)', () => {
    const sim = hub([[1, 'api', 'a']], { queueTtl: 1_000 });
    sim.dispatch(1, 'LOST', 1, { app_name: 'gw' });
    sim.close(1, 1000);
    expect(sim.advance(2_000)).toEqual([]);
    expect(sim.state.counters.undeliverable).toBe(1);
  });
});

describe('HTTP dispatch', () => {
  it('routes from {"app_name":"http"} and answers delivered/queued', () => {
    const sim = hub([[1, 'gw', 'g']]);
    expect(sim.httpDispatch({ e: 'HOOK', d: { a: 1 }, to: { app_name: 'gw' } })).toEqual([
      { conn: 1, frame: { op: 8, e: 'HOOK', d: { a: 1 }, from: { app_name: 'http' }, s: 1 } },
      { dispatched: { delivered: 1, queued: 0 } },
    ]);
    expect(sim.httpDispatch({ e: 'HOOK', to: { app_name: 'nobody' } })).toEqual([{ dispatched: { delivered: 0, queued: 1 } }]);
  });

  it('rejects a malformed body naming the field', () => {
    const sim = new Sim();
    expect(sim.httpDispatch({ e: 'X', to: { app_name: 7 } })).toEqual([{ rejected: 'to.app_name must be a non-empty string', status: 400 }]);
    expect(sim.httpDispatch({ e: 'X', to: { app_name: 'a', query: { $where: '1' } } })).toEqual([
      { rejected: 'to.query: unsupported query operator $where', status: 400 },
    ]);
  });
});

describe('sequence numbers and resume', () => {
  function dropped(config = {}) {
    const sim = hub([[1, 'api', 'a'], [2, 'gw', 'g']], config);
    for (let i = 1; i <= 3; i++) sim.dispatch(1, `E${i}`, i, { app_name: 'gw', client_id: 'g' });
    sim.close(2, 1006);
    for (let i = 4; i <= 5; i++) sim.dispatch(1, `E${i}`, i, { app_name: 'gw', client_id: 'g' });
    return sim;
  }
  const resume = (sim: Sim, extra: Record<string, unknown>) => {
    sim.open(3);
    return framesTo(sim.send(3, { op: 1, d: { app_name: 'gw', client_id: 'g', password: 'pw', reconnect: true, ...extra } }), 3);
  };

  it('numbers routed dispatches per session from 1; NERVE_ events carry no s', () => {
    const sim = hub([[1, 'api', 'a'], [2, 'gw', 'g'], [3, 'gw', 'h']]);
    sim.dispatch(1, 'X', 1, { app_name: 'gw', client_id: 'g' });
    const events = sim.dispatch(1, 'Y', 1, { app_name: 'gw', mode: 'all' }, 'n');
    expect(events.map((event) => ('frame' in event ? [event.conn, event.frame.s] : null))).toEqual([
      [2, 2],
      [3, 1],
      [1, undefined],
    ]);
  });

  it('replays exactly the dispatches after seq, in order, with their original s', () => {
    const frames = resume(dropped(), { seq: 3 });
    expect(frames.map((f) => [f.op, f.e, f.s])).toEqual([
      [2, undefined, undefined],
      [8, 'NERVE_SESSION', undefined],
      [8, 'E4', 4],
      [8, 'E5', 5],
    ]);
  });

  it('says right after WELCOME whether it resumed, the last s, and how much it replays', () => {
    expect(resume(dropped(), { seq: 3 })[1]).toEqual({ op: 8, e: 'NERVE_SESSION', d: { resumed: true, s: 5, replayed: 2, missed: 0 } });
    expect(resume(dropped(), {})[1]).toEqual({ op: 8, e: 'NERVE_SESSION', d: { resumed: true, s: 5, replayed: 5 } });
  });

  it('counts what fell out of the replay buffer after seq as missed', () => {
    const frames = resume(dropped({ replayMaxCount: 2 }), { seq: 1 });
    expect(frames.map((f) => [f.e, f.s])).toEqual([
      [undefined, undefined],
      ['NERVE_SESSION', undefined],
      ['E4', 4],
      ['E5', 5],
    ]);
    expect(frames[1]!.d).toEqual({ resumed: true, s: 5, replayed: 2, missed: 2 });
  });

  it('refuses a seq ahead of the session with 4400 and keeps the session resumable', () => {
    const sim = dropped();
    sim.open(3);
    expect(sim.send(3, { op: 1, d: { app_name: 'gw', client_id: 'g', password: 'pw', reconnect: true, seq: 999 } })).toEqual(
      failure(3, 4400, 'IDENTIFY: seq 999 is ahead of the session, whose last s is 5'),
    );
    expect(resume(sim, { seq: 5 }).map((f) => f.e)).toEqual([undefined, 'NERVE_SESSION']);
  });

  it('replays the whole buffer without seq (at-least-once)', () => {
    expect(resume(dropped(), {}).map((f) => f.s)).toEqual([undefined, undefined, 1, 2, 3, 4, 5]);
  });

  it('keeps metadata across a resume and merges IDENTIFY metadata onto it', () => {
    const sim = hub([[1, 'gw', 'g', { region: 'eu', load: 1 }]]);
    sim.close(1, 1006);
    sim.open(2);
    sim.send(2, { op: 1, d: { app_name: 'gw', client_id: 'g', password: 'pw', reconnect: true, metadata: { load: 2 } } });
    expect(sim.state.sessions.get('gw\u0000g')!.metadata).toEqual({ region: 'eu', load: 2 });
  });

  it('mode all reaches a resumable session, which buffers it', () => {
    const sim = hub([[1, 'api', 'a'], [2, 'gw', 'g']]);
    sim.close(2, 1006);
    expect(sim.dispatch(1, 'B', 1, { app_name: 'gw', mode: 'all' }, 'n')).toEqual([
      { conn: 1, frame: { op: 8, e: 'NERVE_ACK', nonce: 'n', d: { delivered: 1, queued: 0 } } },
    ]);
    expect(resume(sim, { seq: 0 }).map((f) => f.e)).toEqual([undefined, 'NERVE_SESSION', 'B']);
  });

  it('reconnect: true with no session is a plain IDENTIFY', () => {
    const sim = new Sim();
    sim.open(1);
    expect(sim.send(1, { op: 1, d: { app_name: 'gw', client_id: 'new', password: 'pw', reconnect: true, seq: 9 } })).toEqual([
      { conn: 1, frame: { op: 2, d: "hi i'm dad" } },
      { conn: 1, frame: { op: 8, e: 'NERVE_SESSION', d: { resumed: false, s: 0, replayed: 0 } } },
    ]);
  });

  it('a plain IDENTIFY for a resumable session starts fresh, and inherits its undelivered directed messages', () => {
    const sim = dropped();
    sim.open(3);
    const frames = framesTo(sim.send(3, { op: 1, d: { app_name: 'gw', client_id: 'g', password: 'pw' } }), 3);
    expect(frames.map((f) => [f.e, f.s])).toEqual([
      [undefined, undefined],
      ['E4', 1],
      ['E5', 2],
    ]);
  });

  it('when the window ends, unwritten directed messages go back to the app queue with their sender', () => {
    const sim = dropped({ resumeWindow: 5_000, queueTtl: 3_000 });
    expect(sim.advance(5_000)).toEqual([]);
    expect(framesTo(sim.connect(4, 'gw', 'g'), 4).map((f) => [f.e, f.from, f.s])).toEqual([
      ['E4', from('api', 'a'), 1],
      ['E5', from('api', 'a'), 2],
    ]);
  });

  it('requeued messages get a fresh TTL, then are reported undeliverable', () => {
    const sim = dropped({ resumeWindow: 5_000, queueTtl: 3_000 });
    sim.advance(5_000);
    expect(sim.advance(2_999)).toEqual([]);
    expect(receivers(sim.advance(1), 'NERVE_UNDELIVERABLE')).toEqual([1, 1]);
  });

  it('requeued client_id messages wait for that client, not another of its app', () => {
    const sim = hub([[1, 'api', 'a'], [2, 'gw', 'g']], { resumeWindow: 1_000 });
    sim.close(2, 1006);
    sim.dispatch(1, 'DIRECT', 1, { app_name: 'gw', client_id: 'g' });
    sim.connect(5, 'gw', 'other');
    sim.advance(1_000);
    // Held for client g only: the other client does not take it.
    expect(sim.state.apps.get('gw')!.held.map((held) => held.msg.e)).toEqual(['DIRECT']);
  });

  it('a client that closes with 1000 ends its session; unwritten messages are requeued', () => {
    const sim = hub([[1, 'api', 'a'], [2, 'gw', 'g']]);
    sim.close(2, 1000);
    expect(sim.state.sessions.has('gw\u0000g')).toBe(false);
  });

  it('a heartbeat timeout keeps the session resumable', () => {
    const sim = hub([[1, 'api', 'a'], [2, 'gw', 'g']], { heartbeatInterval: 1_000, resumeWindow: 10_000 });
    for (let t = 0; t < 3; t++) {
      sim.advance(1_000);
      sim.send(1, '{"op":3}');
    }
    expect(sim.state.sessions.get('gw\u0000g')?.conn).toBeNull();
    expect(resume(sim, {})[0]).toEqual({ op: 2, d: "hi i'm dad" });
  });

  it('reports an unwritten directed message evicted from a full replay buffer', () => {
    const sim = hub([[1, 'api', 'a'], [2, 'gw', 'g']], { replayMaxCount: 2 });
    sim.close(2, 1006);
    sim.dispatch(1, 'A', 1, { app_name: 'gw', client_id: 'g' });
    sim.dispatch(1, 'B', 1, { app_name: 'gw', client_id: 'g' });
    expect(sim.dispatch(1, 'C', 1, { app_name: 'gw', client_id: 'g' })).toEqual([
      { conn: 1, frame: { op: 8, e: 'NERVE_UNDELIVERABLE', d: { reason: 'replay buffer of g overflowed before it reconnected', e: 'A' } } },
    ]);
  });

  it('takes over a live session and replays what the client had not processed', () => {
    const sim = hub([[1, 'api', 'a'], [2, 'gw', 'g']]);
    for (let i = 1; i <= 3; i++) sim.dispatch(1, `E${i}`, i, { app_name: 'gw', client_id: 'g' });
    const frames = resume(sim, { seq: 2 });
    expect(frames.map((f) => f.s)).toEqual([undefined, undefined, 3]);
  });
});
