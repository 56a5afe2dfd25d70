// Where a routed event goes and what becomes of it: handed to sessions (with
// `s` and a replay-buffer entry), held for a recipient that is not there yet,
// or reported to its sender as NERVE_UNDELIVERABLE. No directed event (mode
// one or client_id) ever disappears without one of these outcomes.

import type { Output } from './io.ts';
import { ACK_EVENT, Op, UNDELIVERABLE_EVENT } from './protocol.ts';
import { pickRendezvous, pickRoundRobin } from './select.ts';
import { entryBytes, forgetAppIfEmpty, getApp, touchApp, touchSession, type AppState, type Routed, type Session, type State } from './state.ts';
import { Ring } from './ring.ts';
import { routedText, send, sendRouted } from './wire.ts';

export function matches(session: Session, msg: Routed): boolean {
  return msg.test === undefined || msg.test(session.metadata);
}

/** Gives the event the session's next `s`, buffers it for replay, and writes it if connected. */
export function deliver(state: State, out: Output[], session: Session, msg: Routed): void {
  const s = ++session.seq;
  touchSession(state, session);
  state.counters.deliveries++;
  const conn = session.conn;
  if (conn !== null && msg.directed) {
    session.writtenUpTo = s;
    // A directed event has this one recipient: keep the very text written (on
    // plain JSON), which the socket flattens, rather than the event's objects.
    const text = routedText(msg, s);
    session.replay.push(text);
    session.replayBytes += text.length;
    sendRouted(state, out, conn, conn.wire.format === 'json' ? text : msg, s);
  } else {
    // A fan-out event is kept as the one object all its recipients share.
    session.replay.push(msg);
    session.replayBytes += msg.bytes;
    if (conn !== null) {
      session.writtenUpTo = s;
      sendRouted(state, out, conn, msg, s);
    }
  }
  const { replayMaxCount, replayMaxBytes } = state.config;
  while (session.replay.length > replayMaxCount || (session.replayBytes > replayMaxBytes && session.replay.length > 1)) {
    const evicted = session.replay.shift()!;
    session.replayBytes -= entryBytes(evicted);
    if (typeof evicted !== 'string' && evicted.directed && session.replayFirst > session.writtenUpTo) {
      undeliverable(state, out, evicted, `replay buffer of ${session.clientId} overflowed before it reconnected`);
    }
    session.replayFirst++;
  }
}

/** Directed events the session was handed but never wrote to a socket, oldest first. */
export function unwrittenDirected(session: Session): Routed[] {
  const skip = Math.max(0, session.writtenUpTo - session.replayFirst + 1);
  return session.replay.slice(skip).filter((entry): entry is Routed => typeof entry !== 'string' && entry.directed);
}

/** Empties the replay buffer; `s` goes on from where it was. */
export function clearReplay(session: Session): void {
  session.replay = new Ring();
  session.replayBytes = 0;
  session.replayFirst = session.seq + 1;
}

/** Tells the sender, if it is still connected, that its event reached no one. */
export function undeliverable(state: State, out: Output[], msg: Routed, reason: string): void {
  state.counters.undeliverable++;
  const sender = msg.senderKey === undefined ? undefined : state.sessions.get(msg.senderKey);
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
  if (app.held.length >= queueMaxCount || app.heldBytes + msg.bytes > queueMaxBytes) {
    undeliverable(state, out, msg, `queue for app ${app.name} is full`);
    forgetAppIfEmpty(state, app);
    return false;
  }
  const expiresAt = now + queueTtl;
  touchApp(state, app);
  app.held.push({ msg, expiresAt, done: false });
  app.heldBytes += msg.bytes;
  state.counters.queued++;
  if (app.heldTimerAt > expiresAt) {
    app.heldTimerAt = expiresAt;
    state.timers.push(expiresAt, { kind: 'app', app });
  }
  return true;
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
    app.heldBytes -= held.msg.bytes;
    undeliverable(state, out, held.msg, `${describeTarget(held.msg)} within ${state.config.queueTtl} ms`);
  }
  const next = app.held[0];
  if (next) {
    app.heldTimerAt = next.expiresAt;
    state.timers.push(next.expiresAt, { kind: 'app', app });
  } else forgetAppIfEmpty(state, app);
}

/** Hands the app's held events that this session now matches to it, in order. */
export function deliverHeld(state: State, out: Output[], session: Session): void {
  const app = session.app;
  if (app.held.length === 0 || session.conn === null) return;
  let delivered = 0;
  for (const held of app.held) {
    const msg = held.msg;
    if (held.done) continue;
    if (msg.target.client_id !== undefined ? msg.target.client_id !== session.clientId : msg.senderKey === session.key) continue;
    if (!matches(session, msg)) continue;
    held.done = true;
    app.heldBytes -= msg.bytes;
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
  const target = msg.target;
  if (target.client_id !== undefined) {
    const session = state.apps.get(target.app_name)?.byClient.get(target.client_id);
    if (session && matches(session, msg)) {
      deliver(state, out, session, msg);
      return ONE;
    }
    return hold(state, out, msg, now) ? HELD : NONE;
  }
  const app = state.apps.get(target.app_name);
  if (target.mode === 'all') {
    if (!app) return NONE;
    let delivered = 0;
    for (const session of app.sessions) {
      if (session.key === msg.senderKey || !matches(session, msg)) continue;
      deliver(state, out, session, msg);
      delivered++;
    }
    return { delivered, queued: 0 };
  }
  const eligible = (session: Session) => session.conn !== null && session.key !== msg.senderKey && matches(session, msg);
  const picked = app && (target.key === undefined ? pickRoundRobin(app, eligible) : pickRendezvous(app, target.key, eligible));
  if (picked) {
    if (target.key === undefined) touchApp(state, app!); // the round-robin cursor moved
    deliver(state, out, picked, msg);
    return ONE;
  }
  return hold(state, out, msg, now) ? HELD : NONE;
}

/**
 * A session that ends without being resumed gives back the directed events it
 * was handed but never written, with their original sender and a fresh TTL.
 */
export function requeueUnwritten(state: State, out: Output[], session: Session, now: number): void {
  touchSession(state, session);
  for (const msg of unwrittenDirected(session)) hold(state, out, msg, now);
  clearReplay(session);
}
