// Slow readers, the memory budget and the connection caps, driven through the
// pure core with a virtual clock: what a client or a sender sees when a reader
// falls behind, when the hub's memory is spent, and when it is full of sockets.

import { describe, expect, it } from 'vitest';
import { failure, framesTo, Sim, type Event } from './harness.ts';

const to = (clientId: string) => ({ app_name: 'gw', client_id: clientId });
const ids = (events: Event[], conn: number) => framesTo(events, conn).map((f) => (f.e === 'NERVE_SESSION' ? 'SESSION' : f.d));
const undeliverable = (events: Event[], conn: number) =>
  framesTo(events, conn)
    .filter((f) => f.e === 'NERVE_UNDELIVERABLE')
    .map((f) => f.nonce);

function pair(config = {}): Sim {
  const sim = new Sim({ maxOutbound: 1_000, ...config });
  sim.connect(1, 'api', 'a');
  sim.connect(2, 'gw', 'g');
  return sim;
}

describe('slow consumers', () => {
  it('a transport over NERVE_MAX_OUTBOUND is cut with 4507; what it still held is replayed on resume', () => {
    const sim = pair();
    for (let i = 1; i <= 4; i++) sim.dispatch(1, 'E', i, to('g'), `n${i}`);
    // The host handed s 1 and 2 to the OS; 3 and 4 (and more bytes) are still queued.
    expect(sim.backlog(2, 500, 3)).toEqual([]);
    expect(sim.backlog(2, 1_500, 3)).toEqual([{ conn: 2, discard: true }, ...failure(2, 4507, 'slow consumer: 1500 bytes unread, over the limit of 1000')]);
    expect(sim.state.counters.slowConsumers).toBe(1);
    sim.close(2);
    sim.open(3);
    const frames = sim.send(3, { op: 1, d: { app_name: 'gw', client_id: 'g', password: 'pw', reconnect: true, seq: 2 } });
    expect(ids(frames, 3)).toEqual(["hi i'm dad", 'SESSION', 3, 4]);
  });

  it('after a cut, what the transport held goes out before the close: read, it counts as delivered', () => {
    const sim = pair({ resumeWindow: 1_000, queueTtl: 5_000 });
    for (let i = 1; i <= 3; i++) sim.dispatch(1, 'E', i, to('g'));
    // All of it in the transport, nothing left in the host: it goes out before the close.
    sim.backlog(2, 5_000, 2, Infinity);
    sim.close(2, 4507);
    sim.advance(1_000);
    expect(ids(sim.connect(4, 'gw', 'g'), 4)).toEqual([]);
  });

  it('a transport that drops what it still holds when closed (Bun) says so: those events are owed again', () => {
    const sim = pair({ resumeWindow: 1_000, queueTtl: 5_000 });
    for (let i = 1; i <= 3; i++) sim.dispatch(1, 'E', i, to('g'));
    sim.backlog(2, 5_000, 2, Infinity);
    sim.step({ type: 'backlog', now: sim.now, conn: 2, bytes: 300, unflushedFrom: 3, queuedFrom: 3, lost: true });
    sim.close(2, 4507);
    sim.advance(1_000);
    expect(ids(sim.connect(4, 'gw', 'g'), 4)).toEqual([3]);
  });

  it('after a cut, a connection dropped with events still in its transport owes them: requeued when the session ends', () => {
    const sim = pair({ resumeWindow: 1_000, queueTtl: 5_000 });
    for (let i = 1; i <= 3; i++) sim.dispatch(1, 'E', i, to('g'));
    sim.backlog(2, 5_000, 2);
    sim.close(2);
    sim.advance(1_000);
    expect(ids(sim.connect(4, 'gw', 'g'), 4)).toEqual([2, 3]);
  });

  it('events the transport held count as unwritten: they are requeued when the session ends', () => {
    const sim = pair({ resumeWindow: 1_000, queueTtl: 5_000 });
    for (let i = 1; i <= 3; i++) sim.dispatch(1, 'E', i, to('g'));
    sim.backlog(2, 5_000, 2);
    sim.close(2);
    sim.advance(1_000);
    expect(ids(sim.connect(4, 'gw', 'g'), 4)).toEqual([2, 3]);
  });

  it('a reader a whole replay buffer behind is cut, and what fell out unread is reported to its sender', () => {
    const sim = pair({ replayMaxCount: 3, maxOutbound: 1_000_000 });
    sim.dispatch(1, 'E', 1, to('g'), 'n1');
    sim.backlog(2, 100, 1);
    for (let i = 2; i <= 3; i++) sim.dispatch(1, 'E', i, to('g'), `n${i}`);
    const events = sim.dispatch(1, 'E', 4, to('g'), 'n4');
    expect(undeliverable(events, 1)).toEqual(['n1']);
    expect(events.filter((e) => 'close' in e)).toEqual([{ conn: 2, close: 4507, reason: 'slow consumer: more than its replay buffer (3 events) unread' }]);
    sim.close(2);
    sim.open(3);
    expect(ids(sim.send(3, { op: 1, d: { app_name: 'gw', client_id: 'g', password: 'pw', reconnect: true, seq: 0 } }), 3)).toEqual([
      "hi i'm dad",
      'SESSION',
      2,
      3,
      4,
    ]);
  });

  it('a reader that caught up again is no longer behind: its old events leave the buffer as delivered', () => {
    const sim = pair({ replayMaxCount: 2 });
    sim.dispatch(1, 'E', 1, to('g'), 'n1');
    sim.backlog(2, 100, 1);
    sim.backlog(2, 0, Infinity);
    const events = [...sim.dispatch(1, 'E', 2, to('g'), 'n2'), ...sim.dispatch(1, 'E', 3, to('g'), 'n3')];
    expect(events.some((e) => 'close' in e)).toBe(false);
    expect(undeliverable(events, 1)).toEqual([]);
  });

  it('at shutdown a reader still behind is dropped and its senders hear of what it did not get', () => {
    const sim = pair();
    for (let i = 1; i <= 3; i++) sim.dispatch(1, 'E', i, to('g'), `n${i}`);
    sim.backlog(2, 300, 2);
    const events = sim.shutdown();
    expect(undeliverable(events, 1)).toEqual(['n2', 'n3']);
    expect(events).toContainEqual({ conn: 2, terminate: true });
    expect(events.filter((e) => 'terminate' in e)).toHaveLength(1);
  });

  it('a connection that drops while its transport held events owes them: resume replays them', () => {
    const sim = pair();
    for (let i = 1; i <= 3; i++) sim.dispatch(1, 'E', i, to('g'));
    sim.backlog(2, 300, 3);
    sim.close(2, 1006);
    sim.open(3);
    expect(ids(sim.send(3, { op: 1, d: { app_name: 'gw', client_id: 'g', password: 'pw', reconnect: true, seq: 3 } }), 3)).toEqual([
      "hi i'm dad",
      'SESSION',
    ]);
    expect(sim.state.sessions.get('gw\u0000g')!.writtenUpTo).toBe(3);
  });
});

describe('behind a host that batches its writes', () => {
  it('a burst larger than the replay buffer between two flushes is not a slow reader: the buffer is trimmed after the flush', () => {
    const sim = pair({ replayMaxCount: 3 });
    sim.flushed();
    const events = [];
    for (let i = 1; i <= 8; i++) events.push(...sim.dispatch(1, 'E', i, to('g'), `n${i}`));
    expect(events.some((e) => 'close' in e)).toBe(false);
    expect(sim.state.sessions.get('gw\u0000g')!.replay.length).toBe(8);
    expect(sim.flushed()).toEqual([]);
    expect(sim.state.sessions.get('gw\u0000g')!.replay.length).toBe(3);
  });

  it('a burst the host still queues behind a busy transport is a slow reader: cut at the report, the queued events replayed', () => {
    const sim = pair({ replayMaxCount: 3, maxOutbound: 1_000_000 });
    sim.flushed();
    sim.dispatch(1, 'E', 1, to('g'), 'n1');
    sim.flushed();
    sim.backlog(2, 100, 1, Infinity);
    for (let i = 2; i <= 8; i++) sim.dispatch(1, 'E', i, to('g'), `n${i}`);
    // Still busy: the host kept 2..8 back, and says so after the flush.
    expect(sim.flushed()).toEqual([]);
    const events = sim.backlog(2, 800, 1, 2);
    expect(events.filter((e) => 'close' in e)).toEqual([{ conn: 2, close: 4507, reason: 'slow consumer: more than its replay buffer (3 events) unread' }]);
    expect(undeliverable(events, 1)).toEqual(['n2', 'n3', 'n4', 'n5']);
    sim.close(2);
    sim.open(3);
    const frames = sim.send(3, { op: 1, d: { app_name: 'gw', client_id: 'g', password: 'pw', reconnect: true, seq: 1 } });
    expect(ids(frames, 3)).toEqual(["hi i'm dad", 'SESSION', 6, 7, 8]);
    expect(framesTo(frames, 3)[1]!.d).toEqual({ resumed: true, s: 8, replayed: 3, missed: 4 });
  });

  it('events still queued in the host when the connection drops count as never written', () => {
    const sim = pair({ resumeWindow: 1_000, queueTtl: 5_000 });
    sim.flushed();
    sim.dispatch(1, 'E', 1, to('g'));
    sim.flushed();
    sim.dispatch(1, 'E', 2, to('g'));
    sim.close(2, 1006);
    sim.advance(1_000);
    expect(ids(sim.connect(4, 'gw', 'g'), 4)).toEqual([2]);
  });

  it('held events go out half a replay buffer per flush, the rest after each flush', () => {
    const sim = new Sim({ replayMaxCount: 4 });
    sim.connect(1, 'api', 'a');
    sim.flushed();
    for (let i = 1; i <= 5; i++) sim.dispatch(1, 'E', i, { app_name: 'gw' });
    expect(ids(sim.connect(2, 'gw', 'g'), 2)).toEqual([1, 2]);
    expect(ids(sim.flushed(), 2)).toEqual([3, 4]);
    expect(ids(sim.flushed(), 2)).toEqual([5]);
    expect(sim.flushed()).toEqual([]);
  });
});

describe('the memory budget', () => {
  it('a dispatch that would be held past NERVE_MAX_MEMORY is undeliverable at once: hub is full', () => {
    const sim = new Sim({ maxMemory: 3_000 });
    sim.connect(1, 'api', 'a');
    sim.dispatch(1, 'BIG', 'x'.repeat(1_000), { app_name: 'one' }, 'n1');
    sim.dispatch(1, 'BIG', 'x'.repeat(1_000), { app_name: 'two' }, 'n2');
    const events = sim.dispatch(1, 'BIG', 'x'.repeat(1_000), { app_name: 'three' }, 'n3');
    expect(framesTo(events, 1)).toEqual([
      { op: 8, e: 'NERVE_UNDELIVERABLE', nonce: 'n3', d: { reason: 'hub is full: its memory budget of 3000 bytes is in use', e: 'BIG' } },
      { op: 8, e: 'NERVE_ACK', nonce: 'n3', d: { delivered: 0, queued: 0 } },
    ]);
  });

  it('a held event counts its query too', () => {
    const sim = new Sim();
    sim.connect(1, 'api', 'a');
    sim.dispatch(1, 'Q', 1, { app_name: 'gw', query: { users: { $in: Array.from({ length: 200 }, (_, i) => `user-${i}`) } } });
    const query = JSON.stringify({ users: { $in: Array.from({ length: 200 }, (_, i) => `user-${i}`) } }).length;
    expect(sim.state.memory.held).toBeGreaterThan(2 * query);
    expect(sim.state.apps.get('gw')!.heldBytes).toBe(sim.state.memory.held);
  });

  it('metadata past the budget is refused with 4503; under it, memory follows every change', () => {
    const sim = new Sim({ maxMemory: 2_000 });
    sim.connect(1, 'gw', 'g', { metadata: { a: 'x'.repeat(500) } });
    expect(sim.state.memory.metadata).toBe(sim.state.sessions.get('gw\u0000g')!.metadataBytes);
    sim.send(1, { op: 7, d: { a: null } });
    expect(sim.state.memory.metadata).toBe(2);
    expect(sim.send(1, { op: 7, d: { b: 'x'.repeat(3_000) } })).toEqual(
      failure(1, 4503, 'ABOUT_ME: hub is full: its memory budget of 2000 bytes is in use'),
    );
  });

  it('a disconnected session does not buffer past the budget; a direct dispatch to it is undeliverable', () => {
    const sim = pair({ maxMemory: 1_500 });
    sim.close(2, 1006);
    sim.dispatch(1, 'E', 'x'.repeat(800), to('g'), 'n1');
    const events = sim.dispatch(1, 'E', 'x'.repeat(800), to('g'), 'n2');
    expect(undeliverable(events, 1)).toEqual(['n2']);
  });

  it('every byte comes back when sessions and held events go', () => {
    const sim = pair({ resumeWindow: 100, queueTtl: 100 });
    sim.dispatch(1, 'E', 'x'.repeat(100), to('g'));
    sim.dispatch(1, 'E', 'x'.repeat(100), { app_name: 'nobody' });
    sim.close(2, 1000);
    sim.close(1, 1000);
    sim.advance(1_000);
    expect(sim.state.memory).toEqual({ held: 0, replay: 0, metadata: 0 });
  });
});

describe('connection caps', () => {
  it('refuses connections past NERVE_MAX_CONNECTIONS and NERVE_MAX_UNIDENTIFIED with 4503', () => {
    const sim = new Sim({ maxConnections: 3, maxUnidentified: 2 });
    sim.open(1);
    sim.open(2);
    expect(sim.open(3)).toEqual(failure(3, 4503, 'too many connections waiting to identify: at most 2'));
    sim.send(1, { op: 1, d: { app_name: 'a', client_id: '1', password: 'pw' } });
    sim.open(4);
    expect(sim.open(5)).toEqual(failure(5, 4503, 'too many connections: this hub serves at most 3'));
  });

  it('a connection stops counting once its close is sent, before the peer answers', () => {
    const sim = new Sim({ maxUnidentified: 1 });
    sim.open(1);
    sim.send(1, 'not json');
    expect(sim.state.liveConns).toBe(0);
    expect(sim.open(2).map((e) => ('frame' in e ? e.frame.op : e))).toEqual([0]);
  });
});

describe('HTTP dispatch', () => {
  it('shares the rate limit: past it the route answers 429', () => {
    const sim = new Sim({ rateLimit: 1 });
    sim.httpDispatch({ e: 'A', to: { app_name: 'x', mode: 'all' } });
    sim.httpDispatch({ e: 'A', to: { app_name: 'x', mode: 'all' } });
    expect(sim.httpDispatch({ e: 'A', to: { app_name: 'x', mode: 'all' } })).toEqual([
      { rejected: 'rate limit exceeded: more than 1 dispatches per second', status: 429 },
    ]);
    sim.now += 1_000;
    expect(sim.httpDispatch({ e: 'A', to: { app_name: 'x', mode: 'all' } })).toEqual([{ dispatched: { delivered: 0, queued: 0 } }]);
  });
});

describe('the work one query may cause', () => {
  const users = (n: number) => Array.from({ length: n }, (_, i) => `u${i}`);

  it('a query that would look at more metadata values than NERVE_MAX_QUERY_WORK is refused whole', () => {
    const sim = new Sim({ maxQueryWork: 1_000 });
    sim.connect(1, 'api', 'a');
    for (let i = 0; i < 5; i++) sim.connect(10 + i, 'gw', `g${i}`, { metadata: { users: users(300) } });
    const events = sim.dispatch(1, 'E', 1, { app_name: 'gw', mode: 'all', query: { users: 'nobody-has-me' } }, 'n1');
    expect(framesTo(events, 1)).toEqual([
      {
        op: 8,
        e: 'NERVE_UNDELIVERABLE',
        nonce: 'n1',
        d: { reason: 'query too costly: it would look at more than 1000 metadata values across the clients of gw', e: 'E' },
      },
      { op: 8, e: 'NERVE_ACK', nonce: 'n1', d: { delivered: 0, queued: 0 } },
    ]);
    // Nobody got part of it.
    expect(events.filter((e) => 'frame' in e && e.conn !== 1)).toEqual([]);
  });

  it('within the budget the same query is delivered', () => {
    const sim = new Sim({ maxQueryWork: 10_000 });
    sim.connect(1, 'api', 'a');
    for (let i = 0; i < 5; i++) sim.connect(10 + i, 'gw', `g${i}`, { metadata: { users: users(300) } });
    expect(framesTo(sim.dispatch(1, 'E', 1, { app_name: 'gw', mode: 'all', query: { users: 'u299' } }, 'n1'), 1).at(-1)).toEqual({
      op: 8,
      e: 'NERVE_ACK',
      nonce: 'n1',
      d: { delivered: 5, queued: 0 },
    });
  });

  it('held events whose queries run out of budget stay held for later, or their TTL', () => {
    const sim = new Sim({ maxQueryWork: 500, queueTtl: 1_000 });
    sim.connect(1, 'api', 'a');
    sim.dispatch(1, 'E', 1, { app_name: 'gw', query: { users: 'u999' } }, 'n1');
    expect(ids(sim.connect(2, 'gw', 'g', { metadata: { users: users(1_000) } }), 2)).toEqual([]);
    expect(undeliverable(sim.advance(1_000), 1)).toEqual(['n1']);
  });
});

describe('pings', () => {
  it('count against the rate limit like any frame: a ping flood is answered with NO_U_TBH and 4429', () => {
    const sim = new Sim({ rateLimit: 2 });
    sim.connect(1, 'gw', 'g');
    const ping = () => sim.step({ type: 'ping', now: sim.now, conn: 1 });
    let events: Event[] = [];
    for (let i = 0; i < 5 && events.length === 0; i++) events = ping();
    expect(events).toEqual(failure(1, 4429, 'rate limit exceeded: more than 2 frames per second (pings count)'));
  });
});
