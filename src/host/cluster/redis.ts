// Nerve's own narrow view of Redis — commands, MULTI/EXEC, and whether a
// connection is usable — and its one implementation over @redis/client. The
// client is loaded here, with a dynamic import, only when cluster mode starts:
// a single node never needs it installed.

/** A reply as RESP2 gives it: strings, integers, nil and arrays of those. */
export type RedisReply = string | number | null | RedisReply[];

/**
 * One connection to Redis. Commands issued one after another are written in
 * that order, so Redis runs them in that order. Nothing it does throws: every
 * failure is a rejected promise or a `down` event.
 */
export interface RedisPort {
  /** Connected and authenticated: commands go out now rather than wait for a reconnect. */
  readonly ready: boolean;
  command(args: readonly string[]): Promise<RedisReply>;
  /** MULTI … EXEC: the replies of the commands, or a rejection when any was refused or the connection failed. */
  transaction(commands: readonly (readonly string[])[]): Promise<RedisReply[]>;
  /** Called each time the connection becomes usable (again). */
  onReady(listener: () => void): void;
  /** Called when the connection is lost or a command got no answer in time; it reconnects by itself. */
  onDown(listener: (reason: string) => void): void;
  /** Closes the connection; commands still waiting are rejected. */
  close(): Promise<void>;
}

/** Commands issued and failed, over every connection that shares this object. */
export interface RedisCounters {
  commands: number;
  errors: number;
}

/** Cluster mode cannot start: Redis is unreachable, or its client is not installed. One line, printed as is. */
export class ClusterError extends Error {}

export interface RedisPortOptions {
  url: string;
  /** CLIENT SETNAME, so `CLIENT LIST` tells Nerve's connections apart. */
  name: string;
  /**
   * ms a command may wait for its reply before the connection is taken for
   * dead and replaced. A half-open TCP connection (a partition that drops
   * packets) would otherwise hold every write, and every NERVE_ACK, for as
   * long as the kernel retransmits.
   */
  replyTimeout: number;
  counters: RedisCounters;
}

/** Commands a connection keeps while it reconnects; beyond that they fail at once instead of piling up. */
const OFFLINE_QUEUE_MAX = 10_000;
const CONNECT_TIMEOUT_MS = 5_000;
/** Reconnect delays double from this, up to the cap, with up to a tenth of jitter so nodes do not reconnect in step. */
const RECONNECT_FIRST_MS = 50;
const RECONNECT_MAX_MS = 1_000;
const WATCHDOG_MS = 250;

type RedisModule = typeof import('@redis/client');
type RedisClient = ReturnType<RedisModule['createClient']>;

let loading: Promise<RedisModule> | undefined;

/** @redis/client, or a ClusterError saying how to install it. */
function loadRedisModule(): Promise<RedisModule> {
  loading ??= import('@redis/client').catch((error: unknown) => {
    loading = undefined;
    const message = error instanceof Error ? error.message : String(error);
    if (/@redis\/client|Cannot find|not found|resolve/i.test(message)) {
      throw new ClusterError('NERVE_REDIS_URL is set but @redis/client is not installed: run npm install @redis/client');
    }
    throw new ClusterError(`cannot load @redis/client: ${message}`);
  });
  return loading;
}

/** The URL with its password masked, for log lines and errors. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== '') parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparseable URL)';
  }
}

export function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

interface Waiting {
  since: number;
}

/** A RedisPort over one @redis/client connection, replaced by a fresh one when it stops answering. */
class NodeRedisPort implements RedisPort {
  private client!: RedisClient;
  private readonly readyListeners: (() => void)[] = [];
  private readonly downListeners: ((reason: string) => void)[] = [];
  private readonly waiting = new Set<Waiting>();
  private readonly watchdog: ReturnType<typeof setInterval>;
  private closed = false;
  /** Why the last attempt to connect or command failed, for the error a start that never connects gives. */
  lastError = 'no answer';
  /** Whether listeners last heard `ready` (true) or `down` (false), so each change is told once. */
  private announcedUp = false;

  constructor(
    private readonly redis: RedisModule,
    private readonly options: RedisPortOptions,
  ) {
    this.open();
    this.watchdog = setInterval(() => this.checkReplies(), WATCHDOG_MS);
    (this.watchdog as { unref?: () => void }).unref?.();
  }

  get ready(): boolean {
    return !this.closed && this.client.isReady;
  }

  onReady(listener: () => void): void {
    this.readyListeners.push(listener);
  }

  onDown(listener: (reason: string) => void): void {
    this.downListeners.push(listener);
  }

  command(args: readonly string[]): Promise<RedisReply> {
    return this.track(() => this.client.sendCommand(args) as Promise<RedisReply>);
  }

  transaction(commands: readonly (readonly string[])[]): Promise<RedisReply[]> {
    return this.track(() => {
      const multi = this.client.multi();
      for (const args of commands) multi.addCommand([...args]);
      return multi.exec() as unknown as Promise<RedisReply[]>;
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.watchdog);
    try {
      this.client.destroy();
    } catch {
      // already gone
    }
  }

  private open(): void {
    const client = this.redis.createClient({
      url: this.options.url,
      name: this.options.name,
      // RESP2: replies are plain arrays whatever the command, which is all the link reads.
      RESP: 2,
      disableOfflineQueue: false,
      commandsQueueMaxLength: OFFLINE_QUEUE_MAX,
      socket: {
        connectTimeout: CONNECT_TIMEOUT_MS,
        // Never give up: the node keeps serving its own clients and links again once Redis is back.
        reconnectStrategy: (retries: number) => {
          const delay = Math.min(RECONNECT_FIRST_MS * 2 ** Math.min(retries, 10), RECONNECT_MAX_MS);
          return delay + Math.floor(Math.random() * (delay / 10));
        },
      },
    }) as RedisClient;
    this.client = client;
    // Without an 'error' listener an EventEmitter throws, which would take the process down.
    client.on('error', (error: unknown) => this.lost(client, describeError(error)));
    client.on('end', () => this.lost(client, 'connection closed'));
    client.on('ready', () => {
      if (client !== this.client || this.closed || this.announcedUp) return;
      this.announcedUp = true;
      for (const listener of this.readyListeners) this.safely(() => listener());
    });
    client.connect().catch((error: unknown) => this.lost(client, describeError(error)));
  }

  private lost(client: RedisClient, reason: string): void {
    if (client !== this.client || this.closed) return;
    this.lastError = reason;
    if (!this.announcedUp) return;
    this.announcedUp = false;
    for (const listener of this.downListeners) this.safely(() => listener(reason));
  }

  private track<T>(issue: () => Promise<T>): Promise<T> {
    const counters = this.options.counters;
    counters.commands++;
    if (this.closed) {
      counters.errors++;
      return Promise.reject(new Error('the Redis connection is closed'));
    }
    const entry: Waiting = { since: Date.now() };
    this.waiting.add(entry);
    let reply: Promise<T>;
    try {
      reply = issue();
    } catch (error) {
      // The client refuses synchronously when its queue is full or it is closed.
      this.waiting.delete(entry);
      counters.errors++;
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
    return reply.then(
      (value) => {
        this.waiting.delete(entry);
        return value;
      },
      (error: unknown) => {
        this.waiting.delete(entry);
        counters.errors++;
        throw error instanceof Error ? error : new Error(String(error));
      },
    );
  }

  /** A command older than the reply timeout means the connection is dead without knowing it: start a new one. */
  private checkReplies(): void {
    if (this.closed || this.waiting.size === 0) return;
    const now = Date.now();
    let oldest = now;
    for (const entry of this.waiting) if (entry.since < oldest) oldest = entry.since;
    if (now - oldest < this.options.replyTimeout) return;
    const stale = this.client;
    this.waiting.clear();
    const reason = `no reply from Redis within ${this.options.replyTimeout} ms`;
    this.lost(stale, reason);
    // Destroying rejects every command it still holds; the new client connects with the same retries.
    this.open();
    try {
      stale.destroy();
    } catch {
      // already gone
    }
  }

  private safely(action: () => void): void {
    try {
      action();
    } catch {
      // A listener's failure is its own; the connection carries on.
    }
  }
}

/**
 * A connection to `options.url`, resolved once it is usable. Rejects with a
 * ClusterError when @redis/client is missing, or when Redis cannot be reached
 * within `connectWithin` ms.
 */
export async function connectRedis(options: RedisPortOptions, connectWithin: number): Promise<RedisPort> {
  const redis = await loadRedisModule();
  const port = new NodeRedisPort(redis, options);
  if (port.ready) return port;
  const connected = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), connectWithin);
    port.onReady(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
  if (connected) return port;
  await port.close();
  throw new ClusterError(`cannot reach Redis at ${redactUrl(options.url)} within ${connectWithin} ms: ${port.lastError}`);
}
