// One node of a cluster: the replica of other nodes' sessions this node routes
// to, the node messages it relays and handles (registry entries, events for a
// session elsewhere, mode-all on the bus, release/handoff of a session a client
// resumes on another node, adoption of a dead node's state) and the claims
// that keep (app_name, client_id) unique across nodes. docs/cluster.md has the
// design; nothing here does I/O: the host's link carries `relay` and `claim`.

import type { Claims } from './auth.ts';
import type { NodeMessage, RegistryEntry } from './cluster-messages.ts';
import { clearReplay, deliver, deliverHeld, forgetUnflushed, hold, insertHeld, matches, reroute, routedFromText, undeliverable } from './delivery.ts';
import type { Output } from './io.ts';
import { emptyMetadata, mergeMetadata } from './metadata.ts';
import { relayedRecord, replayRecords, routedFrom, sessionFromRecord, type ReplayRecord, type SessionRecord, type Stored } from './persist.ts';
import { Close, Op, TAKEN_OVER_TEXT } from './protocol.ts';
import {
  forgetAppIfEmpty,
  getApp,
  joinApp,
  leaveApp,
  newSession,
  sessionKey,
  touchSession,
  type ClusterState,
  type Conn,
  type PendingClaim,
  type Identify,
  entryBytes,
  type ReplayEntry,
  type Routed,
  type Session,
  type State,
} from './state.ts';
import { admitOwned, detach, dropLocalSession, keepResumable, reject } from './step.ts';
import { fail, send } from './wire.ts';

/** Relays an event may take chasing a session that keeps moving before it is held where it is. */
const MAX_HOPS = 3;
/** Times an IDENTIFY asks another owner before giving up with 4503. */
const MAX_CLAIM_ATTEMPTS = 5;
/**
 * Mode-all events kept from the latest bus entries, for a session handed over
 * by a node that had read less of the bus than this one (see catchUp). Nodes
 * read the bus within milliseconds of each other; this covers seconds of
 * heavy broadcast traffic.
 */
const RECENT_ALL_MAX = 4096;

/** Orders Redis stream ids (`ms-seq`). */
export function compareIds(a: string, b: string): number {
  const [aMs = 0, aSeq = 0] = a.split('-').map(Number);
  const [bMs = 0, bSeq = 0] = b.split('-').map(Number);
  return aMs !== bMs ? aMs - bMs : aSeq - bSeq;
}

function relay(cluster: ClusterState, out: Output[], to: string | undefined, msg: NodeMessage): void {
  cluster.relayed++;
  out.push({ type: 'relay', to, msg });
}

/** Whether a session can take a mode-one event now: connected here, or connected on a live node we can reach. */
export function isReachable(state: State, session: Session): boolean {
  if (session.node === undefined) return session.conn !== null;
  const cluster = state.cluster!;
  return cluster.linked && session.remoteConnected === true && cluster.nodes.has(session.node);
}

/** Whether routing may hand an event to this session: any local one, a remote one only while linked. */
export function canHandTo(state: State, session: Session): boolean {
  return session.node === undefined || state.cluster!.linked;
}

/** Hands an event to the node that owns `session`; that node now owes it to the session. */
export function relayEvent(state: State, out: Output[], session: Session, msg: Routed): void {
  state.counters.deliveries++;
  // Even while this node waits for the session to be handed over here: an
  // event kept aside in memory would be lost if this node died meanwhile.
  relay(state.cluster!, out, session.node, { t: 'event', to: session.key, msg: relayedRecord(msg), hops: msg.hops ?? 0 });
}

/** The connection of a waiting IDENTIFY closed: the claim goes on without it (a handoff still lands here). */
export function abandonClaim(state: State, conn: Conn): void {
  const cluster = state.cluster!;
  const key = conn.claimKey!;
  if (cluster.claiming.get(key)?.conn === conn) cluster.claiming.delete(key);
}

/** Mode all while linked: every node (this one too) delivers it from the bus, so all recipients see one order. */
export function relayAll(state: State, out: Output[], msg: Routed): void {
  relay(state.cluster!, out, undefined, { t: 'all', msg: relayedRecord(msg) });
}

/** Reports kept while the link is down, at most; older ones are dropped first (and counted in the log). */
const OWED_REPORTS_MAX = 10_000;

/** NERVE_UNDELIVERABLE for a sender that lives on another node; kept until the link is back if it is down. */
export function relayUndeliverable(state: State, out: Output[], sender: Session, msg: Routed, reason: string): void {
  const cluster = state.cluster!;
  const report: NodeMessage = { t: 'undeliverable', to: sender.key, e: msg.e, reason, nonce: msg.nonce };
  if (cluster.linked) return relay(cluster, out, sender.node, report);
  cluster.owedReports.push(report);
  if (cluster.owedReports.length > OWED_REPORTS_MAX) cluster.owedReports.shift();
}

// ── the registry ───────────────────────────────────────────────────────────

/** A local session's registry entry changed (identified, metadata, connected or not): published as the step ends. */
export function noteChanged(state: State, session: Session): void {
  if (state.cluster && session.node === undefined) state.cluster.changed.set(session.key, session);
}

/** A local session ended: its entry is withdrawn as the step ends. */
export function noteEnded(state: State, session: Session): void {
  if (state.cluster && session.node === undefined) state.cluster.changed.set(session.key, null);
}

function entryOf(state: State, session: Session): RegistryEntry {
  return {
    app: session.app.name,
    id: session.clientId,
    node: state.cluster!.self,
    connected: session.conn !== null,
    md: session.metadata,
    at: session.connectedAt,
    au: session.authority,
  };
}

/** Publishes the registry changes of this step on the bus (while unlinked, the resync on link-up publishes all). */
export function publishChanges(state: State, out: Output[]): void {
  const cluster = state.cluster!;
  if (cluster.linked) {
    for (const [key, session] of cluster.changed) {
      const live = state.sessions.get(key);
      if (session !== null && live === session) relay(cluster, out, undefined, { t: 'up', ...entryOf(state, session) });
      else if (live === undefined) {
        const [app, id] = splitKey(key);
        relay(cluster, out, undefined, { t: 'down', app, id, node: cluster.self });
        // The identity is free again: the next node to claim it need not ask this one.
        out.push({ type: 'claim', app, client: id, node: '', expected: cluster.self, answer: false });
      }
    }
  }
  cluster.changed.clear();
}

function splitKey(key: string): [string, string] {
  const at = key.indexOf('\u0000');
  return [key.slice(0, at), key.slice(at + 1)];
}

/** Adds or updates another node's session in this node's replica. */
function upsertRemote(state: State, out: Output[], entry: RegistryEntry, now: number): void {
  const key = sessionKey(entry.app, entry.id);
  let session = state.sessions.get(key);
  if (session && session.node === undefined) {
    // Ours by our claim; the other node's entry is stale (it is about to be
    // fenced): say again that it is ours, so no replica keeps the stale one —
    // once, so two nodes that both still hold it do not answer each other forever.
    const cluster = state.cluster!;
    if (!cluster.contested.has(key)) {
      cluster.contested.add(key);
      noteChanged(state, session);
    }
    return;
  }
  const metadata = emptyMetadata();
  mergeMetadata(metadata, entry.md, Infinity);
  if (!session) {
    session = newSession(getApp(state, entry.app), entry.id, metadata, state.nextOrdinal++, entry.at);
    state.sessions.set(key, session);
    joinApp(session);
  } else {
    session.metadata = metadata.metadata;
    session.metadataSizes = metadata.metadataSizes;
    session.metadataBytes = metadata.metadataBytes;
  }
  session.node = entry.node;
  session.remoteConnected = entry.connected;
  session.connectedAt = entry.at;
  session.authority = entry.au;
  const pending = state.cluster!.claiming.get(key);
  if (pending && pending.asked !== '' && pending.asked !== entry.node) askOwner(state, out, key, pending, entry.node, now);
  // Events held here for no one may be this session's now.
  if (isReachable(state, session)) deliverHeld(state, out, session);
}

function removeRemote(state: State, session: Session): void {
  state.sessions.delete(session.key);
  leaveApp(session);
  forgetAppIfEmpty(state, session.app);
}

// ── claims, release and handoff ────────────────────────────────────────────

/**
 * An IDENTIFY for a session this node does not own (or a new one while
 * linked): the cluster must agree first. A session of another node is asked
 * for with `release`; a new one is claimed. The connection waits, without a
 * session, under its identify deadline.
 */
export function claimSession(state: State, out: Output[], conn: Conn, d: Identify, claims: Claims | undefined, existing: Session | undefined, now: number): void {
  const cluster = state.cluster!;
  const key = sessionKey(d.app_name, d.client_id);
  if (!cluster.linked) {
    return reject(state, out, conn, Close.AT_CAPACITY, `IDENTIFY: ${d.app_name}/${d.client_id} lives on node ${existing!.node}, which this node cannot reach while its cluster link is down; retry`, now);
  }
  if (cluster.claiming.has(key)) {
    return reject(state, out, conn, Close.CONFLICT, `IDENTIFY: another IDENTIFY for ${d.app_name}/${d.client_id} is in progress`, now);
  }
  const pending: PendingClaim = { conn, identify: d, claims, asked: '', attempts: 0 };
  cluster.claiming.set(key, pending);
  conn.claimKey = key;
  if (existing?.node !== undefined) askOwner(state, out, key, pending, existing.node, now);
  else out.push({ type: 'claim', app: d.app_name, client: d.client_id, node: cluster.self, expected: '', answer: true });
}

function askOwner(state: State, out: Output[], key: string, pending: PendingClaim, node: string, now: number): void {
  const cluster = state.cluster!;
  if (++pending.attempts > MAX_CLAIM_ATTEMPTS) {
    return giveUp(state, out, key, `the cluster could not hand ${pending.identify.app_name}/${pending.identify.client_id} over; retry`, now);
  }
  pending.asked = node;
  relay(cluster, out, node, { t: 'release', key, node: cluster.self, reconnect: pending.identify.reconnect === true });
}

function giveUp(state: State, out: Output[], key: string, reason: string, now: number): void {
  const pending = state.cluster!.claiming.get(key);
  if (!pending) return;
  state.cluster!.claiming.delete(key);
  pending.conn.claimKey = undefined;
  if (isWaiting(state, pending.conn)) reject(state, out, pending.conn, Close.AT_CAPACITY, `IDENTIFY: ${reason}`, now);
}

function isWaiting(state: State, conn: Conn): boolean {
  return state.conns.get(conn.id) === conn && !conn.closing;
}

/** The claim is settled and the session (if any) is this node's: the IDENTIFY goes on. */
function proceed(state: State, out: Output[], key: string, now: number): void {
  const cluster = state.cluster!;
  const pending = cluster.claiming.get(key);
  if (!pending) return;
  cluster.claiming.delete(key);
  pending.conn.claimKey = undefined;
  if (isWaiting(state, pending.conn)) admitOwned(state, out, pending.conn, pending.identify, pending.claims, now);
}

/** The link's answer to a claim. */
export function claimed(state: State, out: Output[], key: string, answer: string | undefined, now: number): void {
  const cluster = state.cluster!;
  const owner = answer === '' ? undefined : answer;
  const pending = cluster.claiming.get(key);
  if (pending && pending.asked === '') {
    if (owner === undefined || owner === cluster.self) return proceed(state, out, key, now);
    return askOwner(state, out, key, pending, owner, now);
  }
  // A re-claim after the link came back: someone else owns it now, so this node must stop serving it.
  const session = state.sessions.get(key);
  if (owner !== undefined && owner !== cluster.self && session && session.node === undefined) fence(state, out, session, owner);
  if (owner === undefined && (!session || session.node !== undefined)) {
    // Claimed for an IDENTIFY whose connection went away meanwhile: the identity is free again.
    const [app, client] = splitKey(key);
    out.push({ type: 'claim', app, client, node: '', expected: cluster.self, answer: false });
  }
}

function fence(state: State, out: Output[], session: Session, owner: string): void {
  const conn = session.conn;
  if (conn) {
    fail(state, out, conn, Close.CONFLICT, TAKEN_OVER_TEXT);
    detach(state, conn, session);
  }
  dropLocalSession(state, session);
  state.cluster!.changed.delete(session.key);
  out.push({ type: 'log', level: 'warn', msg: 'session owned by another node: dropped here', fields: { app_name: session.app.name, client_id: session.clientId, owner } });
}

/** Another node has a client identifying as one of our sessions. */
function release(state: State, out: Output[], key: string, asker: string, reconnect: boolean, now: number): void {
  const cluster = state.cluster!;
  const session = state.sessions.get(key);
  if (!session) return relay(cluster, out, asker, { t: 'handoff', key });
  if (session.node !== undefined) {
    return relay(cluster, out, asker, session.node === asker ? { t: 'handoff', key } : { t: 'handoff', key, moved: session.node });
  }
  // A release this node sent to a node it has since adopted: the session is already here.
  if (asker === cluster.self) return proceed(state, out, key, now);
  if (session.conn && !reconnect) return relay(cluster, out, asker, { t: 'handoff', key, refused: 'connected' });
  const conn = session.conn;
  if (conn) {
    fail(state, out, conn, Close.CONFLICT, TAKEN_OVER_TEXT);
    // Whatever the transport still held is not known to have arrived: the buffer covers it.
    forgetUnflushed(state, conn, session);
    detach(state, conn, session);
  }
  const record: SessionRecord = handoffRecord(session, now);
  const replay: ReplayRecord[] = replayRecords(session);
  // Bus entries it had not handled yet for the session are the new owner's: that is why it passes its position.
  const bus = session.busSeen !== undefined && compareIds(session.busSeen, cluster.busAt) > 0 ? session.busSeen : cluster.busAt;
  dropLocalSession(state, session);
  cluster.changed.delete(key);
  // Until the new owner publishes, events for the session go to it.
  upsertRemote(state, out, { app: record.app, id: record.id, node: asker, connected: false, md: record.md, at: record.at, au: record.au ?? 'password' }, now);
  out.push({ type: 'claim', app: record.app, client: record.id, node: asker, expected: cluster.self, answer: false });
  const adoptedSeq = session.adoptedSeq;
  relay(cluster, out, asker, { t: 'handoff', key, session: record, replay, bus, ...(adoptedSeq !== undefined ? { adoptedSeq } : {}) });
  out.push({ type: 'log', level: 'info', msg: 'session handed over', fields: { app_name: record.app, client_id: record.id, to: asker } });
}

function handoffRecord(session: Session, now: number): SessionRecord {
  return {
    ord: session.ordinal,
    app: session.app.name,
    id: session.clientId,
    md: { ...session.metadata },
    conn: null,
    at: session.connectedAt,
    seq: session.seq,
    exp: now,
    wr: session.writtenUpTo,
    ...(session.authority !== 'password' ? { au: session.authority } : {}),
    ...(session.dispatchTo !== undefined ? { dt: [...session.dispatchTo] } : {}),
    ...(session.fixedMeta !== undefined ? { fm: session.fixedMeta } : {}),
  };
}

/**
 * Makes a session handed over or adopted from another node this node's,
 * waiting to be resumed. `busSeen`: the bus entry the old owner had handled
 * it up to; mode-all events on either side of it are neither lost nor repeated.
 */
function importSession(state: State, out: Output[], record: SessionRecord, rows: ReplayRecord[], now: number, busSeen?: string): Session {
  const key = sessionKey(record.app, record.id);
  const existing = state.sessions.get(key);
  if (existing) {
    if (existing.node === undefined) {
      // A newer session of the same identity started here meanwhile: the old
      // one ends unresumed, and gives back what it was owed, as any would.
      requeueOwed(state, out, existing, record, rows, now);
      return existing;
    }
    removeRemote(state, existing);
  }
  const sorted = [...rows].sort((a, b) => a.s - b.s);
  const session = sessionFromRecord(state, record, sorted, state.nextOrdinal++);
  if (busSeen !== undefined) {
    const cluster = state.cluster!;
    if (compareIds(busSeen, cluster.busAt) > 0) session.busSeen = busSeen;
    else catchUp(state, out, session, busSeen);
  }
  touchSession(state, session);
  keepResumable(state, out, session, Math.max(now, record.exp - state.config.resumeWindow));
  noteChanged(state, session);
  return session;
}

/** The directed events a superseded session record was handed but never written: held again for its app. */
function requeueOwed(state: State, out: Output[], current: Session, record: SessionRecord, rows: ReplayRecord[], now: number): void {
  for (const row of [...rows].sort((a, b) => a.s - b.s)) {
    if (row.s <= record.wr) continue;
    const msg = row.msg ? routedFrom(row.msg, state.config) : routedFromText(current, row.text!);
    if (msg.directed) hold(state, out, msg, now);
  }
  if (current.conn !== null) deliverHeld(state, out, current);
}

/**
 * This node has read further on the bus than the node that handed the
 * session over: the mode-all events in between reached neither, so they are
 * delivered now, before anything newer.
 */
function catchUp(state: State, out: Output[], session: Session, after: string): void {
  const cluster = state.cluster!;
  const recent = cluster.recentAll;
  if (compareIds(cluster.busAt, after) > 0 && (recent.length === 0 || compareIds(recent[0]!.at, after) > 0) && recent.length >= RECENT_ALL_MAX) {
    out.push({ type: 'log', level: 'warn', msg: 'mode-all events older than those kept were missed by a session handed over', fields: { app_name: session.app.name, client_id: session.clientId } });
  }
  for (const { at, msg } of recent) {
    if (compareIds(at, after) <= 0 || msg.target.app_name !== session.app.name || msg.senderKey === session.key) continue;
    if (matches(session, msg)) deliver(state, out, session, msg);
  }
}

function handoff(state: State, out: Output[], from: string, msg: Extract<NodeMessage, { t: 'handoff' }>, now: number): void {
  const cluster = state.cluster!;
  const key = msg.key;
  if (msg.session) {
    const session = importSession(state, out, msg.session, msg.replay ?? [], now, msg.bus ?? cluster.busAt);
    if (msg.adoptedSeq !== undefined) session.adoptedSeq = msg.adoptedSeq;
  }
  const pending = cluster.claiming.get(key);
  if (!pending) return;
  if (msg.refused !== undefined) {
    cluster.claiming.delete(key);
    pending.conn.claimKey = undefined;
    const d = pending.identify;
    if (isWaiting(state, pending.conn)) reject(state, out, pending.conn, Close.CONFLICT, `IDENTIFY: ${d.app_name}/${d.client_id} is already connected`, now);
    return;
  }
  if (msg.moved !== undefined && msg.moved !== cluster.self) return askOwner(state, out, key, pending, msg.moved, now);
  if (msg.session) return proceed(state, out, key, now);
  // The node asked has no such session (it ended there): claim it from that node.
  const [app, client] = splitKey(key);
  const stale = state.sessions.get(key);
  if (stale && stale.node !== undefined) removeRemote(state, stale);
  const asked = pending.asked;
  pending.asked = '';
  out.push({ type: 'claim', app, client, node: cluster.self, expected: asked === '' ? from : asked, answer: true });
}

// ── node messages ──────────────────────────────────────────────────────────

export function handleNodeMessages(state: State, out: Output[], from: string, msgs: NodeMessage[], now: number, at?: string): void {
  const cluster = state.cluster!;
  for (const msg of msgs) {
    cluster.received++;
    handle(state, out, from, msg, now, undefined, at);
  }
  if (at !== undefined && compareIds(at, cluster.busAt) > 0) cluster.busAt = at;
}

function handle(state: State, out: Output[], from: string, msg: NodeMessage, now: number, only?: ReadonlySet<Session>, at?: string): void {
  const cluster = state.cluster!;
  switch (msg.t) {
    case 'up':
      if (msg.node !== cluster.self) upsertRemote(state, out, msg, now);
      return;
    case 'down': {
      const session = state.sessions.get(sessionKey(msg.app, msg.id));
      if (session && session.node === msg.node) removeRemote(state, session);
      return;
    }
    case 'reset':
      if (msg.node !== cluster.self) {
        for (const session of [...state.sessions.values()]) if (session.node === msg.node) removeRemote(state, session);
      }
      return;
    case 'all':
      return deliverAllHere(state, out, routedFrom(msg.msg, state.config), only, at);
    case 'event': {
      const event = routedFrom(msg.msg, state.config);
      event.hops = msg.hops;
      return deliverRelayed(state, out, msg.to, event, now);
    }
    case 'undeliverable': {
      const sender = state.sessions.get(msg.to);
      if (!sender) return;
      if (sender.node !== undefined) {
        // The sender moved on: the report follows it once, never round in circles.
        if (sender.node !== from && msg.forwarded !== true) relay(cluster, out, sender.node, { ...msg, forwarded: true });
        return;
      }
      if (!sender.conn) return;
      const frame: Record<string, unknown> = { op: Op.DISPATCH, e: 'NERVE_UNDELIVERABLE', d: { reason: msg.reason, e: msg.e } };
      if (msg.nonce !== undefined) frame.nonce = msg.nonce;
      send(state, out, sender.conn, frame);
      return;
    }
    case 'release':
      return release(state, out, msg.key, msg.node, msg.reconnect, now);
    case 'handoff':
      return handoff(state, out, from, msg, now);
  }
}

/**
 * A mode-all event read back from the bus: this node's matching sessions get
 * it, except one whose old owner had handled this entry already (busSeen).
 */
function deliverAllHere(state: State, out: Output[], msg: Routed, only?: ReadonlySet<Session>, at?: string): void {
  if (at !== undefined && only === undefined) {
    const recent = state.cluster!.recentAll;
    recent.push({ at, msg });
    if (recent.length > RECENT_ALL_MAX) recent.shift();
  }
  const app = state.apps.get(msg.target.app_name);
  if (!app) return;
  for (const session of [...app.sessions]) {
    if (session.node !== undefined || session.key === msg.senderKey) continue;
    if (only && !only.has(session)) continue;
    if (at !== undefined && session.busSeen !== undefined && compareIds(at, session.busSeen) <= 0) continue;
    if (matches(session, msg)) deliver(state, out, session, msg);
  }
}

/** An event another node relayed for `to`: delivered if the session is here, else routed on from here. */
function deliverRelayed(state: State, out: Output[], to: string, msg: Routed, now: number): void {
  const session = state.sessions.get(to);
  if (session && session.node === undefined) {
    if (!deliver(state, out, session, msg)) undeliverable(state, out, msg, `hub is full: its memory budget of ${state.config.maxMemory} bytes is in use`);
    return;
  }
  msg.hops = (msg.hops ?? 0) + 1;
  reroute(state, out, msg, now);
}

export function tooManyHops(msg: Routed): boolean {
  return (msg.hops ?? 0) >= MAX_HOPS;
}

// ── the link and adoption ──────────────────────────────────────────────────

/** The link went up or down, or the live nodes changed. */
export function linkChanged(state: State, out: Output[], up: boolean, nodes: string[], now: number): void {
  const cluster = state.cluster!;
  const wasLinked = cluster.linked;
  const joined = nodes.filter((node) => !cluster.nodes.has(node));
  cluster.linked = up;
  cluster.nodes = new Set(nodes);
  cluster.nodes.add(cluster.self);
  if (!up) {
    for (const key of [...cluster.claiming.keys()]) giveUp(state, out, key, 'the cluster link was lost; retry', now);
    return;
  }
  const owed = cluster.owedReports.splice(0);
  for (const report of owed) {
    if (report.t !== 'undeliverable') continue;
    const sender = state.sessions.get(report.to);
    if (sender?.node !== undefined) relay(cluster, out, sender.node, report);
  }
  if (!wasLinked) {
    cluster.contested.clear();
    // Everyone may have missed what this node did meanwhile (or Redis forgot it): say it all again.
    relay(cluster, out, undefined, { t: 'reset', node: cluster.self });
    for (const session of state.sessions.values()) {
      if (session.node !== undefined) continue;
      relay(cluster, out, undefined, { t: 'up', ...entryOf(state, session) });
      out.push({ type: 'claim', app: session.app.name, client: session.clientId, node: cluster.self, expected: cluster.self, answer: true });
    }
    cluster.changed.clear();
  } else if (joined.length > 0) {
    // A node that joins learns the registry from the bus; the bus may have
    // been trimmed since an entry was last published, so every node says it again.
    for (const session of state.sessions.values()) if (session.node === undefined) noteChanged(state, session);
  }
  // Held events may have a recipient on a node that was out of reach.
  for (const app of [...state.apps.values()]) {
    if (app.held.length === 0) continue;
    for (const session of [...app.sessions]) if (session.node !== undefined && isReachable(state, session)) deliverHeld(state, out, session);
  }
}

/** A dead node's state, claimed for this node: its sessions become ours (resumable), its held events ours to hold. */
export function adopt(state: State, out: Output[], node: string, stored: Stored, inbox: NodeMessage[], bus: { at: string; msgs: NodeMessage[] }[], now: number): void {
  const cluster = state.cluster!;
  const rows = new Map<number, ReplayRecord[]>();
  for (const row of stored.replay) {
    let list = rows.get(row.ord);
    if (!list) rows.set(row.ord, (list = []));
    list.push(row);
  }
  // Entries the dead node published for sessions not adopted here (ended, or claimed elsewhere) go.
  handle(state, out, node, { t: 'reset', node }, now);
  relay(cluster, out, undefined, { t: 'reset', node });
  const adopted = new Set<Session>();
  for (const record of stored.sessions) {
    // A dead node's connections are gone: its sessions are resumable from now.
    const resumable = record.conn === null ? record : { ...record, exp: now + state.config.resumeWindow };
    const session = importSession(state, out, resumable, rows.get(record.ord) ?? [], now);
    session.adoptedSeq = session.seq;
    adopted.add(session);
  }
  for (const record of stored.held) {
    const msg = routedFrom(record.msg, state.config);
    if (record.exp <= now) undeliverable(state, out, msg, `no connected client of ${msg.target.app_name} within ${state.config.queueTtl} ms`);
    else insertHeld(state, msg, record.exp);
  }
  // Mode-all events the dead node never read go to its sessions first, before
  // a release waiting in its inbox can hand one of them on.
  for (const entry of bus) {
    for (const msg of entry.msgs) if (msg.t === 'all') handle(state, out, node, msg, now, adopted, entry.at);
  }
  const before = new Set(state.sessions.values());
  for (const msg of inbox) handle(state, out, node, msg, now);
  // Sessions handed to the dead node in messages it never read are this node's now, in the owners hash too.
  for (const session of state.sessions.values()) {
    if (session.node === undefined && !before.has(session)) {
      out.push({ type: 'claim', app: session.app.name, client: session.clientId, node: cluster.self, expected: node, answer: false });
    }
  }
  for (const [key, pending] of [...cluster.claiming]) {
    const session = state.sessions.get(key);
    if (pending.asked === node && session && session.node === undefined) proceed(state, out, key, now);
  }
  for (const app of [...state.apps.values()]) {
    if (app.held.length === 0) continue;
    for (const session of [...app.sessions]) if (isReachable(state, session)) deliverHeld(state, out, session);
  }
  out.push({ type: 'log', level: 'warn', msg: 'adopted a node that left or died', fields: { node, sessions: adopted.size, held: stored.held.length } });
}


/**
 * A client resumes an adopted session with a `seq` past what the dead node
 * had stored: that node wrote events to it while cut off from Redis. What
 * this node has buffered since the adoption is sent again numbered after the
 * client's `seq` — possibly repeating an event it had, never losing one.
 */
export function renumberAfter(state: State, session: Session, seq: number): void {
  const from = Math.max(session.adoptedSeq ?? session.seq, session.replayFirst - 1);
  const kept: ReplayEntry[] = [];
  for (let s = from + 1; s <= session.seq; s++) kept.push(session.replay.at(s - session.replayFirst));
  clearReplay(state, session);
  session.seq = seq;
  session.replayFirst = seq + 1;
  session.writtenUpTo = seq;
  for (const entry of kept) {
    const s = ++session.seq;
    const renumbered = typeof entry === 'string' ? entry.replace(/,"s":\d+\}$/, `,"s":${s}}`) : entry;
    session.replay.push(renumbered);
    session.replayBytes += entryBytes(renumbered);
    state.memory.replay += entryBytes(renumbered);
  }
  session.adoptedSeq = undefined;
  touchSession(state, session);
}
