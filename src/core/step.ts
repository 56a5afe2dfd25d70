// The protocol as one pure function: step(state, input) → [state, outputs].
// No I/O, no clock, no randomness: time arrives on each input, ids come from
// the host. For speed the state is updated in place; the returned state is the
// same object.
//
// Rules, in the order a frame meets them (docs/protocol.md has the prose):
//   1. frames from a connection we are closing are ignored;
//   2. over the rate limit → 4429; size over the limit → 4413;
//   3. undecodable, not an object, bad or unknown op, a server-only op → 4400;
//   4. anything but HEARTBEAT/IDENTIFY before WELCOME, a second IDENTIFY → 4403;
//   5. the op's own fields → 4400 (wrong password 4401, taken 4409, metadata too large 4413).
// A timed-out (4408), slow (4507) or dropped session stays resumable; any other
// error close, a client's own 1000/1001 close, or GO_AWAY ends it.

import { checkDepth, DecodeError, decodeFrame, frameSize } from './codec.ts';
import {
  acknowledge,
  clearReplay,
  deliverHeld,
  expireHeld,
  forgetQueued,
  forgetUnflushed,
  hubFullReason,
  noteBacklog,
  requeueUnwritten,
  route,
  trimReplay,
  undeliverable,
  unwrittenDirected,
} from './delivery.ts';
import type { ConnId, Input, Output } from './io.ts';
import { EMPTY_METADATA_BYTES, emptyMetadata, mergeMetadata, type MetadataRecord } from './metadata.ts';
import {
  Close,
  GO_AWAY_TEXT,
  HEARTBEAT_FRAME,
  HTTP_SENDER_APP,
  Op,
  SESSION_EVENT,
  TAKEN_OVER_TEXT,
  WELCOME_TEXT,
  type CloseCode,
  type Wire,
} from './protocol.ts';
import { authorityOf, coolingDown, mayTakeOver, noteAuthFailure, touchesFixedKey, type Claims } from './auth.ts';
import { passwordMatches } from './password.ts';
import { compileQuery, QueryError, type MetadataTest } from './query.ts';
import { IdentifySchema, isPlainObject, validate, validateDispatch, type Dispatch } from './schemas.ts';
import {
  forgetAppIfEmpty,
  getApp,
  joinApp,
  leaveApp,
  newConn,
  newSession,
  sessionKey,
  touchApp,
  touchSession,
  type Conn,
  type Identify,
  type Session,
  type State,
} from './state.ts';
import { closeConn, createRouted, fail, send, sendHeartbeatAck, sendRouted } from './wire.ts';
import { abandonClaim, adopt, claimed, claimSession, handleNodeMessages, linkChanged, noteChanged, noteEnded, publishChanges, renumberAfter } from './cluster.ts';

const HTTP_SENDER = { from: { app_name: HTTP_SENDER_APP }, fromJson: JSON.stringify({ app_name: HTTP_SENDER_APP }) };

/** Ops only the server sends, by number, named as in Op. */
const SERVER_OPS: ReadonlyMap<number, string> = new Map(
  (['HELLO', 'WELCOME', 'HEARTBEAT_ACK', 'GO_AWAY', 'NO_U_TBH'] as const).map((name) => [Op[name], name]),
);

export function step(state: State, input: Input): [State, Output[]] {
  const out: Output[] = [];
  switch (input.type) {
    case 'open':
      open(state, out, input.conn, input.wire, input.now, input.remote);
      break;
    case 'message': {
      const conn = state.conns.get(input.conn);
      if (conn && !conn.closing) {
        try {
          message(state, out, conn, input.data, input.now);
        } catch (error) {
          // A bug of ours, not the peer's fault: report it and close this one
          // connection, its session kept resumable, rather than go on from a
          // half-updated state.
          out.push({ type: 'log', level: 'error', msg: 'internal error handling a frame', fields: describeError(error, conn) });
          if (!conn.closing) reject(state, out, conn, Close.INTERNAL_ERROR, 'internal error', input.now);
        }
      }
      break;
    }
    case 'refused': {
      const conn = state.conns.get(input.conn);
      if (!conn || conn.closing) break;
      const max = state.config.maxPayload;
      if (input.tooLarge) reject(state, out, conn, Close.TOO_LARGE, `frame exceeds the limit of ${max} bytes`, input.now);
      else reject(state, out, conn, Close.BAD_FRAME, `malformed frame${input.detail ? `: ${input.detail}` : ''}`, input.now);
      break;
    }
    case 'close':
      transportClosed(state, out, input.conn, input.code, input.now);
      break;
    case 'heartbeat':
      heartbeatAnswered(state, input.conn, input.at);
      break;
    case 'tick':
      tick(state, out, input.now);
      break;
    case 'dispatch':
      httpDispatch(state, out, input.request, input.body, input.now);
      break;
    case 'shutdown':
      shutdown(state, out, input.now);
      break;
    case 'backlog':
      if (input.lost) dropped(state, input.conn, input.unflushedFrom);
      else backlog(state, out, input.conn, input.bytes, input.unflushedFrom, input.queuedFrom ?? input.unflushedFrom, input.now);
      break;
    case 'flushed':
      flushed(state, out, input.behind);
      break;
    case 'ping': {
      const conn = state.conns.get(input.conn);
      if (!conn || conn.closing) break;
      state.counters.framesIn++;
      // A ping flood is answered like any other flood: NO_U_TBH and 4429, not a dropped socket.
      if (!allowFrame(state, conn, input.now)) {
        reject(state, out, conn, Close.RATE_LIMITED, `rate limit exceeded: more than ${state.config.rateLimit} frames per second (pings count)`, input.now);
      }
      break;
    }
    case 'verified':
      verified(state, out, input.conn, input.claims, input.error, input.now);
      break;
    case 'node':
      if (state.cluster) handleNodeMessages(state, out, input.from, input.msgs, input.now, input.at);
      break;
    case 'link':
      if (state.cluster) linkChanged(state, out, input.up, input.nodes, input.now);
      break;
    case 'claimed':
      if (state.cluster) claimed(state, out, input.key, input.owner, input.now);
      break;
    case 'adopt':
      if (state.cluster) adopt(state, out, input.node, input.stored, input.inbox, input.bus, input.now);
      break;
  }
  if (state.slowConns.length > 0) cutSlowConsumers(state, out, input.now);
  if (state.cluster && state.cluster.changed.size > 0) publishChanges(state, out);
  return [state, out];
}

function describeError(error: unknown, conn: Conn): Record<string, unknown> {
  return { conn: conn.id, error: error instanceof Error ? (error.stack ?? error.message) : String(error) };
}

// ── connections ────────────────────────────────────────────────────────────

function open(state: State, out: Output[], id: ConnId, wire: Wire, now: number, remote = ''): void {
  if (state.conns.has(id)) {
    // The embedder broke its contract (a fresh id per connection); the old one can only be gone.
    out.push({ type: 'log', level: 'error', msg: 'connection id reused before its close', fields: { conn: id } });
    transportClosed(state, out, id, undefined, now);
  }
  const conn = newConn(id, wire, now, state.config.rateLimit * 2, remote);
  state.conns.set(id, conn);
  state.liveConns++;
  state.unidentifiedConns++;
  if (state.draining) {
    send(state, out, conn, { op: Op.GO_AWAY, d: GO_AWAY_TEXT });
    closeConn(state, out, conn, Close.GOING_AWAY, GO_AWAY_TEXT);
    return;
  }
  const { maxConnections, maxUnidentified } = state.config;
  if (state.liveConns > maxConnections) {
    return fail(state, out, conn, Close.AT_CAPACITY, `too many connections: this hub serves at most ${maxConnections}`);
  }
  if (state.unidentifiedConns > maxUnidentified) {
    return fail(state, out, conn, Close.AT_CAPACITY, `too many connections waiting to identify: at most ${maxUnidentified}`);
  }
  send(state, out, conn, { op: Op.HELLO, d: { heartbeat_interval: state.config.heartbeatInterval, worker: state.config.worker } });
  armConn(state, conn);
}

/**
 * Before IDENTIFY the deadline is the identify timeout; after, 1.5 heartbeat
 * intervals past the last one, or the token's expiry if that comes first.
 */
export function connDeadline(state: State, conn: Conn): number {
  const interval = state.config.heartbeatInterval;
  return conn.session ? Math.min(conn.lastHeartbeat + interval * 1.5, conn.tokenExpiresAt) : conn.openedAt + interval;
}

function armConn(state: State, conn: Conn): void {
  conn.timerAt = connDeadline(state, conn);
  state.timers.push(conn.timerAt, { kind: 'conn', conn });
}

/** Closes that leave the session resumable: the client did nothing wrong that a resume would repeat. */
const RESUMABLE_CLOSES: ReadonlySet<number> = new Set([Close.TIMEOUT, Close.SLOW_CONSUMER, Close.INTERNAL_ERROR]);

/** Closes on a protocol error; the session ends unless the close leaves it resumable. */
export function reject(state: State, out: Output[], conn: Conn, code: CloseCode, reason: string, now: number): void {
  fail(state, out, conn, code, reason);
  const session = conn.session;
  if (!session) return;
  detach(state, conn, session);
  if (RESUMABLE_CLOSES.has(code)) keepResumable(state, out, session, now);
  else endSession(state, out, session, now);
}

/** The host wrote everything queued; sessions whose held events waited for room get the next batch. */
function flushed(state: State, out: Output[], behind: readonly ConnId[] | undefined): void {
  state.flushes++;
  if (state.overBound.size > 0) {
    for (const session of [...state.overBound]) {
      // A connection that was or is behind is trimmed when its backlog report follows.
      if (session.conn !== null && (session.conn.backlog > 0 || behind?.includes(session.conn.id))) continue;
      state.overBound.delete(session);
      if (state.sessions.get(session.key) === session) trimReplay(state, out, session);
    }
  }
  if (state.heldWaiting.size === 0) return;
  const waiting = [...state.heldWaiting];
  state.heldWaiting.clear();
  for (const session of waiting) {
    const conn = session.conn;
    if (conn === null || state.sessions.get(session.key) !== session) continue;
    if (conn.backlog > 0) state.heldWaiting.add(session);
    else deliverHeld(state, out, session);
  }
}

/**
 * A connection being closed drops what its transport still holds, from
 * `from` on: if its session waits to be resumed, those events are owed again.
 */
function dropped(state: State, id: ConnId, from: number): void {
  const session = state.conns.get(id)?.lastSession;
  if (!session || session.conn !== null || state.sessions.get(session.key) !== session) return;
  session.writtenUpTo = Math.min(session.writtenUpTo, from - 1);
}

/** The host reported what its transport holds for a connection. */
function backlog(state: State, out: Output[], id: ConnId, bytes: number, unflushedFrom: number, queuedFrom: number, now: number): void {
  const conn = state.conns.get(id);
  if (!conn) return;
  noteBacklog(state, conn, bytes, unflushedFrom, queuedFrom);
  if (conn.closing) return;
  const session = conn.session;
  if (session && state.overBound.delete(session)) trimReplay(state, out, session);
  const limit = state.config.maxOutbound;
  if (bytes > limit) {
    const held = Number.isFinite(bytes) ? `${bytes} bytes` : 'more than the transport would hold';
    cutSlowConsumer(state, out, conn, `slow consumer: ${held} unread, over the limit of ${limit}`, now);
  }
}

/**
 * A client that stopped reading. What the transport still held for it counts
 * as never written (replayed on resume, requeued, or reported to its senders),
 * and the host drops the connection after the close if the peer does not read it.
 */
function cutSlowConsumer(state: State, out: Output[], conn: Conn, reason: string, now: number): void {
  if (conn.closing) return;
  state.counters.slowConsumers++;
  // What the host still queues is dropped; what its transport holds goes out
  // ahead of the close frame, and counts as lost only if the connection is
  // dropped before it leaves (see transportClosed).
  out.push({ type: 'discard', conn: conn.id });
  if (conn.session) forgetQueued(state, conn, conn.session);
  reject(state, out, conn, Close.SLOW_CONSUMER, reason, now);
}

function cutSlowConsumers(state: State, out: Output[], now: number): void {
  const conns = state.slowConns;
  state.slowConns = [];
  const limit = state.config.replayMaxCount;
  for (const conn of conns) {
    cutSlowConsumer(state, out, conn, `slow consumer: more than its replay buffer (${limit} events) unread`, now);
  }
}

export function detach(state: State, conn: Conn, session: Session): void {
  touchSession(state, session);
  noteChanged(state, session);
  conn.session = null;
  conn.lastSession = session;
  session.conn = null;
  state.connectedClients--;
}

function transportClosed(state: State, out: Output[], id: ConnId, code: number | undefined, now: number): void {
  const conn = state.conns.get(id);
  if (!conn) return;
  state.conns.delete(id);
  if (conn.claimKey !== undefined && state.cluster) abandonClaim(state, conn);
  const session = conn.session;
  if (!conn.closing) {
    state.liveConns--;
    if (!session) state.unidentifiedConns--;
  }
  if (!session) return;
  // Whatever the transport still held died with it.
  forgetUnflushed(state, conn, session);
  detach(state, conn, session);
  // A client that closes with 1000 or 1001 is saying goodbye, as on Discord's gateway.
  if (code === 1000 || code === 1001) endSession(state, out, session, now);
  else keepResumable(state, out, session, now);
}

// ── frames ─────────────────────────────────────────────────────────────────

/** Takes one token from a bucket refilled at the rate limit (burst: two seconds' worth); false when empty. */
function takeToken(state: State, bucket: { tokens: number; tokensAt: number }, now: number): boolean {
  const rate = state.config.rateLimit;
  if (rate <= 0) return true;
  bucket.tokens = Math.min(rate * 2, bucket.tokens + ((now - bucket.tokensAt) * rate) / 1000);
  bucket.tokensAt = now;
  if (bucket.tokens < 1) return false;
  bucket.tokens -= 1;
  return true;
}

function allowFrame(state: State, conn: Conn, now: number): boolean {
  return takeToken(state, conn, now);
}

function message(state: State, out: Output[], conn: Conn, data: string | Uint8Array, now: number): void {
  state.counters.framesIn++;
  const { maxPayload, rateLimit } = state.config;
  if (!allowFrame(state, conn, now)) {
    return reject(state, out, conn, Close.RATE_LIMITED, `rate limit exceeded: more than ${rateLimit} frames per second`, now);
  }
  if (conn.plain && data === HEARTBEAT_FRAME) return heartbeat(state, out, conn, now);
  const size = frameSize(data, maxPayload);
  if (size > maxPayload) {
    return reject(state, out, conn, Close.TOO_LARGE, `frame of ${size} bytes exceeds the limit of ${maxPayload} bytes`, now);
  }
  let frame: unknown;
  try {
    frame = decodeFrame(data, conn.wire, maxPayload, state.config.maxDepth);
  } catch (error) {
    if (!(error instanceof DecodeError)) throw error;
    return reject(state, out, conn, error.tooLarge ? Close.TOO_LARGE : Close.BAD_FRAME, error.message, now);
  }
  if (!isPlainObject(frame)) return reject(state, out, conn, Close.BAD_FRAME, 'frame must be an object', now);
  const op = frame.op;
  if (typeof op !== 'number' || !Number.isInteger(op)) {
    return reject(state, out, conn, Close.BAD_FRAME, 'frame must have an integer op', now);
  }
  switch (op) {
    case Op.HEARTBEAT:
      return heartbeat(state, out, conn, now);
    case Op.IDENTIFY:
      if (conn.session || conn.verifying || conn.claimKey !== undefined) return reject(state, out, conn, Close.FORBIDDEN, 'IDENTIFY: already identified', now);
      return identify(state, out, conn, frame.d, now);
    case Op.ABOUT_ME:
      if (!conn.session) return reject(state, out, conn, Close.FORBIDDEN, 'ABOUT_ME before IDENTIFY', now);
      return aboutMe(state, out, conn, conn.session, frame.d, now);
    case Op.DISPATCH:
      if (!conn.session) return reject(state, out, conn, Close.FORBIDDEN, 'DISPATCH before IDENTIFY', now);
      return dispatch(state, out, conn, conn.session, frame, now);
    default: {
      const serverOp = SERVER_OPS.get(op);
      const reason = serverOp ? `op ${op} (${serverOp}) is sent by the server only` : `unknown op ${op}`;
      return reject(state, out, conn, Close.BAD_FRAME, reason, now);
    }
  }
}

function heartbeat(state: State, out: Output[], conn: Conn, now: number): void {
  conn.lastHeartbeat = now;
  sendHeartbeatAck(state, out, conn);
}

/**
 * A heartbeat the host already acknowledged itself (a Durable Object's
 * auto-response), reported before a tick. The deadline is re-filed at once so
 * the stale entry does not wake the host.
 */
function heartbeatAnswered(state: State, id: ConnId, at: number): void {
  const conn = state.conns.get(id);
  if (!conn || conn.closing || at <= conn.lastHeartbeat) return;
  conn.lastHeartbeat = at;
  if (conn.session) armConn(state, conn);
}

// ── sessions ───────────────────────────────────────────────────────────────

function identify(state: State, out: Output[], conn: Conn, payload: unknown, now: number): void {
  const parsed = validate(IdentifySchema, payload);
  if (!parsed.ok) return reject(state, out, conn, Close.BAD_FRAME, `IDENTIFY: ${parsed.error}`, now);
  const d = parsed.value;
  if ((d.password === undefined) === (d.token === undefined)) {
    return reject(state, out, conn, Close.BAD_FRAME, 'IDENTIFY: give exactly one of password and token', now);
  }
  const cooling = coolingDown(state, conn.remote, now);
  if (cooling > 0) {
    const seconds = Math.ceil(cooling / 1000);
    return reject(state, out, conn, Close.RATE_LIMITED, `IDENTIFY: too many failed authentications from this address; retry in ${seconds} s`, now);
  }
  if (d.token !== undefined) {
    // Signatures are checked by the host, which answers with a `verified` input.
    conn.verifying = d;
    out.push({ type: 'verify', conn: conn.id, token: d.token });
    return;
  }
  if (!passwordMatches(d.password!, state.config.password)) return authFailed(state, out, conn, 'IDENTIFY: wrong password', now);
  admit(state, out, conn, d, undefined, now);
}

/** The host's answer about an IDENTIFY token: its claims must allow the identity asked for. */
function verified(state: State, out: Output[], id: ConnId, claims: Claims | undefined, error: string | undefined, now: number): void {
  const conn = state.conns.get(id);
  const d = conn?.verifying;
  if (!conn || conn.closing || !d) return;
  conn.verifying = undefined;
  if (error !== undefined || claims === undefined) return authFailed(state, out, conn, `IDENTIFY: ${error ?? 'invalid token'}`, now);
  if (claims.exp !== undefined && claims.exp <= now) return authFailed(state, out, conn, 'IDENTIFY: the token has expired', now);
  if (claims.app !== d.app_name) {
    return authFailed(state, out, conn, `IDENTIFY: the token is for app ${claims.app}, not ${d.app_name}`, now);
  }
  if (claims.sub !== undefined && claims.sub !== d.client_id) {
    return authFailed(state, out, conn, `IDENTIFY: the token is for client_id ${claims.sub}, not ${d.client_id}`, now);
  }
  admit(state, out, conn, d, claims, now);
}

/** 4401, counted against the remote address's budget; the first failure past it is logged. */
function authFailed(state: State, out: Output[], conn: Conn, reason: string, now: number): void {
  if (noteAuthFailure(state, conn.remote, now)) {
    out.push({ type: 'log', level: 'warn', msg: 'too many failed authentications: cooling down', fields: { remote: conn.remote, budget: state.config.authFailures } });
  }
  reject(state, out, conn, Close.BAD_PASSWORD, reason, now);
}

/** IDENTIFY, once the cluster (if any) has made its session this node's. */
export function admitOwned(state: State, out: Output[], conn: Conn, d: Identify, claims: Claims | undefined, now: number): void {
  admit(state, out, conn, d, claims, now, true);
}

/** IDENTIFY with a password that matched, or a token whose claims allow it. */
function admit(state: State, out: Output[], conn: Conn, d: Identify, claims: Claims | undefined, now: number, owned = false): void {
  const key = sessionKey(d.app_name, d.client_id);
  const found = state.sessions.get(key);
  const authority = authorityOf(claims);
  if (found && !mayTakeOver(found.authority, authority)) {
    return reject(state, out, conn, Close.FORBIDDEN, `IDENTIFY: this token may not take over ${d.app_name}/${d.client_id}`, now);
  }
  const cluster = state.cluster;
  if (cluster && !owned && (found ? found.node !== undefined : cluster.linked)) {
    // Another node's session, or a new one: the cluster must agree it is ours first.
    return claimSession(state, out, conn, d, claims, found, now);
  }
  // Claimed for this node while the replica still named the old owner: that entry goes.
  if (found?.node !== undefined) dropLocalSession(state, found);
  const existing = found?.node === undefined ? found : undefined;
  if (existing?.adoptedSeq !== undefined && d.reconnect === true && d.seq !== undefined && d.seq > existing.seq) renumberAfter(state, existing, d.seq);
  if (existing?.conn && !d.reconnect) {
    return reject(state, out, conn, Close.CONFLICT, `IDENTIFY: ${d.app_name}/${d.client_id} is already connected`, now);
  }
  const resuming = existing !== undefined && d.reconnect === true;
  if (resuming && d.seq !== undefined && d.seq > existing.seq) {
    // A client cannot have processed an `s` never handed out: it is confused about which session this is.
    return reject(state, out, conn, Close.BAD_FRAME, `IDENTIFY: seq ${d.seq} is ahead of the session, whose last s is ${existing.seq}`, now);
  }
  const fixed = claims?.meta;
  const fixedKey = d.metadata ? touchesFixedKey(fixed, d.metadata) : undefined;
  if (fixedKey !== undefined) return reject(state, out, conn, Close.FORBIDDEN, `IDENTIFY: metadata key ${fixedKey} is fixed by the token`, now);
  const metadata = resuming ? existing : emptyMetadata();
  const patch = fixed ? { ...d.metadata, ...fixed } : d.metadata;
  const refusal = patch ? mergeWithinLimits(state, metadata, patch, 'IDENTIFY') : undefined;
  if (refusal) return reject(state, out, conn, refusal.code, refusal.reason, now);

  let session: Session;
  if (resuming) {
    session = existing;
    if (session.conn) {
      const old = session.conn;
      fail(state, out, old, Close.CONFLICT, TAKEN_OVER_TEXT);
      forgetUnflushed(state, old, session);
      detach(state, old, session);
    }
  } else {
    if (existing) endSession(state, out, existing, now);
    session = newSession(getApp(state, d.app_name), d.client_id, metadata, state.nextOrdinal++, now);
    // What the merge above added is counted already; the empty record is not.
    state.memory.metadata += EMPTY_METADATA_BYTES;
    state.sessions.set(key, session);
    joinApp(session);
  }
  session.authority = authority;
  session.dispatchTo = claims?.dispatch === undefined ? undefined : new Set(claims.dispatch);
  session.fixedMeta = fixed;
  conn.tokenExpiresAt = claims?.exp ?? Infinity;
  session.conn = conn;
  session.connectedAt = now;
  conn.session = session;
  noteChanged(state, session);
  if (conn.tokenExpiresAt < conn.timerAt) armConn(state, conn);
  state.unidentifiedConns--;
  touchSession(state, session);
  state.connectedClients++;
  send(state, out, conn, { op: Op.WELCOME, d: WELCOME_TEXT });
  out.push({
    type: 'log',
    level: 'info',
    msg: resuming ? 'resumed' : 'identified',
    fields: { conn: conn.id, app_name: d.app_name, client_id: d.client_id },
  });
  if (d.reconnect === true) {
    // Asked to resume: say whether it did, before anything replayed (raw clients cannot tell from WELCOME).
    const resumed: Record<string, unknown> = { resumed: resuming, s: session.seq };
    const first = Math.max(session.replayFirst, (d.seq ?? 0) + 1);
    resumed.replayed = resuming ? session.seq - first + 1 : 0;
    if (resuming && d.seq !== undefined) resumed.missed = first - d.seq - 1;
    send(state, out, conn, { op: Op.DISPATCH, e: SESSION_EVENT, d: resumed });
  }
  if (resuming) replay(state, out, conn, session, d.seq);
  deliverHeld(state, out, session);
}

/** Resends the buffered dispatches after `seq` (all of them without one), with their original `s`. */
function replay(state: State, out: Output[], conn: Conn, session: Session, seq: number | undefined): void {
  const after = seq ?? 0;
  const replay = session.replay;
  const from = Math.max(0, after - session.replayFirst + 1);
  for (let i = from; i < replay.length; i++) {
    sendRouted(state, out, conn, replay.at(i), session.replayFirst + i);
  }
  // Replayed events wait in the host like any written since its last flush:
  // if the connection drops before that flush, they are owed again.
  if (from < replay.length && conn.writtenInFlush !== state.flushes) {
    conn.writtenInFlush = state.flushes;
    conn.firstSinceFlush = session.replayFirst + from;
  }
  // What the client says it processed counts as written too.
  session.writtenUpTo = session.seq;
}

export function keepResumable(state: State, out: Output[], session: Session, now: number): void {
  // A draining node of a cluster keeps its sessions for other nodes to take over.
  if ((state.draining && !state.cluster) || state.config.resumeWindow <= 0) return endSession(state, out, session, now);
  touchSession(state, session);
  session.expiresAt = now + state.config.resumeWindow;
  state.timers.push(session.expiresAt, { kind: 'session', session });
}

/**
 * Removes a session of this node without requeueing anything: it now lives
 * on another node (handed over, or claimed there), or was only this node's
 * replica of one.
 */
export function dropLocalSession(state: State, session: Session): void {
  if (state.sessions.get(session.key) !== session) return;
  state.sessions.delete(session.key);
  touchSession(state, session);
  leaveApp(session);
  if (session.node === undefined) {
    state.memory.metadata -= session.metadataBytes;
    clearReplay(state, session);
    state.overBound.delete(session);
    state.heldWaiting.delete(session);
  }
  forgetAppIfEmpty(state, session.app);
}

function endSession(state: State, out: Output[], session: Session, now: number): void {
  if (state.sessions.get(session.key) !== session) return;
  noteEnded(state, session);
  state.sessions.delete(session.key);
  touchSession(state, session);
  state.memory.metadata -= session.metadataBytes;
  const app = session.app;
  leaveApp(session);
  if (state.draining) {
    for (const msg of unwrittenDirected(session)) undeliverable(state, out, msg, 'server is shutting down');
    clearReplay(state, session);
  } else requeueUnwritten(state, out, session, now);
  forgetAppIfEmpty(state, app);
}

/**
 * Merges metadata if it stays within the per-client limit (4413) and the
 * hub's memory budget (4503); returns the refusal otherwise, changing nothing.
 */
function mergeWithinLimits(state: State, record: MetadataRecord, patch: Record<string, unknown>, op: string): { code: CloseCode; reason: string } | undefined {
  const limit = state.config.maxMetadata;
  const before = record.metadataBytes;
  // The per-client limit is checked first; within it, the budget is checked against the growth.
  const budget = Math.min(limit, Math.max(before, state.config.maxMemory - state.memory.held - state.memory.replay - state.memory.metadata + before));
  const refused = mergeMetadata(record, patch, budget);
  if (refused === undefined) {
    state.memory.metadata += record.metadataBytes - before;
    return undefined;
  }
  if (refused > limit) return { code: Close.TOO_LARGE, reason: `${op}: metadata would be ${refused} bytes, over the limit of ${limit}` };
  return { code: Close.AT_CAPACITY, reason: `${op}: ${hubFullReason(state)}` };
}

function aboutMe(state: State, out: Output[], conn: Conn, session: Session, payload: unknown, now: number): void {
  if (!isPlainObject(payload)) return reject(state, out, conn, Close.BAD_FRAME, 'ABOUT_ME: d must be an object', now);
  const fixedKey = touchesFixedKey(session.fixedMeta, payload);
  if (fixedKey !== undefined) return reject(state, out, conn, Close.FORBIDDEN, `ABOUT_ME: metadata key ${fixedKey} is fixed by the token`, now);
  const refusal = mergeWithinLimits(state, session, payload, 'ABOUT_ME');
  if (refusal) return reject(state, out, conn, refusal.code, refusal.reason, now);
  touchSession(state, session);
  noteChanged(state, session);
  deliverHeld(state, out, session);
}

// ── dispatch ───────────────────────────────────────────────────────────────

/** Validates a dispatch body and compiles its query; the error text names the field. */
function parseDispatch(state: State, body: unknown): { ok: true; value: Dispatch; test?: MetadataTest } | { ok: false; error: string } {
  const parsed = validateDispatch(body);
  if (!parsed.ok) return parsed;
  const query = parsed.value.to.query;
  if (query === undefined) return parsed;
  try {
    return { ok: true, value: parsed.value, test: compileQuery(query, state.config) };
  } catch (error) {
    if (!(error instanceof QueryError)) throw error;
    return { ok: false, error: `to.query: ${error.message}` };
  }
}

function dispatch(state: State, out: Output[], conn: Conn, session: Session, frame: unknown, now: number): void {
  const parsed = parseDispatch(state, frame);
  if (!parsed.ok) return reject(state, out, conn, Close.BAD_FRAME, `DISPATCH: ${parsed.error}`, now);
  const { e, d, to, nonce } = parsed.value;
  if (session.dispatchTo !== undefined && !session.dispatchTo.has(to.app_name)) {
    return reject(state, out, conn, Close.FORBIDDEN, `DISPATCH: the token may not dispatch to app ${to.app_name}`, now);
  }
  const msg = createRouted(e, d ?? null, session, nonce, to, parsed.test);
  const result = route(state, out, msg, now);
  if (nonce !== undefined) acknowledge(state, out, session.key, nonce, result.delivered, result.queued);
}


function httpDispatch(state: State, out: Output[], request: number, body: unknown, now: number): void {
  if (state.draining) {
    out.push({ type: 'rejected', request, status: 503, error: 'server is shutting down' });
    return;
  }
  // HTTP dispatches share one bucket of the per-connection rate limit: the route is one more sender.
  if (!takeToken(state, state.http, now)) {
    out.push({ type: 'rejected', request, status: 429, error: `rate limit exceeded: more than ${state.config.rateLimit} dispatches per second` });
    return;
  }
  // A socket frame's depth is checked as it is decoded; an HTTP body arrives already parsed.
  const tooDeep = checkDepth(body, state.config.maxDepth);
  const parsed = tooDeep === undefined ? parseDispatch(state, body) : { ok: false as const, error: tooDeep };
  if (!parsed.ok) {
    out.push({ type: 'rejected', request, status: 400, error: parsed.error });
    return;
  }
  const { e, d, to, nonce } = parsed.value;
  const msg = createRouted(e, d ?? null, HTTP_SENDER, nonce, to, parsed.test);
  const result = route(state, out, msg, now);
  out.push({ type: 'dispatched', request, ...result });
}

// ── time and shutdown ──────────────────────────────────────────────────────

function tick(state: State, out: Output[], now: number): void {
  for (let entry = state.timers.popDue(now); entry; entry = state.timers.popDue(now)) {
    const ref = entry.ref;
    if (ref.kind === 'conn') {
      const conn = ref.conn;
      if (state.conns.get(conn.id) !== conn || conn.closing || entry.at !== conn.timerAt) continue;
      const deadline = connDeadline(state, conn);
      if (now < deadline) {
        conn.timerAt = deadline;
        state.timers.push(deadline, ref);
      } else if (conn.session && now >= conn.tokenExpiresAt) {
        // Not the client's fault as such: it may resume with a fresh token.
        const session = conn.session;
        fail(state, out, conn, Close.BAD_PASSWORD, 'token expired');
        detach(state, conn, session);
        keepResumable(state, out, session, now);
      } else if (conn.session) {
        const limit = state.config.heartbeatInterval * 1.5;
        reject(state, out, conn, Close.TIMEOUT, `heartbeat timeout: no HEARTBEAT within ${limit} ms`, now);
      } else {
        const limit = state.config.heartbeatInterval;
        reject(state, out, conn, Close.TIMEOUT, `identify timeout: no IDENTIFY within ${limit} ms`, now);
      }
    } else if (ref.kind === 'session') {
      const session = ref.session;
      if (session.conn === null && entry.at === session.expiresAt) endSession(state, out, session, now);
    } else if (state.apps.get(ref.app.name) === ref.app && entry.at === ref.app.heldTimerAt) {
      expireHeld(state, out, ref.app, now);
    }
  }
}

function shutdown(state: State, out: Output[], now: number): void {
  if (state.draining) return;
  state.draining = true;
  if (state.cluster) return drainNode(state, out, now);
  // Held events will never find a recipient on this instance: tell their senders first.
  for (const app of state.apps.values()) {
    for (const held of app.held) if (!held.done) undeliverable(state, out, held.msg, 'server is shutting down');
    app.held = [];
    state.memory.held -= app.heldBytes;
    app.heldBytes = 0;
  }
  const behind = dropBehind(state, out);
  for (const session of state.sessions.values()) {
    for (const msg of unwrittenDirected(session)) undeliverable(state, out, msg, 'server is shutting down');
    clearReplay(state, session);
  }
  for (const conn of state.conns.values()) {
    if (conn.closing) continue;
    send(state, out, conn, { op: Op.GO_AWAY, d: GO_AWAY_TEXT });
    closeConn(state, out, conn, Close.GOING_AWAY, GO_AWAY_TEXT);
    if (conn.session) detach(state, conn, conn.session);
  }
  for (const conn of behind) out.push({ type: 'terminate', conn: conn.id });
  for (const session of state.sessions.values()) touchSession(state, session);
  for (const app of state.apps.values()) touchApp(state, app);
  state.sessions.clear();
  state.apps.clear();
  state.memory = { held: 0, replay: 0, metadata: 0 };
  out.push({ type: 'log', level: 'info', msg: 'shutting down', fields: { connections: state.conns.size } });
}

/**
 * A reader still behind cannot drain before the process exits: what the host
 * still queues for it is dropped and counts as never written; what its
 * transport holds goes out ahead of GO_AWAY. Returns those connections, to be
 * ended after it.
 */
function dropBehind(state: State, out: Output[]): Conn[] {
  const behind: Conn[] = [];
  for (const conn of state.conns.values()) {
    if (conn.closing || conn.backlog === 0 || !conn.session) continue;
    out.push({ type: 'discard', conn: conn.id });
    forgetQueued(state, conn, conn.session);
    behind.push(conn);
  }
  return behind;
}

/**
 * A node of a cluster leaving: GO_AWAY to every connection, but its sessions
 * and held events stay, stored, for the clients to resume on other nodes
 * (each asks this node to hand its session over) and for another node to
 * adopt what is left once this one has gone.
 */
function drainNode(state: State, out: Output[], now: number): void {
  const behind = dropBehind(state, out);
  for (const conn of state.conns.values()) {
    if (conn.closing) continue;
    send(state, out, conn, { op: Op.GO_AWAY, d: GO_AWAY_TEXT });
    closeConn(state, out, conn, Close.GOING_AWAY, GO_AWAY_TEXT);
    // What waits for the cluster's write goes out ahead of GO_AWAY if the
    // client is still there: until then it is owed, replayed or requeued.
    const session = conn.session;
    if (session) {
      forgetUnflushed(state, conn, session);
      detach(state, conn, session);
      keepResumable(state, out, session, now);
    }
  }
  for (const conn of behind) out.push({ type: 'terminate', conn: conn.id });
  out.push({ type: 'log', level: 'info', msg: 'shutting down', fields: { connections: state.conns.size, sessions: state.sessions.size } });
}
