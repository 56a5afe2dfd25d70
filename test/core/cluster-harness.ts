// An in-memory cluster for core tests: several cores in one process, joined
// the way the Redis link joins them (docs/cluster.md, "What lives in Redis"
// and "How it works"), under a virtual clock:
//
// - one bus stream and one inbox stream per node, each an ordered log that
//   every node reads through its own cursors; everything a node relays in one
//   turn becomes one entry per destination;
// - the owners hash, with the compare-and-set of the `claim` output;
// - per-node storage (the core's Persister writing into a MemoryStorage), written
//   together with the stream cursors at the end of each turn; a linked
//   node's frames reach their clients only after that write (a clustered
//   host writes to its sockets only what is stored);
// - while a node's link is down it reads nothing and stores nothing, its
//   ACKs go out at once (there is no storage to wait for), and replies to
//   its claims that were on their way are lost;
// - a crash loses the node's open turn and drops its sockets; adoption
//   (under a reap lock) claims what the dead node stored, see `adopt`;
// - connections whose frames are decoded and handed to `Client`s, which keep
//   track of what they received the way a real client does (by `s`).
//
// Nothing happens unless the test says so: which node reads which stream
// when, when a claim is answered, when a turn ends, and when a node crashes,
// drains, loses its link, is declared dead or adopts another.

import { createState, DEFAULT_LIMITS, listClients, nextDeadline, step, type ClientInfo, type Input, type Limits, type Output, type State } from '../../src/core/index.ts';
import type { NodeMessage } from '../../src/core/cluster-messages.ts';
import { Persister, type RoutedRecord, type Stored } from '../../src/core/persist.ts';
import { MemoryStorage } from '../../src/host/storage.ts';
import { JSON_WIRE } from './harness.ts';

export const PASSWORD = 'pw';
export const BUS = 'bus';

export function inboxOf(node: string): string {
  return `inbox:${node}`;
}

export type Frame = Record<string, unknown>;

/** What a connection's peer gets: a frame, or the close that ends it. */
export type Delivery = { frame: Frame } | { close: number; reason: string };

interface StreamEntry {
  from: string;
  msgs: NodeMessage[];
}

type ClaimOutput = Extract<Output, { type: 'claim' }>;

/** What one turn of a node holds back until its storage write: relays, claims, and frames behind a NERVE_ACK. */
interface Turn {
  id: number;
  relays: Map<string, NodeMessage[]>;
  claims: ClaimOutput[];
  waiting: Map<number, Delivery[]>;
  /** Nodes adopted in this turn: reaped only once it is stored. */
  adopted: string[];
  /** Frames were written in this turn: the host reports `flushed` once they have left it. */
  wrote: boolean;
}

export class ClusterNode {
  state: State;
  readonly persister = new Persister();
  /** The node's keys in Redis: its state as of its last stored turn, and the cursors stored with it. */
  readonly storage = new MemoryStorage();
  storedCursors = new Map<string, number>();
  /** Entries read so far, per stream this node reads (the bus, its inbox, inboxes of nodes it adopted). */
  readonly cursors = new Map<string, number>();
  /** up: running; draining: shut down, still answering other nodes; gone: crashed or left. */
  status: 'up' | 'draining' | 'gone' = 'up';
  linked = false;
  /** Counted among the live nodes the others are told about. */
  member = true;
  /** Gone, and its adoption is stored by the node that adopted it: its keys may go. */
  reaped = false;
  /** The node holding its reap lock: no other node adopts it while that one lives. */
  reapLock: string | undefined;
  turn: Turn | undefined;
  /** A turn the test keeps open across several inputs (see Cluster.beginTurn). */
  holding = false;
  /** Answers to `claim` outputs, in the order Redis gave them, not yet fed back. */
  readonly claimAnswers: { key: string; owner: string | undefined }[] = [];
  readonly logs: Extract<Output, { type: 'log' }>[] = [];
  readonly http: Output[] = [];

  constructor(
    readonly id: string,
    limits: Partial<Limits>,
  ) {
    this.state = createState({ ...DEFAULT_LIMITS, ...limits, worker: id, password: PASSWORD, cluster: true });
    this.persister.track(this.state);
    this.cursors.set(inboxOf(id), 0);
    this.cursors.set(BUS, 0);
  }

  get alive(): boolean {
    return this.status !== 'gone';
  }
}

export class Connection {
  closed: { code: number; reason: string; dropped: boolean; byClient?: boolean } | undefined;
  welcomed = false;
  /** Its IDENTIFY asked to resume: a WELCOME without NERVE_SESSION then does not mean a new session. */
  asksToResume = false;
  /** The last `s` seen on this connection: it must only grow. */
  lastS = 0;
  listener: ((conn: Connection, delivery: Delivery, turn: number) => void) | undefined;
  readonly deliveries: Delivery[] = [];

  constructor(
    readonly id: number,
    readonly node: string,
  ) {}

  get open(): boolean {
    return this.closed === undefined;
  }

  /** The frames received, in order. */
  get frames(): Frame[] {
    return this.deliveries.flatMap((delivery) => ('frame' in delivery ? [delivery.frame] : []));
  }
}

/** Rounds of reading and answering after which a cluster that still has work is called stuck. */
const SETTLE_LIMIT = 10_000;

export class Cluster {
  now = 1_000;
  readonly nodes = new Map<string, ClusterNode>();
  readonly streams = new Map<string, StreamEntry[]>([[BUS, []]]);
  /** The owners hash: session key → owning node. */
  readonly owners = new Map<string, string>();
  readonly conns = new Map<number, Connection>();
  /** The data of events that reached a node their recipient had moved away from (sent on from there, or read by its adopter). */
  readonly rerouted = new Set<string>();
  /** Turns that ended in a crash: their frames reached clients, their changes never reached storage. */
  readonly lostTurns = new Set<number>();
  /** Anything a faithful core must never do: throw, log an error, relay or claim while unlinked. */
  readonly violations: string[] = [];
  private nextConn = 1;
  private nextTurn = 1;
  private nextRequest = 1;

  constructor(
    ids: string[],
    readonly limits: Partial<Limits> = {},
  ) {
    for (const id of ids) this.nodes.set(id, new ClusterNode(id, limits));
    for (const id of ids) this.streams.set(inboxOf(id), []);
    for (const id of ids) {
      const node = this.node(id);
      node.linked = true;
      this.input(id, { type: 'link', now: this.now, up: true, nodes: this.members() });
    }
  }

  node(id: string): ClusterNode {
    const node = this.nodes.get(id);
    if (!node) throw new Error(`no node ${id}`);
    return node;
  }

  /**
   * Nodes gone (crashed or left) or draining whose adoption is not stored
   * yet: an adopter that dies before storing its adoption leaves the dead
   * node's keys and its entry in the nodes hash behind, to be adopted again.
   */
  unreaped(): string[] {
    return [...this.nodes.values()].filter((node) => node.status !== 'up' && !node.reaped && !this.locked(node)).map((node) => node.id);
  }

  private locked(node: ClusterNode): boolean {
    return node.reapLock !== undefined && this.node(node.reapLock).alive;
  }

  /** Live nodes as the link reports them: joined, not declared dead. */
  members(): string[] {
    return [...this.nodes.values()].filter((node) => node.member).map((node) => node.id);
  }

  stream(name: string): StreamEntry[] {
    let entries = this.streams.get(name);
    if (!entries) this.streams.set(name, (entries = []));
    return entries;
  }

  // ── stepping ─────────────────────────────────────────────────────────────

  /** Feeds one input to a node, in its current turn; the turn ends after it unless the test holds it open. */
  input(id: string, input: Input): void {
    const node = this.node(id);
    if (!node.alive) throw new Error(`node ${id} is gone`);
    this.run(node, input);
    if (!node.holding) this.endTurn(id);
  }

  /** Keeps a node's turn open across inputs: nothing it relays, claims or stores happens until endTurn. */
  beginTurn(id: string): void {
    this.node(id).holding = true;
  }

  /** The end of a node's turn: its state and cursors are stored, its relays and claims reach Redis, its ACKs go out. */
  endTurn(id: string): void {
    const node = this.node(id);
    node.holding = false;
    const turn = node.turn;
    if (!turn) return;
    node.turn = undefined;
    if (node.linked) {
      const changes = node.persister.flush(node.state);
      node.storage.write(changes);
      node.persister.commit(changes);
      node.storedCursors = new Map(node.cursors);
      for (const dead of turn.adopted) this.node(dead).reaped = true;
      for (const [to, msgs] of turn.relays) this.stream(to).push({ from: node.id, msgs });
      for (const claim of turn.claims) {
        const owner = this.compareAndSet(claim.app, claim.client, claim.node, claim.expected);
        if (claim.answer) node.claimAnswers.push({ key: sessionKeyOf(claim.app, claim.client), owner });
      }
    }
    for (const [conn, deliveries] of turn.waiting) for (const delivery of deliveries) this.hand(conn, delivery, turn.id);
    // A batching host says when what it queued has left it: until then, a
    // connection that closes counts those frames as never written.
    if (turn.wrote && node.alive) {
      this.run(node, { type: 'flushed', now: this.now });
      if (!node.holding) this.endTurn(id);
    }
  }

  private run(node: ClusterNode, input: Input): void {
    node.turn ??= { id: this.nextTurn++, relays: new Map(), claims: [], waiting: new Map(), adopted: [], wrote: false };
    let outputs: Output[];
    try {
      [node.state, outputs] = step(node.state, input);
    } catch (error) {
      this.violations.push(`${node.id} threw on ${input.type}: ${error instanceof Error ? error.stack : String(error)}`);
      throw error;
    }
    const closes: { conn: number; code: number }[] = [];
    for (const output of outputs) this.execute(node, node.turn, output, closes);
    // The transport reports each close the core asked for, with its code, as a WebSocket does once the handshake ends.
    for (const { conn, code } of closes) this.run(node, { type: 'close', now: this.now, conn, code });
  }

  private execute(node: ClusterNode, turn: Turn, output: Output, closes: { conn: number; code: number }[]): void {
    switch (output.type) {
      case 'send': {
        const text = typeof output.data === 'string' ? output.data : new TextDecoder().decode(output.data);
        // A linked node writes to its sockets only what its storage write holds; while the link is down there is none to wait for.
        this.deliver(turn, output.conn, { frame: JSON.parse(text) as Frame }, node.linked);
        return;
      }
      case 'close': {
        this.deliver(turn, output.conn, { close: output.code, reason: output.reason }, node.linked);
        closes.push({ conn: output.conn, code: output.code });
        return;
      }
      case 'log':
        node.logs.push(output);
        if (output.level === 'error') this.violations.push(`${node.id} logged an error: ${output.msg} ${JSON.stringify(output.fields)}`);
        return;
      case 'relay':
        if (!node.linked) {
          this.violations.push(`${node.id} relayed ${output.msg.t} while its link was down`);
          return;
        }
        pushTo(turn.relays, output.to === undefined ? BUS : inboxOf(output.to), output.msg);
        // Sent on by a node its recipient had left: the one case where one sender's order may break (docs/cluster.md).
        if (output.msg.t === 'event' && output.msg.hops > 0) this.rerouted.add(JSON.stringify(eventData(output.msg.msg)));
        return;
      case 'claim':
        if (!node.linked) {
          this.violations.push(`${node.id} claimed ${output.app}/${output.client} while its link was down`);
          return;
        }
        turn.claims.push(output);
        return;
      case 'dispatched':
      case 'rejected':
        node.http.push(output);
        return;
      default:
        this.violations.push(`${node.id} emitted an unexpected ${output.type}`);
    }
  }

  private deliver(turn: Turn, conn: number, delivery: Delivery, afterWrite: boolean): void {
    turn.wrote = true;
    const waiting = turn.waiting.get(conn);
    if (waiting) waiting.push(delivery);
    else if (afterWrite) turn.waiting.set(conn, [delivery]);
    else this.hand(conn, delivery, turn.id);
  }

  /** The peer receives a frame or the close. */
  private hand(id: number, delivery: Delivery, turn: number): void {
    const conn = this.conns.get(id);
    if (!conn) return;
    if (!conn.open) {
      // Frames waiting for a storage write when the client went away are lost with its socket, as on a real one.
      if (!conn.closed!.dropped && !conn.closed!.byClient) this.violations.push(`${conn.node} wrote to connection ${id} after it closed: ${JSON.stringify(delivery)}`);
      return;
    }
    conn.deliveries.push(delivery);
    if ('close' in delivery) conn.closed = { code: delivery.close, reason: delivery.reason, dropped: false };
    conn.listener?.(conn, delivery, turn);
  }

  /**
   * The link's claim of a dead node's session: a session another dead node
   * holds (an adopter that died before storing it) is claimed from that node too.
   */
  private claimFrom(app: string, client: string, adopter: string, dead: string): string | undefined {
    const owner = this.compareAndSet(app, client, adopter, dead);
    if (owner === undefined || this.node(owner).alive) return owner;
    return this.compareAndSet(app, client, adopter, owner);
  }

  private compareAndSet(app: string, client: string, node: string, expected: string): string | undefined {
    const key = sessionKeyOf(app, client);
    const owner = this.owners.get(key);
    if (owner === undefined || owner === expected || owner === node) {
      // Claiming for no node frees the identity, as the link deletes the owner field.
      if (node === '') this.owners.delete(key);
      else this.owners.set(key, node);
      return undefined;
    }
    return owner;
  }

  // ── connections ──────────────────────────────────────────────────────────

  open(id: string, listener?: (conn: Connection, delivery: Delivery, turn: number) => void): Connection {
    const conn = new Connection(this.nextConn++, id);
    conn.listener = listener;
    this.conns.set(conn.id, conn);
    this.input(id, { type: 'open', now: this.now, conn: conn.id, wire: JSON_WIRE });
    return conn;
  }

  send(conn: Connection, frame: Frame): void {
    if (!conn.open) throw new Error(`connection ${conn.id} is closed`);
    this.input(conn.node, { type: 'message', now: this.now, conn: conn.id, data: JSON.stringify(frame) });
  }

  /** The client closes (1000/1001: goodbye) or its socket drops (1006). */
  close(conn: Connection, code: number): void {
    if (!conn.open) return;
    conn.closed = { code, reason: 'closed by the client', dropped: code === 1006, byClient: true };
    this.input(conn.node, { type: 'close', now: this.now, conn: conn.id, code });
  }

  /** POST /dispatch on one node: its answer. */
  httpDispatch(id: string, body: unknown): Output {
    const node = this.node(id);
    const request = this.nextRequest++;
    this.input(id, { type: 'dispatch', now: this.now, request, body });
    const answer = node.http.find((output) => (output.type === 'dispatched' || output.type === 'rejected') && output.request === request);
    if (!answer) throw new Error(`${id} did not answer request ${request}`);
    return answer;
  }

  // ── the link ─────────────────────────────────────────────────────────────

  /** Unread entries of the streams a node reads. */
  unread(id: string): { stream: string; count: number }[] {
    const node = this.node(id);
    return [...node.cursors].map(([stream, at]) => ({ stream, count: this.stream(stream).length - at })).filter((entry) => entry.count > 0);
  }

  /** A node reads the next entry of one of its streams (the first with anything unread, unless named). */
  read(id: string, stream?: string): boolean {
    const node = this.node(id);
    if (!node.alive || !node.linked) return false;
    const name = stream ?? this.unread(id)[0]?.stream;
    if (name === undefined) return false;
    const at = node.cursors.get(name);
    const entry = at === undefined ? undefined : this.stream(name)[at];
    if (!entry) return false;
    node.cursors.set(name, at! + 1);
    // A dead node's inbox read by its adopter: its events were on their way to a node their recipient has left.
    if (name !== BUS && name !== inboxOf(id)) {
      for (const msg of entry.msgs) if (msg.t === 'event') this.rerouted.add(JSON.stringify(eventData(msg.msg)));
    }
    // Bus entries carry their position, as the link passes Redis stream ids.
    this.input(id, { type: 'node', now: this.now, from: entry.from, msgs: entry.msgs, ...(name === BUS ? { at: `${at! + 1}-0` } : {}) });
    return true;
  }

  /** Feeds a node the oldest answer to its claims. */
  answer(id: string): boolean {
    const node = this.node(id);
    if (!node.alive || !node.linked) return false;
    const answer = node.claimAnswers.shift();
    if (!answer) return false;
    this.input(id, { type: 'claimed', now: this.now, key: answer.key, owner: answer.owner });
    return true;
  }

  /** Ends open turns, then reads every stream and answers every claim, node after node, until nothing is left. */
  settle(): void {
    for (const node of this.nodes.values()) if (node.alive) this.endTurn(node.id);
    for (let round = 0; ; round++) {
      if (round > SETTLE_LIMIT) {
        this.violations.push('the cluster never settles: nodes keep relaying to each other');
        return;
      }
      let progress = false;
      for (const node of this.nodes.values()) {
        if (!node.alive || !node.linked) continue;
        while (this.answer(node.id)) progress = true;
        while (this.read(node.id)) progress = true;
      }
      if (!progress) return;
    }
  }

  /** Moves the clock on, ticking each node at each of its deadlines in time order, like each host's one timer. */
  advance(ms: number): void {
    const until = this.now + ms;
    for (;;) {
      let next: { id: string; at: number } | undefined;
      for (const node of this.nodes.values()) {
        if (!node.alive) continue;
        const at = nextDeadline(node.state);
        if (at !== undefined && at <= until && (next === undefined || at < next.at)) next = { id: node.id, at };
      }
      if (!next) break;
      this.now = Math.max(this.now, next.at);
      this.input(next.id, { type: 'tick', now: this.now });
    }
    this.now = until;
  }

  /** `advance` in steps of at most `stride` ms, letting the cluster settle after each. */
  advanceSettling(ms: number, stride = 100): void {
    for (let left = ms; left > 0; left -= stride) {
      this.advance(Math.min(stride, left));
      this.settle();
    }
  }

  /** Tells every linked node which nodes are live. */
  private announceMembers(): void {
    const nodes = this.members();
    for (const node of this.nodes.values()) {
      if (node.alive && node.linked) this.input(node.id, { type: 'link', now: this.now, up: true, nodes });
    }
  }

  /** A new node joins: it links, everyone learns of it, and it reads the bus from the start before taking clients. */
  addNode(id: string): ClusterNode {
    if (this.nodes.has(id)) throw new Error(`node ${id} exists`);
    const node = new ClusterNode(id, this.limits);
    this.nodes.set(id, node);
    this.stream(inboxOf(id));
    node.linked = true;
    this.announceMembers();
    while (this.read(id, BUS));
    return node;
  }

  /** The node's link goes down: no reads, no storage, no relays (a Redis outage, or this node cut off from it). */
  linkDown(id: string): void {
    this.endTurn(id);
    const node = this.node(id);
    node.linked = false;
    // Replies still on their way are lost with the connection.
    node.claimAnswers.length = 0;
    this.input(id, { type: 'link', now: this.now, up: false, nodes: this.members() });
  }

  /** The link comes back: the node joins again if it had been declared dead, republishes and re-claims its sessions. */
  linkUp(id: string): void {
    const node = this.node(id);
    node.linked = true;
    const rejoined = !node.member;
    node.member = true;
    this.input(id, { type: 'link', now: this.now, up: true, nodes: this.members() });
    if (rejoined) this.announceMembers();
  }

  // ── faults ───────────────────────────────────────────────────────────────

  /** SIGKILL: the open turn never reaches storage, every socket drops, the memory is gone. */
  crash(id: string): void {
    const node = this.node(id);
    if (node.turn) this.lostTurns.add(node.turn.id);
    node.turn = undefined;
    node.holding = false;
    node.status = 'gone';
    node.claimAnswers.length = 0;
    this.dropConnectionsOf(id);
  }

  /** SIGTERM: GO_AWAY and 1001 to every client; the node keeps answering other nodes until it leaves. */
  drain(id: string): void {
    this.node(id).status = 'draining';
    this.input(id, { type: 'shutdown', now: this.now });
  }

  /** A drained node exits: its last turn is stored, so its state is whole in storage. */
  leave(id: string): void {
    this.endTurn(id);
    const node = this.node(id);
    node.status = 'gone';
    node.claimAnswers.length = 0;
    this.dropConnectionsOf(id);
  }

  private dropConnectionsOf(id: string): void {
    for (const conn of this.conns.values()) {
      if (conn.node !== id || !conn.open) continue;
      conn.closed = { code: 1006, reason: 'dropped', dropped: true };
      conn.listener?.(conn, { close: 1006, reason: 'dropped' }, 0);
    }
  }

  /** The node's liveness lapsed: every other node's link reports the smaller set of live nodes. */
  declareDead(id: string): void {
    this.node(id).member = false;
    this.announceMembers();
  }

  /**
   * `adopter` adopts `dead`, as the link does once it holds the reap lock.
   * It has had the answers to its own earlier claims (they come back on one
   * connection, before those adoption makes). It claims the dead node's
   * stored sessions (compare-and-set from the dead node) and hands the core
   * those it got, the held events, the dead node's unread inbox, and the bus
   * entries the dead node had not read. It reads the bus up to its end
   * first: entries before the dead node's cursor the dead node delivered
   * itself, entries after the adopter's own cursor the adopter delivers to
   * adopted sessions as to its own, so the bus tail it passes must end where
   * its own reading stands. From then on it also reads the dead node's inbox
   * (and any inbox the dead node was reading for a node it had adopted). The
   * dead node counts as reaped once the adopter's turn is stored; if the
   * adopter dies first, its lock lapses and another node adopts the dead one.
   */
  adopt(dead: string, adopter: string): void {
    const gone = this.node(dead);
    const node = this.node(adopter);
    if (gone.reaped || this.locked(gone)) throw new Error(`${dead} is adopted already, or being adopted`);
    gone.reapLock = adopter;
    while (this.answer(adopter));
    while (this.read(adopter, BUS));
    const stored = gone.storage.load();
    const sessions = stored.sessions.filter((record) => this.claimFrom(record.app, record.id, adopter, dead) === undefined);
    const ords = new Set(sessions.map((record) => record.ord));
    const claimed: Stored = { ...stored, sessions, replay: stored.replay.filter((row) => ords.has(row.ord)) };
    const inbox: NodeMessage[] = [];
    const inboxes = new Set([inboxOf(dead), ...[...gone.storedCursors.keys()].filter((name) => name.startsWith('inbox:'))]);
    for (const name of inboxes) {
      const entries = this.stream(name);
      for (const entry of entries.slice(gone.storedCursors.get(name) ?? 0)) inbox.push(...entry.msgs);
      for (const msg of inbox) if (msg.t === 'event') this.rerouted.add(JSON.stringify(eventData(msg.msg)));
      // Held events pass to the adopter: it hands them on from there, possibly after later ones.
      for (const held of claimed.held) this.rerouted.add(JSON.stringify(eventData(held.msg)));
      node.cursors.set(name, entries.length);
    }
    const from = gone.storedCursors.get(BUS) ?? 0;
    // With their positions, as the link passes Redis stream ids.
    const bus = this.stream(BUS)
      .slice(from, node.cursors.get(BUS))
      .map((entry, i) => ({ at: `${from + i + 1}-0`, msgs: entry.msgs }));
    this.run(node, { type: 'adopt', now: this.now, node: dead, stored: claimed, inbox, bus });
    node.turn!.adopted.push(dead);
    if (!node.holding) this.endTurn(adopter);
  }

  // ── views ────────────────────────────────────────────────────────────────

  /** GET /clients on one node. */
  clients(id: string, app?: string): ClientInfo[] {
    return listClients(this.node(id).state, app);
  }

  /** Log lines of every node at a level, as `node: msg`. */
  logs(level: 'info' | 'warn' | 'error'): string[] {
    return [...this.nodes.values()].flatMap((node) => node.logs.filter((log) => log.level === level).map((log) => `${node.id}: ${log.msg}`));
  }
}

function pushTo<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

/** The data of a relayed event: nodes send its encoded frame head, not the data. */
export function eventData(record: RoutedRecord): unknown {
  return record.h !== undefined ? (JSON.parse(`${record.h}}`) as { d: unknown }).d : record.d;
}

export function sessionKeyOf(app: string, client: string): string {
  return `${app}\u0000${client}`;
}

// ── clients ────────────────────────────────────────────────────────────────

/** An event a client received, with where it came from. */
export interface Receipt {
  e: string;
  d: unknown;
  s: number;
  from: unknown;
  nonce?: string | undefined;
  /** Which session of this client it belongs to: a new one starts whenever a session is not resumed. */
  epoch: number;
  conn: number;
  node: string;
  /** The turn that wrote it; a turn in Cluster.lostTurns never reached storage. */
  turn: number;
}

export interface IdentifyOptions {
  reconnect?: boolean;
  /** `last`: the last `s` this client processed in its current session. */
  seq?: number | 'last';
  metadata?: Record<string, unknown>;
}

/**
 * A client as a real one behaves: it processes frames in the order they
 * arrive, keeps the last `s` of its session, and treats an `s` it already
 * processed as a replay of that event (a resume may legitimately replay what
 * was written while its IDENTIFY was on its way).
 */
export class Client {
  readonly key: string;
  /** The newest connection. */
  conn: Connection | undefined;
  /** Every connection it opened; one it moved away from may still be open. */
  readonly opened: Connection[] = [];
  lastSeq = 0;
  epoch = 0;
  /** Events processed, first time each. */
  readonly receipts: Receipt[] = [];
  /** Events received again at an `s` already processed, with the same content. */
  readonly replays: Receipt[] = [];
  readonly acks = new Map<string, { delivered: number; queued: number }>();
  readonly undeliverable: { e: string; reason: string; nonce?: string | undefined; turn: number }[] = [];
  readonly sessionEvents: { resumed: boolean; s: number; replayed: number; missed?: number }[] = [];
  readonly closes: { conn: number; node: string; code: number; reason: string }[] = [];
  readonly violations: string[] = [];
  private bySeq = new Map<number, string>();

  constructor(
    readonly cluster: Cluster,
    readonly app: string,
    readonly id: string,
  ) {
    this.key = sessionKeyOf(app, id);
  }

  /** Welcomed on its newest connection, which is still open. */
  get connected(): boolean {
    return this.conn !== undefined && this.conn.open && this.conn.welcomed;
  }

  /** Its newest connection is open and waiting for WELCOME. */
  get identifying(): boolean {
    return this.conn !== undefined && this.conn.open && !this.conn.welcomed;
  }

  /** Opens a connection on `node` and sends IDENTIFY; the answer comes as the cluster runs. */
  identify(node: string, options: IdentifyOptions = {}): Connection {
    const conn = this.cluster.open(node, (opened, delivery, turn) => this.receive(opened, delivery, turn));
    const d: Record<string, unknown> = { app_name: this.app, client_id: this.id, password: PASSWORD };
    if (options.metadata) d.metadata = options.metadata;
    if (options.reconnect) d.reconnect = true;
    if (options.seq !== undefined) d.seq = options.seq === 'last' ? this.lastSeq : options.seq;
    conn.asksToResume = options.reconnect === true;
    this.conn = conn;
    this.opened.push(conn);
    if (conn.open) this.cluster.send(conn, { op: 1, d });
    return conn;
  }

  /** IDENTIFY, then the cluster settles; throws unless welcomed. */
  connect(node: string, options: IdentifyOptions = {}): Connection {
    const conn = this.identify(node, options);
    this.cluster.settle();
    if (!conn.welcomed || !conn.open) throw new Error(`${this.id} was not welcomed on ${node}: ${JSON.stringify(conn.deliveries)}`);
    return conn;
  }

  dispatch(e: string, d: unknown, to: Record<string, unknown>, nonce?: string): void {
    if (!this.conn?.open) throw new Error(`${this.id} has no open connection`);
    this.cluster.send(this.conn, nonce === undefined ? { op: 8, e, d, to } : { op: 8, e, d, to, nonce });
  }

  aboutMe(metadata: Record<string, unknown>): void {
    if (!this.conn?.open) throw new Error(`${this.id} has no open connection`);
    this.cluster.send(this.conn, { op: 7, d: metadata });
  }

  /** The socket drops without a close frame: the session stays resumable. */
  drop(): void {
    if (this.conn) this.cluster.close(this.conn, 1006);
  }

  /** A clean goodbye: the session ends. */
  bye(): void {
    if (this.conn) this.cluster.close(this.conn, 1000);
  }

  /** The `d` of every event processed, in order. */
  get payloads(): unknown[] {
    return this.receipts.map((receipt) => receipt.d);
  }

  private newSession(): void {
    this.epoch++;
    this.lastSeq = 0;
    this.bySeq = new Map();
  }

  private receive(conn: Connection, delivery: Delivery, turn: number): void {
    if ('close' in delivery) {
      this.closes.push({ conn: conn.id, node: conn.node, code: delivery.close, reason: delivery.reason });
      return;
    }
    const frame = delivery.frame as { op: number; e?: string; d?: unknown; s?: number; from?: unknown; nonce?: string };
    if (frame.op === 2) {
      conn.welcomed = true;
      if (!conn.asksToResume) this.newSession();
      return;
    }
    if (frame.op !== 8) return;
    switch (frame.e) {
      case 'NERVE_SESSION': {
        const d = frame.d as { resumed: boolean; s: number; replayed: number; missed?: number };
        this.sessionEvents.push(d);
        if (!d.resumed) this.newSession();
        return;
      }
      case 'NERVE_ACK':
        this.acks.set(frame.nonce!, frame.d as { delivered: number; queued: number });
        return;
      case 'NERVE_UNDELIVERABLE': {
        const d = frame.d as { e: string; reason: string };
        this.undeliverable.push({ e: d.e, reason: d.reason, nonce: frame.nonce, turn });
        return;
      }
    }
    const s = frame.s!;
    if (!(s > conn.lastS)) this.violations.push(`${this.id}: s ${s} after ${conn.lastS} on connection ${conn.id}`);
    conn.lastS = s;
    const content = JSON.stringify([frame.e, frame.d, frame.from, frame.nonce]);
    const receipt: Receipt = { e: frame.e!, d: frame.d, s, from: frame.from, nonce: frame.nonce, epoch: this.epoch, conn: conn.id, node: conn.node, turn };
    const seen = this.bySeq.get(s);
    if (seen !== undefined) {
      if (seen === content) this.replays.push(receipt);
      else this.violations.push(`${this.id}: s ${s} carried ${seen} and then ${content}`);
      return;
    }
    this.bySeq.set(s, content);
    this.receipts.push(receipt);
    if (s > this.lastSeq) this.lastSeq = s;
  }
}
