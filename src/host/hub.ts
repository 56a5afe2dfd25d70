// The driver every runtime shares: it owns the core state, feeds `step` (the
// only door into the core: inputs that arrive while a step's outputs are being
// carried out wait their turn), writes each socket's frames in one batch per
// flush, tells the core what each transport still holds, and keeps exactly one
// timer armed at the core's next deadline. Adapters only translate events into
// these calls. In a cluster it hands relays and claims to the link, and holds
// every frame until the link has stored what the step that wrote it changed.

import { createState, nextDeadline, step, type State } from '../core/index.ts';
import { utf8Length } from '../core/codec.ts';
import type { ConnId, CoreConfig, Input, Output } from '../core/io.ts';
import { listClients, stats, type ClientInfo } from '../core/inspect.ts';
import type { Wire } from '../core/protocol.ts';
import { sessionKey } from '../core/state.ts';
import { renderMetrics, type ClusterMetrics } from './metrics.ts';
import { createTokenVerifier, type TokenSettings, type VerifyToken } from './tokens.ts';

/** What the hub needs of a WebSocket; every runtime's socket fits in a few lines. */
export interface HubSocket {
  /** Writes these frames in order, now; the hub calls it once per socket per flush. */
  send(frames: readonly (string | Uint8Array)[]): void;
  close(code: number, reason: string): void;
  /** Bytes given to send() that the transport has not yet handed to the OS; 0 where the runtime cannot tell. */
  buffered(): number;
  /**
   * Only for a transport whose close throws away what it still holds (Bun):
   * the part of buffered() it is still sending. The rest it refused and will
   * never send. The hub closes once this is 0 (or after the close grace) and
   * tells the core that whatever buffered() still counts then was dropped.
   */
  sending?(): number;
  /**
   * Ends the connection now without waiting for the closing handshake. What
   * send() was given still goes out ahead of the end (the hub never gives a
   * transport more than one batch to hold); only the peer reading decides
   * whether it arrives.
   */
  terminate(): void;
}

export interface HubOptions {
  /** The core's config; `tokens`, when present, are the keys IDENTIFY and HTTP tokens are verified with. */
  /** A host's config; its `closeGrace` (NERVE_CLOSE_GRACE) is the default for the option below. */
  config: CoreConfig & { tokens?: TokenSettings | undefined; closeGrace?: number };
  /** Writes one log line (already JSON). */
  log?: (line: string) => void;
  now?: () => number;
  /**
   * Arms the host's single timer; `undefined` disarms it. When it fires the
   * host calls `hub.tick()`. Defaults to setTimeout.
   */
  arm?: (at: number | undefined) => void;
  /** Start from this state instead of an empty one (a Durable Object waking from hibernation). */
  state?: State;
  /** Called after every step, once its outputs ran: a host that persists state saves what changed here. */
  afterStep?: (input: Input, outputs: Output[]) => void;
  /**
   * When frames queued by inputs are written. Default: right after each input.
   * A host that receives many frames per event-loop turn passes setImmediate,
   * so each socket gets one write per turn however many frames it was sent.
   */
  schedule?: (flush: () => void) => void;
  /**
   * ms a connection the hub closed may take to finish the closing handshake
   * before it is dropped; 0 never drops it (a Durable Object, where the
   * runtime owns that handshake). Default: `config.closeGrace`, else 2000.
   */
  closeGrace?: number;
  /** Verifies an IDENTIFY or HTTP token; default: jose with `config.tokens`. */
  verifyToken?: VerifyToken;
}

/** The inputs only a cluster link feeds; the hub stamps `now`. */
export type ClusterInput =
  /** `at`: the entry's id, for entries read from the bus. */
  | { type: 'node'; from: string; msgs: Extract<Input, { type: 'node' }>['msgs']; at?: string | undefined }
  | { type: 'link'; up: boolean; nodes: string[] }
  | { type: 'claimed'; key: string; owner?: string | undefined }
  | Omit<Extract<Input, { type: 'adopt' }>, 'now'>;

export type ClusterOutput = Extract<Output, { type: 'relay' | 'claim' }>;

/**
 * What the hub needs of a cluster link (src/host/cluster). Writes are
 * numbered: `barrier` names the write that will store what has been stepped
 * so far, and the link calls `hub.stored(n)` once write n is done (or
 * abandoned: a link that goes down calls it with Infinity).
 */
export interface HubCluster {
  /** A relay or claim output, carried out when the turn ends. */
  collect(output: ClusterOutput): void;
  /** A step ran: what it changed is written when the turn ends. */
  stepped(): void;
  /** The write that will store every step so far; undefined when there is none to wait for (the link is down). */
  barrier(): number | undefined;
  status(): { up: boolean; nodes: number };
  metrics(): ClusterMetrics;
}

export interface HubHealth {
  status: 'ok' | 'draining';
  worker: string;
  connections: number;
  clients: number;
  /** In a cluster: whether this node is linked to it, and how many live nodes it sees. */
  cluster?: 'up' | 'down';
  nodes?: number;
}

/** An entry of `GET /clients`; in a cluster, with the node that owns the session. */
export type ClientEntry = ClientInfo & { node?: string };

export type DispatchResult =
  | { ok: true; delivered: number; queued: number }
  | { ok: false; status: 400 | 429 | 503; error: string };

/** How often transports that are behind are looked at again when nothing else writes to them. */
const BACKLOG_RECHECK_MS = 10;
const DEFAULT_CLOSE_GRACE_MS = 2_000;
/** How often a close waiting for its transport to drain looks again. */
const CLOSE_POLL_MS = 5;
/** Rounds of writing one flush makes for what its own steps queued; the rest waits a turn. */
const MAX_FLUSH_ROUNDS = 8;

/** One frame the transport may still hold: its bytes on the wire, and its `s` if it is a routed event. */
interface Pending {
  s: number;
  size: number;
}

/** A frame that waits for cluster write `generation`: `at` counts the socket's frames ever queued before it. */
interface Gate {
  at: number;
  generation: number;
}

/** A socket as the hub keeps it: frames waiting for the flush, and what its transport still holds. */
class Peer {
  frames: (string | Uint8Array)[] = [];
  seqs: number[] = [];
  /**
   * The wire sizes of the first frames waiting here, and their sum: measured
   * when the hub first looks at what waits (or caps a batch), then kept as
   * frames leave, so frames waiting through many flushes (behind a cluster
   * gate, or a burst sent a batch at a time) are measured once.
   */
  sizes: number[] = [];
  sizedBytes = 0;
  queued = false;
  /** Frames written while the transport was behind, oldest first, with their total size. */
  held: Pending[] = [];
  heldBytes = 0;
  /** Bytes last reported to the core (0: nothing held), the oldest `s` among them, and the oldest still waiting here. */
  reported = 0;
  reportedFrom = Infinity;
  reportedQueued = Infinity;
  /** Looked at in the current flush round already. */
  observed = false;
  /** Dropped by the hub: its transport's figures are no longer what it held. */
  terminated = false;
  closed = false;
  /** Frames that wait for a cluster write, oldest first; what follows one waits with it, so order holds. */
  gates: Gate[] = [];
  /** Frames ever taken off the front of `frames` (written or dropped): where a gate's `at` is counted from. */
  dequeued = 0;
  /** A close the core asked for while frames still waited behind a gate. */
  pendingClose: { code: CloseCodeNumber; reason: string } | undefined;
  /** The runtime refused a frame of this socket and is about to close it itself. */
  refusedFrame = false;
  constructor(
    readonly conn: ConnId,
    readonly socket: HubSocket,
  ) {}
}

type CloseCodeNumber = Extract<Output, { type: 'close' }>['code'];

/** A frame's size as a transport counts it: payload and WebSocket frame header (RFC 6455 §5.2; server frames are unmasked). */
export function wireSize(frame: string | Uint8Array): number {
  const length = typeof frame === 'string' ? utf8Length(frame) : frame.byteLength;
  return length + (length < 126 ? 2 : length < 65536 ? 4 : 10);
}

/**
 * The first `s` among the frames a transport refused (see HubSocket.sending):
 * the last `buffered() - sending()` bytes of what it was handed. Infinity when
 * it refused none.
 */
function refusedFrom(peer: Peer, inTransport: number): number {
  if (peer.socket.sending === undefined || inTransport === 0) return Infinity;
  let refused = inTransport - peer.socket.sending();
  let from = Infinity;
  for (let i = peer.held.length - 1; i >= 0 && refused > 0; i--) {
    refused -= peer.held[i]!.size;
    if (peer.held[i]!.s > 0) from = peer.held[i]!.s;
  }
  return from;
}

export class Hub {
  readonly config: CoreConfig;
  readonly state: State;
  private readonly peers = new Map<ConnId, Peer>();
  private nextConn = 1;
  private nextRequest = 1;
  private armedAt: number | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly now: () => number;
  private readonly writeLog: (line: string) => void;
  private readonly arm: (at: number | undefined) => void;
  private readonly schedule: ((flush: () => void) => void) | undefined;
  private readonly closeGrace: number;
  private idleWaiters: (() => void)[] = [];
  private readonly messageInput: Input & { type: 'message' } = { type: 'message', now: 0, conn: 0, data: '' };
  private readonly afterStep: ((input: Input, outputs: Output[]) => void) | undefined;
  /** Inputs that arrived while a step's outputs were being carried out. */
  private readonly waiting: Input[] = [];
  private stepping = false;
  private readonly toFlush: Peer[] = [];
  private flushScheduled = false;
  private flushing = false;
  private readonly behind = new Set<Peer>();
  private recheck: ReturnType<typeof setTimeout> | undefined;
  private readonly flushAll = () => this.flush();
  /** Checks a token's signature and returns its claims, or rejects with the reason. */
  readonly verifyToken: VerifyToken;
  private cluster: HubCluster | undefined;
  /** Peers with frames behind a gate. */
  private readonly gated = new Set<Peer>();
  private storeWaiters: { generation: number; resolve: () => void }[] = [];

  constructor(options: HubOptions) {
    this.config = options.config;
    this.state = options.state ?? createState(options.config);
    this.afterStep = options.afterStep;
    this.now = options.now ?? Date.now;
    this.writeLog = options.log ?? ((line) => console.log(line));
    this.arm = options.arm ?? ((at) => this.armTimeout(at));
    this.schedule = options.schedule;
    this.closeGrace = options.closeGrace ?? options.config.closeGrace ?? DEFAULT_CLOSE_GRACE_MS;
    this.verifyToken = options.verifyToken ?? createTokenVerifier(options.config.tokens);
  }

  get draining(): boolean {
    return this.state.draining;
  }

  log(level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void {
    this.writeLog(JSON.stringify({ time: new Date(this.now()).toISOString(), level, worker: this.config.worker, msg, ...fields }));
  }

  /**
   * A WebSocket was accepted; returns the id to pass to receive/closed.
   * `remote` is the peer's address where the runtime knows it (failed
   * authentications are budgeted per address).
   */
  open(socket: HubSocket, wire: Wire, remote?: string): ConnId {
    const conn = this.nextConn++;
    this.peers.set(conn, new Peer(conn, socket));
    this.run(remote === undefined ? { type: 'open', now: this.now(), conn, wire } : { type: 'open', now: this.now(), conn, wire, remote });
    return conn;
  }

  /** Re-attaches the socket of a connection the restored state already knows. */
  adopt(conn: ConnId, socket: HubSocket): void {
    this.peers.set(conn, new Peer(conn, socket));
    if (conn >= this.nextConn) this.nextConn = conn + 1;
  }

  /** A HEARTBEAT the runtime answered by itself at `at` (ms). */
  heartbeat(conn: ConnId, at: number): void {
    this.run({ type: 'heartbeat', now: this.now(), conn, at });
  }

  receive(conn: ConnId, data: string | Uint8Array): void {
    if (this.stepping) {
      this.run({ type: 'message', now: this.now(), conn, data });
      return;
    }
    // One input object reused for every frame: step reads it and keeps nothing.
    const input = this.messageInput;
    input.now = this.now();
    input.conn = conn;
    input.data = data;
    this.run(input);
    input.data = '';
  }

  /** The transport answered a WebSocket ping of this connection by itself. */
  ping(conn: ConnId): void {
    if (this.config.rateLimit > 0) this.run({ type: 'ping', now: this.now(), conn });
  }

  /** The transport refused a frame of this connection (too large, or malformed at the WebSocket level). */
  refused(conn: ConnId, tooLarge: boolean, detail?: string): void {
    const peer = this.peers.get(conn);
    if (peer) peer.refusedFrame = true;
    this.run({ type: 'refused', now: this.now(), conn, tooLarge, detail });
  }

  /** The transport is closed; `code` is the peer's close code if it sent one. */
  closed(conn: ConnId, code?: number): void {
    const peer = this.peers.get(conn);
    if (!peer) return;
    // The last figures stand: a closed transport no longer says what it held.
    this.peers.delete(conn);
    peer.closed = true;
    this.behind.delete(peer);
    this.run({ type: 'close', now: this.now(), conn, code });
    if (this.peers.size === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  tick(): void {
    this.armedAt = undefined;
    this.run({ type: 'tick', now: this.now() });
  }

  dispatch(body: unknown): DispatchResult {
    const request = this.nextRequest++;
    const outputs = this.run({ type: 'dispatch', now: this.now(), request, body });
    for (const output of outputs) {
      if (output.type === 'dispatched' && output.request === request) {
        return { ok: true, delivered: output.delivered, queued: output.queued };
      }
      if (output.type === 'rejected' && output.request === request) {
        return { ok: false, status: output.status, error: output.error };
      }
    }
    throw new Error('dispatch produced no answer');
  }

  /** Joins this hub to a cluster through `cluster`, before any connection arrives. */
  attachCluster(cluster: HubCluster): void {
    this.cluster = cluster;
  }

  /** An input from the cluster link. */
  fromCluster(input: ClusterInput): void {
    this.run({ ...input, now: this.now() } as Input);
  }

  /**
   * Resolves once everything stepped so far is stored in the cluster (at once
   * outside a cluster, or while the link is down): what `POST /dispatch`
   * waits for before it answers, as a NERVE_ACK does.
   */
  whenStored(): Promise<void> {
    const generation = this.cluster?.barrier();
    if (generation === undefined) return Promise.resolve();
    return new Promise((resolve) => this.storeWaiters.push({ generation, resolve }));
  }

  /** Cluster writes up to `generation` are done (Infinity: stop waiting for any): what waited for them goes out. */
  stored(generation: number): void {
    const closes: { peer: Peer; code: CloseCodeNumber; reason: string }[] = [];
    for (const peer of this.gated) {
      if (peer.closed) {
        this.gated.delete(peer);
        continue;
      }
      let passed = 0;
      while (passed < peer.gates.length && peer.gates[passed]!.generation <= generation) passed++;
      if (passed === 0) continue;
      peer.gates = passed === peer.gates.length ? [] : peer.gates.slice(passed);
      if (peer.gates.length === 0) {
        this.gated.delete(peer);
        if (peer.pendingClose) {
          closes.push({ peer, ...peer.pendingClose });
          peer.pendingClose = undefined;
        }
      }
      if (!peer.queued && this.writable(peer) > 0) {
        peer.queued = true;
        this.toFlush.push(peer);
      }
    }
    if (this.storeWaiters.length > 0) {
      const waiting = this.storeWaiters;
      this.storeWaiters = [];
      for (const waiter of waiting) {
        if (waiter.generation <= generation) waiter.resolve();
        else this.storeWaiters.push(waiter);
      }
    }
    for (const { peer, code, reason } of closes) if (this.peers.get(peer.conn) === peer) this.execute({ type: 'close', conn: peer.conn, code, reason });
    if (this.toFlush.length > 0 && !this.flushing) this.requestFlush();
  }

  /** GO_AWAY to everyone; resolves when every socket is closed or after `drainTimeout` ms. */
  async shutdown(drainTimeout: number): Promise<void> {
    // Readers that are behind are dropped now: what their transports hold must be exact.
    for (const peer of this.behind) {
      if (this.observe(peer)) this.report(peer);
      peer.observed = false;
    }
    this.run({ type: 'shutdown', now: this.now() });
    this.flush();
    if (this.peers.size > 0) {
      let timeout: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((resolve) => this.idleWaiters.push(resolve)),
        new Promise<void>((resolve) => (timeout = setTimeout(resolve, drainTimeout))),
      ]);
      if (timeout !== undefined) clearTimeout(timeout);
    }
    if (this.recheck !== undefined) clearTimeout(this.recheck);
    this.arm(undefined);
  }

  health(): HubHealth {
    const health: HubHealth = { status: this.draining ? 'draining' : 'ok', worker: this.config.worker, connections: this.state.liveConns, clients: this.state.connectedClients };
    if (this.cluster) {
      const link = this.cluster.status();
      health.cluster = link.up ? 'up' : 'down';
      health.nodes = link.nodes;
    }
    return health;
  }

  metrics(): string {
    return renderMetrics(this.config, stats(this.state), this.cluster?.metrics());
  }

  clients(appName?: string): ClientEntry[] {
    const list: ClientEntry[] = listClients(this.state, appName);
    if (!this.state.cluster) return list;
    for (const entry of list) {
      const session = this.state.sessions.get(sessionKey(entry.app_name, entry.client_id));
      entry.node = session?.node ?? this.config.worker;
      // Another node's session has no connection here; whether it has one there is in the registry.
      if (session?.node !== undefined) entry.connected = session.remoteConnected === true;
    }
    return list;
  }

  /**
   * Runs one input through the core, then any that arrived meanwhile, and
   * returns the outputs of the first. Re-entered (a runtime that reports a
   * close from inside close()), it only queues the input.
   */
  private run(input: Input): Output[] {
    if (this.stepping) {
      this.waiting.push(input);
      return [];
    }
    this.stepping = true;
    let outputs: Output[];
    try {
      outputs = this.stepOnce(input);
      for (let next = this.waiting.shift(); next; next = this.waiting.shift()) this.stepOnce(next);
    } finally {
      this.stepping = false;
    }
    const deadline = nextDeadline(this.state);
    if (deadline !== this.armedAt) {
      this.armedAt = deadline;
      this.arm(deadline);
    }
    // A step run by the flush itself (a report) is written by that flush's next round.
    if (this.toFlush.length > 0 && !this.flushing) this.requestFlush();
    return outputs;
  }

  private requestFlush(): void {
    if (this.flushScheduled) return;
    if (this.schedule) {
      this.flushScheduled = true;
      this.schedule(this.flushAll);
    } else this.flush();
  }

  private stepOnce(input: Input): Output[] {
    let outputs: Output[];
    try {
      outputs = step(this.state, input)[1];
    } catch (error) {
      // The core guards every frame itself; anything else escaping is a bug of ours.
      this.log('error', 'internal error handling an input', { input: input.type, error: error instanceof Error ? (error.stack ?? error.message) : String(error) });
      return [];
    }
    for (let i = 0; i < outputs.length; i++) this.execute(outputs[i]!);
    this.afterStep?.(input, outputs);
    this.cluster?.stepped();
    return outputs;
  }

  private execute(output: Output): void {
    switch (output.type) {
      case 'send': {
        const peer = this.peers.get(output.conn);
        if (!peer) return;
        if (!peer.queued) {
          peer.queued = true;
          this.toFlush.push(peer);
        }
        // A clustered node writes to its sockets only what the cluster has
        // stored: a client never holds an event that a crash of this node
        // would make the adopting node number or deliver differently.
        if (this.cluster) {
          const generation = this.cluster.barrier();
          if (generation !== undefined && peer.gates.at(-1)?.generation !== generation) {
            peer.gates.push({ at: peer.dequeued + peer.frames.length, generation });
            this.gated.add(peer);
          }
        }
        peer.frames.push(output.data);
        peer.seqs.push(output.s ?? 0);
        return;
      }
      case 'close': {
        const peer = this.peers.get(output.conn);
        if (!peer) return;
        // Frames waiting for the cluster write leave before the close frame, so
        // the close waits too — unless the runtime is closing the socket itself
        // (a frame it refused): then the reason must get there first, stored or not.
        if (peer.gates.length > 0 && !peer.refusedFrame) {
          peer.pendingClose = { code: output.code, reason: output.reason };
          return;
        }
        // NO_U_TBH (or GO_AWAY) was queued just before; it leaves ahead of the close frame.
        this.write(peer, true);
        if (peer.socket.sending && peer.socket.buffered() > 0) {
          this.closeWhenSent(peer, output.code, output.reason);
          return;
        }
        this.guard(peer, 'close', () => peer.socket.close(output.code, output.reason));
        if (this.closeGrace > 0) {
          const timer = setTimeout(() => {
            if (!peer.closed && !peer.terminated) this.terminate(peer);
          }, this.closeGrace);
          (timer as { unref?: () => void }).unref?.();
        }
        return;
      }
      case 'terminate': {
        const peer = this.peers.get(output.conn);
        if (peer) this.terminate(peer);
        return;
      }
      case 'discard': {
        const peer = this.peers.get(output.conn);
        if (!peer) return;
        this.dropQueued(peer);
        return;
      }
      case 'verify': {
        const conn = output.conn;
        this.verifyToken(output.token).then(
          (claims) => this.run({ type: 'verified', now: this.now(), conn, claims }),
          (error: unknown) => this.run({ type: 'verified', now: this.now(), conn, error: error instanceof Error ? error.message : 'invalid token' }),
        );
        return;
      }
      case 'log':
        this.log(output.level, output.msg, output.fields);
        return;
      case 'relay':
      case 'claim':
        this.cluster?.collect(output);
        return;
    }
  }

  /** Drops the frames queued for a peer, gated ones included. */
  private dropQueued(peer: Peer): void {
    peer.dequeued += peer.frames.length;
    peer.frames = [];
    peer.seqs = [];
    peer.sizes = [];
    peer.sizedBytes = 0;
    peer.gates = [];
    this.gated.delete(peer);
  }

  /** How many of the peer's queued frames may be written now: those ahead of its first gate. */
  private writable(peer: Peer): number {
    const gate = peer.gates[0];
    return gate === undefined ? peer.frames.length : Math.min(peer.frames.length, gate.at - peer.dequeued);
  }

  /**
   * For a transport whose close drops what it still holds: the close waits
   * until that has gone out, for the close grace at most; past it, the core
   * hears what is being dropped (it counts as never written), then the close.
   */
  private closeWhenSent(peer: Peer, code: number, reason: string): void {
    const deadline = this.now() + this.closeGrace;
    const attempt = () => {
      if (peer.closed) return;
      if (peer.socket.sending!() > 0 && this.now() < deadline) {
        setTimeout(attempt, CLOSE_POLL_MS);
        return;
      }
      if (peer.socket.buffered() > 0) {
        this.observe(peer);
        peer.observed = false;
        this.run({ type: 'backlog', now: this.now(), conn: peer.conn, bytes: peer.reported, unflushedFrom: peer.reportedFrom, queuedFrom: peer.reportedFrom, lost: true });
      }
      this.guard(peer, 'close', () => peer.socket.close(code, reason));
    };
    attempt();
  }

  private terminate(peer: Peer): void {
    peer.terminated = true;
    this.dropQueued(peer);
    peer.pendingClose = undefined;
    this.guard(peer, 'terminate', () => peer.socket.terminate());
  }

  private guard(peer: Peer, what: string, action: () => void): void {
    try {
      action();
    } catch (error) {
      // A socket that died under us; its close event follows and ends the connection.
      this.log('warn', `socket ${what} failed`, { conn: peer.conn, error: String(error) });
    }
  }

  /** Writes every queued frame, then tells the core about transports that are (or were) behind. */
  /**
   * Writes every queued frame, tells the core they left the hub (`flushed`),
   * then what each transport that is (or was) behind still holds, with what
   * waits here behind it (`backlog`). Steps run
   * here can queue more (a cut's NO_U_TBH, the next batch of held events):
   * a few more rounds write them, and anything left waits for the next turn.
   */
  private flush(): void {
    this.flushScheduled = false;
    if (this.flushing) return;
    this.flushing = true;
    try {
      for (let round = 0; round < MAX_FLUSH_ROUNDS; round++) {
        const peers = this.toFlush.splice(0);
        if (peers.length === 0 && this.behind.size === 0) break;
        let behind: ConnId[] | undefined;
        for (const peer of peers) {
          this.write(peer);
          if (this.leftBehind(peer)) (behind ??= []).push(peer.conn);
        }
        if (peers.length > 0) this.run(behind === undefined ? { type: 'flushed', now: this.now() } : { type: 'flushed', now: this.now(), behind });
        const reports: Peer[] = [];
        for (const peer of peers) if (this.observe(peer)) reports.push(peer);
        for (const peer of this.behind) if (!peer.observed && this.observe(peer)) reports.push(peer);
        for (const peer of peers) peer.observed = false;
        for (const peer of this.behind) peer.observed = false;
        for (const peer of reports) this.report(peer);
        if (this.toFlush.length === 0) break;
      }
    } finally {
      this.flushing = false;
    }
    if (this.toFlush.length > 0) setTimeout(this.flushAll, 0);
    if (this.behind.size > 0 && this.recheck === undefined) {
      this.recheck = setTimeout(() => {
        this.recheck = undefined;
        this.flush();
      }, BACKLOG_RECHECK_MS);
      (this.recheck as { unref?: () => void }).unref?.();
    }
  }

  /**
   * Hands the peer's queued frames to its transport in one batch — unless the
   * transport still holds an earlier one: then they wait here, where a cut
   * can still drop them, so the transport never holds more than one batch.
   * A close writes what is queued regardless (`force`): it must precede the close frame.
   */
  private write(peer: Peer, force = false): void {
    peer.queued = false;
    if (peer.frames.length === 0 || peer.closed) return;
    // Frames behind a gate wait for the cluster write; they still count as waiting here.
    let ready = force ? peer.frames.length : this.writable(peer);
    if (ready === 0) return;
    if (!force && peer.socket.buffered() > 0) {
      this.behind.add(peer);
      return;
    }
    if (!force) ready = this.batchOf(peer, ready);
    const whole = ready === peer.frames.length;
    const frames = whole ? peer.frames : peer.frames.slice(0, ready);
    const seqs = whole ? peer.seqs : peer.seqs.slice(0, ready);
    // A forced write can find the transport still holding an earlier batch:
    // what it holds stays on record, else frames it refused would be forgotten.
    if (!force || peer.socket.buffered() === 0) {
      peer.held = [];
      peer.heldBytes = 0;
    }
    this.guard(peer, 'send', () => peer.socket.send(frames));
    const sizes = peer.sizes;
    if (peer.socket.buffered() > 0) {
      for (let i = 0; i < frames.length; i++) {
        const size = i < sizes.length ? sizes[i]! : wireSize(frames[i]!);
        peer.held.push({ s: seqs[i]!, size });
        peer.heldBytes += size;
      }
    }
    if (sizes.length > 0) {
      const sized = Math.min(ready, sizes.length);
      for (let i = 0; i < sized; i++) peer.sizedBytes -= sizes[i]!;
      peer.sizes = sized === sizes.length ? [] : sizes.slice(sized);
    }
    peer.frames = whole ? [] : peer.frames.slice(ready);
    peer.seqs = whole ? [] : peer.seqs.slice(ready);
    peer.dequeued += ready;
    if (force && peer.gates.length > 0) {
      peer.gates = [];
      this.gated.delete(peer);
    }
  }

  /** Whether frames written to this peer in this flush did not all leave: some wait here (a batch's cap), or its transport refused some. */
  private leftBehind(peer: Peer): boolean {
    if (peer.closed) return false;
    if (this.writable(peer) > 0) return true;
    return peer.socket.sending !== undefined && peer.socket.buffered() > peer.socket.sending();
  }

  /**
   * How many of the first `ready` frames make one batch: at most
   * NERVE_MAX_OUTBOUND bytes (and at least one frame), so a burst waits here
   * for the transport to drain rather than filling it past what it takes
   * (Bun refuses sends past its backpressure limit, twice that and a frame).
   */
  private batchOf(peer: Peer, ready: number): number {
    const limit = this.config.maxOutbound;
    const frames = peer.frames;
    // UTF-8 takes at most 3 bytes per UTF-16 unit: most batches are shown small enough without measuring.
    let bound = 0;
    for (let i = 0; i < ready && bound <= limit; i++) {
      const frame = frames[i]!;
      bound += typeof frame === 'string' ? 3 * frame.length : frame.byteLength;
    }
    if (bound <= limit) return ready;
    let bytes = 0;
    for (let i = 0; i < ready; i++) {
      // Measured once: what is not written now is not measured again (see Peer.sizes).
      if (i === peer.sizes.length) {
        const size = wireSize(frames[i]!);
        peer.sizes.push(size);
        peer.sizedBytes += size;
      }
      bytes += peer.sizes[i]!;
      if (bytes > limit) return Math.max(1, i);
    }
    return ready;
  }

  /**
   * Works out what is still the peer's: the frames the transport holds (the
   * last `buffered()` bytes of its last batch) and those waiting here. Returns
   * whether the core must hear of it; a transport that has drained gets the
   * waiting frames at the next round.
   */
  private observe(peer: Peer): boolean {
    peer.observed = true;
    if (peer.closed) return false;
    const inTransport = peer.socket.buffered();
    if (inTransport === 0) {
      peer.held = [];
      peer.heldBytes = 0;
      if (!peer.queued && this.writable(peer) > 0) {
        peer.queued = true;
        this.toFlush.push(peer);
      }
    } else {
      // Frames wholly handed over leave the front; a frame partly sent is still held.
      let handedOver = peer.heldBytes - inTransport;
      let drop = 0;
      while (drop < peer.held.length && peer.held[drop]!.size <= handedOver) handedOver -= peer.held[drop++]!.size;
      if (drop > 0) {
        for (let i = 0; i < drop; i++) peer.heldBytes -= peer.held[i]!.size;
        peer.held = peer.held.slice(drop);
      }
    }
    for (let i = peer.sizes.length; i < peer.frames.length; i++) {
      const size = wireSize(peer.frames[i]!);
      peer.sizes.push(size);
      peer.sizedBytes += size;
    }
    const waiting = peer.sizedBytes;
    // Frames the transport refused (the tail of what it holds) never go out:
    // like those waiting here, they count as queued, so the core never drops
    // them from a replay buffer as written.
    let queuedFrom = refusedFrom(peer, inTransport);
    for (let i = 0; queuedFrom === Infinity && i < peer.seqs.length; i++) {
      if (peer.seqs[i]! > 0) queuedFrom = peer.seqs[i]!;
    }
    let from = queuedFrom;
    for (const pending of peer.held) {
      if (pending.s > 0) {
        from = pending.s;
        break;
      }
    }
    const bytes = inTransport + waiting;
    if (bytes === 0) this.behind.delete(peer);
    else this.behind.add(peer);
    if (bytes === peer.reported && from === peer.reportedFrom && queuedFrom === peer.reportedQueued) return false;
    peer.reported = bytes;
    peer.reportedFrom = from;
    peer.reportedQueued = queuedFrom;
    return true;
  }

  private report(peer: Peer): void {
    this.run({ type: 'backlog', now: this.now(), conn: peer.conn, bytes: peer.reported, unflushedFrom: peer.reportedFrom, queuedFrom: peer.reportedQueued });
  }

  private armTimeout(at: number | undefined): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (at === undefined) return;
    // A timer that fires a little early finds nothing due; the tick then re-arms for the same deadline.
    this.timer = setTimeout(() => this.tick(), Math.max(0, at - this.now()));
  }
}
