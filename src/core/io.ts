// What goes into `step` and what comes out: plain tagged data, never closures,
// so tests compare them with toEqual and any host can execute them.

import type { Claims } from './auth.ts';
import type { NodeMessage } from './cluster-messages.ts';
import type { Stored } from './persist.ts';
import type { CloseCode, Target, Wire } from './protocol.ts';

/** Connections are named by the host; the core only compares them. */
export type ConnId = number;

export type Input =
  /** A connection was accepted; the core answers with HELLO. `remote` is the peer's address, where known. */
  | { type: 'open'; now: number; conn: ConnId; wire: Wire; remote?: string | undefined }
  /** One inbound frame, exactly as received (text → string, binary → bytes). */
  | { type: 'message'; now: number; conn: ConnId; data: string | Uint8Array }
  /**
   * The transport refused a frame before the core could see it (over its size
   * cap, invalid UTF-8, a framing violation); the core answers it
   * like any bad frame, with NO_U_TBH and 4413 or 4400.
   */
  | { type: 'refused'; now: number; conn: ConnId; tooLarge: boolean; detail?: string | undefined }
  /** The transport closed (by the peer, or after a close output). `code` is what the peer sent, if anything. */
  | { type: 'close'; now: number; conn: ConnId; code?: number | undefined }
  /**
   * A HEARTBEAT the host answered without the core (a Durable Object's
   * auto-response); `at` is when it arrived. Sends nothing; feed before a tick.
   */
  | { type: 'heartbeat'; now: number; conn: ConnId; at: number }
  /** The host's one timer fired: deadlines at or before `now` are handled. */
  | { type: 'tick'; now: number }
  /** A dispatch that arrived over HTTP (`POST /dispatch`), not a socket. */
  | { type: 'dispatch'; now: number; request: number; body: unknown }
  /** Stop accepting work: GO_AWAY to everyone, close 1001. */
  | { type: 'shutdown'; now: number }
  /**
   * What the host holds for a connection after a flush: `bytes` not yet
   * handed to the OS (Infinity if the transport dropped a frame), the `s` of
   * the oldest routed event among them, and of the oldest still queued in the
   * host itself (which a cut drops; the transport's part goes out before the
   * close). Reported when it becomes non-zero, while it stays non-zero, and
   * when it is zero again; `lost` when a connection being closed is dropping
   * what it still holds (those events count as never written).
   */
  | { type: 'backlog'; now: number; conn: ConnId; bytes: number; unflushedFrom: number; queuedFrom?: number | undefined; lost?: boolean | undefined }
  /**
   * The host wrote the frames queued before this flush (a batching host
   * sends one per flush, before that flush's `backlog` reports, which say
   * what still waits). Until a host first sends it, frames count as handed
   * over as the step returns. `behind`: connections whose frames did not all
   * leave with this flush (some still wait in the host, or the transport
   * refused some); their backlog reports follow and say from where.
   */
  | { type: 'flushed'; now: number; behind?: readonly ConnId[] | undefined }
  /**
   * A ping frame the transport answered by itself, where the runtime
   * reports one: it counts against the rate limit like any frame.
   */
  | { type: 'ping'; now: number; conn: ConnId }
  /** The answer to a `verify` output: the token's claims, or why it was refused. */
  | { type: 'verified'; now: number; conn: ConnId; claims?: Claims | undefined; error?: string | undefined }
  // ── cluster mode only (state.cluster set; docs/cluster.md) ──
  /**
   * Messages other nodes sent (this node's inbox or the cluster bus), in the
   * order the stream holds them; `at` is the entry's id when it was read from
   * the bus, where a session that moves between nodes must not miss or repeat
   * a mode-all event (see cluster.ts, busSeen).
   */
  | { type: 'node'; now: number; from: string; msgs: NodeMessage[]; at?: string | undefined }
  /**
   * The link to the cluster went up or down, or the set of live nodes
   * changed (`nodes` includes this one). Going up, the core republishes its
   * sessions and claims them again.
   */
  | { type: 'link'; now: number; up: boolean; nodes: string[] }
  /** The answer to a `claim`: `owner` undefined when this node now owns the session, else the node that does. */
  | { type: 'claimed'; now: number; key: string; owner?: string | undefined }
  /**
   * A dead node's sessions and held events, already claimed for this node,
   * with what its inbox and the bus held that it never handled.
   */
  | { type: 'adopt'; now: number; node: string; stored: Stored; inbox: NodeMessage[]; bus: { at: string; msgs: NodeMessage[] }[] };

export type Output =
  /**
   * `s` is set on routed events, so a host can tell which ones its transport
   * still holds. A clustered host writes a frame only once the cluster has
   * stored what the step that produced it changed (docs/cluster.md).
   */
  | { type: 'send'; conn: ConnId; data: string | Uint8Array; s?: number | undefined }
  | { type: 'close'; conn: ConnId; code: CloseCode; reason: string }
  /** Drop the connection now, discarding what the transport still holds (follows a close). */
  | { type: 'terminate'; conn: ConnId }
  /** Drop the frames queued for this connection that the host has not yet handed to its transport. */
  | { type: 'discard'; conn: ConnId }
  /** Verify this IDENTIFY token and answer with a `verified` input (signatures are checked by the host). */
  | { type: 'verify'; conn: ConnId; token: string }
  | { type: 'log'; level: 'info' | 'warn' | 'error'; msg: string; fields?: Record<string, unknown> }
  /** The answer to a `dispatch` input. */
  | { type: 'dispatched'; request: number; delivered: number; queued: number }
  | { type: 'rejected'; request: number; status: 400 | 429 | 503; error: string }
  // ── cluster mode only ──
  /** To another node's inbox (`to`), or to every node on the cluster bus (`to` undefined). */
  | { type: 'relay'; to?: string | undefined; msg: NodeMessage }
  /**
   * Make `node` the owner of session (app, client) in the cluster if the
   * owner is now `expected` ('' for none), itself, or absent; the host answers
   * with `claimed` (key = the session key) when `answer` is set.
   */
  | { type: 'claim'; app: string; client: string; node: string; expected: string; answer: boolean };

export interface Limits {
  /** ms between heartbeats, announced in HELLO. */
  heartbeatInterval: number;
  /** bytes per inbound frame (received, and again inflated). */
  maxPayload: number;
  /** bytes of a client's metadata as JSON. */
  maxMetadata: number;
  /** ms a held dispatch waits for a recipient. */
  queueTtl: number;
  /** held dispatches per app, and their bytes. */
  queueMaxCount: number;
  queueMaxBytes: number;
  /** ms a dropped session can be resumed. */
  resumeWindow: number;
  /** dispatches kept per session for replay, and their bytes. */
  replayMaxCount: number;
  replayMaxBytes: number;
  /** inbound frames per second per connection; 0 = off. Burst is two seconds' worth. */
  rateLimit: number;
  /** nesting levels of objects and arrays in any frame or HTTP body (d, metadata, query). */
  maxDepth: number;
  /** elements of one `$in`, `$nin` or `$all` operand in a query. */
  maxQueryOperands: number;
  /** conditions, operators and operand values in one query, counted together. */
  maxQueryTerms: number;
  /** operators applied to fields in one query (a bare value is one `$eq`): what a match costs. */
  maxQueryConditions: number;
  /** metadata values one dispatch's query may look at across all the clients it is tested on. */
  maxQueryWork: number;
  /** bytes written to a connection that its transport has not yet handed to the OS; over it → slow consumer. */
  maxOutbound: number;
  /** bytes of held events, replay buffers and metadata across the whole hub. */
  maxMemory: number;
  /** open connections, identified or not. */
  maxConnections: number;
  /** open connections that have not identified yet. */
  maxUnidentified: number;
  /** failed authentications per remote address per minute before a minute of 4429; 0 = off. */
  authFailures: number;
}

export interface CoreConfig extends Limits {
  /** `nerve-` + 6 hex characters, chosen by the host. */
  worker: string;
  password: string;
  /**
   * One node of a cluster (docs/cluster.md): `worker` is its node id, unique
   * in the cluster; sessions of other nodes are routed to through `relay`.
   */
  cluster?: boolean | undefined;
}

export const DEFAULT_LIMITS: Limits = {
  heartbeatInterval: 45_000,
  maxPayload: 1_048_576,
  maxMetadata: 65_536,
  queueTtl: 30_000,
  queueMaxCount: 10_000,
  queueMaxBytes: 16 * 1_048_576,
  resumeWindow: 30_000,
  replayMaxCount: 1_000,
  replayMaxBytes: 4 * 1_048_576,
  rateLimit: 0,
  maxDepth: 32,
  maxQueryOperands: 256,
  maxQueryTerms: 512,
  maxQueryConditions: 16,
  maxQueryWork: 250_000,
  maxOutbound: 8 * 1_048_576,
  maxMemory: 1024 * 1_048_576,
  maxConnections: 20_000,
  maxUnidentified: 1_000,
  authFailures: 20,
};

export type { Target, Wire };
