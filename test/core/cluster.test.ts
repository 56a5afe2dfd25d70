// Cluster scenarios, one story each: three cores joined by the in-memory
// link of cluster-harness.ts, checked against what docs/cluster.md promises a
// client (routing across nodes, held events, takeover and resume on another
// node, drain, crash and adoption, link outages, fencing, GET /clients).

import { afterEach, describe, expect, it } from 'vitest';
import { BUS, Client, Cluster, inboxOf, type Connection, type Frame } from './cluster-harness.ts';

const A = 'node-a';
const B = 'node-b';
const C = 'node-c';

const QUEUE_TTL = 5_000;
const RESUME_WINDOW = 10_000;

let cluster: Cluster;

function start(): Cluster {
  cluster = new Cluster([A, B, C], { queueTtl: QUEUE_TTL, resumeWindow: RESUME_WINDOW });
  cluster.settle();
  return cluster;
}

function client(app: string, id: string): Client {
  return new Client(cluster, app, id);
}

/** Routed events in a list of frames, as [e, d, s]. */
function events(frames: Frame[]): unknown[][] {
  return frames.filter((frame) => frame.op === 8 && typeof frame.s === 'number').map((frame) => [frame.e, frame.d, frame.s]);
}

/** What every client processed, by content, each event once. */
function payloads(c: Client): unknown[] {
  return c.receipts.map((receipt) => receipt.d);
}

afterEach(() => {
  expect(cluster.violations).toEqual([]);
});

describe('routing across nodes', () => {
  it('client_id: a dispatch on A reaches the client on B with s = 1, and A acknowledges delivered 1', () => {
    start();
    const sender = client('api', 'sender');
    const receiver = client('gw', 'g1');
    sender.connect(A);
    receiver.connect(B);
    sender.dispatch('PING', { n: 1 }, { app_name: 'gw', client_id: 'g1' }, 'n1');
    cluster.settle();
    expect(sender.acks.get('n1')).toEqual({ delivered: 1, queued: 0 });
    expect(receiver.receipts.map((r) => [r.e, r.d, r.s, r.node])).toEqual([['PING', { n: 1 }, 1, B]]);
    expect(receiver.receipts[0]!.from).toEqual({ app_name: 'api', client_id: 'sender' });
    expect(receiver.violations).toEqual([]);
  });

  it('POST /dispatch on C reaches the client on A', () => {
    start();
    const g1 = client('gw', 'g1');
    g1.connect(A);
    expect(cluster.httpDispatch(C, { e: 'HOOK', d: { n: 1 }, to: { app_name: 'gw', client_id: 'g1' } })).toEqual({ type: 'dispatched', request: 1, delivered: 1, queued: 0 });
    cluster.settle();
    expect(g1.receipts.map((r) => [r.e, r.d, r.from, r.node])).toEqual([['HOOK', { n: 1 }, { app_name: 'http' }, A]]);
  });

  it('a NERVE_ACK reaches its sender only once the turn that accepted the dispatch is stored, and never if the node dies first', () => {
    start();
    const sender = client('api', 'sender');
    const g1 = client('gw', 'g1');
    sender.connect(A);
    g1.connect(B);
    cluster.beginTurn(A);
    sender.dispatch('EV', { n: 1 }, { app_name: 'gw', client_id: 'g1' }, 'stored');
    expect(sender.acks.size).toBe(0);
    cluster.endTurn(A);
    expect(sender.acks.get('stored')).toEqual({ delivered: 1, queued: 0 });
    cluster.beginTurn(A);
    sender.dispatch('EV', { n: 2 }, { app_name: 'gw', client_id: 'g1' }, 'lost');
    cluster.crash(A);
    expect(sender.acks.has('lost')).toBe(false);
    cluster.settle();
    expect(payloads(g1)).toEqual([{ n: 1 }]);
  });

  it('mode one: round robin from one node takes turns over the clients of every node', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(A);
    const receivers = [client('gw', 'g1'), client('gw', 'g2'), client('gw', 'g3')];
    receivers[0]!.connect(A);
    receivers[1]!.connect(B);
    receivers[2]!.connect(C);
    for (let n = 0; n < 6; n++) sender.dispatch('WORK', { n }, { app_name: 'gw' }, `w${n}`);
    cluster.settle();
    const picked = [0, 1, 2, 3, 4, 5].map((n) => receivers.findIndex((r) => payloads(r).some((d) => (d as { n: number }).n === n)));
    expect(picked.every((index) => index >= 0)).toBe(true);
    // Every client once in each round of three, in the same order both rounds.
    expect(new Set(picked.slice(0, 3)).size).toBe(3);
    expect(picked.slice(3)).toEqual(picked.slice(0, 3));
    for (const r of receivers) expect(r.receipts.map((receipt) => receipt.s)).toEqual([1, 2]);
    expect([...sender.acks.values()]).toEqual(Array(6).fill({ delivered: 1, queued: 0 }));
  });

  it('key: rendezvous picks the same client whichever node the dispatch is sent on', () => {
    start();
    const receivers = [client('gw', 'g1'), client('gw', 'g2'), client('gw', 'g3')];
    receivers[0]!.connect(A);
    receivers[1]!.connect(B);
    receivers[2]!.connect(C);
    const senders = [A, B, C].map((node, i) => {
      const sender = client('api', `s${i}`);
      sender.connect(node);
      return sender;
    });
    const keys = ['k1', 'k2', 'k3', 'k4', 'k5', 'k6'];
    for (const key of keys) for (const [i, sender] of senders.entries()) sender.dispatch('JOB', { key, from: i }, { app_name: 'gw', key });
    cluster.settle();
    for (const key of keys) {
      const holders = receivers.filter((r) => payloads(r).some((d) => (d as { key: string }).key === key));
      expect(holders.map((r) => r.id), `key ${key}`).toHaveLength(1);
      expect(payloads(holders[0]!).filter((d) => (d as { key: string }).key === key)).toHaveLength(3);
    }
  });

  it('mode all: every matching session on every node gets it, and two senders on two nodes give every recipient one order', () => {
    start();
    const receivers = [client('gw', 'g1'), client('gw', 'g2'), client('gw', 'g3'), client('gw', 'g4')];
    receivers[0]!.connect(A, { metadata: { room: 'x' } });
    receivers[1]!.connect(B, { metadata: { room: 'x' } });
    receivers[2]!.connect(C, { metadata: { room: 'x' } });
    receivers[3]!.connect(C, { metadata: { room: 'y' } });
    // A session waiting to be resumed matches too: it buffers the event.
    const away = client('gw', 'g5');
    away.connect(B, { metadata: { room: 'x' } });
    away.drop();
    cluster.settle();
    const left = client('api', 'left');
    const right = client('api', 'right');
    left.connect(A);
    right.connect(C);
    for (let n = 0; n < 4; n++) {
      // Both send before any node reads the bus: the bus alone decides the order.
      left.dispatch('NEWS', { by: 'left', n }, { app_name: 'gw', mode: 'all', query: { room: 'x' } }, `l${n}`);
      right.dispatch('NEWS', { by: 'right', n }, { app_name: 'gw', mode: 'all', query: { room: 'x' } }, `r${n}`);
    }
    cluster.settle();
    expect([...left.acks.values(), ...right.acks.values()]).toEqual(Array(8).fill({ delivered: 4, queued: 0 }));
    const order = payloads(receivers[0]!);
    expect(order).toHaveLength(8);
    expect(payloads(receivers[1]!)).toEqual(order);
    expect(payloads(receivers[2]!)).toEqual(order);
    expect(payloads(receivers[3]!)).toEqual([]);
    // Interleaved as the bus holds the entries, not sender by sender.
    expect(order.slice(0, 2).map((d) => (d as { by: string }).by).sort()).toEqual(['left', 'right']);
    away.connect(A, { reconnect: true, seq: 'last' });
    expect(payloads(away)).toEqual(order);
  });
  it.each([
    ['the old owner read the bus before the release, the new owner after the handoff', 'old'],
    ['the new owner read the bus before the handoff, the old owner after the release', 'new'],
  ] as const)('mode all during a handover: %s — one delivery', (_, readFirst) => {
    start();
    const sender = client('api', 'sender');
    sender.connect(A);
    const g1 = client('gw', 'g1');
    g1.connect(B);
    sender.dispatch('NEWS', { n: 1 }, { app_name: 'gw', mode: 'all' }, 'all1');
    g1.identify(C, { reconnect: true, seq: 'last' });
    while (cluster.read(readFirst === 'old' ? B : C, BUS));
    cluster.read(B, inboxOf(B));
    cluster.read(C, inboxOf(C));
    expect(g1.connected).toBe(true);
    cluster.settle();
    expect(sender.acks.get('all1')).toEqual({ delivered: 1, queued: 0 });
    expect(payloads(g1)).toEqual([{ n: 1 }]);
  });

  it('mode all to a session of a node that crashed before reading it: adopted and handed on, the session still gets it', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(A);
    const g1 = client('gw', 'g1');
    g1.connect(C);
    cluster.crash(C);
    sender.dispatch('NEWS', { n: 1 }, { app_name: 'gw', mode: 'all' }, 'all1');
    cluster.settle();
    expect(sender.acks.get('all1')).toEqual({ delivered: 1, queued: 0 });
    // g1 comes back on B, which has read past the event while the session was still C's.
    g1.identify(B, { reconnect: true, seq: 'last' });
    while (cluster.read(B, BUS));
    cluster.declareDead(C);
    cluster.adopt(C, A);
    cluster.settle();
    expect(g1.connected).toBe(true);
    expect(payloads(g1)).toEqual([{ n: 1 }]);
  });
});

describe('held events', () => {
  it('NERVE_UNDELIVERABLE at the TTL reaches the sender on the node it has moved to', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(A);
    sender.dispatch('LATE', { n: 1 }, { app_name: 'gw', client_id: 'nobody' }, 'late');
    cluster.settle();
    expect(sender.acks.get('late')).toEqual({ delivered: 0, queued: 1 });
    sender.drop();
    sender.connect(B, { reconnect: true, seq: 'last' });
    cluster.advanceSettling(QUEUE_TTL + 100);
    expect(sender.undeliverable).toEqual([expect.objectContaining({ e: 'LATE', nonce: 'late', reason: expect.stringContaining('nobody') })]);
    expect(sender.conn!.node).toBe(B);
  });

  it('a held event goes to the matching client that identifies later on another node, once', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(A);
    sender.dispatch('JOB', { n: 1 }, { app_name: 'gw' }, 'j1');
    cluster.settle();
    expect(sender.acks.get('j1')).toEqual({ delivered: 0, queued: 1 });
    const late = client('gw', 'g1');
    late.connect(C);
    expect(late.receipts.map((r) => [r.d, r.s, r.node])).toEqual([[{ n: 1 }, 1, C]]);
    cluster.advanceSettling(QUEUE_TTL + 100);
    expect(sender.undeliverable).toEqual([]);
  });

  it('two matching clients identifying on two nodes at once: exactly one gets the held event', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(A);
    sender.dispatch('JOB', { n: 1 }, { app_name: 'gw' }, 'j1');
    cluster.settle();
    const first = client('gw', 'g1');
    const second = client('gw', 'g2');
    first.identify(B);
    second.identify(C);
    cluster.settle();
    expect(first.connected && second.connected).toBe(true);
    expect([...payloads(first), ...payloads(second)]).toEqual([{ n: 1 }]);
    cluster.advanceSettling(QUEUE_TTL + 100);
    expect(sender.undeliverable).toEqual([]);
  });
});

describe('takeover and resume on another node', () => {
  it('IDENTIFY on B for a session connected on A, without reconnect: the new connection gets 4409 already connected', () => {
    start();
    const g1 = client('gw', 'g1');
    const onA = g1.connect(A);
    const onB = g1.identify(B);
    cluster.settle();
    expect(onB.frames.at(-1)).toEqual({ op: 6, d: 'IDENTIFY: gw/g1 is already connected' });
    expect(onB.closed).toMatchObject({ code: 4409 });
    expect(onA.open).toBe(true);
    expect(cluster.owners.get('gw\u0000g1')).toBe(A);
  });

  it('with reconnect: A gets NO_U_TBH and 4409, the session and its buffer move to B, and seq replays exactly what was missed', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(C);
    const g1 = client('gw', 'g1');
    const onA = g1.connect(A);
    for (let n = 1; n <= 4; n++) sender.dispatch('EV', { n }, { app_name: 'gw', client_id: 'g1' });
    cluster.settle();
    expect(events(onA.frames).map(([, , s]) => s)).toEqual([1, 2, 3, 4]);
    // The client had processed only up to s = 2 when it moved.
    const onB = g1.identify(B, { reconnect: true, seq: 2 });
    cluster.settle();
    expect(onA.frames.at(-1)).toEqual({ op: 6, d: 'Session taken over by a new connection' });
    expect(onA.closed).toMatchObject({ code: 4409 });
    expect(onB.frames.slice(1)).toEqual([
      { op: 2, d: "hi i'm dad" },
      { op: 8, e: 'NERVE_SESSION', d: { resumed: true, s: 4, replayed: 2, missed: 0 } },
      { op: 8, e: 'EV', d: { n: 3 }, from: { app_name: 'api', client_id: 'sender' }, s: 3 },
      { op: 8, e: 'EV', d: { n: 4 }, from: { app_name: 'api', client_id: 'sender' }, s: 4 },
    ]);
    expect(cluster.owners.get('gw\u0000g1')).toBe(B);
    expect(cluster.clients(C, 'gw')).toEqual([expect.objectContaining({ client_id: 'g1', node: B, connected: true })]);
    sender.dispatch('EV', { n: 5 }, { app_name: 'gw', client_id: 'g1' });
    cluster.settle();
    expect(events(onB.frames).at(-1)).toEqual(['EV', { n: 5 }, 5]);
    expect(g1.violations).toEqual([]);
  });

  it('a dispatch still on its way to the node its recipient just left is sent on from there: once, possibly after a later one (docs/cluster.md, Order)', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(B);
    const g1 = client('gw', 'g1');
    g1.connect(A);
    g1.identify(B, { reconnect: true, seq: 'last' });
    // Sent before B has the session: it follows B's release into A's inbox.
    sender.dispatch('EV', { n: 1 }, { app_name: 'gw', client_id: 'g1' }, 'e1');
    cluster.read(A, inboxOf(A));
    cluster.read(A, inboxOf(A));
    cluster.read(B, inboxOf(B));
    expect(g1.connected).toBe(true);
    // Sent once B has it: delivered there at once.
    sender.dispatch('EV', { n: 2 }, { app_name: 'gw', client_id: 'g1' }, 'e2');
    cluster.settle();
    expect(payloads(g1)).toHaveLength(2);
    expect(payloads(g1)).toEqual(expect.arrayContaining([{ n: 1 }, { n: 2 }]));
    expect(g1.violations).toEqual([]);
  });

  it('after an abrupt drop on A, a resume on B replays what was sent meanwhile, in order, once', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(C);
    const g1 = client('gw', 'g1');
    g1.connect(A);
    sender.dispatch('EV', { n: 1 }, { app_name: 'gw', client_id: 'g1' }, 'e1');
    cluster.settle();
    g1.drop();
    cluster.settle();
    for (let n = 2; n <= 4; n++) sender.dispatch('EV', { n }, { app_name: 'gw', client_id: 'g1' }, `e${n}`);
    cluster.settle();
    expect([...sender.acks.values()]).toEqual(Array(4).fill({ delivered: 1, queued: 0 }));
    g1.connect(B, { reconnect: true, seq: 'last' });
    expect(g1.sessionEvents).toEqual([{ resumed: true, s: 4, replayed: 3, missed: 0 }]);
    expect(g1.receipts.map((r) => [r.d, r.s, r.node])).toEqual([
      [{ n: 1 }, 1, A],
      [{ n: 2 }, 2, B],
      [{ n: 3 }, 3, B],
      [{ n: 4 }, 4, B],
    ]);
    expect(g1.replays).toEqual([]);
    expect(g1.violations).toEqual([]);
  });
});

describe('faults', () => {
  /** Sends `count` numbered events from `sender` to each receiver, settling after each round. */
  function stream(sender: Client, receivers: Client[], from: number, count: number): void {
    for (let n = from; n < from + count; n++) {
      for (const r of receivers) sender.dispatch('EV', { n }, { app_name: 'gw', client_id: r.id }, `${r.id}-${n}`);
      cluster.settle();
    }
  }

  function expectExactlyOnce(receivers: Client[], count: number): void {
    for (const r of receivers) {
      expect(
        r.receipts.map((receipt) => (receipt.d as { n: number }).n),
        r.id,
      ).toEqual(Array.from({ length: count }, (_, n) => n));
      expect(r.violations).toEqual([]);
    }
  }

  it('drain of A: its clients resume on B and C with nothing lost or duplicated, and A leaves for another node to adopt', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(B);
    const receivers = [client('gw', 'g1'), client('gw', 'g2')];
    for (const r of receivers) r.connect(A);
    stream(sender, receivers, 0, 3);
    cluster.drain(A);
    for (const r of receivers) {
      expect(r.conn!.frames.at(-1)).toEqual({ op: 5, d: 'go away.' });
      expect(r.conn!.closed).toMatchObject({ code: 1001 });
    }
    cluster.settle();
    // Events sent while the clients are away wait in their sessions on A.
    stream(sender, receivers, 3, 2);
    receivers[0]!.connect(B, { reconnect: true, seq: 'last' });
    stream(sender, receivers, 5, 2);
    receivers[1]!.connect(C, { reconnect: true, seq: 'last' });
    stream(sender, receivers, 7, 1);
    cluster.leave(A);
    cluster.declareDead(A);
    cluster.adopt(A, B);
    cluster.settle();
    stream(sender, receivers, 8, 1);
    expect(receivers.map((r) => r.sessionEvents.map((e) => e.resumed))).toEqual([[true], [true]]);
    expectExactlyOnce(receivers, 9);
    expect([...sender.acks.values()].every((ack) => ack.delivered === 1)).toBe(true);
  });

  it('drain of A with a held event: the node that adopts A hands it to a client that identifies later', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(A);
    sender.dispatch('JOB', { n: 1 }, { app_name: 'gw' }, 'j1');
    cluster.settle();
    cluster.drain(A);
    cluster.settle();
    sender.connect(C, { reconnect: true, seq: 'last' });
    cluster.leave(A);
    cluster.declareDead(A);
    cluster.adopt(A, B);
    cluster.settle();
    const late = client('gw', 'g1');
    late.connect(C);
    expect(payloads(late)).toEqual([{ n: 1 }]);
    cluster.advanceSettling(QUEUE_TTL + 100);
    expect(sender.undeliverable).toEqual([]);
  });

  it('a client that said goodbye on A can identify again on C after A has drained and B adopted it', () => {
    start();
    const g1 = client('gw', 'g1');
    g1.connect(A);
    g1.bye();
    cluster.settle();
    cluster.drain(A);
    cluster.leave(A);
    cluster.declareDead(A);
    cluster.adopt(A, B);
    cluster.settle();
    const again = g1.identify(C);
    cluster.settle();
    expect(again.frames.slice(1, 2)).toEqual([{ op: 2, d: "hi i'm dad" }]);
    expect(cluster.owners.get('gw\u0000g1')).toBe(C);
  });

  it('crash of A: after B adopts it, its clients resume on C with every acknowledged event, once', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(B);
    const receivers = [client('gw', 'g1'), client('gw', 'g2')];
    for (const r of receivers) r.connect(A);
    stream(sender, receivers, 0, 3);
    cluster.crash(A);
    for (const r of receivers) expect(r.conn!.closed).toMatchObject({ code: 1006, dropped: true });
    // Not yet noticed: events still go to A's inbox and are acknowledged there.
    stream(sender, receivers, 3, 2);
    // A client that comes back before the adoption waits for it.
    receivers[0]!.identify(C, { reconnect: true, seq: 'last' });
    cluster.settle();
    expect(receivers[0]!.identifying).toBe(true);
    cluster.declareDead(A);
    stream(sender, receivers, 5, 1);
    cluster.adopt(A, B);
    cluster.settle();
    expect(receivers[0]!.connected).toBe(true);
    receivers[1]!.connect(C, { reconnect: true, seq: 'last' });
    stream(sender, receivers, 6, 1);
    expect([...sender.acks.values()].every((ack) => ack.delivered === 1)).toBe(true);
    expect(sender.acks.size).toBe(14);
    expectExactlyOnce(receivers, 7);
  });

  it('crash of A during a turn it never stored: an event relayed to A afterwards still reaches the client that resumes with seq', () => {
    start();
    const local = client('api', 'local');
    const remote = client('api', 'remote');
    const g1 = client('gw', 'g1');
    local.connect(A);
    remote.connect(B);
    g1.connect(A);
    // A accepts an event for g1 in a turn that dies with A: nothing of that turn reached a socket, and its sender is never acknowledged.
    cluster.beginTurn(A);
    local.dispatch('EV', { n: 'unstored' }, { app_name: 'gw', client_id: 'g1' }, 'u');
    cluster.crash(A);
    expect(g1.receipts).toEqual([]);
    expect(local.acks.size).toBe(0);
    // B has not noticed yet: its event goes to A's inbox, stored in Redis, and is acknowledged.
    remote.dispatch('EV', { n: 'acknowledged' }, { app_name: 'gw', client_id: 'g1' }, 'a');
    cluster.settle();
    expect(remote.acks.get('a')).toEqual({ delivered: 1, queued: 0 });
    cluster.declareDead(A);
    cluster.adopt(A, C);
    cluster.settle();
    g1.connect(B, { reconnect: true, seq: 'last' });
    expect(g1.receipts.map((r) => [r.d, r.s])).toEqual([[{ n: 'acknowledged' }, 1]]);
    expect(g1.violations).toEqual([]);
  });

  it('an adopter that dies before storing its adoption: another node adopts the sessions it had claimed', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(A);
    const g1 = client('gw', 'g1');
    g1.connect(B);
    g1.drop();
    sender.dispatch('EV', { n: 1 }, { app_name: 'gw', client_id: 'g1' }, 'e1');
    cluster.settle();
    expect(sender.acks.get('e1')).toEqual({ delivered: 1, queued: 0 });
    cluster.crash(B);
    cluster.declareDead(B);
    // C claims B's sessions and steps the adoption, then dies before its turn is stored.
    cluster.beginTurn(C);
    cluster.adopt(B, C);
    cluster.crash(C);
    expect(cluster.unreaped()).toEqual([B, C]);
    cluster.declareDead(C);
    cluster.adopt(B, A);
    cluster.adopt(C, A);
    cluster.settle();
    g1.connect(A, { reconnect: true, seq: 'last' });
    expect(g1.sessionEvents).toEqual([{ resumed: true, s: 1, replayed: 1, missed: 0 }]);
    expect(payloads(g1)).toEqual([{ n: 1 }]);
  });

  it('a session handed over to A just before A crashed is the adopter’s in the owners hash too, so a link bounce does not fence it', () => {
    start();
    const g1 = client('gw', 'g1');
    g1.connect(C);
    // g1 moves to A: C hands the session over, and A crashes before reading the handoff.
    g1.identify(A, { reconnect: true, seq: 'last' });
    cluster.read(C, inboxOf(C));
    expect(cluster.owners.get('gw\u0000g1')).toBe(A);
    cluster.crash(A);
    cluster.declareDead(A);
    cluster.adopt(A, B);
    cluster.settle();
    g1.connect(B, { reconnect: true, seq: 'last' });
    expect(g1.sessionEvents.at(-1)).toMatchObject({ resumed: true });
    cluster.linkDown(B);
    cluster.linkUp(B);
    cluster.settle();
    expect(g1.closes.filter((close) => close.node === B)).toEqual([]);
    expect(g1.connected).toBe(true);
    expect(cluster.owners.get('gw\u0000g1')).toBe(B);
  });

  it('link outage on A: traffic between A’s own clients flows; a dispatch to a client on B is held, then delivered once the link is back', () => {
    start();
    const sender = client('api', 'sender');
    const neighbour = client('gw', 'near');
    const far = client('gw', 'far');
    sender.connect(A);
    neighbour.connect(A);
    far.connect(B);
    cluster.linkDown(A);
    sender.dispatch('LOCAL', { n: 1 }, { app_name: 'gw', client_id: 'near' }, 'l1');
    sender.dispatch('REMOTE', { n: 2 }, { app_name: 'gw', client_id: 'far' }, 'r1');
    cluster.settle();
    expect(payloads(neighbour)).toEqual([{ n: 1 }]);
    expect(sender.acks.get('l1')).toEqual({ delivered: 1, queued: 0 });
    expect(sender.acks.get('r1')).toEqual({ delivered: 0, queued: 1 });
    expect(payloads(far)).toEqual([]);
    cluster.advance(1_000);
    cluster.linkUp(A);
    cluster.settle();
    expect(payloads(far)).toEqual([{ n: 2 }]);
    cluster.advanceSettling(QUEUE_TTL + 100);
    expect(sender.undeliverable).toEqual([]);
  });

  it('link outage on A that outlasts the TTL: the held dispatch is reported undeliverable to its sender on A', () => {
    start();
    const sender = client('api', 'sender');
    const far = client('gw', 'far');
    sender.connect(A);
    far.connect(B);
    cluster.linkDown(A);
    sender.dispatch('REMOTE', { n: 1 }, { app_name: 'gw', client_id: 'far' }, 'r1');
    cluster.advance(QUEUE_TTL + 100);
    expect(sender.undeliverable).toEqual([expect.objectContaining({ e: 'REMOTE', nonce: 'r1' })]);
    cluster.linkUp(A);
    cluster.settle();
    expect(payloads(far)).toEqual([]);
  });

  it('link outage on B: an event B owes back to a sender on A is reported undeliverable to it once the link is back', () => {
    start();
    const sender = client('api', 'sender');
    sender.connect(A);
    const g1 = client('gw', 'g1');
    g1.connect(B);
    g1.drop();
    cluster.settle();
    // Handed to B, which buffers it for g1's session: delivered, as far as A can tell.
    sender.dispatch('EV', { n: 1 }, { app_name: 'gw', client_id: 'g1' }, 'e1');
    cluster.settle();
    expect(sender.acks.get('e1')).toEqual({ delivered: 1, queued: 0 });
    cluster.linkDown(B);
    // g1 never comes back: the session ends, its unwritten event is held on B, and its TTL runs out, all while B is cut off.
    cluster.advance(RESUME_WINDOW + QUEUE_TTL + 100);
    expect(cluster.node(B).state.counters.undeliverable).toBe(1);
    cluster.linkUp(B);
    cluster.settle();
    expect(sender.undeliverable).toEqual([expect.objectContaining({ e: 'EV', nonce: 'e1' })]);
  });

  /** g1 on A; A is cut off, declared dead and adopted by B; then A's link returns. */
  function fenced(): { sender: Client; g1: Client; onA: Connection } {
    start();
    const sender = client('api', 'sender');
    sender.connect(C);
    const g1 = client('gw', 'g1');
    const onA = g1.connect(A);
    sender.dispatch('EV', { n: 1 }, { app_name: 'gw', client_id: 'g1' }, 'e1');
    cluster.settle();
    cluster.linkDown(A);
    cluster.declareDead(A);
    cluster.adopt(A, B);
    cluster.settle();
    expect(cluster.owners.get('gw\u0000g1')).toBe(B);
    // Cut off from Redis, not from its client: A still serves it.
    expect(onA.open).toBe(true);
    cluster.linkUp(A);
    cluster.settle();
    return { sender, g1, onA };
  }

  it('fencing: A, cut off while B adopts its sessions, closes them with 4409 when its link returns', () => {
    const { sender, g1, onA } = fenced();
    expect(onA.frames.at(-1)).toEqual({ op: 6, d: 'Session taken over by a new connection' });
    expect(onA.closed).toMatchObject({ code: 4409 });
    expect(cluster.logs('warn')).toContain(`${A}: session owned by another node: dropped here`);
    g1.connect(C, { reconnect: true, seq: 'last' });
    expect(g1.sessionEvents).toEqual([{ resumed: true, s: 1, replayed: 0, missed: 0 }]);
    sender.dispatch('EV', { n: 2 }, { app_name: 'gw', client_id: 'g1' }, 'e2');
    cluster.settle();
    expect(payloads(g1)).toHaveLength(2);
    expect(payloads(g1)).toEqual(expect.arrayContaining([{ n: 1 }, { n: 2 }]));
    expect(g1.violations).toEqual([]);
  });

  it('fencing: once A has dropped the sessions B owns, every node’s registry says they are B’s', () => {
    fenced();
    for (const node of [A, B, C]) expect(cluster.clients(node, 'gw'), node).toEqual([expect.objectContaining({ client_id: 'g1', node: B })]);
  });
});

describe('GET /clients', () => {
  it('every node lists every node’s sessions, each with its node', () => {
    start();
    client('gw', 'g1').connect(A, { metadata: { v: 1 } });
    client('gw', 'g2').connect(B, { metadata: { v: 2 } });
    const away = client('gw', 'g3');
    away.connect(C, { metadata: { v: 3 } });
    away.drop();
    cluster.settle();
    const expected = [
      { app_name: 'gw', client_id: 'g1', metadata: { v: 1 }, connected: true, node: A },
      { app_name: 'gw', client_id: 'g2', metadata: { v: 2 }, connected: true, node: B },
      { app_name: 'gw', client_id: 'g3', metadata: { v: 3 }, connected: false, node: C },
    ];
    for (const node of [A, B, C]) {
      const listed = cluster.clients(node, 'gw').map(({ connected_at: _, ...info }) => info);
      expect(listed.sort((x, y) => x.client_id.localeCompare(y.client_id)), node).toEqual(expected);
    }
  });
});
