// The hub's whole state: connections, sessions indexed by app and by
// (app_name, client_id), held queues, and the deadline heap. Only `step`
// changes it.

import type { AuthFailures, Claims } from './auth.ts';
import type { NodeMessage } from './cluster-messages.ts';
import type { ConnId, CoreConfig } from './io.ts';
import type { MetadataRecord } from './metadata.ts';
import type { Sender, Target, Wire } from './protocol.ts';
import type { MetadataTest } from './query.ts';
import { Ring } from './ring.ts';
import { TimerHeap } from './timers.ts';

/** One routed event, shared by every recipient of a fan-out. */
export interface Routed {
  e: string;
  /**
   * The decoded data while the event is being routed; dropped once routing is
   * done, so a held or buffered event keeps only its JSON text (see routedFrame).
   */
  d?: unknown;
  from: Sender;
  /** The sender's session key, to report NERVE_UNDELIVERABLE; absent for HTTP. */
  senderKey?: string;
  nonce?: string;
  target: Target;
  test?: MetadataTest;
  /** Mode one or client_id: owed to exactly one recipient, never dropped silently. */
  directed: boolean;
  /** `{"op":8,…` without `s` and the closing brace: spliced per recipient. */
  jsonHead: string;
  /** The same frame in msgpack, built on first use. */
  packHead?: Uint8Array;
  /** What the event costs while kept: its JSON text plus its query, counted against every bound. */
  bytes: number;
  /** In a cluster: how many times nodes relayed it to another node for a recipient that had moved on. */
  hops?: number | undefined;
}

/**
 * A replay-buffer entry: the event itself while it is still owed to the
 * session (not yet written) or when it is a fan-out shared by many buffers;
 * otherwise only the JSON text it was written as, `s` included — the very
 * string handed to the socket, one flat string the collector barely looks at.
 */
export type ReplayEntry = Routed | string;

/** Bytes an entry counts against the replay bound. */
export function entryBytes(entry: ReplayEntry): number {
  return typeof entry === 'string' ? entry.length : entry.bytes;
}

/** Who sent an event: a session, or the HTTP route. */
export interface SenderInfo {
  from: Sender;
  /** `from` as JSON, encoded once rather than per dispatch. */
  fromJson: string;
  /** The sender's session key; absent for HTTP. */
  key?: string;
}

export interface Session extends SenderInfo {
  key: string;
  app: AppState;
  clientId: string;
  /** Null-prototype object, so a `__proto__` key is just a key. */
  metadata: Record<string, unknown>;
  /** JSON size of each metadata entry, so the total is kept without re-serializing. */
  metadataSizes: Map<string, number>;
  metadataBytes: number;
  conn: Conn | null;
  /** Position in identify order, for round robin. */
  ordinal: number;
  connectedAt: number;
  /** Last `s` handed out. */
  seq: number;
  /**
   * The most recent events handed to this session, oldest first. Their `s`
   * are consecutive from `replayFirst`, and every one up to `writtenUpTo` was
   * handed to an open socket (not proof of receipt, but no longer owed); the
   * rest are kept whole, to be requeued if the session ends.
   */
  replay: Ring<ReplayEntry>;
  replayFirst: number;
  writtenUpTo: number;
  replayBytes: number;
  /** When a disconnected session stops being resumable. */
  expiresAt: number;
  /** Who created it (see authorityOf): only the same authority, or the password, may take it over. */
  authority: string;
  /** Apps its token may dispatch to; undefined: any. */
  dispatchTo: ReadonlySet<string> | undefined;
  /** Metadata its token fixes. */
  fixedMeta: Record<string, unknown> | undefined;
  /**
   * In a cluster, the node that owns a session of another node, which this
   * node's replica only routes to (no connection, no buffer here); undefined
   * for a session of this node.
   */
  node?: string | undefined;
  /** For another node's session: whether it has an open connection there. */
  remoteConnected?: boolean | undefined;
  /** Handed over by a node that had handled the bus up to this entry: mode-all events up to it are not delivered again. */
  busSeen?: string | undefined;
  /**
   * Adopted from a node that died or was cut off, whose stored copy ended at
   * this `s`: its client may have been sent events after it that the copy
   * never had (written while that node was cut off from Redis).
   */
  adoptedSeq?: number | undefined;
}

export interface Held {
  msg: Routed;
  expiresAt: number;
  done: boolean;
}

export interface AppState {
  name: string;
  /** Sessions of this app in identify order (connected or resumable). */
  sessions: Session[];
  /** The same sessions by client_id: a dispatch to one client finds it without building a key. */
  byClient: Map<string, Session>;
  /** Ordinal of the last mode-one pick. */
  cursor: number;
  held: Held[];
  heldBytes: number;
  /** When the pending timer entry for the head of `held` fires; Infinity if none. */
  heldTimerAt: number;
}

export interface Conn {
  id: ConnId;
  wire: Wire;
  /** JSON without compression: heartbeats take the constant fast path. */
  plain: boolean;
  openedAt: number;
  lastHeartbeat: number;
  session: Session | null;
  /** An error or GO_AWAY close was sent; further frames are ignored. */
  closing: boolean;
  tokens: number;
  tokensAt: number;
  /** When the pending timer entry for this connection fires. */
  timerAt: number;
  /** The peer's address as the host saw it ('' when unknown), for the failed-authentication budget. */
  remote: string;
  /** An IDENTIFY whose token the host is verifying. */
  verifying: Identify | undefined;
  /** When the token the session was identified with expires (Infinity: never, or the password). */
  tokenExpiresAt: number;
  /** Bytes the transport holds for this connection, not yet handed to the OS (reported by the host). */
  backlog: number;
  /**
   * The `s` of the oldest routed event the transport has not handed to the OS
   * yet; Infinity when nothing is pending. Events from here on are not
   * delivered if the connection dies: they are replayed, requeued or reported.
   */
  unflushedFrom: number;
  /** The `s` of the oldest routed event still queued in the host, not yet given to its transport. */
  queuedFrom: number;
  /** In a cluster: the session key its IDENTIFY waits to be claimed or handed over from another node. */
  claimKey?: string | undefined;
  /** The session it held before the server closed it: what its transport then drops is that session's. */
  lastSession: Session | null;
  /** The flush during which it was last written to, and the first `s` written then (see State.flushes). */
  writtenInFlush: number;
  firstSinceFlush: number;
}

/** An IDENTIFY payload that passed its schema. */
export interface Identify {
  app_name: string;
  client_id: string;
  password?: string | undefined;
  token?: string | undefined;
  reconnect?: boolean | undefined;
  metadata?: Record<string, unknown> | undefined;
  seq?: number | undefined;
}

export type TimerRef = { kind: 'conn'; conn: Conn } | { kind: 'session'; session: Session } | { kind: 'app'; app: AppState };

export interface Counters {
  framesIn: number;
  framesOut: number;
  dispatches: number;
  deliveries: number;
  queued: number;
  undeliverable: number;
  errors: Record<number, number>;
  /** Frames and connections refused, by the kind of refusal (see refusalKind). */
  refused: Record<string, number>;
  slowConsumers: number;
}

/** Bytes kept in memory on behalf of clients, each counted against the hub's budget. */
export interface Memory {
  held: number;
  replay: number;
  metadata: number;
}

/**
 * Keys of the sessions and names of the apps a step changed, for hosts that
 * persist state between events (a Durable Object). Absent unless a host asks.
 */
export interface Changes {
  sessions: Set<string>;
  apps: Set<string>;
}

export interface State {
  config: CoreConfig;
  conns: Map<ConnId, Conn>;
  sessions: Map<string, Session>;
  apps: Map<string, AppState>;
  timers: TimerHeap<TimerRef>;
  nextOrdinal: number;
  /** Sessions with an open connection. */
  connectedClients: number;
  /** Connections not closing, and those of them that have not identified yet. */
  liveConns: number;
  unidentifiedConns: number;
  memory: Memory;
  /** Token bucket of the HTTP dispatch route, when a rate limit is set. */
  http: { tokens: number; tokensAt: number };
  /** Connections found too far behind during this step, cut when it ends. */
  slowConns: Conn[];
  /**
   * Flushes the host reported (`flushed` inputs); -1 until the first, for a
   * host that writes every frame as the step returns. What was written since
   * the last one is still queued in the host, not yet handed to the OS.
   */
  flushes: number;
  /** Sessions with held events left to hand over once their connection has drained. */
  heldWaiting: Set<Session>;
  /** Sessions whose replay buffer is over its bounds until the host's next flush (see trimReplay). */
  overBound: Set<Session>;
  /** Failed authentications by remote address. */
  authFailures: Map<string, AuthFailures>;
  draining: boolean;
  counters: Counters;
  changes?: Changes;
  /** Present when this hub is one node of a cluster (CoreConfig.cluster). */
  cluster?: ClusterState;
}

/** An IDENTIFY waiting for its session to be claimed in the cluster, or handed over by the node that owns it. */
export interface PendingClaim {
  conn: Conn;
  identify: Identify;
  claims: Claims | undefined;
  /** The node asked to hand the session over; '' while the claim itself is pending. */
  asked: string;
  attempts: number;
}

export interface ClusterState {
  /** This node's id (the worker id). */
  self: string;
  /** Linked to the cluster: registry changes and relays reach the other nodes. */
  linked: boolean;
  /** Live nodes, this one included. */
  nodes: Set<string>;
  claiming: Map<string, PendingClaim>;
  /** Sessions of this node whose registry entry changed during this step; null: the session ended. */
  changed: Map<string, Session | null>;
  /** Node messages sent and read, for metrics. */
  relayed: number;
  received: number;
  /** The last bus entry handled, and the mode-all events of the most recent entries (see cluster.ts, catchUp). */
  busAt: string;
  recentAll: { at: string; msg: Routed }[];
  /** NERVE_UNDELIVERABLE reports for senders on other nodes, kept while the link is down. */
  owedReports: NodeMessage[];
  /** Sessions of this node another node published as its own since the link last came up: republished once. */
  contested: Set<string>;
}

export function createState(config: CoreConfig): State {
  return {
    config,
    conns: new Map(),
    sessions: new Map(),
    apps: new Map(),
    timers: new TimerHeap(),
    nextOrdinal: 1,
    connectedClients: 0,
    liveConns: 0,
    unidentifiedConns: 0,
    memory: { held: 0, replay: 0, metadata: 0 },
    http: { tokens: config.rateLimit * 2, tokensAt: 0 },
    slowConns: [],
    flushes: -1,
    heldWaiting: new Set(),
    overBound: new Set(),
    authFailures: new Map(),
    draining: false,
    ...(config.cluster
      ? { cluster: { self: config.worker, linked: false, nodes: new Set([config.worker]), claiming: new Map(), changed: new Map(), relayed: 0, received: 0, busAt: '0-0', recentAll: [], owedReports: [], contested: new Set() } }
      : {}),
    counters: { framesIn: 0, framesOut: 0, dispatches: 0, deliveries: 0, queued: 0, undeliverable: 0, errors: {}, refused: {}, slowConsumers: 0 },
  };
}

/** Bytes of the memory budget in use. */
export function memoryUsed(state: State): number {
  const { held, replay, metadata } = state.memory;
  return held + replay + metadata;
}

/** Whether `bytes` more would pass the hub's memory budget. */
export function overBudget(state: State, bytes: number): boolean {
  return memoryUsed(state) + bytes > state.config.maxMemory;
}

/** A connection as it is accepted: nothing sent yet, not identified. */
export function newConn(id: ConnId, wire: Wire, now: number, tokens: number, remote = ''): Conn {
  return {
    id,
    wire,
    plain: wire.format === 'json' && wire.compression === 'none',
    openedAt: now,
    lastHeartbeat: now,
    session: null,
    closing: false,
    tokens,
    tokensAt: now,
    timerAt: 0,
    backlog: 0,
    unflushedFrom: Infinity,
    queuedFrom: Infinity,
    lastSession: null,
    writtenInFlush: -1,
    firstSinceFlush: Infinity,
    remote,
    verifying: undefined,
    tokenExpiresAt: Infinity,
  };
}

/** A session with nothing delivered yet; `seq` is the last `s` it was handed. */
export function newSession(app: AppState, clientId: string, metadata: MetadataRecord, ordinal: number, now: number, seq = 0): Session {
  const from = { app_name: app.name, client_id: clientId };
  return {
    key: sessionKey(app.name, clientId),
    app,
    clientId,
    ...metadata,
    conn: null,
    ordinal,
    connectedAt: now,
    seq,
    from,
    fromJson: JSON.stringify(from),
    replay: new Ring(),
    replayFirst: seq + 1,
    writtenUpTo: seq,
    replayBytes: 0,
    expiresAt: 0,
    authority: 'password',
    dispatchTo: undefined,
    fixedMeta: undefined,
  };
}

export function sessionKey(appName: string, clientId: string): string {
  return `${appName}\u0000${clientId}`;
}

export function touchSession(state: State, session: Session): void {
  state.changes?.sessions.add(session.key);
}

export function touchApp(state: State, app: AppState): void {
  state.changes?.apps.add(app.name);
}

export function getApp(state: State, name: string): AppState {
  let app = state.apps.get(name);
  if (!app) {
    app = { name, sessions: [], byClient: new Map(), cursor: 0, held: [], heldBytes: 0, heldTimerAt: Infinity };
    state.apps.set(name, app);
    touchApp(state, app);
  }
  return app;
}

/** Adds a session to its app, after the others (identify order). */
export function joinApp(session: Session): void {
  session.app.sessions.push(session);
  session.app.byClient.set(session.clientId, session);
}

export function leaveApp(session: Session): void {
  const app = session.app;
  const index = app.sessions.indexOf(session);
  if (index >= 0) app.sessions.splice(index, 1);
  if (app.byClient.get(session.clientId) === session) app.byClient.delete(session.clientId);
}

/** Apps exist only while they have sessions or held messages. */
export function forgetAppIfEmpty(state: State, app: AppState): void {
  if (app.sessions.length === 0 && app.held.length === 0) {
    state.apps.delete(app.name);
    touchApp(state, app);
  }
}

/** Whether a timer entry still means something; superseded entries are skipped. */
export function isLiveTimer(state: State, at: number, ref: TimerRef): boolean {
  switch (ref.kind) {
    case 'conn':
      return state.conns.get(ref.conn.id) === ref.conn && !ref.conn.closing && at === ref.conn.timerAt;
    case 'session':
      return state.sessions.get(ref.session.key) === ref.session && ref.session.conn === null && at === ref.session.expiresAt;
    case 'app':
      return state.apps.get(ref.app.name) === ref.app && at === ref.app.heldTimerAt;
  }
}

/**
 * The earliest time the host must feed a `tick`, if any. Superseded entries at
 * the top are dropped first, so a host whose timer wakes a sleeping process
 * (a Durable Object alarm) is not woken for nothing.
 */
export function nextDeadline(state: State): number | undefined {
  for (let top = state.timers.peekEntry(); top; top = state.timers.peekEntry()) {
    if (isLiveTimer(state, top.at, top.ref)) return top.at;
    state.timers.popDue(top.at);
  }
  return undefined;
}
