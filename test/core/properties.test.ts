// Property tests: random histories of connects, abrupt drops, resumes,
// goodbyes, metadata updates, dispatches and clock advances, checked against
// the delivery guarantees of docs/protocol.md.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { framesTo, Sim, type Event } from './harness.ts';
import type { State } from '../../src/core/index.ts';

const RECEIVERS = ['g0', 'g1', 'g2', 'g3'] as const;
type ReceiverId = (typeof RECEIVERS)[number];

type Command =
  | { t: 'connect'; c: ReceiverId; fresh: boolean; ready: boolean }
  | { t: 'drop'; c: ReceiverId }
  | { t: 'bye'; c: ReceiverId }
  | { t: 'meta'; c: ReceiverId; ready: boolean }
  | { t: 'send'; mode: 'one' | 'all' | 'id'; c: ReceiverId; query: boolean; key: string | undefined }
  | { t: 'wait'; ms: number };

const receiver = fc.constantFrom(...RECEIVERS);
/** Frames from a careless or hostile peer: text, any JSON, op-shaped objects with anything inside. */
const anyFrame = fc.oneof(
  fc.string(),
  fc.json(),
  fc.record({ op: fc.integer({ min: -1, max: 9 }), d: fc.anything(), e: fc.option(fc.string()), to: fc.anything() }),
);
const command: fc.Arbitrary<Command> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ t: fc.constant('connect' as const), c: receiver, fresh: fc.boolean(), ready: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('drop' as const), c: receiver }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('bye' as const), c: receiver }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('meta' as const), c: receiver, ready: fc.boolean() }) },
  {
    weight: 5,
    arbitrary: fc.record({
      t: fc.constant('send' as const),
      mode: fc.constantFrom('one' as const, 'all' as const, 'id' as const),
      c: receiver,
      query: fc.boolean(),
      key: fc.option(fc.constantFrom('k1', 'k2', 'k3'), { nil: undefined }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('wait' as const), ms: fc.integer({ min: 0, max: 2_500 }) }) },
);

const RESUME_WINDOW = 2_000;
const CONFIG = {
  heartbeatInterval: 1e9, // timeouts are covered elsewhere; here they would only end the sender
  resumeWindow: RESUME_WINDOW,
  queueTtl: 1_500,
  queueMaxCount: 6,
  replayMaxCount: 5,
};

interface ReceiverModel {
  conn: number | null;
  droppedAt: number | undefined;
  hasSession: boolean;
  ready: boolean;
  /** Last `s` processed in the current session. */
  lastSeq: number;
}

interface Sent {
  directed: boolean;
  /** Mode all: the sessions that matched when it was sent. */
  expected?: number;
}

/** Every session is listed once by its app, in order and by client_id, and nothing else is. */
function indexViolations(state: State): string[] {
  const found: string[] = [];
  for (const [key, session] of state.sessions) {
    if (state.apps.get(session.app.name) !== session.app) found.push(`${key}: its app is not in state.apps`);
    if (session.app.byClient.get(session.clientId) !== session) found.push(`${key}: missing from its app's client index`);
  }
  for (const app of state.apps.values()) {
    if (app.byClient.size !== app.sessions.length) found.push(`${app.name}: index has ${app.byClient.size}, list ${app.sessions.length}`);
    for (const session of app.sessions) if (state.sessions.get(session.key) !== session) found.push(`${session.key}: listed but ended`);
  }
  return found;
}

/** Runs one history; returns what every party observed. */
function run(commands: Command[], resumeWithSeq: boolean) {
  const sim = new Sim(CONFIG);
  const SENDER = 1;
  let nextConn = 2;
  sim.connect(SENDER, 'api', 'a0');
  const model = new Map<ReceiverId, ReceiverModel>(
    RECEIVERS.map((id) => [id, { conn: null, droppedAt: undefined, hasSession: false, ready: false, lastSeq: 0 }]),
  );
  const owner = new Map<number, ReceiverId>();
  const sent = new Map<string, Sent>();
  const receipts = new Map<string, number>();
  const undeliverable = new Map<string, number>();
  const acks = new Map<string, number>();
  const violations: string[] = [];

  const resumable = (m: ReceiverModel) => m.hasSession && (m.conn !== null || sim.now < m.droppedAt! + RESUME_WINDOW);
  const observe = (events: Event[]) => {
    for (const event of events) {
      if ('close' in event && owner.has(event.conn)) violations.push(`unexpected close ${event.close} ${event.reason}`);
      if (!('frame' in event)) continue;
      const frame = event.frame as { op: number; e?: string; d?: { id?: string }; nonce?: string; s?: number };
      if (event.conn === SENDER) {
        if (frame.e === 'NERVE_UNDELIVERABLE') undeliverable.set(frame.nonce!, (undeliverable.get(frame.nonce!) ?? 0) + 1);
        if (frame.e === 'NERVE_ACK') acks.set(frame.nonce!, (frame.d as { delivered: number }).delivered);
        continue;
      }
      if (frame.op !== 8 || frame.e === 'NERVE_SESSION') continue;
      const id = owner.get(event.conn)!;
      const m = model.get(id)!;
      if (m.conn !== event.conn) violations.push(`frame to a connection ${id} no longer uses`);
      if (!(frame.s! > m.lastSeq)) violations.push(`${id}: s ${frame.s} after ${m.lastSeq}`);
      m.lastSeq = frame.s!;
      receipts.set(frame.d!.id!, (receipts.get(frame.d!.id!) ?? 0) + 1);
    }
  };

  for (const cmd of commands) {
    const m = cmd.t === 'wait' ? undefined : model.get(cmd.c)!;
    switch (cmd.t) {
      case 'connect': {
        if (m!.conn !== null) break;
        const conn = nextConn++;
        owner.set(conn, cmd.c);
        const resume = resumable(m!) && !cmd.fresh;
        if (!resume) {
          m!.lastSeq = 0;
          m!.ready = cmd.ready;
        }
        m!.conn = conn;
        m!.hasSession = true;
        sim.open(conn);
        const d: Record<string, unknown> = { app_name: 'gw', client_id: cmd.c, password: 'pw' };
        if (resume) {
          d.reconnect = true;
          if (resumeWithSeq) d.seq = m!.lastSeq;
        } else d.metadata = { ready: cmd.ready };
        observe(sim.send(conn, { op: 1, d }));
        break;
      }
      case 'drop':
      case 'bye':
        if (m!.conn === null) break;
        observe(sim.close(m!.conn, cmd.t === 'drop' ? 1006 : 1000));
        m!.conn = null;
        m!.droppedAt = sim.now;
        if (cmd.t === 'bye') m!.hasSession = false;
        break;
      case 'meta':
        if (m!.conn === null) break;
        m!.ready = cmd.ready;
        observe(sim.send(m!.conn, { op: 7, d: { ready: cmd.ready } }));
        break;
      case 'send': {
        const id = `m${sent.size}`;
        const to: Record<string, unknown> = { app_name: 'gw' };
        if (cmd.mode === 'all') to.mode = 'all';
        if (cmd.mode === 'id') to.client_id = cmd.c;
        if (cmd.query) to.query = { ready: true };
        if (cmd.key) to.key = cmd.key;
        let expected: number | undefined;
        if (cmd.mode === 'all') {
          expected = [...model.values()].filter((r) => resumable(r) && (!cmd.query || r.ready)).length;
        }
        sent.set(id, { directed: cmd.mode !== 'all', expected });
        observe(sim.send(SENDER, { op: 8, e: 'EV', d: { id }, to, nonce: id }));
        break;
      }
      case 'wait':
        observe(sim.advance(cmd.ms));
        break;
    }
    for (const r of model.values()) if (r.conn === null && r.hasSession && !resumable(r)) r.hasSession = false;
    violations.push(...indexViolations(sim.state));
  }
  // Let every window and TTL run out, so every directed message has its outcome.
  observe(sim.advance(RESUME_WINDOW + CONFIG.queueTtl * 2 + 1));
  return { sim, sent, receipts, undeliverable, acks, violations };
}

describe('delivery guarantees under random histories', () => {
  it('with seq on resume: every directed dispatch is delivered exactly once or reported undeliverable exactly once', () => {
    fc.assert(
      fc.property(fc.array(command, { maxLength: 60 }), (commands) => {
        const { sim, sent, receipts, undeliverable, violations } = run(commands, true);
        expect(violations).toEqual([]);
        expect(sim.internalErrors).toEqual([]);
        for (const [id, info] of sent) {
          if (!info.directed) continue;
          const outcome = `${id}: received ${receipts.get(id) ?? 0}, undeliverable ${undeliverable.get(id) ?? 0}`;
          expect([`${id}: received 1, undeliverable 0`, `${id}: received 0, undeliverable 1`]).toContain(outcome);
        }
      }),
      { numRuns: 1_500 },
    );
  });

  it('mode all reaches exactly the sessions that matched, each at most once with seq', () => {
    fc.assert(
      fc.property(fc.array(command, { maxLength: 60 }), (commands) => {
        const { sent, receipts, acks, undeliverable, violations } = run(commands, true);
        expect(violations).toEqual([]);
        for (const [id, info] of sent) {
          if (info.directed) continue;
          expect(acks.get(id)).toBe(info.expected);
          expect(receipts.get(id) ?? 0).toBeLessThanOrEqual(info.expected!);
          expect(undeliverable.get(id)).toBeUndefined();
        }
      }),
      { numRuns: 1_000 },
    );
  });

  it('without seq on resume: nothing directed is lost (at-least-once), and s still increases per connection', () => {
    fc.assert(
      fc.property(fc.array(command, { maxLength: 60 }), (commands) => {
        const { sim, sent, receipts, undeliverable } = run(commands, false);
        expect(sim.internalErrors).toEqual([]);
        for (const [id, info] of sent) {
          if (!info.directed) continue;
          expect((receipts.get(id) ?? 0) + (undeliverable.get(id) ?? 0)).toBeGreaterThanOrEqual(1);
          expect(undeliverable.get(id) ?? 0).toBeLessThanOrEqual(1);
        }
      }),
      { numRuns: 1_000 },
    );
  });

  it('never throws on arbitrary frames, in any state, from a host that keeps the embedding contract', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), anyFrame), { maxLength: 20 }), (frames) => {
        const host = new ContractHost();
        let identified = host.identify();
        let anonymous = host.open();
        for (const [toIdentified, data] of frames) {
          if (host.isClosed(identified)) identified = host.identify();
          if (host.isClosed(anonymous)) anonymous = host.open();
          host.send(toIdentified ? identified : anonymous, data);
        }
        expect(host.sim.internalErrors).toEqual([]);
        expect([...host.sim.state.conns.keys()].filter((conn) => host.isClosed(conn)), 'connections the core still knows after their close').toEqual([]);
      }),
      { numRuns: 1_000 },
    );
  });
});

/**
 * A host as docs/embedding.md asks: a fresh id for every connection, and a
 * `close` fed for every connection the core closes, with the close code, as a
 * WebSocket transport reports the end of the closing handshake.
 */
class ContractHost {
  readonly sim = new Sim();
  private nextId = 1;
  private readonly closed = new Set<number>();

  open(): number {
    const conn = this.fresh();
    this.settle(this.sim.open(conn));
    return conn;
  }

  identify(): number {
    const conn = this.fresh();
    this.settle(this.sim.connect(conn, 'api', `a${conn}`));
    return conn;
  }

  send(conn: number, data: unknown): void {
    this.settle(this.sim.send(conn, typeof data === 'string' ? data : (data as object)));
  }

  isClosed(conn: number): boolean {
    return this.closed.has(conn);
  }

  private fresh(): number {
    const conn = this.nextId++;
    expect(this.sim.state.conns.has(conn), `id ${conn} is still known to the core`).toBe(false);
    return conn;
  }

  /** Feeds the transport's close for every close the core asked for, including those that closing causes. */
  private settle(events: Event[]): void {
    for (let i = 0; i < events.length; i++) {
      const event = events[i]!;
      if (!('close' in event) || this.closed.has(event.conn)) continue;
      this.closed.add(event.conn);
      events.push(...this.sim.close(event.conn, event.close));
    }
  }
}

// Reusing an id the core still knows breaks docs/embedding.md: the core logs
// it as an error and treats the old connection as closed (its session
// resumable), so the new one never inherits the old one's session or events.
// It must never throw.
describe('a host that breaks the embedding contract', () => {
  it('an id reopened before its close ends the old connection first', () => {
    const sim = new Sim();
    sim.connect(1, 'gw', 'g');
    sim.connect(2, 'api', 'a');
    sim.open(1);
    expect(sim.internalErrors).toEqual(['connection id reused before its close {"conn":1}']);
    expect(sim.state.sessions.get('gw\u0000g')!.conn).toBeNull();
    expect(framesTo(sim.dispatch(2, 'X', 1, { app_name: 'gw', client_id: 'g' }), 1)).toEqual([]);
  });

  it('never throws when it reopens an id without feeding its close', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), anyFrame), { maxLength: 20 }), (frames) => {
        const sim = new Sim();
        sim.connect(1, 'api', 'a');
        let conn = 2;
        sim.open(conn);
        for (const [identified, data] of frames) {
          if (!sim.state.conns.get(conn) || sim.state.conns.get(conn)!.closing) sim.open(++conn);
          const target = identified ? 1 : conn;
          if (sim.state.conns.get(1)?.closing) sim.connect(1, 'api', `a${conn}`);
          sim.send(target, typeof data === 'string' ? data : (data as object));
        }
        expect(sim.internalErrors.filter((line) => !line.startsWith('connection id reused'))).toEqual([]);
      }),
      { numRuns: 1_000 },
    );
  });
});
