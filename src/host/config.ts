// Configuration from a plain env record (process.env, Deno.env, Worker vars):
// the same NERVE_* names on every runtime, each validated with a message that
// names the variable.

import { DEFAULT_LIMITS, type CoreConfig } from '../core/io.ts';
import { parseJwks, type TokenSettings } from './tokens.ts';

export interface HostConfig extends CoreConfig {
  port: number;
  host: string;
  drainTimeout: number;
  /** ms a connection the server closed may take to finish the closing handshake before its TCP connection is dropped. */
  closeGrace: number;
  /** True when NERVE_PASSWORD was not set and one was generated. */
  generatedPassword: boolean;
  /** Keys for IDENTIFY and HTTP tokens; absent: only the password is accepted. */
  tokens?: TokenSettings;
  /** Origins a browser WebSocket may come from (`*`: any); absent: Origin is not checked. */
  allowedOrigins?: readonly string[] | '*';
  /** How this node joins its cluster (docs/cluster.md); absent: a single node, no Redis. */
  clusterLink?: ClusterSettings;
}

export interface ClusterSettings {
  /** `redis://…` or `rediss://…`, credentials included. */
  redisUrl: string;
  /** The cluster's name: the prefix of every Redis key it uses. */
  name: string;
  /** ms after which a node that stopped renewing its liveness is taken for dead. */
  nodeTimeout: number;
}

export class ConfigError extends Error {}

type Env = Record<string, string | undefined>;

function integer(env: Env, name: string, fallback: number | (() => number), min: number, max = Number.MAX_SAFE_INTEGER): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return typeof fallback === 'function' ? fallback() : fallback;
  const value = Number(raw.trim());
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(value) || value < min || value > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `an integer ≥ ${min}` : `an integer from ${min} to ${max}`;
    throw new ConfigError(`${name} must be ${range} (got ${JSON.stringify(raw)})`);
  }
  return value;
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

function randomHex(bytes: number): string {
  const buffer = new Uint8Array(bytes);
  crypto.getRandomValues(buffer);
  return Array.from(buffer, (b) => b.toString(16).padStart(2, '0')).join('');
}

export function newWorkerId(): string {
  return `nerve-${randomHex(3)}`;
}

/** Without a process to ask (a Worker's isolate has 128 MiB), the budget stays well inside the isolate. */
const ISOLATE_BUDGET = 32 * 1_048_576;

/**
 * The default NERVE_MAX_MEMORY: a quarter of what the V8 heap may grow to,
 * because the budget counts events as JSON bytes and their copies in the heap
 * take two to three times that. Bun's JavaScriptCore has no such limit (its
 * node:v8 figures are not one), so there it is an eighth of the machine.
 */
export function defaultMaxMemory(): number {
  type Process = { versions?: Record<string, string>; getBuiltinModule?: (name: string) => unknown };
  const proc = (globalThis as { process?: Process }).process;
  if (!proc?.getBuiltinModule) return ISOLATE_BUDGET;
  const total = ask(() => (proc.getBuiltinModule!('os') as { totalmem(): number }).totalmem());
  if (proc.versions?.bun !== undefined) return total > 0 ? Math.floor(total / 8) : ISOLATE_BUDGET;
  const heap = ask(() => (proc.getBuiltinModule!('v8') as { getHeapStatistics(): { heap_size_limit: number } }).getHeapStatistics().heap_size_limit);
  const limits = [heap, total].filter((n) => n > 0);
  return limits.length === 0 ? ISOLATE_BUDGET : Math.floor(Math.min(...limits) / 4);
}

/** A figure the runtime may refuse to give (Deno without --allow-sys): 0 then. */
function ask(figure: () => number): number {
  try {
    const value = figure();
    return typeof value === 'number' && Number.isFinite(value) ? value : 0;
  } catch {
    return 0;
  }
}

function tokenSettings(env: Env): TokenSettings | undefined {
  const settings: TokenSettings = {};
  const secret = env.NERVE_JWT_SECRET;
  if (secret !== undefined && secret !== '') {
    // HS256 with a short secret can be brute-forced offline from one token.
    if (secret.length < 32) throw new ConfigError('NERVE_JWT_SECRET must be at least 32 characters');
    settings.secret = secret;
  }
  const jwks = env.NERVE_JWT_PUBLIC_KEYS;
  if (jwks !== undefined && jwks !== '') {
    try {
      settings.jwks = parseJwks(jwks);
    } catch (error) {
      throw new ConfigError(`NERVE_JWT_PUBLIC_KEYS ${(error as Error).message}`);
    }
  }
  if (env.NERVE_JWT_ISSUER) settings.issuer = env.NERVE_JWT_ISSUER;
  if (env.NERVE_JWT_AUDIENCE) settings.audience = env.NERVE_JWT_AUDIENCE;
  if (settings.secret === undefined && settings.jwks === undefined) {
    if (settings.issuer !== undefined || settings.audience !== undefined) {
      throw new ConfigError('NERVE_JWT_ISSUER and NERVE_JWT_AUDIENCE need NERVE_JWT_SECRET or NERVE_JWT_PUBLIC_KEYS');
    }
    return undefined;
  }
  return settings;
}

function allowedOrigins(env: Env): readonly string[] | '*' | undefined {
  const raw = env.NERVE_ALLOWED_ORIGINS?.trim();
  if (!raw) return undefined;
  const list = raw.split(',').map((origin) => origin.trim()).filter(Boolean);
  if (list.includes('*')) return '*';
  for (const origin of list) {
    let parsed: URL | undefined;
    try {
      parsed = new URL(origin);
    } catch {
      parsed = undefined;
    }
    if (!parsed || parsed.origin !== origin) {
      throw new ConfigError(`NERVE_ALLOWED_ORIGINS must list origins like https://app.example.com (got ${JSON.stringify(origin)})`);
    }
  }
  return list;
}

/** Letters, digits and `-_.:`: a cluster name is the start of every key, so it must not bring its own hash tag. */
const CLUSTER_NAME = /^[A-Za-z0-9\-_.:]+$/;

/** What a URL looks like in an error message: never with its password. */
function shownUrl(url: URL): string {
  if (url.password !== '') url.password = '***';
  return url.toString();
}

function redisUrl(env: Env): string | undefined {
  const raw = env.NERVE_REDIS_URL?.trim();
  if (!raw) return undefined;
  const usage = 'NERVE_REDIS_URL must be redis://[user:pass@]host:port[/db] or rediss://…';
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`${usage} (got something that is not a URL)`);
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') throw new ConfigError(`${usage} (got ${JSON.stringify(shownUrl(url))})`);
  if (url.hostname === '') throw new ConfigError(`${usage}: it names no host (got ${JSON.stringify(shownUrl(url))})`);
  if (!/^\/?(\d+)?$/.test(url.pathname)) throw new ConfigError(`${usage}: the path is a database number (got ${JSON.stringify(shownUrl(url))})`);
  return raw;
}

/** Cluster settings when NERVE_REDIS_URL is set. The other two are read (and checked) regardless, so the CLI lists them. */
function clusterSettings(env: Env): ClusterSettings | undefined {
  const url = redisUrl(env);
  const name = env.NERVE_CLUSTER?.trim() || 'nerve';
  if (!CLUSTER_NAME.test(name)) {
    throw new ConfigError(`NERVE_CLUSTER may hold only letters, digits and -_.: (got ${JSON.stringify(name)})`);
  }
  const nodeTimeout = integer(env, 'NERVE_NODE_TIMEOUT', 10_000, 500);
  return url === undefined ? undefined : { redisUrl: url, name, nodeTimeout };
}

/**
 * A resuming client is sent its whole replay buffer at once; an outbound limit
 * below that would take every such resume for a slow reader.
 */
function checkOutbound(config: HostConfig): HostConfig {
  const burst = config.replayMaxBytes + config.maxPayload;
  if (config.maxOutbound < burst) {
    throw new ConfigError(
      `NERVE_MAX_OUTBOUND must be at least NERVE_REPLAY_MAX_BYTES + NERVE_MAX_PAYLOAD (${burst}), the most a resume sends at once (got ${config.maxOutbound})`,
    );
  }
  return config;
}

/** Reads and validates the configuration; throws ConfigError naming the first bad variable. */
export function loadConfig(env: Env, worker: string = newWorkerId()): HostConfig {
  const host = env.NERVE_HOST?.trim() || '127.0.0.1';
  const password = env.NERVE_PASSWORD;
  if (password !== undefined && password.length === 0) throw new ConfigError('NERVE_PASSWORD must not be empty');
  if (password === undefined && !isLoopback(host)) {
    throw new ConfigError(`NERVE_HOST=${host} is not a loopback address: set NERVE_PASSWORD to listen on it`);
  }
  const cluster = clusterSettings(env);
  // Every node must share the password, and a generated one is this process's alone.
  if (cluster && password === undefined) throw new ConfigError('NERVE_REDIS_URL needs NERVE_PASSWORD: every node of a cluster must share it');
  return checkOutbound({
    ...DEFAULT_LIMITS,
    worker,
    host,
    port: integer(env, 'NERVE_PORT', 6669, 0, 65535),
    password: password ?? randomHex(16),
    generatedPassword: password === undefined,
    heartbeatInterval: integer(env, 'NERVE_HEARTBEAT_INTERVAL', DEFAULT_LIMITS.heartbeatInterval, 1),
    maxPayload: integer(env, 'NERVE_MAX_PAYLOAD', DEFAULT_LIMITS.maxPayload, 64),
    queueTtl: integer(env, 'NERVE_QUEUE_TTL', DEFAULT_LIMITS.queueTtl, 0),
    resumeWindow: integer(env, 'NERVE_RESUME_WINDOW', DEFAULT_LIMITS.resumeWindow, 0),
    maxMetadata: integer(env, 'NERVE_MAX_METADATA', DEFAULT_LIMITS.maxMetadata, 2),
    drainTimeout: integer(env, 'NERVE_DRAIN_TIMEOUT', 10_000, 0),
    closeGrace: integer(env, 'NERVE_CLOSE_GRACE', 2_000, 1),
    rateLimit: integer(env, 'NERVE_RATE_LIMIT', DEFAULT_LIMITS.rateLimit, 0),
    queueMaxCount: integer(env, 'NERVE_QUEUE_MAX_COUNT', DEFAULT_LIMITS.queueMaxCount, 0),
    queueMaxBytes: integer(env, 'NERVE_QUEUE_MAX_BYTES', DEFAULT_LIMITS.queueMaxBytes, 0),
    replayMaxCount: integer(env, 'NERVE_REPLAY_MAX_COUNT', DEFAULT_LIMITS.replayMaxCount, 1),
    replayMaxBytes: integer(env, 'NERVE_REPLAY_MAX_BYTES', DEFAULT_LIMITS.replayMaxBytes, 1),
    maxDepth: integer(env, 'NERVE_MAX_DEPTH', DEFAULT_LIMITS.maxDepth, 2, 512),
    maxQueryOperands: integer(env, 'NERVE_MAX_QUERY_OPERANDS', DEFAULT_LIMITS.maxQueryOperands, 1),
    maxQueryTerms: integer(env, 'NERVE_MAX_QUERY_TERMS', DEFAULT_LIMITS.maxQueryTerms, 1),
    maxQueryConditions: integer(env, 'NERVE_MAX_QUERY_CONDITIONS', DEFAULT_LIMITS.maxQueryConditions, 1),
    maxQueryWork: integer(env, 'NERVE_MAX_QUERY_WORK', DEFAULT_LIMITS.maxQueryWork, 1),
    maxOutbound: integer(env, 'NERVE_MAX_OUTBOUND', DEFAULT_LIMITS.maxOutbound, 1024),
    maxMemory: integer(env, 'NERVE_MAX_MEMORY', defaultMaxMemory, 1024),
    maxConnections: integer(env, 'NERVE_MAX_CONNECTIONS', DEFAULT_LIMITS.maxConnections, 1),
    maxUnidentified: integer(env, 'NERVE_MAX_UNIDENTIFIED', DEFAULT_LIMITS.maxUnidentified, 1),
    authFailures: integer(env, 'NERVE_AUTH_FAILURES', DEFAULT_LIMITS.authFailures, 0),
    ...optional('tokens', tokenSettings(env)),
    ...optional('allowedOrigins', allowedOrigins(env)),
    ...(cluster ? { cluster: true, clusterLink: cluster } : {}),
  });
}

/** `{key: value}` when there is a value, `{}` otherwise (optional fields stay absent, not undefined). */
function optional<K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: V };
}

/** `?format=` and `?compression=` of an upgrade request, or the error to answer with HTTP 400. */
export function parseWire(url: URL): { format: 'json' | 'msgpack'; compression: 'none' | 'zlib' } | { error: string } {
  const format = url.searchParams.get('format') ?? 'json';
  const compression = url.searchParams.get('compression') ?? 'none';
  if (format !== 'json' && format !== 'msgpack') {
    return { error: `unknown format ${JSON.stringify(format)}: use json or msgpack` };
  }
  if (compression !== 'none' && compression !== 'zlib') {
    return { error: `unknown compression ${JSON.stringify(compression)}: use zlib, or leave it out` };
  }
  return { format, compression };
}
