// Where a routed event goes and what becomes of it: handed to sessions (with
// `s` and a replay-buffer entry), held for a recipient that is not there yet,
// or reported to its sender as NERVE_UNDELIVERABLE. No directed event (mode
// one or client_id) ever disappears without one of these outcomes: an event
// counts as written only once the host has handed it to the OS (see
// `Conn.unflushedFrom`), and every byte kept is counted against the budget.

import type { Output } from './io.ts';
import type { QueryWork } from './query.ts';
import { ACK_EVENT, Op, UNDELIVERABLE_EVENT } from './protocol.ts';
import { pickRendezvous, pickRoundRobin } from './select.ts';
import {
  entryBytes,
  forgetAppIfEmpty,
  getApp,
  overBudget,
  sessionKey,
  touchApp,
  touchSession,
  type AppState,
  type Conn,
  type ReplayEntry,
  type Routed,
  type Session,
  type State,
} from './state.ts';
import { Ring } from './ring.ts';
import { createRouted, routedText, send, sendRouted } from './wire.ts';
import { canHandTo, isReachable, relayAll, relayEvent, relayUndeliverable, tooManyHops } from './cluster.ts';

function addReplayBytes(state: State, session: Session, delta: number): void {
  session.replayBytes += delta;
  state.memory.replay += delta;
}

function addHeldBytes(state: State, app: AppState, delta: number): void {
  app.heldBytes += delta;
  state.memory.held += delta;
}

/** The reason a dispatch gets when the hub's memory budget is spent. */
export function hubFullReason(state: State): string {
  return `hub is full: its memory budget of ${state.config.maxMemory} bytes is in use`;
}

export function matches(session: Session, msg: Routed, work?: QueryWork): boolean {
  return msg.test === undefined || msg.test(session.metadata, work);
}

/** A fresh budget for one dispatch's query (NERVE_MAX_QUERY_WORK), or none without a query. */
function queryWork(state: State, msg: Routed): QueryWork | undefined {
  return msg.test === undefined ? undefined : { left: state.config.maxQueryWork };
}

/** A query that would look at more values than a dispatch may: refused whole, never half delivered. */
function tooCostly(state: State, out: Output[], msg: Routed): Outcome {
  const reason = `query too costly: it would look at more than ${state.config.maxQueryWork} metadata values across the clients of ${msg.target.app_name}`;
  undeliverable(state, out, msg, reason);
  return NONE;
}

/**
 * Gives the event the session's next `s`, buffers it for replay, and writes it
 * if connected. A disconnected session's buffer does not grow past the memory
 * budget: then nothing is handed over and the caller reports it.
 */
export function deliver(state: State, out: Output[], session: Session, msg: Routed): boolean {
  if (session.node !== undefined) {
    relayEvent(state, out, session, msg);
    return true;
  }
  const conn = session.conn;
  if (conn === null && overBudget(state, msg.bytes)) return false;
  const s = ++session.seq;
  touchSession(state, session);
  state.counters.deliveries++;
  if (conn !== null && conn.writtenInFlush !== state.flushes) {
    conn.writtenInFlush = state.flushes;
    conn.firstSinceFlush = s;
  }
  if (conn !== null && msg.directed && msg.target.client_id !== undefined) {
    session.writtenUpTo = s;
    // An event for this one client is kept as the very text written (on plain
    // JSON), one flat string the collector barely looks at; everything else
    // about it can be rebuilt from the text and the session (routedFromText).
    const text = routedText(msg, s);
    session.replay.push(text);
    addReplayBytes(state, session, text.length);
    sendRouted(state, out, conn, conn.wire.format === 'json' ? text : msg, s);
  } else {
    // Fan-out events are one object all recipients share; a mode-one event
    // keeps its target, which a requeue needs whole.
    session.replay.push(msg);
    addReplayBytes(state, session, msg.bytes);
    if (conn !== null) {
      session.writtenUpTo = s;
      sendRouted(state, out, conn, msg, s);
    }
  }
  trimReplay(state, out, session);
  if (conn !== null) shedWritten(state, out, session);
  return true;
}

/**
 * Keeps a replay buffer within its bounds. For a connected session the
 * oldest event is only dropped as delivered once it has left the host: one
 * still queued in the host (written since its last flush) waits for that
 * flush, the buffer over its bounds by one turn's events (State.overBound);
 * one the host still queues after a flush (its transport still busy with an
 * earlier batch) means the reader is a whole buffer behind, so the
 * connection is marked to be cut as a slow consumer (at the end of this
 * step) and the queued events count as never written. Events the transport
 * holds go out ahead of any close, so they may leave the buffer.
 */
export function trimReplay(state: State, out: Output[], session: Session): void {
  const { replayMaxCount, replayMaxBytes } = state.config;
  while (session.replay.length > replayMaxCount || (session.replayBytes > replayMaxBytes && session.replay.length > 1)) {
    const conn = session.conn;
    if (conn !== null && session.replayFirst <= session.writtenUpTo) {
      // What the transport holds goes out before any close; what the host still queues would be dropped.
      if (session.replayFirst >= conn.queuedFrom) markSlow(state, conn, session);
      else if (state.flushes >= 0 && conn.writtenInFlush === state.flushes && session.replayFirst >= conn.firstSinceFlush) {
        state.overBound.add(session);
        return;
      }
    }
    evictOldest(state, out, session);
  }
}

function evictOldest(state: State, out: Output[], session: Session): void {
  const evicted = session.replay.shift()!;
  addReplayBytes(state, session, -entryBytes(evicted));
  if (session.replayFirst > session.writtenUpTo) {
    const msg = owedEvent(session, evicted);
    if (msg) undeliverable(state, out, msg, `replay buffer of ${session.clientId} overflowed before it reconnected`);
  }
  session.replayFirst++;
}

/** Over the memory budget, a connected session gives up the oldest events it has already written. */
function shedWritten(state: State, out: Output[], session: Session): void {
  const conn = session.conn!;
  while (
    overBudget(state, 0) &&
    session.replay.length > 1 &&
    session.replayFirst <= session.writtenUpTo &&
    session.replayFirst < Math.min(conn.queuedFrom, unflushedFrom(state, conn))
  ) {
    evictOldest(state, out, session);
  }
}

/** Connections found a whole replay buffer behind; `step` cuts them once the input is handled. */
function markSlow(state: State, conn: Conn, session: Session): void {
  forgetQueued(state, conn, session);
  if (!state.slowConns.includes(conn)) state.slowConns.push(conn);
}

/** The directed event behind a buffered entry, or undefined for a fan-out event. */
function owedEvent(session: Session, entry: ReplayEntry): Routed | undefined {
  if (typeof entry === 'string') return routedFromText(session, entry);
  return entry.directed ? entry : undefined;
}

/**
 * Rebuilds the event a kept text was written from. Texts are only kept for
 * events sent to this session's client_id, so the target is the session; the
 * sender is whoever `from` names.
 */
export function routedFromText(session: Pick<Session, 'app' | 'clientId'>, text: string): Routed {
  const frame = JSON.parse(text) as { e: string; d: unknown; from: { app_name: string; client_id?: string }; nonce?: string };
  const from = frame.from;
  const sender = {
    from,
    fromJson: JSON.stringify(from),
    key: from.client_id === undefined ? undefined : sessionKey(from.app_name, from.client_id),
  };
  const msg = createRouted(frame.e, frame.d, sender, frame.nonce, { app_name: session.app.name, client_id: session.clientId }, undefined);
  msg.d = undefined;
  return msg;
}

/** Directed events the session was handed but never wrote to a socket, oldest first. */
export function unwrittenDirected(session: Session): Routed[] {
  const owed: Routed[] = [];
  for (let i = Math.max(0, session.writtenUpTo - session.replayFirst + 1); i < session.replay.length; i++) {
    const msg = owedEvent(session, session.replay.at(i));
    if (msg) owed.push(msg);
  }
  return owed;
}

/**
 * The host reported what the transport still holds for a connection. Events
 * from `unflushedFrom` on are not delivered if the connection dies.
 */
export function noteBacklog(state: State, conn: Conn, bytes: number, unflushedFrom: number, queuedFrom = unflushedFrom): void {
  conn.backlog = bytes;
  conn.unflushedFrom = bytes > 0 ? unflushedFrom : Infinity;
  conn.queuedFrom = bytes > 0 ? queuedFrom : Infinity;
}

/** A connection that is cut while the transport still holds events: they count as never written. */
export function forgetUnflushed(state: State, conn: Conn, session: Session): void {
  const from = unflushedFrom(state, conn);
  if (from !== Infinity) session.writtenUpTo = Math.min(session.writtenUpTo, from - 1);
}

/** Events still queued in the host (written since its last flush) count as never written. */
export function forgetQueued(state: State, conn: Conn, session: Session): void {
  const sinceFlush = state.flushes >= 0 && conn.writtenInFlush === state.flushes ? conn.firstSinceFlush : Infinity;
  const from = Math.min(conn.queuedFrom, sinceFlush);
  if (from !== Infinity) session.writtenUpTo = Math.min(session.writtenUpTo, from - 1);
}

/**
 * The oldest `s` not yet handed to the OS: what the transport reported it
 * holds, or what was written since the host's last flush (still in its queue).
 */
export function unflushedFrom(state: State, conn: Conn): number {
  const queued = state.flushes >= 0 && conn.writtenInFlush === state.flushes ? conn.firstSinceFlush : Infinity;
  return Math.min(conn.unflushedFrom, queued);
}

/** Empties the replay buffer; `s` goes on from where it was. */
export function clearReplay(state: State, session: Session): void {
  session.replay = new Ring();
  addReplayBytes(state, session, -session.replayBytes);
  session.replayFirst = session.seq + 1;
}

/** Tells the sender, if it is still connected, that its event reached no one. */
export function undeliverable(state: State, out: Output[], msg: Routed, reason: string): void {
  state.counters.undeliverable++;
  const sender = msg.senderKey === undefined ? undefined : state.sessions.get(msg.senderKey);
  if (sender?.node !== undefined) return relayUndeliverable(state, out, sender, msg, reason);
  if (!sender?.conn) return;
  const frame: Record<string, unknown> = { op: Op.DISPATCH, e: UNDELIVERABLE_EVENT, d: { reason, e: msg.e } };
  if (msg.nonce !== undefined) frame.nonce = msg.nonce;
  send(state, out, sender.conn, frame);
}

export function acknowledge(state: State, out: Output[], senderKey: string, nonce: string, delivered: number, queued: number): void {
  const conn = state.sessions.get(senderKey)?.conn;
  if (conn) send(state, out, conn, { op: Op.DISPATCH, e: ACK_EVENT, nonce, d: { delivered, queued } });
}

/** Holds a directed event for its app until a match appears or the TTL ends. Returns whether it was held. */
export function hold(state: State, out: Output[], msg: Routed, now: number): boolean {
  const app = getApp(state, msg.target.app_name);
  const { queueMaxCount, queueMaxBytes, queueTtl } = state.config;
  const full =
    app.held.length >= queueMaxCount || app.heldBytes + msg.bytes > queueMaxBytes
      ? `queue for app ${app.name} is full`
      : overBudget(state, msg.bytes)
        ? hubFullReason(state)
        : undefined;
  if (full !== undefined) {
    undeliverable(state, out, msg, full);
    forgetAppIfEmpty(state, app);
    return false;
  }
  insertHeld(state, msg, now + queueTtl);
  state.counters.queued++;
  return true;
}

/**
 * Holds an event until `expiresAt`, in expiry order (an event handed over by
 * another node keeps its own TTL, so it may belong before the newest).
 */
export function insertHeld(state: State, msg: Routed, expiresAt: number): void {
  const app = getApp(state, msg.target.app_name);
  touchApp(state, app);
  let at = app.held.length;
  while (at > 0 && app.held[at - 1]!.expiresAt > expiresAt) at--;
  app.held.splice(at, 0, { msg, expiresAt, done: false });
  addHeldBytes(state, app, msg.bytes);
  if (app.heldTimerAt > expiresAt) {
    app.heldTimerAt = expiresAt;
    state.timers.push(expiresAt, { kind: 'app', app });
  }
}

function describeTarget(msg: Routed): string {
  const who = msg.target.client_id === undefined ? `app ${msg.target.app_name}` : `${msg.target.app_name}/${msg.target.client_id}`;
  return msg.test === undefined ? `no connected client of ${who}` : `no connected client of ${who} matched the query`;
}

/** Ends held events whose TTL is over, and re-files the app's timer for the next one. */
export function expireHeld(state: State, out: Output[], app: AppState, now: number): void {
  touchApp(state, app);
  app.heldTimerAt = Infinity;
  let expired = 0;
  while (expired < app.held.length && app.held[expired]!.expiresAt <= now) expired++;
  const gone = app.held.splice(0, expired);
  for (const held of gone) {
    if (held.done) continue;
    addHeldBytes(state, app, -held.msg.bytes);
    undeliverable(state, out, held.msg, `${describeTarget(held.msg)} within ${state.config.queueTtl} ms`);
  }
  const next = app.held[0];
  if (next) {
    app.heldTimerAt = next.expiresAt;
    state.timers.push(next.expiresAt, { kind: 'app', app });
  } else forgetAppIfEmpty(state, app);
}

/**
 * Hands the app's held events that this session now matches to it, in order.
 * Behind a batching host, at most half a replay buffer goes out per flush, so
 * a burst never pushes out events its own transport has not taken yet; the
 * rest follows after each flush (State.heldWaiting).
 */
export function deliverHeld(state: State, out: Output[], session: Session): void {
  const app = session.app;
  if (app.held.length === 0 || !(session.conn !== null || (session.node !== undefined && isReachable(state, session)))) return;
  // Another node's session is handed its events through that node, which batches them itself.
  const batching = state.flushes >= 0 && session.node === undefined;
  const work = { left: state.config.maxQueryWork };
  const maxCount = Math.max(1, state.config.replayMaxCount >> 1);
  const maxBytes = Math.max(1, state.config.replayMaxBytes >> 1);
  let delivered = 0;
  let bytes = 0;
  for (const held of app.held) {
    const msg = held.msg;
    if (held.done) continue;
    if (msg.target.client_id !== undefined ? msg.target.client_id !== session.clientId : msg.senderKey === session.key) continue;
    if (!matches(session, msg, work)) {
      // The rest stays held, for the next chance or its TTL.
      if (work.left < 0) break;
      continue;
    }
    if (batching && delivered > 0 && (delivered >= maxCount || bytes + msg.bytes > maxBytes)) {
      state.heldWaiting.add(session);
      break;
    }
    bytes += msg.bytes;
    held.done = true;
    addHeldBytes(state, app, -msg.bytes);
    delivered++;
    deliver(state, out, session, msg);
  }
  if (delivered > 0) {
    app.held = app.held.filter((held) => !held.done);
    touchApp(state, app);
  }
}

/**
 * Routes one accepted dispatch. Mode one and client_id deliver to exactly one
 * session or hold; mode all reaches every matching session (resumable ones
 * buffer it) and is pub/sub when nothing matches.
 */
export interface Outcome {
  readonly delivered: number;
  readonly queued: number;
}
// Shared answers for the common outcomes: the hot path allocates none.
const ONE: Outcome = Object.freeze({ delivered: 1, queued: 0 });
const NONE: Outcome = Object.freeze({ delivered: 0, queued: 0 });
const HELD: Outcome = Object.freeze({ delivered: 0, queued: 1 });

export function route(state: State, out: Output[], msg: Routed, now: number): Outcome {
  state.counters.dispatches++;
  const outcome = routeTo(state, out, msg, now);
  // Kept events hold their JSON text, not the decoded data (see Routed.d).
  msg.d = undefined;
  return outcome;
}

function routeTo(state: State, out: Output[], msg: Routed, now: number): Outcome {
  const target = msg.target;
  const work = queryWork(state, msg);
  if (target.client_id !== undefined) {
    const session = state.apps.get(target.app_name)?.byClient.get(target.client_id);
    if (session && matches(session, msg, work) && (session.node === undefined || canHandTo(state, session))) {
      if (deliver(state, out, session, msg)) return ONE;
      undeliverable(state, out, msg, hubFullReason(state));
      return NONE;
    }
    if (work !== undefined && work.left < 0) return tooCostly(state, out, msg);
    return hold(state, out, msg, now) ? HELD : NONE;
  }
  const app = state.apps.get(target.app_name);
  if (target.mode === 'all') {
    if (!app) return NONE;
    if (state.cluster?.linked) return routeAllInCluster(state, out, msg, app.sessions, work);
    let delivered = 0;
    if (work === undefined) {
      for (const session of app.sessions) {
        if (session.node === undefined && session.key !== msg.senderKey && deliver(state, out, session, msg)) delivered++;
      }
    } else {
      // Every recipient is found before any is handed the event, so a spent budget refuses it whole.
      const recipients = app.sessions.filter((session) => session.node === undefined && session.key !== msg.senderKey && matches(session, msg, work));
      if (work.left < 0) return tooCostly(state, out, msg);
      for (const session of recipients) if (deliver(state, out, session, msg)) delivered++;
    }
    return delivered === 1 ? ONE : delivered === 0 ? NONE : { delivered, queued: 0 };
  }
  const eligible = state.cluster
    ? (session: Session) => isReachable(state, session) && session.key !== msg.senderKey && matches(session, msg, work)
    : (session: Session) => session.conn !== null && session.key !== msg.senderKey && matches(session, msg, work);
  const picked = app && (target.key === undefined ? pickRoundRobin(app, eligible) : pickRendezvous(app, target.key, eligible));
  if (work !== undefined && work.left < 0) return tooCostly(state, out, msg);
  if (picked) {
    if (target.key === undefined) touchApp(state, app!); // the round-robin cursor moved
    deliver(state, out, picked, msg);
    return ONE;
  }
  return hold(state, out, msg, now) ? HELD : NONE;
}

/**
 * Mode all on a linked node: counted against this node's view of the
 * registry, then published on the bus, from which every node (this one
 * too) delivers it to its own matching sessions in the bus's one order.
 */
function routeAllInCluster(state: State, out: Output[], msg: Routed, sessions: Session[], work: QueryWork | undefined): Outcome {
  let delivered = 0;
  for (const session of sessions) if (session.key !== msg.senderKey && matches(session, msg, work)) delivered++;
  if (work !== undefined && work.left < 0) return tooCostly(state, out, msg);
  if (delivered > 0) relayAll(state, out, msg);
  return delivered === 1 ? ONE : delivered === 0 ? NONE : { delivered, queued: 0 };
}

/**
 * An event another node relayed for a session that is not here (it moved on,
 * or ended): routed again from here, or held here once it has moved too often.
 */
export function reroute(state: State, out: Output[], msg: Routed, now: number): void {
  if (tooManyHops(msg)) hold(state, out, msg, now);
  else routeTo(state, out, msg, now);
  msg.d = undefined;
}

/**
 * A session that ends without being resumed gives back the directed events it
 * was handed but never written, with their original sender and a fresh TTL.
 */
export function requeueUnwritten(state: State, out: Output[], session: Session, now: number): void {
  touchSession(state, session);
  for (const msg of unwrittenDirected(session)) hold(state, out, msg, now);
  clearReplay(state, session);
}
