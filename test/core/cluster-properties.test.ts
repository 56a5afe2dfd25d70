// Property tests for a cluster: random histories over the in-memory cluster
// of cluster-harness.ts (clients on random nodes, takeovers and resumes on
// other nodes, drops, goodbyes, metadata updates, dispatches, reads of the
// streams in any order Redis allows, claim answers whenever, turns kept open,
// clock advances, drains, crashes and adoptions), checked against the
// delivery guarantees of docs/protocol.md as docs/cluster.md extends them.
//
// How outcomes are counted. A client processes frames in order and keeps the
// last `s` of its session; an `s` it already processed that comes again with
// the same content is a replay (a resume may replay what was written while
// its IDENTIFY was on its way), not a second delivery. A frame written in a
// turn that ended in a crash is real to the client but was never stored:
// docs/cluster.md allows that turn's events to be replayed once more, so such
// a receipt may come on top of the one stored outcome, never instead of
// being counted at all.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BUS, Client, Cluster, eventData, type Connection, type Receipt } from './cluster-harness.ts';

const FIRST_NODES = ['node-a', 'node-b', 'node-c'];
/** Nodes that replace ones that crashed or drained, each a new process with a new id. */
const LATER_NODES = ['node-d', 'node-e', 'node-f'];
const RECEIVERS = ['g0', 'g1', 'g2', 'g3'] as const;
const SENDERS = ['s0', 's1'] as const;

const RESUME_WINDOW = 2_000;
const QUEUE_TTL = 1_500;
const LIMITS = {
  heartbeatInterval: 1e9, // timeouts are covered elsewhere; here they would only end the senders
  resumeWindow: RESUME_WINDOW,
  queueTtl: QUEUE_TTL,
  queueMaxCount: 6,
  replayMaxCount: 5,
};

type ReceiverId = (typeof RECEIVERS)[number];

type Command =
  | { t: 'connect'; c: ReceiverId; node: number; fresh: boolean; ready: boolean }
  | { t: 'drop'; c: ReceiverId }
  | { t: 'bye'; c: ReceiverId }
  | { t: 'meta'; c: ReceiverId; ready: boolean }
  | { t: 'send'; sender: number; mode: 'one' | 'all' | 'id'; c: ReceiverId; query: boolean; key: string | undefined }
  | { t: 'rejoin'; sender: number; node: number }
  | { t: 'read'; node: number; stream: number; count: number }
  | { t: 'answer'; node: number }
  | { t: 'settle' }
  | { t: 'turn'; node: number }
  | { t: 'wait'; ms: number }
  | { t: 'crash'; node: number }
  | { t: 'drain'; node: number }
  | { t: 'reap'; node: number }
  | { t: 'outage'; node: number };

const receiver = fc.constantFrom(...RECEIVERS);
const nodeIndex = fc.nat(5);

/** How often each command comes up in a history. */
type Profile = Record<Command['t'], number>;

/** Everything: clients coming and going, traffic, reads in any order, drains, crashes and adoptions. */
const MIXED: Profile = { connect: 4, drop: 2, bye: 1, meta: 1, send: 6, rejoin: 1, read: 6, answer: 3, settle: 2, turn: 3, wait: 2, crash: 1, drain: 1, reap: 2, outage: 0 };
/** MIXED with link outages, for the properties an outage does not change. */
const WITH_OUTAGES: Profile = { ...MIXED, outage: 1 };
/**
 * Crashes in the middle of turns that wrote to clients: traffic and reads
 * under long turns (see `run`), clients that stay, few settles.
 */
const DURABILITY: Profile = { connect: 3, drop: 0, bye: 0, meta: 0, send: 8, rejoin: 1, read: 10, answer: 3, settle: 0, turn: 2, wait: 1, crash: 2, drain: 0, reap: 2, outage: 0 };

function commands(profile: Profile): fc.Arbitrary<Command[]> {
  const all: { [T in Command['t']]: fc.Arbitrary<Extract<Command, { t: T }>> } = {
    connect: fc.record({ t: fc.constant('connect' as const), c: receiver, node: nodeIndex, fresh: fc.boolean(), ready: fc.boolean() }),
    drop: fc.record({ t: fc.constant('drop' as const), c: receiver }),
    bye: fc.record({ t: fc.constant('bye' as const), c: receiver }),
    meta: fc.record({ t: fc.constant('meta' as const), c: receiver, ready: fc.boolean() }),
    send: fc.record({
      t: fc.constant('send' as const),
      sender: fc.nat(SENDERS.length - 1),
      mode: fc.constantFrom('one' as const, 'all' as const, 'id' as const),
      c: receiver,
      query: fc.boolean(),
      key: fc.option(fc.constantFrom('k1', 'k2', 'k3'), { nil: undefined }),
    }),
    rejoin: fc.record({ t: fc.constant('rejoin' as const), sender: fc.nat(SENDERS.length - 1), node: nodeIndex }),
    read: fc.record({ t: fc.constant('read' as const), node: nodeIndex, stream: fc.nat(3), count: fc.integer({ min: 1, max: 3 }) }),
    answer: fc.record({ t: fc.constant('answer' as const), node: nodeIndex }),
    settle: fc.constant({ t: 'settle' as const }),
    turn: fc.record({ t: fc.constant('turn' as const), node: nodeIndex }),
    wait: fc.record({ t: fc.constant('wait' as const), ms: fc.integer({ min: 0, max: 2_500 }) }),
    crash: fc.record({ t: fc.constant('crash' as const), node: nodeIndex }),
    drain: fc.record({ t: fc.constant('drain' as const), node: nodeIndex }),
    reap: fc.record({ t: fc.constant('reap' as const), node: nodeIndex }),
    outage: fc.record({ t: fc.constant('outage' as const), node: nodeIndex }),
  };
  const weighted = (Object.keys(all) as Command['t'][])
    .filter((t) => profile[t] > 0)
    .map((t) => ({ weight: profile[t], arbitrary: all[t] as fc.Arbitrary<Command> }));
  return fc.array(fc.oneof(...weighted), { minLength: 20, maxLength: 80, size: 'max' });
}

/** At most this many crashes and drains per history, so most histories keep some clients still. */
const MAX_FAULTS = 2;

interface Sent {
  id: string;
  /** Its place among the dispatches of the history. */
  index: number;
  directed: boolean;
  /** To one client_id, without a query: the kind whose order from one sender is promised. */
  toClient: boolean;
  sender: Client;
  /** The sender's connection when it sent: a NERVE_UNDELIVERABLE can only reach it while that stays open. */
  senderConn: Connection;
  /** Mode all: matching sessions in the sending node's view of the registry. */
  expected?: number;
  /** Mode all: connected clients that matched in that view, on the node the view named, as they were then. */
  candidates?: { client: Client; conn: Connection; epoch: number; at: number }[];
}

function pick<T>(list: T[], index: number): T | undefined {
  return list.length === 0 ? undefined : list[index % list.length];
}

interface RunOptions {
  /** Resumes carry the last `s` the client processed. */
  withSeq: boolean;
  /**
   * Every node's turn stays open from one command to the next and ends only
   * at a `turn` command or a settle, so a crash loses what the node did since;
   * and every receiver starts connected, one per node in turn.
   */
  longTurns?: boolean;
}

/** Runs one history, then lets every window and TTL run out; returns what every party observed. */
function run(history: Command[], { withSeq, longTurns = false }: RunOptions) {
  const cluster = new Cluster(FIRST_NODES, LIMITS);
  cluster.settle();
  const later = [...LATER_NODES];
  const up = () => [...cluster.nodes.values()].filter((node) => node.status === 'up').map((node) => node.id);
  const alive = () => [...cluster.nodes.values()].filter((node) => node.alive).map((node) => node.id);
  const senders = SENDERS.map((id, i) => {
    const sender = new Client(cluster, 'api', id);
    sender.connect(FIRST_NODES[i]!);
    return sender;
  });
  const receivers = new Map(RECEIVERS.map((id) => [id, new Client(cluster, 'gw', id)]));
  /** The metadata each receiver last asked for, and the command after which it last changed it by ABOUT_ME. */
  const ready = new Map<string, boolean>();
  if (longTurns) {
    for (const [i, c] of [...receivers.values()].entries()) {
      c.connect(FIRST_NODES[i % FIRST_NODES.length]!, { metadata: { ready: true } });
      ready.set(c.id, true);
    }
  }
  const lastMeta = new Map<string, number>();
  let faults = 0;
  /** Gone nodes a new node has replaced (once each, even when adopted twice). */
  const replaced = new Set<string>();
  const sent = new Map<string, Sent>();
  const resume = withSeq ? ({ reconnect: true, seq: 'last' } as const) : ({ reconnect: true } as const);

  /**
   * Declares the oldest unreaped node dead (a drained one leaves first), or
   * has a live node adopt one declared dead; the first time, a new node
   * takes its place.
   */
  const reap = (adopterIndex: number) => {
    const dead = cluster.unreaped()[0];
    if (dead === undefined) return;
    const node = cluster.node(dead);
    if (node.member) {
      if (node.status === 'draining') cluster.leave(dead);
      cluster.declareDead(dead);
      return;
    }
    const adopter = pick(
      up().filter((id) => cluster.node(id).linked),
      adopterIndex,
    );
    if (adopter === undefined) return;
    cluster.adopt(dead, adopter);
    const next = replaced.has(dead) ? undefined : later.shift();
    replaced.add(dead);
    if (next !== undefined) cluster.addNode(next);
  };

  for (const [index, cmd] of history.entries()) {
    switch (cmd.t) {
      case 'connect': {
        const c = receivers.get(cmd.c)!;
        const node = pick(up(), cmd.node);
        if (c.identifying || node === undefined) break;
        // A connected client moving to another connection always asks to resume: that is a takeover.
        const options = cmd.fresh && !c.connected ? {} : resume;
        ready.set(cmd.c, cmd.ready);
        c.identify(node, { ...options, metadata: { ready: cmd.ready } });
        break;
      }
      case 'drop':
        receivers.get(cmd.c)!.drop();
        break;
      case 'bye':
        receivers.get(cmd.c)!.bye();
        break;
      case 'meta': {
        const c = receivers.get(cmd.c)!;
        if (!c.connected) break;
        ready.set(cmd.c, cmd.ready);
        lastMeta.set(cmd.c, index);
        c.aboutMe({ ready: cmd.ready });
        break;
      }
      case 'send': {
        const sender = senders[cmd.sender]!;
        if (!sender.connected) break;
        const id = `m${sent.size}`;
        const to: Record<string, unknown> = { app_name: 'gw' };
        if (cmd.mode === 'all') to.mode = 'all';
        if (cmd.mode === 'id') to.client_id = cmd.c;
        if (cmd.query) to.query = { ready: true };
        if (cmd.key !== undefined) to.key = cmd.key;
        const record: Sent = { id, index: sent.size, directed: cmd.mode !== 'all', toClient: cmd.mode === 'id' && !cmd.query, sender, senderConn: sender.conn! };
        if (cmd.mode === 'all') {
          const view = cluster.clients(sender.conn!.node, 'gw').filter((info) => !cmd.query || info.metadata.ready === true);
          record.expected = view.length;
          record.candidates = [];
          for (const info of view) {
            const c = receivers.get(info.client_id as ReceiverId)!;
            if (info.connected && c.connected && c.conn!.node === info.node && (!cmd.query || ready.get(c.id) === true)) {
              record.candidates.push({ client: c, conn: c.conn!, epoch: c.epoch, at: index });
            }
          }
        }
        sent.set(id, record);
        sender.dispatch('EV', { id }, to, id);
        break;
      }
      case 'rejoin': {
        const sender = senders[cmd.sender]!;
        const node = pick(up(), cmd.node);
        if (sender.connected || sender.identifying || node === undefined) break;
        sender.identify(node, { reconnect: true, seq: 'last' });
        break;
      }
      case 'read': {
        const node = pick(alive(), cmd.node);
        if (node === undefined) break;
        const stream = pick(cluster.unread(node), cmd.stream)?.stream;
        if (stream === undefined) break;
        for (let i = 0; i < cmd.count; i++) cluster.read(node, stream);
        break;
      }
      case 'answer': {
        const node = pick(alive(), cmd.node);
        if (node !== undefined) cluster.answer(node);
        break;
      }
      case 'settle':
        cluster.settle();
        break;
      case 'turn': {
        const node = pick(alive(), cmd.node);
        if (node === undefined) break;
        if (cluster.node(node).holding) cluster.endTurn(node);
        else cluster.beginTurn(node);
        break;
      }
      case 'wait':
        cluster.advance(cmd.ms);
        break;
      case 'crash':
      case 'drain': {
        const candidates = up().filter((id) => cluster.node(id).linked);
        // A crash in the middle of a turn is the one that loses something: nodes holding one go first.
        const holding = candidates.filter((id) => cluster.node(id).holding);
        const node = pick(cmd.t === 'crash' && holding.length > 0 ? holding : candidates, cmd.node);
        if (node === undefined || faults >= MAX_FAULTS || candidates.length < 2) break;
        faults++;
        if (cmd.t === 'crash') cluster.crash(node);
        else cluster.drain(node);
        break;
      }
      case 'reap':
        reap(cmd.node);
        break;
      case 'outage': {
        const node = pick(up(), cmd.node);
        if (node === undefined) break;
        if (cluster.node(node).linked) cluster.linkDown(node);
        else cluster.linkUp(node);
        break;
      }
    }
    if (longTurns) for (const node of alive()) if (cmd.t !== 'turn' && !cluster.node(node).holding) cluster.beginTurn(node);
  }

  // Every fault is settled and every sender is back, then every window and TTL runs out.
  for (const node of alive()) if (!cluster.node(node).linked) cluster.linkUp(node);
  for (const node of alive()) cluster.endTurn(node);
  for (let round = 0; cluster.unreaped().length > 0; round++) {
    if (round > 20) throw new Error(`nodes never adopted: ${cluster.unreaped().join(', ')}`);
    reap(0);
  }
  cluster.settle();
  for (const sender of senders) if (!sender.connected && !sender.identifying) sender.identify(up()[0]!, { reconnect: true, seq: 'last' });
  cluster.settle();
  cluster.advanceSettling(RESUME_WINDOW + QUEUE_TTL * 2 + 500, 250);

  return { cluster, senders, receivers: [...receivers.values()], sent, lastMeta, up };
}

type Outcome = ReturnType<typeof run>;

/** Receipts of one payload across every receiver, split by whether the turn that wrote them was stored. */
function receiptsOf(outcome: Outcome, id: string): { stored: (Receipt & { client: string })[]; lost: (Receipt & { client: string })[] } {
  const all = outcome.receivers.flatMap((c) => c.receipts.filter((r) => (r.d as { id: string }).id === id).map((r) => ({ ...r, client: c.id })));
  // Written in a turn that died with its node, or just before the server
  // closed the connection (a takeover, a drain's GO_AWAY): the core cannot
  // know the reader got it, so it may also be owed again (replayed,
  // requeued, or reported undeliverable).
  const serverClosed = new Set([4409, 1001]);
  const uncertain = (r: Receipt) => outcome.cluster.lostTurns.has(r.turn) || serverClosed.has(outcome.cluster.conns.get(r.conn)?.closed?.code ?? 0);
  return {
    stored: all.filter((r) => !uncertain(r)),
    lost: all.filter(uncertain),
  };
}

function undeliverableOf(outcome: Outcome, sent: Sent): { stored: number; lost: number } {
  const reports = sent.sender.undeliverable.filter((report) => report.nonce === sent.id);
  const lost = reports.filter((report) => outcome.cluster.lostTurns.has(report.turn)).length;
  return { stored: reports.length - lost, lost };
}

/** Its sender kept the connection it sent on to the end, so a NERVE_UNDELIVERABLE could always reach it. */
function senderStayed(sent: Sent): boolean {
  return sent.senderConn.open && sent.sender.conn === sent.senderConn;
}

function describeOutcome(outcome: Outcome, sent: Sent): string {
  const { stored, lost } = receiptsOf(outcome, sent.id);
  const undeliverable = undeliverableOf(outcome, sent);
  const where = (list: Receipt[]) => list.map((r) => `${(r as Receipt & { client: string }).client}#${r.epoch}@s${r.s}`).join(',');
  return (
    `${sent.id}: ack ${JSON.stringify(sent.sender.acks.get(sent.id))}, received [${where(stored)}]` +
    `${lost.length > 0 ? ` (+ unstored [${where(lost)}])` : ''}, undeliverable ${undeliverable.stored}` +
    `${undeliverable.lost > 0 ? ` (+ ${undeliverable.lost} unstored)` : ''}`
  );
}

/** Nothing a faithful core never does (throw, log an error, relay while unlinked), and no client saw `s` misbehave. */
function expectNoViolations(outcome: Outcome): void {
  expect(outcome.cluster.violations).toEqual([]);
  for (const c of [...outcome.senders, ...outcome.receivers]) expect(c.violations, c.id).toEqual([]);
}

/** Every client not connected identifies afresh, each on the next live node: what each connection got. */
function identifyEveryone(outcome: Outcome): { client: string; node: string; frames: unknown[] }[] {
  const nodes = outcome.up();
  const away = [...outcome.senders, ...outcome.receivers].filter((c) => !c.connected);
  // A client that comes back closes whatever connection it had left behind.
  for (const c of away) for (const conn of c.opened) if (conn.open) outcome.cluster.close(conn, 1000);
  outcome.cluster.settle();
  const attempts = away
    .map((c, i) => ({ c, conn: c.identify(nodes[i % nodes.length]!) }));
  outcome.cluster.settle();
  return attempts.map(({ c, conn }) => ({ client: c.id, node: conn.node, frames: conn.frames }));
}

/**
 * Dispatches from one session to one client_id arrive in the order sent,
 * whichever nodes the two are on (a query may hold one back until the
 * metadata matches, so those are left out).
 */
function expectSenderOrder(outcome: Outcome): void {
  for (const c of outcome.receivers) {
    const streams = new Map<string, number[]>();
    for (const r of [...c.receipts].sort((x, y) => x.epoch - y.epoch || x.s - y.s)) {
      const sent = outcome.sent.get((r.d as { id: string }).id)!;
      // An event that was on its way to a node its recipient had just left is sent on from there, and may arrive after later ones.
      if (!sent.toClient || outcome.cluster.lostTurns.has(r.turn) || outcome.cluster.rerouted.has(JSON.stringify(r.d))) continue;
      const stream = `${c.id}#${r.epoch} from ${sent.sender.id}`;
      streams.set(stream, [...(streams.get(stream) ?? []), sent.index]);
    }
    for (const [stream, order] of streams) expect(order, `${stream}: dispatches out of the order sent`).toEqual([...order].sort((x, y) => x - y));
  }
}

/** Directed, with seq: at most one stored outcome each; at least one outcome for every acknowledged one whose sender could hear of it; one sender's order kept. */
function expectDirectedExactlyOnce(outcome: Outcome): void {
  expectNoViolations(outcome);
  for (const sent of outcome.sent.values()) {
    if (!sent.directed) continue;
    const { stored, lost } = receiptsOf(outcome, sent.id);
    const undeliverable = undeliverableOf(outcome, sent);
    const storedOutcomes = stored.length + undeliverable.stored;
    expect(storedOutcomes, describeOutcome(outcome, sent)).toBeLessThanOrEqual(1);
    if (sent.sender.acks.has(sent.id) && senderStayed(sent)) {
      expect(storedOutcomes + lost.length + undeliverable.lost, describeOutcome(outcome, sent)).toBeGreaterThanOrEqual(1);
    }
  }
  expectSenderOrder(outcome);
}

/** Directed, without seq: replays may repeat events, but nothing acknowledged is lost and none is reported undeliverable twice. */
function expectDirectedNotLost(outcome: Outcome): void {
  expect(outcome.cluster.violations).toEqual([]);
  for (const sent of outcome.sent.values()) {
    if (!sent.directed) continue;
    const { stored, lost } = receiptsOf(outcome, sent.id);
    const undeliverable = undeliverableOf(outcome, sent);
    expect(undeliverable.stored, describeOutcome(outcome, sent)).toBeLessThanOrEqual(1);
    if (sent.sender.acks.has(sent.id) && senderStayed(sent)) {
      expect(stored.length + lost.length + undeliverable.stored + undeliverable.lost, describeOutcome(outcome, sent)).toBeGreaterThanOrEqual(1);
    }
  }
}

const RUNS = 300;

describe('cluster delivery guarantees under random histories', () => {
  it('with seq on resume: every acknowledged directed dispatch is delivered exactly once or reported undeliverable exactly once, in one sender’s order', () => {
    fc.assert(
      fc.property(commands(MIXED), (history) => expectDirectedExactlyOnce(run(history, { withSeq: true }))),
      { numRuns: RUNS },
    );
  });

  it('with seq on resume, crashes in the middle of turns that wrote to clients: still exactly once', () => {
    fc.assert(
      fc.property(commands(DURABILITY), (history) => expectDirectedExactlyOnce(run(history, { withSeq: true, longTurns: true }))),
      { numRuns: RUNS },
    );
  });

  it('mode all: acknowledged with the sending node’s count, reaching the still clients it counted, once per session, in the bus’s one order', () => {
    fc.assert(
      fc.property(commands(MIXED), (history) => {
        const outcome = run(history, { withSeq: true });
        expectNoViolations(outcome);
        const busOrder = new Map<string, number>();
        for (const [position, entry] of outcome.cluster.stream(BUS).entries()) {
          for (const msg of entry.msgs) if (msg.t === 'all') busOrder.set((eventData(msg.msg) as { id: string }).id, position);
        }
        for (const sent of outcome.sent.values()) {
          if (sent.directed) continue;
          const ack = sent.sender.acks.get(sent.id);
          if (ack) expect(ack, sent.id).toEqual({ delivered: sent.expected, queued: 0 });
          expect(undeliverableOf(outcome, sent), sent.id).toEqual({ stored: 0, lost: 0 });
          const { stored } = receiptsOf(outcome, sent.id);
          const sessions = stored.map((r) => `${r.client}#${r.epoch}`);
          expect(sessions.length, `${sent.id} twice to one session: ${sessions}`).toBe(new Set(sessions).size);
          // A dispatch the sender never saw acknowledged may have been sent on a connection the server had already closed.
          for (const { client, conn, epoch, at } of ack ? sent.candidates! : []) {
            const still = conn.open && client.conn === conn && (outcome.lastMeta.get(client.id) ?? -1) < at;
            if (still) expect(sessions, `${sent.id} to ${client.id}, connected and matching in the sender's view`).toContain(`${client.id}#${epoch}`);
          }
        }
        for (const c of outcome.receivers) {
          const bySession = new Map<number, Receipt[]>();
          for (const r of c.receipts) {
            if (outcome.cluster.lostTurns.has(r.turn) || !busOrder.has((r.d as { id: string }).id)) continue;
            const list = bySession.get(r.epoch) ?? [];
            list.push(r);
            bySession.set(r.epoch, list);
          }
          for (const [epoch, list] of bySession) {
            const positions = list.sort((x, y) => x.s - y.s).map((r) => busOrder.get((r.d as { id: string }).id)!);
            expect(positions, `${c.id}#${epoch}: mode-all events out of the bus's order`).toEqual([...positions].sort((x, y) => x - y));
          }
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('without seq on resume: nothing acknowledged and directed is lost, and none is reported undeliverable twice', () => {
    fc.assert(
      fc.property(commands(MIXED), (history) => expectDirectedNotLost(run(history, { withSeq: false }))),
      { numRuns: RUNS },
    );
  });

  it('without seq on resume, crashes in the middle of turns that wrote to clients: still nothing lost', () => {
    fc.assert(
      fc.property(commands(DURABILITY), (history) => expectDirectedNotLost(run(history, { withSeq: false, longTurns: true }))),
      { numRuns: RUNS },
    );
  });

  it('once every fault is over and every window has run out, every client can identify again', () => {
    fc.assert(
      fc.property(commands(MIXED), (history) => {
        const outcome = run(history, { withSeq: true });
        for (const attempt of identifyEveryone(outcome)) {
          expect(attempt.frames.slice(1, 2), `${attempt.client} on ${attempt.node}`).toEqual([{ op: 2, d: "hi i'm dad" }]);
        }
        expect(outcome.cluster.violations).toEqual([]);
      }),
      { numRuns: RUNS },
    );
  });

  it('never throws, never logs an error, never relays or claims while unlinked, with link outages on top of every other fault', () => {
    fc.assert(
      fc.property(commands(WITH_OUTAGES), fc.boolean(), fc.boolean(), (history, withSeq, longTurns) => {
        const outcome = run(history, { withSeq, longTurns });
        expect(outcome.cluster.violations).toEqual([]);
      }),
      { numRuns: RUNS },
    );
  });
});
