// Shared setup of the conformance suite: which runtimes it runs against, the
// short-timeout server config, one server per describe, and helpers that
// connect, identify and check error closes the way docs/protocol.md words them.
// With NERVE_CONFORMANCE_CLUSTER=N the same suite runs against N clustered
// nodes, each test's connections spread over them (see CLUSTER_NODES).

import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import type { Cluster } from '../support/cluster.ts';
import * as support from '../support/server.ts';
import { closeAllClients, TestClient, type ClientOptions, type Closed } from './client.ts';

export type Runtime = support.Runtime;
export type { RunningServer } from '../support/server.ts';

// test/support/server.ts owns the list of runtimes it can start. Without it
// the suite must stop rather than quietly run against fewer runtimes, and a
// name in NERVE_RUNTIMES (node,bun narrows a local run) that it does not know
// is a typo, not a reason to run nothing.
const declared: unknown = (support as Record<string, unknown>).RUNTIMES;
if (!Array.isArray(declared) || declared.length === 0) {
  throw new Error('test/support/server.ts exports no RUNTIMES list: the conformance suite cannot tell which runtimes to run against');
}
const wanted = process.env.NERVE_RUNTIMES?.split(',').map((name) => name.trim()).filter(Boolean);
for (const name of wanted ?? []) {
  if (!declared.includes(name)) throw new Error(`NERVE_RUNTIMES names "${name}", which test/support/server.ts cannot start (known: ${declared.join(', ')})`);
}

/**
 * Cluster spread mode: NERVE_CONFORMANCE_CLUSTER=N makes every describe's
 * server N nodes of its runtime joined through a redis-server of their own
 * (test/support/cluster.ts), and each new connection goes to the next node,
 * so one test's clients land on different nodes in turn. Cross-node delivery
 * is asynchronous, so in this mode identified() also waits until every node
 * lists the new session, getClients() answers once every node agrees,
 * droppedOnServer()/goneOnServer() look at every node, and sync() lets
 * relays in flight land before its barrier. Runtimes: those of
 * NERVE_RUNTIMES that have a cluster mode (not cloudflare), else node.
 */
export const CLUSTER_NODES = clusterNodes(process.env.NERVE_CONFORMANCE_CLUSTER);
function clusterNodes(value: string | undefined): number {
  if (value === undefined || value.trim() === '') return 0;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`NERVE_CONFORMANCE_CLUSTER must be a number of nodes (got "${value}")`);
  return n;
}

const narrowed = wanted ? (declared as Runtime[]).filter((runtime) => wanted.includes(runtime)) : (declared as Runtime[]);
const clustered = (wanted ? narrowed : []).filter((runtime) => runtime !== 'cloudflare');
export const RUNTIMES: readonly Runtime[] = CLUSTER_NODES > 0 ? (clustered.length > 0 ? clustered : ['node']) : narrowed;

/**
 * In spread mode, how long sync() waits before its barrier: a relay between
 * nodes has no barrier a client can await, and a heartbeat answered by one
 * node says nothing about events still on their way from another.
 */
export const CLUSTER_SETTLE = 150;
if (CLUSTER_NODES > 0) {
  const barrier = TestClient.prototype.sync;
  TestClient.prototype.sync = async function (this: TestClient, timeout?: number) {
    await new Promise((resolve) => setTimeout(resolve, CLUSTER_SETTLE));
    return barrier.call(this, timeout);
  };
}

/** The cluster behind a spread-mode server, if it is one. */
function clusterOf(server: support.RunningServer): Cluster | undefined {
  return (server as { cluster?: Cluster }).cluster;
}

async function startSpread(runtime: Runtime, env: Record<string, string>): Promise<support.RunningServer> {
  if (runtime === 'cloudflare') throw new Error('cloudflare has no cluster mode');
  const { startCluster } = await import('../support/cluster.ts');
  const cluster = await startCluster({ runtimes: Array.from({ length: CLUSTER_NODES }, () => runtime), env });
  return cluster.spread();
}

export const HEARTBEAT_INTERVAL = 1000;
export const QUEUE_TTL = 500;
export const RESUME_WINDOW = 1500;
export const MAX_PAYLOAD = 65536;
export const MAX_METADATA = 4096;

/** Short timeouts so timeout, TTL and resume-window cases take about a second each. */
export const FAST_ENV: Record<string, string> = {
  NERVE_HEARTBEAT_INTERVAL: String(HEARTBEAT_INTERVAL),
  NERVE_QUEUE_TTL: String(QUEUE_TTL),
  NERVE_RESUME_WINDOW: String(RESUME_WINDOW),
  NERVE_MAX_PAYLOAD: String(MAX_PAYLOAD),
  NERVE_MAX_METADATA: String(MAX_METADATA),
  NERVE_RATE_LIMIT: '0',
};

/** Well under 1.5 × HEARTBEAT_INTERVAL, with room for a loaded machine. */
export const KEEPALIVE: ClientOptions = { heartbeatEvery: 250 };

/**
 * Starts one server for the enclosing describe and stops it afterwards; every
 * client left open by a test is closed with 1000 so its session ends. A
 * describe.concurrent passes `concurrent` so one test's end does not close
 * another's clients (its clients are then closed when the describe ends).
 */
export function useServer(runtime: Runtime, env: Record<string, string> = {}, options: { concurrent?: boolean } = {}): () => support.RunningServer {
  let server: support.RunningServer | undefined;
  beforeAll(async () => {
    server = CLUSTER_NODES > 0 ? await startSpread(runtime, { ...FAST_ENV, ...env }) : await support.startServer(runtime, { ...FAST_ENV, ...env });
  });
  if (!options.concurrent) afterEach(closeAllClients);
  afterAll(async () => {
    await closeAllClients();
    await server?.stop();
  });
  return () => {
    if (!server) throw new Error(`${runtime} server is not running`);
    return server;
  };
}

let counter = 0;
/** App and client names unique to one test, so tests never see each other's traffic. */
export function uid(prefix: string): string {
  return `${prefix}-${++counter}-${Math.random().toString(16).slice(2, 8)}`;
}

/** HELLO of each connection opened by connect(): which node a client is on. */
const hellos = new WeakMap<TestClient, any>();

/** Opens a connection and waits for HELLO. */
export async function connect(server: support.RunningServer, options: ClientOptions = KEEPALIVE): Promise<{ client: TestClient; hello: any }> {
  const client = new TestClient(server.url, options);
  await client.opened;
  const hello = await client.next();
  expect(hello.op, 'first frame is HELLO').toBe(0);
  hellos.set(client, hello);
  return { client, hello };
}

export interface IdentifyOptions extends ClientOptions {
  metadata?: Record<string, unknown>;
  reconnect?: boolean;
  seq?: number;
}

/** Connects, identifies as app/client_id and waits for WELCOME. */
/**
 * Connects and sends IDENTIFY with `credential` (the server's password unless
 * given, or a token); waiting for the answer is the caller's.
 */
export async function sendIdentify(
  server: support.RunningServer,
  app: string,
  clientId: string,
  options: IdentifyOptions = {},
  credential: { password: string } | { token: string } = { password: server.password },
): Promise<TestClient> {
  const { metadata, reconnect, seq, ...wire } = options;
  const { client } = await connect(server, { ...KEEPALIVE, ...wire });
  const d: Record<string, unknown> = { app_name: app, client_id: clientId, ...credential };
  if (metadata !== undefined) d.metadata = metadata;
  if (reconnect !== undefined) d.reconnect = reconnect;
  if (seq !== undefined) d.seq = seq;
  client.identify(d);
  return client;
}

export async function identified(server: support.RunningServer, app: string, clientId: string, options: IdentifyOptions = {}): Promise<TestClient> {
  const client = await sendIdentify(server, app, clientId, options);
  const welcome = await client.next();
  expect(welcome, `WELCOME for ${app}/${clientId}`).toEqual({ op: 2, d: "hi i'm dad" });
  await clusterOf(server)?.waitForClient(app, clientId, { worker: hellos.get(client)?.d?.worker });
  return client;
}

/** WebSocket close reasons carry at most 123 bytes of UTF-8. */
export function truncated(reason: string): string {
  const bytes = Buffer.from(reason, 'utf8');
  if (bytes.length <= 123) return reason;
  let end = 123;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end).toString('utf8');
}

/**
 * The §4 error contract: NO_U_TBH with a reason matching `reason`, then a
 * close with `code` and the same reason (truncated to 123 bytes).
 */
export async function expectError(client: TestClient, code: number, reason: RegExp | string, timeout = 3000): Promise<{ reason: string; closed: Closed }> {
  const noU = await client.waitFor((f) => f?.op === 6, timeout, 'NO_U_TBH');
  expect(Object.keys(noU).sort(), 'NO_U_TBH carries only op and d').toEqual(['d', 'op']);
  expect(typeof noU.d).toBe('string');
  if (typeof reason === 'string') expect(noU.d).toContain(reason);
  else expect(noU.d).toMatch(reason);
  const closed = await client.closed;
  expect(closed).toEqual({ code, reason: truncated(noU.d) });
  return { reason: noU.d, closed };
}

/** Polls until `check` holds: for state only visible over HTTP (e.g. the server noticing a dropped socket). */
export async function eventually<T>(probe: () => Promise<T>, check: (value: T) => boolean, timeout = 3000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await probe();
    if (check(value)) return value;
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeout} ms; last: ${JSON.stringify(value)}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function getClients(server: support.RunningServer, app?: string): Promise<any[]> {
  const cluster = clusterOf(server);
  if (cluster) return cluster.agreedClients(app);
  const res = await fetch(`${server.http}/clients${app === undefined ? '' : `?app_name=${encodeURIComponent(app)}`}`, {
    headers: { authorization: `Bearer ${server.password}` },
  });
  expect(res.status).toBe(200);
  return res.json();
}

/** Resolves once the server has seen `clientId`'s socket drop (its session waits in the resume window). */
export function droppedOnServer(server: support.RunningServer, app: string, clientId: string): Promise<unknown> {
  const cluster = clusterOf(server);
  if (cluster) return cluster.waitDropped(app, clientId, 3000);
  return eventually(
    () => getClients(server, app),
    (list) => list.some((c) => c.client_id === clientId && c.connected === false),
    3000,
    `${app}/${clientId} disconnected on the server`,
  );
}

/** Resolves once `clientId`'s session is gone from the server. */
export function goneOnServer(server: support.RunningServer, app: string, clientId: string, timeout = 5000): Promise<unknown> {
  const cluster = clusterOf(server);
  if (cluster) return cluster.waitGone(app, clientId, timeout);
  return eventually(
    () => getClients(server, app),
    (list) => !list.some((c) => c.client_id === clientId),
    timeout,
    `${app}/${clientId} gone from the server`,
  );
}

export function dispatchFrame(e: string, to: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { op: 8, e, to, ...extra };
}
