// State as plain JSON and back: what a host that loses its memory between
// events (a hibernating Durable Object) keeps in per-socket attachments and in
// storage, and the State rebuilt from them. No I/O: the host writes the
// changesets and commits each one only once its write returned.

import type { ConnId, CoreConfig } from './io.ts';
import { emptyMetadata, mergeMetadata } from './metadata.ts';
import type { Compression, Format, Sender, Target } from './protocol.ts';
import { compileQuery } from './query.ts';
import {
  createState,
  entryBytes,
  forgetAppIfEmpty,
  getApp,
  joinApp,
  newConn,
  newSession,
  sessionKey,
  type Conn,
  type Counters,
  type Held,
  type Routed,
  type Session,
  type State,
} from './state.ts';
import { connDeadline } from './step.ts';
import { createRouted, routedFrame, routedFromHead } from './wire.ts';

/** One connection, small enough for a socket attachment (a few hundred bytes at most). */
export interface ConnRecord {
  id: ConnId;
  f: Format;
  c: Compression;
  /** openedAt, lastHeartbeat (ms). */
  o: number;
  h: number;
  /** The session key once identified. */
  k?: string;
  /** An error or GO_AWAY close was sent. */
  x?: true;
  /** Rate-limit bucket, when a limit is set. */
  t?: number;
  ta?: number;
  /** When its token expires; the peer's address. */
  te?: number;
  r?: string;
}

export interface RoutedRecord {
  e: string;
  /** The event's data; absent when `h`, its encoded frame head, travels instead (between nodes of a cluster). */
  d?: unknown;
  h?: string;
  from: Sender;
  sk?: string;
  n?: string;
  to: Target;
}

export interface SessionRecord {
  /** The session's ordinal: unique for the life of the hub, so it names the session in storage. */
  ord: number;
  app: string;
  id: string;
  md: Record<string, unknown>;
  /** The connection holding the session, or null while it is resumable. */
  conn: ConnId | null;
  at: number;
  seq: number;
  exp: number;
  /** Buffered entries up to this `s` were handed to a socket. */
  wr: number;
  /** Who created it, when not the password; the apps its token may dispatch to; the metadata it fixes. */
  au?: string;
  dt?: string[];
  fm?: Record<string, unknown>;
  /** In a cluster: the bus entry a previous owner had handled it up to (Session.busSeen). */
  bs?: string;
}

/** A buffered event: whole while it is still owed, else just the JSON text it was written as. */
export interface ReplayRecord {
  ord: number;
  s: number;
  text?: string;
  msg?: RoutedRecord;
}

export interface AppRecord {
  name: string;
  cursor: number;
}

export interface HeldRecord {
  /** Increasing in the order events were held, so it also orders the queue. */
  id: number;
  app: string;
  exp: number;
  msg: RoutedRecord;
}

export interface MetaRecord {
  nextOrdinal: number;
  nextHeld: number;
  counters: Counters;
}

/** Everything the host keeps in storage. */
export interface Stored {
  meta?: MetaRecord;
  sessions: SessionRecord[];
  replay: ReplayRecord[];
  apps: AppRecord[];
  held: HeldRecord[];
}

/** What one step changed, as writes for the host's storage. Deletes come first, then puts. */
export interface Changeset {
  meta?: MetaRecord;
  /** Session ordinals to delete with all their replay rows, stored from `s` = first to last. */
  dropSessions: number[];
  droppedReplay: { ord: number; first: number; last: number }[];
  sessions: SessionRecord[];
  /** Delete replay rows of `ord` with `s` below `below` (stored from `from`). */
  trimReplay: { ord: number; below: number; from: number }[];
  replay: ReplayRecord[];
  dropApps: string[];
  apps: AppRecord[];
  dropHeld: number[];
  held: HeldRecord[];
}

export function isEmptyChangeset(c: Changeset): boolean {
  return (
    c.meta === undefined &&
    c.dropSessions.length + c.sessions.length + c.trimReplay.length + c.replay.length === 0 &&
    c.dropApps.length + c.apps.length + c.dropHeld.length + c.held.length === 0
  );
}

export function connRecord(conn: Conn, rateLimited: boolean): ConnRecord {
  const record: ConnRecord = { id: conn.id, f: conn.wire.format, c: conn.wire.compression, o: conn.openedAt, h: conn.lastHeartbeat };
  if (conn.session) record.k = conn.session.key;
  if (conn.closing) record.x = true;
  if (conn.tokenExpiresAt !== Infinity) record.te = conn.tokenExpiresAt;
  if (conn.remote !== '') record.r = conn.remote;
  if (rateLimited) {
    record.t = conn.tokens;
    record.ta = conn.tokensAt;
  }
  return record;
}

export function routedRecord(msg: Routed): RoutedRecord {
  const record: RoutedRecord = { e: msg.e, d: routedFrame(msg).d, from: msg.from, to: msg.target };
  if (msg.senderKey !== undefined) record.sk = msg.senderKey;
  if (msg.nonce !== undefined) record.n = msg.nonce;
  return record;
}

/** The record another node of a cluster is sent: the frame head as encoded here, not the data to encode again. */
export function relayedRecord(msg: Routed): RoutedRecord {
  const record: RoutedRecord = { e: msg.e, h: msg.jsonHead, from: msg.from, to: msg.target };
  if (msg.senderKey !== undefined) record.sk = msg.senderKey;
  if (msg.nonce !== undefined) record.n = msg.nonce;
  return record;
}

/**
 * JSON text read back (a frame head or a replay text) with any raw line
 * break made a space. Only JSON whitespace can be one, so the meaning stays;
 * JSON.stringify writes none, so text the core made is returned as it is.
 * Every head and replay text the core holds is free of them, which lets a
 * cluster entry or a replay chunk carry them as lines without looking.
 */
function withoutLineBreaks(json: string): string {
  return json.includes('\n') ? json.replaceAll('\n', ' ') : json;
}

/** An event as stored or relayed, routable again (its head without raw line breaks). */
export function routedFrom(record: RoutedRecord, config: CoreConfig): Routed {
  // The query compiled when the event was accepted, so it compiles again.
  const test = record.to.query === undefined ? undefined : compileQuery(record.to.query, config);
  if (record.h !== undefined) {
    return routedFromHead(record.e, withoutLineBreaks(record.h), { from: record.from, key: record.sk }, record.n, record.to, test);
  }
  const sender = { from: record.from, fromJson: JSON.stringify(record.from), key: record.sk };
  const msg = createRouted(record.e, record.d, sender, record.n, record.to, test);
  msg.d = undefined;
  return msg;
}

export function sessionRecord(session: Session): SessionRecord {
  const record: SessionRecord = {
    ord: session.ordinal,
    app: session.app.name,
    id: session.clientId,
    md: { ...session.metadata },
    conn: session.conn?.id ?? null,
    at: session.connectedAt,
    seq: session.seq,
    exp: session.expiresAt,
    wr: session.writtenUpTo,
  };
  // A token's limits must outlive hibernation, or a woken hub would forget them.
  if (session.authority !== 'password') record.au = session.authority;
  if (session.dispatchTo !== undefined) record.dt = [...session.dispatchTo];
  if (session.fixedMeta !== undefined) record.fm = session.fixedMeta;
  if (session.busSeen !== undefined) record.bs = session.busSeen;
  return record;
}

/**
 * The record of an event kept whole, made once however many buffers share it
 * (a fan-out): a host that encodes rows can then encode it once per write.
 */
const sharedRecords = new WeakMap<Routed, RoutedRecord>();

function sharedRecord(msg: Routed): RoutedRecord {
  let record = sharedRecords.get(msg);
  if (record === undefined) sharedRecords.set(msg, (record = relayedRecord(msg)));
  return record;
}

/** A session's buffered events from `s` = `from` on, as storage rows (rows of one event kept whole share its record). */
export function replayRecords(session: Session, from = session.replayFirst): ReplayRecord[] {
  const rows: ReplayRecord[] = [];
  const first = session.replayFirst;
  for (let s = Math.max(from, first); s < first + session.replay.length; s++) {
    const entry = session.replay.at(s - first);
    // An event kept whole (owed, or a fan-out shared by many buffers) is stored by its frame head: nothing to decode and encode again per row.
    rows.push(typeof entry === 'string' ? { ord: session.ordinal, s, text: entry } : { ord: session.ordinal, s, msg: sharedRecord(entry) });
  }
  return rows;
}

/**
 * A session rebuilt from its record and replay rows, added to the state under
 * `ordinal`, without a connection and without a timer (the caller decides
 * when it expires). Rows must be sorted by `s`; a gap (a row storage lost)
 * cuts the buffer there, as an eviction would.
 */
export function sessionFromRecord(state: State, record: SessionRecord, all: ReplayRecord[], ordinal: number): Session {
  const config = state.config;
  const metadata = emptyMetadata();
  mergeMetadata(metadata, record.md, Infinity);
  const session = newSession(getApp(state, record.app), record.id, metadata, ordinal, record.at, record.seq);
  session.writtenUpTo = record.wr;
  session.authority = record.au ?? 'password';
  session.dispatchTo = record.dt === undefined ? undefined : new Set(record.dt);
  session.fixedMeta = record.fm;
  session.expiresAt = record.exp;
  if (record.bs !== undefined) session.busSeen = record.bs;
  // Entries are consecutive and end at `seq`.
  let from = all.length;
  while (from > 0 && all[from - 1]!.s === record.seq - (all.length - from)) from--;
  const rows = from === 0 ? all : all.slice(from);
  if (rows.length > 0) session.replayFirst = rows[0]!.s;
  for (const row of rows) {
    const entry = row.text !== undefined ? withoutLineBreaks(row.text) : routedFrom(row.msg!, config);
    session.replay.push(entry);
    session.replayBytes += entryBytes(entry);
    state.memory.replay += entryBytes(entry);
  }
  state.memory.metadata += session.metadataBytes;
  state.sessions.set(session.key, session);
  joinApp(session);
  return session;
}

/** Which replay rows storage holds for a session: `s` from `first` to `last`. */
interface StoredSession {
  ord: number;
  first: number;
  last: number;
}

function emptyChangeset(): Changeset {
  return { dropSessions: [], droppedReplay: [], sessions: [], trimReplay: [], replay: [], dropApps: [], apps: [], dropHeld: [], held: [] };
}

/** One write of a changeset, alone, with the name a log line gives it. */
export interface ChangesetPart {
  record: string;
  changes: Changeset;
}

/**
 * The changeset as one-record changesets, in the order a whole write applies
 * them, so a host can find which record a store refuses and keep the rest.
 */
export function splitChangeset(changes: Changeset): ChangesetPart[] {
  const parts: ChangesetPart[] = [];
  const part = (record: string, fill: (c: Changeset) => void) => {
    const c = emptyChangeset();
    fill(c);
    parts.push({ record, changes: c });
  };
  for (const [i, ord] of changes.dropSessions.entries()) {
    part(`drop session ${ord}`, (c) => {
      c.dropSessions.push(ord);
      const range = changes.droppedReplay[i];
      if (range) c.droppedReplay.push(range);
    });
  }
  for (const trim of changes.trimReplay) part(`trim replay ${trim.ord} below ${trim.below}`, (c) => c.trimReplay.push(trim));
  for (const name of changes.dropApps) part(`drop app ${name}`, (c) => c.dropApps.push(name));
  for (const id of changes.dropHeld) part(`drop held ${id}`, (c) => c.dropHeld.push(id));
  for (const record of changes.sessions) part(`session ${record.ord}`, (c) => c.sessions.push(record));
  for (const record of changes.replay) part(`replay ${record.ord}:${record.s}`, (c) => c.replay.push(record));
  for (const record of changes.apps) part(`app ${record.name}`, (c) => c.apps.push(record));
  for (const record of changes.held) part(`held ${record.id}`, (c) => c.held.push(record));
  const meta = changes.meta;
  if (meta) part('meta', (c) => (c.meta = meta));
  return parts;
}

/** What storage will hold once a flushed changeset is written: applied by `commit`. */
interface Plan {
  changes: Changeset;
  sessions: Map<string, StoredSession | undefined>;
  apps: Map<string, Set<number>>;
  meta: string | undefined;
}

/**
 * Tracks what storage holds and turns the core's change marks into the
 * smallest writes: a session's header plus only its new replay rows, an app's
 * cursor plus only its new held rows. Cost is proportional to what changed,
 * except an app's held queue, which is scanned when that app changes.
 *
 * `flush` only computes; `commit` records the changeset as stored, and the
 * host calls it once the write returned. Until then the sessions and apps it
 * covered stay dirty, so a write that failed is computed again, merged with
 * whatever changed since, by the next flush.
 */
export class Persister {
  private readonly sessions = new Map<string, StoredSession>();
  private readonly heldIds = new WeakMap<Held, number>();
  private readonly storedHeld = new Map<string, Set<number>>();
  private readonly dirtySessions = new Set<string>();
  private readonly dirtyApps = new Set<string>();
  private pending: Plan | undefined;
  private nextHeld = 1;
  private lastMeta = '';

  /** Turns change tracking on for `state`. */
  track(state: State): void {
    state.changes ??= { sessions: new Set(), apps: new Set() };
  }

  /**
   * The writes that bring storage up to date with `state`, including any an
   * earlier flush computed but that was never committed. Clears the core's
   * change marks; records nothing as stored.
   */
  flush(state: State): Changeset {
    const marks = state.changes;
    if (marks) {
      for (const key of marks.sessions) this.dirtySessions.add(key);
      for (const name of marks.apps) this.dirtyApps.add(name);
      marks.sessions.clear();
      marks.apps.clear();
    }
    const changes = emptyChangeset();
    const plan: Plan = { changes, sessions: new Map(), apps: new Map(), meta: undefined };
    for (const key of this.dirtySessions) this.flushSession(state, key, plan);
    for (const name of this.dirtyApps) this.flushApp(state, name, plan);
    const meta: MetaRecord = { nextOrdinal: state.nextOrdinal, nextHeld: this.nextHeld, counters: state.counters };
    const json = JSON.stringify(meta);
    if (json !== this.lastMeta) {
      plan.meta = json;
      changes.meta = JSON.parse(json) as MetaRecord;
    }
    this.pending = plan;
    return changes;
  }

  /** Records `changes`, the latest flush, as written to storage. */
  commit(changes: Changeset): void {
    const plan = this.pending;
    // Committing an older changeset would record rows the newer one still has to write.
    if (!plan || plan.changes !== changes) throw new Error('Persister.commit: not the changeset of the latest flush');
    this.pending = undefined;
    for (const [key, stored] of plan.sessions) {
      if (stored) this.sessions.set(key, stored);
      else this.sessions.delete(key);
      this.dirtySessions.delete(key);
    }
    for (const [name, ids] of plan.apps) {
      if (ids.size > 0) this.storedHeld.set(name, ids);
      else this.storedHeld.delete(name);
      this.dirtyApps.delete(name);
    }
    if (plan.meta !== undefined) this.lastMeta = plan.meta;
  }

  private flushSession(state: State, key: string, plan: Plan): void {
    const changes = plan.changes;
    const live = state.sessions.get(key);
    let stored = this.sessions.get(key);
    if (stored && (!live || live.ordinal !== stored.ord || live.node !== undefined)) {
      changes.dropSessions.push(stored.ord);
      changes.droppedReplay.push({ ord: stored.ord, first: stored.first, last: stored.last });
      stored = undefined;
    }
    // Another node's session, in this node's replica, is that node's to store.
    if (!live || live.node !== undefined) {
      plan.sessions.set(key, undefined);
      return;
    }
    changes.sessions.push(sessionRecord(live));
    const replay = live.replay;
    const first = live.replayFirst;
    const last = first + replay.length - 1;
    if (stored && stored.first < first && stored.last >= stored.first) changes.trimReplay.push({ ord: stored.ord, below: first, from: stored.first });
    changes.replay.push(...replayRecords(live, Math.max(first, (stored?.last ?? 0) + 1)));
    plan.sessions.set(key, { ord: live.ordinal, first, last });
  }

  private flushApp(state: State, name: string, plan: Plan): void {
    const changes = plan.changes;
    const live = state.apps.get(name);
    const stored = this.storedHeld.get(name);
    const current = new Set<number>();
    if (live) {
      changes.apps.push({ name, cursor: live.cursor });
      for (const held of live.held) {
        if (held.done) continue;
        // An id only names the row, so one given out by a flush whose write failed is kept.
        let id = this.heldIds.get(held);
        if (id === undefined) {
          id = this.nextHeld++;
          this.heldIds.set(held, id);
        }
        if (!stored?.has(id)) changes.held.push({ id, app: name, exp: held.expiresAt, msg: routedRecord(held.msg) });
        current.add(id);
      }
    } else changes.dropApps.push(name);
    if (stored) for (const id of stored) if (!current.has(id)) changes.dropHeld.push(id);
    plan.apps.set(name, current);
  }

  /**
   * Rebuilds a hub from storage and the connections that are still open.
   * Sessions whose connection is gone (the object was reset, dropping every
   * socket) become resumable from `now`, as if they had just dropped.
   */
  static restore(config: CoreConfig, stored: Stored, conns: ConnRecord[], now: number): { state: State; persister: Persister } {
    const persister = new Persister();
    const state = createState(config);
    persister.track(state);
    if (stored.meta) {
      state.nextOrdinal = stored.meta.nextOrdinal;
      state.counters = stored.meta.counters;
      persister.nextHeld = stored.meta.nextHeld;
    }

    for (const record of conns) {
      const conn = newConn(record.id, { format: record.f, compression: record.c }, record.o, record.t ?? config.rateLimit * 2);
      conn.lastHeartbeat = record.h;
      conn.closing = record.x === true;
      conn.tokenExpiresAt = record.te ?? Infinity;
      conn.remote = record.r ?? '';
      conn.tokensAt = record.ta ?? now;
      state.conns.set(conn.id, conn);
    }
    const claimedBy = new Map<ConnId, string | undefined>(conns.map((record) => [record.id, record.k]));

    const replayByOrd = new Map<number, ReplayRecord[]>();
    for (const row of stored.replay) {
      let rows = replayByOrd.get(row.ord);
      if (!rows) replayByOrd.set(row.ord, (rows = []));
      rows.push(row);
    }
    const sessions = [...stored.sessions].sort((a, b) => a.ord - b.ord);
    for (const record of sessions) {
      const key = sessionKey(record.app, record.id);
      // A row storage lost (see docs/cloudflare.md, failed writes) cuts the buffer there.
      const all = (replayByOrd.get(record.ord) ?? []).sort((a, b) => a.s - b.s);
      const session = sessionFromRecord(state, record, all, record.ord);
      // Rows cut above still count as stored, so the next flush trims them.
      persister.sessions.set(key, { ord: record.ord, first: all[0]?.s ?? record.seq + 1, last: all.at(-1)?.s ?? record.seq });
      if (record.ord >= state.nextOrdinal) state.nextOrdinal = record.ord + 1;

      const conn = record.conn === null ? undefined : state.conns.get(record.conn);
      if (conn && !conn.closing && claimedBy.get(conn.id) === key) {
        session.conn = conn;
        conn.session = session;
        state.connectedClients++;
        continue;
      }
      if (record.conn !== null) {
        // Its socket closed while nothing ran (a reset drops every socket): the resume window starts now.
        session.expiresAt = now + config.resumeWindow;
        state.changes!.sessions.add(key);
      }
      state.timers.push(session.expiresAt, { kind: 'session', session });
    }

    const heldByApp = new Map<string, HeldRecord[]>();
    for (const row of stored.held) {
      let rows = heldByApp.get(row.app);
      if (!rows) heldByApp.set(row.app, (rows = []));
      rows.push(row);
    }
    for (const record of stored.apps) {
      const app = getApp(state, record.name);
      app.cursor = record.cursor;
      const rows = (heldByApp.get(record.name) ?? []).sort((a, b) => a.id - b.id);
      const ids = new Set<number>();
      for (const row of rows) {
        const held: Held = { msg: routedFrom(row.msg, config), expiresAt: row.exp, done: false };
        app.held.push(held);
        app.heldBytes += held.msg.bytes;
        state.memory.held += held.msg.bytes;
        persister.heldIds.set(held, row.id);
        ids.add(row.id);
        if (row.id >= persister.nextHeld) persister.nextHeld = row.id + 1;
      }
      if (ids.size > 0) persister.storedHeld.set(record.name, ids);
      const head = app.held[0];
      if (head) {
        app.heldTimerAt = head.expiresAt;
        state.timers.push(head.expiresAt, { kind: 'app', app });
      }
    }

    for (const conn of state.conns.values()) {
      if (conn.closing) continue;
      state.liveConns++;
      if (!conn.session) state.unidentifiedConns++;
      conn.timerAt = connDeadline(state, conn);
      state.timers.push(conn.timerAt, { kind: 'conn', conn });
    }

    // Apps rebuilt only from their sessions are already stored by them; the rest
    // must be written once (or dropped when nothing is left of them).
    const storedApps = new Set(stored.apps.map((record) => record.name));
    state.changes!.apps.clear();
    for (const app of [...state.apps.values()]) {
      if (!storedApps.has(app.name)) state.changes!.apps.add(app.name);
      forgetAppIfEmpty(state, app);
    }
    persister.lastMeta = stored.meta ? JSON.stringify({ ...stored.meta, nextOrdinal: state.nextOrdinal, nextHeld: persister.nextHeld }) : '';
    return { state, persister };
  }
}
