// NerveClient: one logical connection to a Nerve hub that survives drops. It
// identifies, heartbeats, resumes its session after a drop, buffers outbound
// messages while disconnected, and matches request nonces to replies.

import {
  ACK_EVENT,
  Close,
  MAX_NAME,
  Op,
  RESERVED_EVENT_PREFIX,
  SESSION_EVENT,
  UNDELIVERABLE_EVENT,
  type Compression,
  type Format,
} from '../core/protocol.ts';
import { jsonCodec, loadCodec, type Codec, type Frame } from './codec.ts';
import { FATAL_CLOSE_CODES, NerveError } from './errors.ts';
import type {
  ConnectionState,
  EventHandler,
  EventName,
  Metadata,
  NerveClientOptions,
  NerveMessage,
  ReplyData,
  Reply,
  RequestOptions,
  Sender,
  ServerEvents,
  ServerMessage,
  StateHandler,
  StateInfo,
  Target,
  WebSocketConstructor,
  WebSocketLike,
} from './types.ts';

type Timer = ReturnType<typeof setTimeout>;

interface PendingRequest {
  /** request() settles on the first reply; requestAll() collects every reply here. */
  readonly replies: Reply[] | undefined;
  /** requestAll(): how many replies can come, once the ACK (and any NERVE_UNDELIVERABLE) said so. */
  expected: number | undefined;
  /** A request to this very client arrives here first as the request itself, then as the reply. */
  readonly toSelf: boolean;
  resolve(value: unknown): void;
  reject(error: NerveError): void;
  timer: Timer;
}

const OPEN = 1;
/**
 * Requests this client recently answered, by sender and nonce. A reply that
 * outlives its requester reaches the requester's next instance as an ordinary
 * event; answering each request once keeps two such handlers from bouncing it forever.
 */
const ANSWERED_KEPT = 1024;
/** How long close() waits for the server to answer our close frame. */
const CLOSE_GRACE_MS = 2_000;

type AnyHandler = (data: unknown, message: any) => unknown;

export class NerveClient<Events extends object = Record<string, unknown>, Replies extends object = Record<never, never>> {
  readonly appName: string;
  readonly clientId: string;
  readonly format: Format;
  readonly compression: Compression;

  #state: ConnectionState = 'idle';
  #worker: string | undefined;
  #metadata: Metadata;

  readonly #password: string | undefined;
  readonly #token: NerveClientOptions['token'];
  /** The credential for the attempt in progress: a token function is asked anew for each. */
  #credential: { password: string } | { token: string } | undefined;
  /** A fresh token refused with 4401 since the last WELCOME: the next 4401 is final. */
  #freshTokenRefused = false;
  readonly #url: string;
  readonly #WebSocket: WebSocketConstructor;
  /** Set once the wire format's codec has loaded; plain JSON has it from the start. */
  #codec: Codec | undefined;
  readonly #reconnectDelay: number;
  readonly #maxReconnectDelay: number;
  readonly #handshakeTimeout: number;
  readonly #connectTimeout: number;
  readonly #maxBuffered: number;
  readonly #requestTimeout: number;
  readonly #onHandlerError: (error: unknown, message: NerveMessage | ServerMessage) => void;

  #socket: WebSocketLike | null = null;
  /** Set once a WELCOME has been seen: later IDENTIFYs ask to resume. */
  #hasSession = false;
  /** The `s` of the last dispatch handed to handlers. */
  #lastSeq = 0;
  /** True until the first sequenced dispatch after a WELCOME has been seen. */
  #firstSinceWelcome = true;
  #failures = 0;
  /** Numbers connection attempts, so one abandoned while preparing cannot open a socket later. */
  #attempt = 0;
  #awaitingAck = false;
  #goingAway = false;
  /** The reason from the last NO_U_TBH; the close that follows carries it too, truncated. */
  #refusal: string | undefined;

  #heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  #handshakeTimer: Timer | undefined;
  #reconnectTimer: Timer | undefined;
  #connectTimer: Timer | undefined;

  #outbox: Frame[] = [];
  #pending = new Map<string, PendingRequest>();
  /**
   * Every request nonce starts with this, so any nonce that does not is one
   * this client only replied with, and a late reply to one of ours is known
   * without keeping a list of settled requests.
   */
  readonly #noncePrefix = `${randomId()}-`;
  #nonceCounter = 0;
  #answered = new Set<string>();

  #handlers = new Map<string, Set<AnyHandler>>();
  #stateHandlers = new Set<StateHandler>();
  #connectWaiters: { resolve(): void; reject(error: NerveError): void }[] = [];
  #closing: Promise<void> | undefined;

  constructor(options: NerveClientOptions) {
    checkName('appName', options.appName);
    checkName('clientId', options.clientId);
    this.appName = options.appName;
    this.clientId = options.clientId;
    if ((options.password === undefined) === (options.token === undefined)) {
      throw new NerveError('INVALID', 'give exactly one of password and token');
    }
    this.#password = options.password;
    this.#token = options.token;
    this.format = options.format ?? 'json';
    this.compression = options.compression ?? 'none';
    if (this.format !== 'json' && this.format !== 'msgpack') throw new NerveError('INVALID', 'format must be "json" or "msgpack"');
    if (this.compression !== 'none' && this.compression !== 'zlib') throw new NerveError('INVALID', 'compression must be "none" or "zlib"');
    this.#metadata = merge({}, options.metadata ?? {});

    const url = new URL(options.url);
    if (options.format) url.searchParams.set('format', options.format);
    if (this.compression !== 'none') url.searchParams.set('compression', this.compression);
    this.#url = url.toString();

    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WebSocketImpl) {
      throw new TypeError('NerveClient: no global WebSocket here; pass one, e.g. { WebSocket } from the "ws" package');
    }
    this.#WebSocket = WebSocketImpl;
    this.#codec = this.format === 'json' && this.compression === 'none' ? jsonCodec : undefined;
    this.#reconnectDelay = options.reconnectDelay ?? 250;
    this.#maxReconnectDelay = options.maxReconnectDelay ?? 10_000;
    this.#handshakeTimeout = options.handshakeTimeout ?? 10_000;
    this.#connectTimeout = options.connectTimeout ?? 30_000;
    this.#maxBuffered = options.maxBufferedMessages ?? 1_000;
    this.#requestTimeout = options.requestTimeout ?? 30_000;
    this.#onHandlerError =
      options.onHandlerError ??
      ((error, message) => console.error(`nerve: handler for ${message.e} failed`, error));
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /** The server instance this client is (or was last) connected to, from HELLO. */
  get worker(): string | undefined {
    return this.#worker;
  }

  /** A copy of the metadata as the server should currently see it. */
  get metadata(): Metadata {
    return { ...this.#metadata };
  }

  /**
   * Opens the connection and resolves on WELCOME. Drops and refusals that a
   * retry can fix are retried with backoff; a fatal close code (4400, 4401,
   * 4403, 4409) or `connectTimeout` rejects with a NerveError and closes the client.
   */
  connect(): Promise<void> {
    if (this.#state === 'ready') return Promise.resolve();
    if (this.#state === 'closed') return Promise.reject(new NerveError('CLOSED', 'the client is closed'));
    const ready = new Promise<void>((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#state === 'idle') {
      this.#state = 'connecting';
      this.#emitState('connecting', {});
      if (this.#connectTimeout > 0) {
        this.#connectTimer = setTimeout(() => {
          const error = new NerveError('CONNECT_TIMEOUT', `no WELCOME from ${this.#url} within ${this.#connectTimeout} ms`);
          void this.#shutdown(error);
        }, this.#connectTimeout);
      }
      this.#open();
    }
    return ready;
  }

  /** Subscribes to a dispatch event (or a `NERVE_*` server event); returns the unsubscribe function. */
  on<E extends EventName<Events> | keyof ServerEvents>(event: E, handler: EventHandler<Events, E>): () => void {
    let set = this.#handlers.get(event);
    if (!set) this.#handlers.set(event, (set = new Set()));
    set.add(handler as AnyHandler);
    return () => this.off(event, handler);
  }

  off<E extends EventName<Events> | keyof ServerEvents>(event: E, handler: EventHandler<Events, E>): void {
    const set = this.#handlers.get(event);
    if (set?.delete(handler as AnyHandler) && set.size === 0) this.#handlers.delete(event);
  }

  /** Connection state changes: connecting, ready, reconnecting, closed. Returns the unsubscribe function. */
  onState(handler: StateHandler): () => void {
    this.#stateHandlers.add(handler);
    return () => this.#stateHandlers.delete(handler);
  }

  /**
   * Fire and forget. While not connected the message waits in the outbound
   * buffer; throws NerveError BUFFER_FULL when that is full, CLOSED after close().
   */
  dispatch<E extends EventName<Events>>(event: E, data: Events[E], to: Target): void {
    this.#send(this.#dispatchFrame(event, data, to));
  }

  /**
   * Dispatches with a fresh nonce and resolves with the `d` of the first reply
   * carrying it, whatever the mode: later replies are dropped. To hear from
   * every recipient, use requestAll().
   */
  request<E extends EventName<Events>>(
    event: E,
    data: Events[E],
    to: Target,
    options: RequestOptions = {},
  ): Promise<ReplyData<Replies, E>> {
    return this.#request(event, data, to, options.timeout, false) as Promise<ReplyData<Replies, E>>;
  }

  /**
   * Dispatches to every matching client (mode all) and resolves with one
   * `{ from, data }` per reply, in arrival order: as soon as every recipient
   * the hub counted in its ACK has answered, or when the timeout passes, with
   * the replies so far. No match resolves with `[]` at once.
   */
  requestAll<E extends EventName<Events>>(
    event: E,
    data: Events[E],
    to: Omit<Target, 'mode' | 'key'>,
    options: RequestOptions = {},
  ): Promise<Reply<ReplyData<Replies, E>>[]> {
    if ((to as Target)?.key !== undefined) throw new NerveError('INVALID', 'requestAll() reaches every match: to.key does not apply');
    return this.#request(event, data, { ...to, mode: 'all' }, options.timeout, true) as Promise<Reply<ReplyData<Replies, E>>[]>;
  }

  /**
   * Answers a request: dispatches to its sender with the same event name and
   * nonce. Returns false, sending nothing, when the message asked for no reply
   * (no nonce), its sender cannot be addressed (HTTP dispatches), or this
   * client already answered it.
   */
  reply<E extends EventName<Events>>(message: NerveMessage<E, Events[E]>, data: ReplyData<Replies, E>): boolean {
    const nonce = message.nonce;
    const from = message.from;
    if (nonce === undefined || from?.client_id === undefined) return false;
    const answered = `${from.app_name}\n${from.client_id}\n${nonce}`;
    if (this.#answered.has(answered)) return false;
    this.#send(this.#dispatchFrame(message.e, data, { app_name: from.app_name, client_id: from.client_id }, nonce));
    this.#answered.add(answered);
    if (this.#answered.size > ANSWERED_KEPT) this.#answered.delete(this.#answered.values().next().value!);
    return true;
  }

  #request(event: string, data: unknown, to: Target, timeout = this.#requestTimeout, all: boolean): Promise<unknown> {
    const nonce = this.#noncePrefix + (this.#nonceCounter++).toString(36);
    const frame = this.#dispatchFrame(event, data, to, nonce);
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        const pending = this.#pending.get(nonce);
        this.#settle(nonce);
        if (pending?.replies) resolve(pending.replies);
        else reject(new NerveError('TIMEOUT', `no reply to ${event} within ${timeout} ms`));
      }, timeout);
      const toSelf = to.client_id === this.clientId && to.app_name === this.appName;
      this.#pending.set(nonce, { replies: all ? [] : undefined, expected: undefined, toSelf, resolve, reject, timer });
      try {
        this.#send(frame);
      } catch (error) {
        this.#settle(nonce);
        reject(error);
      }
    });
  }

  /** Shallow-merges `patch` into this client's metadata; a `null` value removes the key. */
  setMetadata(patch: Metadata): void {
    if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) {
      throw new NerveError('INVALID', 'metadata must be an object');
    }
    // Before the first connect the IDENTIFY carries it; afterwards the server's copy must be patched too.
    if (this.#state !== 'idle') this.#send({ op: Op.ABOUT_ME, d: patch });
    merge(this.#metadata, patch);
  }

  /**
   * Closes with code 1000, which ends the session on the server, and never
   * reconnects. Messages still in the outbound buffer are discarded; pending
   * requests reject with CLOSED.
   */
  close(): Promise<void> {
    return this.#shutdown(undefined);
  }

  // ── connection lifecycle ────────────────────────────────────────────────

  /** One connection attempt: what it needs first (the codec, a token), then the socket. */
  #open(): void {
    this.#reconnectTimer = undefined;
    const attempt = ++this.#attempt;
    // Covers preparing too: a token fetch that hangs must not stall reconnecting forever.
    this.#handshakeTimer = setTimeout(() => this.#drop('no WELCOME in time'), this.#handshakeTimeout);
    if (this.#codec && typeof this.#token !== 'function') {
      this.#credential = this.#fixedCredential();
      return this.#openSocket();
    }
    void this.#prepareThenOpen(attempt);
  }

  async #prepareThenOpen(attempt: number): Promise<void> {
    const stillCurrent = () => attempt === this.#attempt && this.#state !== 'closed';
    try {
      this.#codec ??= await loadCodec(this.format, this.compression);
    } catch (error) {
      // A chunk that failed to download can load on the next attempt; connectTimeout bounds the wait.
      if (stillCurrent()) this.#lost(undefined, `could not load the ${this.format}/${this.compression} codec: ${String(error)}`);
      return;
    }
    if (typeof this.#token === 'function') {
      try {
        const token = await this.#token();
        if (typeof token !== 'string' || token === '') throw new TypeError('the token function returned no token');
        this.#credential = { token };
      } catch (error) {
        if (stillCurrent()) this.#lost(undefined, `could not get a token: ${String(error)}`);
        return;
      }
    } else {
      this.#credential = this.#fixedCredential();
    }
    if (stillCurrent()) this.#openSocket();
  }

  #fixedCredential(): { password: string } | { token: string } {
    return typeof this.#token === 'string' ? { token: this.#token } : { password: this.#password! };
  }

  #openSocket(): void {
    let socket: WebSocketLike;
    try {
      socket = new this.#WebSocket(this.#url);
    } catch (error) {
      this.#lost(undefined, String(error));
      return;
    }
    socket.binaryType = 'arraybuffer';
    this.#socket = socket;
    this.#refusal = undefined;
    this.#goingAway = false;
    socket.onmessage = (event: { data: unknown }) => {
      if (this.#socket === socket) this.#onFrame(event.data);
    };
    socket.onclose = (event: { code?: number; reason?: string }) => {
      if (this.#socket === socket) this.#lost(event.code, event.reason || this.#refusal);
    };
    // Without a listener some implementations (ws) throw on 'error'; the close event follows anyway.
    socket.onerror = () => {};
  }

  #onFrame(data: unknown): void {
    let frame: Frame;
    try {
      frame = this.#codec!.decode(data);
    } catch {
      return; // not ours to answer: the server never sends garbage on purpose
    }
    switch (frame.op) {
      case Op.HELLO:
        return this.#onHello(frame.d as { heartbeat_interval?: unknown; worker?: unknown } | undefined);
      case Op.WELCOME:
        return this.#onWelcome();
      case Op.HEARTBEAT_ACK:
        this.#awaitingAck = false;
        return;
      case Op.GO_AWAY:
        // The server closes with 1001 right after; waiting for that close keeps every frame it flushed.
        this.#goingAway = true;
        return;
      case Op.NO_U_TBH:
        this.#refusal = typeof frame.d === 'string' ? frame.d : undefined;
        return;
      case Op.DISPATCH:
        return this.#onDispatch(frame);
    }
  }

  #onHello(d: { heartbeat_interval?: unknown; worker?: unknown } | undefined): void {
    if (typeof d?.worker === 'string') this.#worker = d.worker;
    const interval = d?.heartbeat_interval;
    if (typeof interval === 'number' && interval > 0) {
      this.#awaitingAck = false;
      clearInterval(this.#heartbeatTimer);
      this.#heartbeatTimer = setInterval(() => {
        // No ACK since the last beat: the connection is a zombie even if the socket looks open.
        if (this.#awaitingAck) return this.#drop('heartbeat not acknowledged');
        this.#awaitingAck = true;
        this.#socket?.send(this.#codec!.heartbeat);
      }, interval);
    }
    const identify: Record<string, unknown> = {
      app_name: this.appName,
      client_id: this.clientId,
      ...this.#credential,
      metadata: this.#metadata,
    };
    if (this.#hasSession) {
      identify.reconnect = true;
      identify.seq = this.#lastSeq;
    }
    this.#socket?.send(this.#codec!.encode({ op: Op.IDENTIFY, d: identify }));
  }

  #onWelcome(): void {
    clearTimeout(this.#handshakeTimer);
    clearTimeout(this.#connectTimer);
    this.#hasSession = true;
    this.#firstSinceWelcome = true;
    this.#failures = 0;
    this.#freshTokenRefused = false;
    this.#state = 'ready';
    const outbox = this.#outbox;
    this.#outbox = [];
    for (const frame of outbox) this.#socket!.send(this.#codec!.encode(frame));
    this.#emitState('ready', { worker: this.#worker });
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const waiter of waiters) waiter.resolve();
  }

  /** Our side decided the connection is dead: let it go without waiting for a close handshake. */
  #drop(reason: string): void {
    const socket = this.#socket;
    if (!socket) {
      // Still preparing (loading a codec, fetching a token): give up on this attempt.
      this.#attempt++;
      return this.#lost(undefined, reason);
    }
    this.#detach(socket);
    const terminate = (socket as { terminate?: () => void }).terminate;
    try {
      // Not 1000: the server must keep the session so the next connection can resume it.
      if (typeof terminate === 'function') terminate.call(socket);
      else socket.close(4000, reason);
    } catch {
      // already closed
    }
    this.#lost(undefined, reason);
  }

  #detach(socket: WebSocketLike): void {
    socket.onmessage = null;
    socket.onclose = null;
    socket.onopen = null;
    if (this.#socket === socket) this.#socket = null;
    clearInterval(this.#heartbeatTimer);
    clearTimeout(this.#handshakeTimer);
    this.#heartbeatTimer = undefined;
  }

  /** The current socket is gone (closed by the server, the network, or #drop). */
  #lost(code: number | undefined, reason: string | undefined): void {
    if (this.#socket) this.#detach(this.#socket);
    clearTimeout(this.#handshakeTimer);
    if (this.#state === 'closed' || this.#state === 'idle') return;
    const retryWithFreshToken = code === Close.BAD_PASSWORD && typeof this.#token === 'function' && !this.#freshTokenRefused;
    // Before WELCOME a 4413 can only be our IDENTIFY's metadata, which every retry would send again.
    const identifyTooLarge = code === Close.TOO_LARGE && this.#state !== 'ready';
    if (retryWithFreshToken) this.#freshTokenRefused = true;
    else if (code !== undefined && (FATAL_CLOSE_CODES.has(code) || identifyTooLarge)) {
      void this.#shutdown(new NerveError(code, `${code}: ${reason || 'refused by the server'}`, reason));
      return;
    }
    // GO_AWAY: another instance can take us at once. A refusal may name when to come back (4429).
    const delay = this.#goingAway ? 0 : Math.max(this.#backoff(this.#failures), retryAfter(reason));
    this.#failures += 1;
    this.#state = this.#hasSession ? 'reconnecting' : 'connecting';
    this.#emitState(this.#state, { attempt: this.#failures, delay, code, reason });
    this.#reconnectTimer = setTimeout(() => this.#open(), delay);
  }

  #backoff(failures: number): number {
    const ceiling = Math.min(this.#maxReconnectDelay, this.#reconnectDelay * 2 ** failures);
    // Half fixed, half random: spreads a fleet reconnecting to a restarted hub.
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  #shutdown(error: NerveError | undefined): Promise<void> {
    if (this.#closing) return this.#closing;
    const socket = this.#socket;
    if (socket) this.#detach(socket);
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#connectTimer);
    this.#state = 'closed';
    this.#outbox = [];
    const failure = error ?? new NerveError('CLOSED', 'the client was closed');
    for (const [nonce, pending] of this.#pending) {
      this.#settle(nonce);
      pending.reject(failure);
    }
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const waiter of waiters) waiter.reject(failure);

    this.#closing = new Promise<void>((resolve) => {
      if (!socket || socket.readyState > OPEN) return resolve();
      const grace = setTimeout(resolve, CLOSE_GRACE_MS);
      socket.onclose = () => {
        clearTimeout(grace);
        resolve();
      };
      try {
        socket.close(1000, error ? error.message.slice(0, 100) : 'bye');
      } catch {
        clearTimeout(grace);
        resolve();
      }
    }).then(() => {
      const info: StateInfo = error
        ? { error, code: typeof error.code === 'number' ? error.code : undefined, reason: error.message }
        : { code: 1000 };
      this.#emitState('closed', info);
    });
    return this.#closing;
  }

  // ── inbound dispatches ──────────────────────────────────────────────────

  #onDispatch(frame: Frame): void {
    const e = frame.e;
    if (typeof e !== 'string') return;
    const nonce = typeof frame.nonce === 'string' ? frame.nonce : undefined;

    if (e.startsWith(RESERVED_EVENT_PREFIX)) {
      // The hub acknowledges every dispatch with a nonce, our replies included;
      // only what concerns our own requests is the application's business.
      if (nonce !== undefined && !nonce.startsWith(this.#noncePrefix)) return;
      if (nonce !== undefined) this.#onServerEvent(e, frame.d, nonce);
      else if (e === SESSION_EVENT) this.#onSession(frame.d as ServerEvents['NERVE_SESSION'] | null);
      const message: ServerMessage = { e, d: frame.d, ...(nonce !== undefined && { nonce }) };
      this.#emit(e, frame.d, message);
      return;
    }

    const s = frame.s;
    if (typeof s === 'number') {
      // For hubs without NERVE_SESSION: a resumed session replays only s > seq,
      // so s = 1 first after WELCOME means the hub started a fresh session.
      if (this.#firstSinceWelcome && s === 1) this.#lastSeq = 0;
      this.#firstSinceWelcome = false;
      if (s <= this.#lastSeq) return;
      this.#lastSeq = s;
    }

    const from = frame.from as Sender;
    if (nonce !== undefined && nonce.startsWith(this.#noncePrefix)) {
      const pending = this.#pending.get(nonce);
      const isRequestItself = pending?.toSelf === true && !this.#answered.has(`${this.appName}\n${this.clientId}\n${nonce}`);
      if (!isRequestItself) {
        // A reply to one of our requests, or a late one after it settled: never a new event.
        if (pending) this.#onReply(nonce, pending, frame.d ?? null, from);
        return;
      }
    }

    const message: NerveMessage = {
      e,
      d: frame.d ?? null,
      from,
      s: s as number,
      ...(nonce !== undefined && { nonce }),
    };
    this.#emit(e, message.d, message);
  }

  /** The hub says, right after WELCOME, whether our session survived the reconnect. */
  #onSession(session: ServerEvents['NERVE_SESSION'] | null): void {
    if (typeof session?.resumed !== 'boolean') return;
    // Fresh: its s counts from 1 again. Resumed: only s > seq follows, so the first-s rule has nothing to add.
    if (!session.resumed) this.#lastSeq = 0;
    this.#firstSinceWelcome = false;
  }

  #onReply(nonce: string, pending: PendingRequest, data: unknown, from: Sender): void {
    if (!pending.replies) {
      this.#settle(nonce);
      return pending.resolve(data);
    }
    pending.replies.push({ from, data });
    this.#settleIfComplete(nonce, pending);
  }

  #settleIfComplete(nonce: string, pending: PendingRequest): void {
    if (pending.expected === undefined || pending.replies!.length < pending.expected) return;
    this.#settle(nonce);
    pending.resolve(pending.replies);
  }

  #onServerEvent(e: string, d: unknown, nonce: string): void {
    const pending = this.#pending.get(nonce);
    if (!pending) return;
    if (e === UNDELIVERABLE_EVENT) {
      if (pending.replies) {
        // A held requestAll() (to a client_id) that expired: one reply fewer to wait for.
        if (pending.expected !== undefined) pending.expected -= 1;
        return this.#settleIfComplete(nonce, pending);
      }
      this.#settle(nonce);
      const reason = (d as { reason?: unknown } | null)?.reason;
      pending.reject(new NerveError('UNDELIVERABLE', `undeliverable: ${String(reason)}`, d));
    } else if (e === ACK_EVENT) {
      const ack = d as { delivered?: unknown; queued?: unknown } | null;
      const delivered = typeof ack?.delivered === 'number' ? ack.delivered : 0;
      const queued = typeof ack?.queued === 'number' ? ack.queued : 0;
      if (pending.replies) {
        pending.expected = delivered + queued;
        return this.#settleIfComplete(nonce, pending);
      }
      // Nobody got it and nothing holds it (mode all with no match): no reply can ever come.
      if (delivered === 0 && queued === 0) {
        this.#settle(nonce);
        pending.reject(new NerveError('UNDELIVERABLE', 'undeliverable: no client matched', d));
      }
    }
  }

  #emit(e: string, data: unknown, message: NerveMessage | ServerMessage): void {
    const set = this.#handlers.get(e);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        const result = handler(data, message);
        if (result instanceof Promise) result.catch((error) => this.#onHandlerError(error, message));
      } catch (error) {
        this.#onHandlerError(error, message);
      }
    }
  }

  // ── outbound ────────────────────────────────────────────────────────────

  #dispatchFrame(event: string, data: unknown, to: Target, nonce?: string): Frame {
    if (typeof event !== 'string' || event.length === 0 || event.length > MAX_NAME) {
      throw new NerveError('INVALID', `event name must be 1–${MAX_NAME} characters`);
    }
    if (event.startsWith(RESERVED_EVENT_PREFIX)) {
      throw new NerveError('INVALID', `event names starting with ${RESERVED_EVENT_PREFIX} are reserved for the server`);
    }
    if (typeof to?.app_name !== 'string' || to.app_name.length === 0) {
      throw new NerveError('INVALID', 'to.app_name must be a non-empty string');
    }
    const target: Target = { app_name: to.app_name };
    if (to.client_id !== undefined) target.client_id = to.client_id;
    if (to.query !== undefined) target.query = to.query;
    if (to.mode !== undefined) target.mode = to.mode;
    if (to.key !== undefined) target.key = to.key;
    const frame: Frame = { op: Op.DISPATCH, e: event, d: data === undefined ? null : data, to: target };
    if (nonce !== undefined) frame.nonce = nonce;
    return frame;
  }

  #send(frame: Frame): void {
    if (this.#state === 'closed') throw new NerveError('CLOSED', 'the client is closed');
    const socket = this.#socket;
    if (this.#state === 'ready' && socket && socket.readyState === OPEN) {
      socket.send(this.#codec!.encode(frame));
      return;
    }
    if (this.#outbox.length >= this.#maxBuffered) {
      throw new NerveError('BUFFER_FULL', `outbound buffer full (${this.#maxBuffered} messages) while not connected`);
    }
    this.#outbox.push(frame);
  }

  #settle(nonce: string): void {
    clearTimeout(this.#pending.get(nonce)?.timer);
    this.#pending.delete(nonce);
  }

  #emitState(state: ConnectionState, info: StateInfo): void {
    for (const handler of [...this.#stateHandlers]) {
      try {
        handler(state, info);
      } catch (error) {
        console.error('nerve: state handler failed', error);
      }
    }
  }
}

/** 10 base-36 characters: unique enough that two clients never share a nonce prefix. */
function randomId(): string {
  return (Math.random().toString(36).slice(2, 7) + Math.random().toString(36).slice(2, 7)).padEnd(10, '0');
}

/** ms a refusal's reason asks us to wait ("… retry in 42 s"), or 0. */
function retryAfter(reason: string | undefined): number {
  const seconds = reason === undefined ? undefined : /retry in (\d+(?:\.\d+)?) ?s\b/.exec(reason)?.[1];
  return seconds === undefined ? 0 : Number(seconds) * 1000;
}

function checkName(field: string, value: unknown): void {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_NAME) {
    throw new NerveError('INVALID', `${field} must be a string of 1–${MAX_NAME} characters`);
  }
}

function merge(target: Metadata, patch: Metadata): Metadata {
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete target[key];
    else target[key] = value;
  }
  return target;
}
