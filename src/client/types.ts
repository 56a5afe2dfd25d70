// The public types of the client SDK: options, messages, the typed event map
// helpers and the minimal WebSocket shape every runtime's constructor satisfies.

import type { Compression, Format, Sender, Target } from '../core/protocol.ts';
import type { NerveError } from './errors.ts';

export type { Sender, Target };

/**
 * The part of the standard WebSocket the client uses. The browser, Deno, Bun,
 * Workers and Node ≥ 22 globals satisfy it, and so does `WebSocket` from `ws`.
 */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: string | Uint8Array<ArrayBuffer>): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type Metadata = Record<string, unknown>;

export interface NerveClientOptions {
  /** `ws://host:6669` (or `wss://…`); the format and compression query parameters are added for you. */
  url: string;
  appName: string;
  clientId: string;
  /** The hub's shared password, for trusted services. Give this or `token`. */
  password?: string;
  /**
   * A JWT the hub verifies (docs/browsers.md), or a function that fetches one:
   * a function is called before every connect and reconnect, so short-lived
   * tokens never go stale, and a 4401 is retried once with a fresh one.
   */
  token?: string | (() => string | Promise<string>);
  /** Initial metadata, sent in IDENTIFY; change it later with setMetadata(). */
  metadata?: Metadata;
  /** Wire format, default 'json'. */
  format?: Format;
  /** 'zlib' deflates every frame in both directions; default 'none'. */
  compression?: Compression;
  /** A WebSocket constructor; defaults to the global one (Node 20 has none: pass `WebSocket` from `ws`). */
  WebSocket?: WebSocketConstructor;
  /** First reconnect delay in ms, doubled per failed attempt, with jitter. Default 250. */
  reconnectDelay?: number;
  /** Cap on the reconnect delay in ms. Default 10 000. */
  maxReconnectDelay?: number;
  /** ms an attempt may take from opening the socket to WELCOME before it is retried. Default 10 000. */
  handshakeTimeout?: number;
  /** ms connect() waits for the first WELCOME before rejecting with CONNECT_TIMEOUT; 0 waits forever. Default 30 000. */
  connectTimeout?: number;
  /** Messages held while not connected; one more throws BUFFER_FULL. Default 1 000. */
  maxBufferedMessages?: number;
  /** Default request() timeout in ms. Default 30 000. */
  requestTimeout?: number;
  /** Called when an event handler throws or rejects. Default: console.error. */
  onHandlerError?: (error: unknown, message: NerveMessage | ServerMessage) => void;
}

export interface RequestOptions {
  /** ms to wait for the reply; defaults to the client's `requestTimeout`. */
  timeout?: number;
}

/** A routed DISPATCH as a handler receives it. */
export interface NerveMessage<E extends string = string, D = unknown> {
  e: E;
  d: D;
  from: Sender;
  nonce?: string;
  /** Per-session sequence number; the client resumes from the last one it processed. */
  s: number;
}

/** One answer to requestAll(): who replied, and the `d` of its reply. */
export interface Reply<D = unknown> {
  from: Sender;
  data: D;
}

/** An event the server itself sends (`NERVE_*`): no sender, no sequence number. */
export interface ServerMessage<E extends string = string, D = unknown> {
  e: E;
  d: D;
  nonce?: string;
}

export interface ServerEvents {
  /** Sent for every dispatch of ours that carried a nonce (requests; the ACKs for our replies stay inside the client). */
  NERVE_ACK: { delivered: number; queued: number };
  /** A held dispatch expired without a recipient. */
  NERVE_UNDELIVERABLE: { reason: string; e: string };
  /**
   * Right after every reconnect's WELCOME: whether the session was resumed, its
   * last `s`, how many dispatches are replayed, and how many after ours were
   * already gone from the hub's replay buffer (`missed`).
   */
  NERVE_SESSION: { resumed: boolean; s: number; replayed: number; missed?: number };
}

export type ConnectionState = 'idle' | 'connecting' | 'ready' | 'reconnecting' | 'closed';

export interface StateInfo {
  /** The server instance (from HELLO) on `ready`. */
  worker?: string;
  /** 1-based attempt number on `connecting`/`reconnecting` after a failure. */
  attempt?: number;
  /** ms until that attempt. */
  delay?: number;
  /** The close code that caused this state, when there was one. */
  code?: number;
  reason?: string;
  /** On `closed` after a fatal close code or connect timeout. */
  error?: NerveError;
}

export type StateHandler = (state: ConnectionState, info: StateInfo) => void;

/** Event names the user's map declares. */
export type EventName<Events> = keyof Events & string;

export type EventData<Events, E extends string> = E extends keyof ServerEvents
  ? ServerEvents[E]
  : E extends keyof Events
    ? Events[E]
    : never;

export type MessageFor<Events, E extends string> = E extends keyof ServerEvents
  ? ServerMessage<E, ServerEvents[E]>
  : NerveMessage<E, EventData<Events, E>>;

export type EventHandler<Events, E extends string> = (
  data: EventData<Events, E>,
  message: MessageFor<Events, E>,
) => unknown;

export type ReplyData<Replies, E extends string> = E extends keyof Replies ? Replies[E] : unknown;
