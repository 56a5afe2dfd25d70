// A Nerve cluster for black-box tests: N real nodes (Node, Deno or Bun child
// processes started by ./server.ts) joined through one test-owned
// redis-server (./redis.ts), each ready once its /health says
// "cluster":"up"; one node at a time can be drained (SIGTERM), killed
// (SIGKILL) or restarted. Also: a RunningServer whose url rotates over the
// nodes (the conformance suite's spread mode), registry waits over every
// node's GET /clients, and ResumingClient, a client that follows GO_AWAY and
// dropped sockets to another node, resumes with its last `s`, and records
// everything it received so a test can count it.

import WebSocket from 'ws';
import { TestClient, type ClientOptions } from '../conformance/client.ts';
import { startRedis, type RedisOptions, type RedisServer } from './redis.ts';
import { startServer, type RunningServer, type Runtime } from './server.ts';

export type NodeRuntime = Exclude<Runtime, 'cloudflare'>;

/** NERVE_NODE_TIMEOUT for test clusters: a crashed node is adopted within a few seconds. */
export const NODE_TIMEOUT = 2000;

/** How long a node may take to report "cluster":"up" after it listens. */
const UP_TIMEOUT = 15_000;

/** How long a session may take to reach (or leave) every node's registry. */
const REGISTRY_TIMEOUT = 5000;

export interface ClusterNode extends RunningServer {
  /** The node's id: HELLO's `worker`, as its /health reports it. */
  worker: string;
  /** Which position of the cluster it fills (a restart fills the same one). */
  slot: number;
}

export interface ClusterOptions {
  /** One entry per node, in slot order. */
  runtimes: NodeRuntime[];
  /** NERVE_* settings shared by every node (the cluster's own are added). */
  env?: Record<string, string>;
  /** NERVE_CLUSTER; unique per cluster unless given. */
  name?: string;
  /** For the cluster's own redis-server. */
  redis?: RedisOptions;
}

export interface Health {
  status: number;
  body: any;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` until `check` holds, for at most `timeout` ms; throws naming `what` and the last value. */
export async function waitUntil<T>(probe: () => T | Promise<T>, check: (value: T) => boolean, timeout: number, what: string, every = 25): Promise<T> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await probe();
    if (check(value)) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeout} ms; last: ${describeValue(value)}`);
    await sleep(every);
  }
}

function describeValue(value: unknown): string {
  try {
    const text = JSON.stringify(value);
    return text.length > 2000 ? `${text.slice(0, 2000)}…` : text;
  } catch {
    return String(value);
  }
}

/** GET /health, or undefined when nothing answers. */
export async function health(server: { http: string }): Promise<Health | undefined> {
  try {
    const res = await fetch(`${server.http}/health`, { signal: AbortSignal.timeout(2000) });
    return { status: res.status, body: await res.json().catch(() => undefined) };
  } catch {
    return undefined;
  }
}

/** Nodes started here and still running: killed if the test process exits first. */
const live = new Set<RunningServer>();
process.once('exit', () => {
  for (const server of live) server.child.kill('SIGKILL');
});

let clusters = 0;

export class Cluster {
  readonly name: string;
  readonly redis: RedisServer;
  readonly password: string;
  /** Every NERVE_* setting each node gets. */
  readonly env: Record<string, string>;
  private readonly runtimes: NodeRuntime[];
  private readonly slots: (ClusterNode | undefined)[] = [];
  private readonly leaving = new Set<ClusterNode>();
  private turn = 0;

  constructor(redis: RedisServer, options: ClusterOptions) {
    this.redis = redis;
    this.runtimes = [...options.runtimes];
    this.name = options.name ?? `nerve-test-${process.pid}-${++clusters}-${Math.random().toString(16).slice(2, 8)}`;
    this.env = {
      NERVE_PASSWORD: 'cluster-test-password',
      NERVE_NODE_TIMEOUT: String(NODE_TIMEOUT),
      NERVE_DRAIN_TIMEOUT: '5000',
      ...options.env,
      NERVE_REDIS_URL: redis.url,
      NERVE_CLUSTER: this.name,
    };
    this.password = this.env.NERVE_PASSWORD!;
  }

  /** The running node in `slot`. */
  node(slot: number): ClusterNode {
    const node = this.slots[slot];
    if (!node) throw new Error(`no node is running in slot ${slot} of cluster ${this.name}`);
    return node;
  }

  /** Every node running now, draining ones included. */
  get nodes(): ClusterNode[] {
    return this.slots.filter((node): node is ClusterNode => node !== undefined);
  }

  /** The nodes a client should connect to now: running and not being stopped. */
  available(): ClusterNode[] {
    return this.nodes.filter((node) => !this.leaving.has(node));
  }

  /** The next available node in turn, other than `avoid` when there is another. */
  pick(avoid?: ClusterNode): ClusterNode | undefined {
    const nodes = this.available();
    const others = nodes.filter((node) => node !== avoid);
    const from = others.length > 0 ? others : nodes;
    if (from.length === 0) return undefined;
    return from[this.turn++ % from.length];
  }

  /** Starts a node in `slot` (which must be free) and waits until it reports the cluster up. */
  async startNode(slot: number, runtime: NodeRuntime = this.runtimes[slot] ?? 'node'): Promise<ClusterNode> {
    if (this.slots[slot]) throw new Error(`slot ${slot} of cluster ${this.name} is taken`);
    this.runtimes[slot] = runtime;
    const server = await startServer(runtime, this.env);
    live.add(server);
    server.child.once('exit', () => live.delete(server));
    try {
      const up = await waitClusterUp(server);
      const node: ClusterNode = Object.assign(server, { worker: String(up.body.worker), slot });
      this.slots[slot] = node;
      return node;
    } catch (error) {
      await server.stop('SIGKILL');
      throw error;
    }
  }

  /**
   * Stops the node in `slot` with `signal` (SIGTERM: it drains, sending
   * GO_AWAY to its clients) and resolves with its exit code once it is gone.
   * It stops being offered to clients before the signal is sent.
   */
  async stopNode(slot: number, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const node = this.node(slot);
    this.leaving.add(node);
    try {
      return await node.stop(signal);
    } finally {
      this.leaving.delete(node);
      if (this.slots[slot] === node) this.slots[slot] = undefined;
    }
  }

  /** SIGKILL: the node is gone at once, with whatever it had not stored. */
  killNode(slot: number): Promise<number | null> {
    return this.stopNode(slot, 'SIGKILL');
  }

  /** Drains the node in `slot`, then starts a new one (new port, new worker id) in its place. */
  async restartNode(slot: number, runtime?: NodeRuntime): Promise<{ exitCode: number | null; node: ClusterNode }> {
    const exitCode = await this.stopNode(slot);
    return { exitCode, node: await this.startNode(slot, runtime) };
  }

  /** GET /clients on one node (the whole cluster as that node sees it). */
  async clientsOn(node: RunningServer, app?: string): Promise<any[]> {
    const res = await fetch(`${node.http}/clients${app === undefined ? '' : `?app_name=${encodeURIComponent(app)}`}`, {
      headers: { authorization: `Bearer ${this.password}` },
      signal: AbortSignal.timeout(3000),
    });
    if (res.status !== 200) throw new Error(`GET /clients on ${node.http} answered ${res.status}: ${await res.text()}`);
    return res.json();
  }

  /** GET /clients on every running node, in slot order. */
  clientsEverywhere(app?: string): Promise<any[][]> {
    return Promise.all(this.nodes.map((node) => this.clientsOn(node, app)));
  }

  /**
   * Resolves once every running node lists app/clientId as connected (and,
   * given `worker`, as held by that node): its registry entry has reached
   * every replica, so a dispatch from any node can route to it.
   */
  async waitForClient(app: string, clientId: string, options: { worker?: string; timeout?: number; on?: ClusterNode[] } = {}): Promise<void> {
    const nodes = options.on ?? this.nodes;
    await waitUntil(
      () => Promise.all(nodes.map((node) => this.clientsOn(node, app))),
      (lists) =>
        lists.every((list) =>
          list.some((c) => c.client_id === clientId && c.connected !== false && (options.worker === undefined || c.node === undefined || c.node === options.worker)),
        ),
      options.timeout ?? REGISTRY_TIMEOUT,
      `${app}/${clientId}${options.worker ? ` (on ${options.worker})` : ''} listed as connected by every node`,
    );
  }

  /** Resolves once no running node lists app/clientId. */
  async waitGone(app: string, clientId: string, timeout = REGISTRY_TIMEOUT): Promise<void> {
    await waitUntil(
      () => this.clientsEverywhere(app),
      (lists) => lists.every((list) => !list.some((c) => c.client_id === clientId)),
      timeout,
      `${app}/${clientId} gone from every node`,
    );
  }

  /**
   * Resolves once the node holding app/clientId (the `node` of its entry; any
   * node when entries do not name one) lists it as disconnected: the session
   * waits in its resume window.
   */
  async waitDropped(app: string, clientId: string, timeout = REGISTRY_TIMEOUT): Promise<void> {
    await waitUntil(
      () => Promise.all(this.nodes.map(async (node) => ({ worker: node.worker, list: await this.clientsOn(node, app) }))),
      (views) =>
        views.some(({ worker, list }) => {
          const entry = list.find((c) => c.client_id === clientId);
          return entry !== undefined && entry.connected === false && (entry.node === undefined || entry.node === worker);
        }),
      timeout,
      `${app}/${clientId} disconnected on the node that holds it`,
    );
  }

  /**
   * GET /clients once every node gives the same answer (the registry has
   * settled), or, after `timeout`, the first node's answer as it is.
   */
  async agreedClients(app?: string, timeout = 2000): Promise<any[]> {
    const deadline = Date.now() + timeout;
    for (;;) {
      const lists = await this.clientsEverywhere(app);
      const keys = lists.map(registryKey);
      if (keys.every((key) => key === keys[0]) || Date.now() > deadline) return lists[0] ?? [];
      await sleep(25);
    }
  }

  /**
   * A RunningServer for code written against one server: each read of `url`
   * (each new connection) and of `http` (each request) goes to the next
   * available node in turn; `lines` are every node's; stop() stops the cluster.
   */
  spread(): SpreadServer {
    const cluster = this;
    let ws = 0;
    let http = 0;
    const next = (turn: number) => {
      const nodes = cluster.available();
      if (nodes.length === 0) throw new Error(`no node of cluster ${cluster.name} is running`);
      return nodes[turn % nodes.length]!;
    };
    return {
      cluster,
      runtime: this.runtimes[0] ?? 'node',
      password: this.password,
      get url() {
        return next(ws++).url;
      },
      get http() {
        return next(http++).http;
      },
      get port() {
        return next(0).port;
      },
      get child() {
        return next(0).child;
      },
      get lines() {
        return cluster.nodes.flatMap((node) => node.lines);
      },
      async stop() {
        await cluster.stop();
        return 0;
      },
    };
  }

  /** Stops every node (SIGTERM, then SIGKILL after 5 s) and the cluster's redis-server. */
  async stop(): Promise<void> {
    await Promise.all(
      this.nodes.map(async (node) => {
        this.leaving.add(node);
        const exited = node.stop('SIGTERM');
        const timer = setTimeout(() => node.child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }),
    );
    this.slots.length = 0;
    this.leaving.clear();
    await this.redis.dispose();
  }
}

/** The cluster behind a spread RunningServer. */
export interface SpreadServer extends RunningServer {
  cluster: Cluster;
}

export function isSpread(server: RunningServer): server is SpreadServer {
  return (server as Partial<SpreadServer>).cluster instanceof Cluster;
}

/** A registry listing reduced to what every node must agree on, in one order. */
function registryKey(list: any[]): string {
  const entries = list.map((c) => JSON.stringify([c.app_name, c.client_id, c.connected, c.node, c.metadata]));
  return entries.sort().join('\n');
}

/**
 * Waits until a node's /health says {"cluster":"up"} with 200. A node that
 * keeps answering /health with no "cluster" field at all is not in cluster
 * mode (it ignored NERVE_REDIS_URL): that fails after a few seconds rather
 * than at the full timeout.
 */
async function waitClusterUp(server: RunningServer, timeout = UP_TIMEOUT): Promise<Health> {
  const started = Date.now();
  let last: Health | undefined;
  for (;;) {
    last = await health(server);
    if (last?.status === 200 && last.body?.cluster === 'up') return last;
    const waited = Date.now() - started;
    const tail = () => server.lines.slice(-15).join('\n');
    if (last && last.body && typeof last.body === 'object' && !('cluster' in last.body) && waited > 3000) {
      throw new Error(`${server.runtime} node on port ${server.port} is not in cluster mode: /health answers ${describeValue(last.body)} with no "cluster" field\n${tail()}`);
    }
    if (server.child.exitCode !== null || server.child.signalCode !== null) {
      throw new Error(`${server.runtime} node on port ${server.port} exited before reporting the cluster up\n${tail()}`);
    }
    if (waited > timeout) {
      throw new Error(`${server.runtime} node on port ${server.port} did not report "cluster":"up" within ${timeout} ms; last /health: ${describeValue(last)}\n${tail()}`);
    }
    await sleep(50);
  }
}

/**
 * Starts a redis-server of its own and one node per entry of
 * `options.runtimes`, all at once; resolves when every node reports the
 * cluster up. On failure nothing is left running.
 */
export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  const redis = await startRedis(options.redis);
  const cluster = new Cluster(redis, options);
  const started = await Promise.allSettled(options.runtimes.map((runtime, slot) => cluster.startNode(slot, runtime)));
  const failed = started.find((result): result is PromiseRejectedResult => result.status === 'rejected');
  if (failed) {
    await cluster.stop();
    throw failed.reason;
  }
  return cluster;
}

export interface IdentifyOn extends ClientOptions {
  metadata?: Record<string, unknown>;
  reconnect?: boolean;
  seq?: number;
  /** Wait until every node lists the session (default true). */
  listed?: boolean;
}

/**
 * Connects a TestClient to `node`, identifies as app/clientId with the
 * cluster's password, expects WELCOME, and (unless `listed: false`) waits
 * until every node's registry lists the session on `node`.
 */
export async function identifiedOn(cluster: Cluster, node: ClusterNode, app: string, clientId: string, options: IdentifyOn = {}): Promise<TestClient> {
  const { metadata, reconnect, seq, listed = true, ...wire } = options;
  const client = new TestClient(node.url, { heartbeatEvery: 500, ...wire });
  await client.opened;
  const hello = await client.next();
  if (hello.op !== 0) throw new Error(`first frame from ${node.runtime} node ${node.worker} is not HELLO: ${JSON.stringify(hello)}`);
  const d: Record<string, unknown> = { app_name: app, client_id: clientId, password: cluster.password };
  if (metadata !== undefined) d.metadata = metadata;
  if (reconnect !== undefined) d.reconnect = reconnect;
  if (seq !== undefined) d.seq = seq;
  client.identify(d);
  const welcome = await client.next(NODE_TIMEOUT * 4);
  if (welcome.op !== 2) throw new Error(`IDENTIFY ${app}/${clientId} on ${node.runtime} node ${node.worker} answered ${JSON.stringify(welcome)}`);
  if (listed) await cluster.waitForClient(app, clientId, { worker: node.worker });
  return client;
}

// ResumingClient: one session over as many connections as it takes.

export interface Routed {
  /** The DISPATCH as received. */
  frame: any;
  /** When it arrived (Date.now()). */
  at: number;
  /** Worker id of the node whose connection carried it. */
  via: string;
}

export interface ResumingOptions {
  metadata?: Record<string, unknown>;
  /** ms between HEARTBEATs (default 1000). */
  heartbeatEvery?: number;
  /** ms to wait for WELCOME; a resume may wait for a dead node to be adopted (default 4 × NODE_TIMEOUT + 2 s). */
  identifyTimeout?: number;
  /** Frames sent while no connection is open wait and go out after the next WELCOME (default false: they are dropped). */
  queueWhileAway?: boolean;
}

type Handler = (frame: any, client: ResumingClient) => void;

/**
 * A service instance as the cluster promises to serve it: always IDENTIFY
 * with reconnect:true and the last `s` it processed; on GO_AWAY it stops
 * reading the old connection and resumes on another node; on a dropped
 * connection it does the same. It never closes a connection itself except
 * in close(). Everything it receives is recorded.
 */
export class ResumingClient {
  /** The highest `s` processed. */
  lastS = 0;
  /** Routed DISPATCHes (those with `s`), in arrival order. */
  readonly routed: Routed[] = [];
  /** `s` values that arrived at or below one already processed. */
  readonly repeatedS: number[] = [];
  /** Ranges of `s` skipped over. */
  readonly skippedS: [from: number, to: number][] = [];
  /** NERVE_ACK d by nonce. */
  readonly acks = new Map<string, { delivered: number; queued: number }>();
  readonly undeliverable: any[] = [];
  /** The NERVE_SESSION d that followed each WELCOME (the first connection's says resumed: false). */
  readonly sessions: any[] = [];
  /** Every NO_U_TBH reason, before or after WELCOME. */
  readonly refusals: string[] = [];
  /** Connection attempts that did not end in WELCOME, and why. */
  readonly failedAttempts: string[] = [];
  /** Every connection that got WELCOME: the node's worker id and when. */
  readonly connections: { worker: string; slot: number; at: number }[] = [];
  /** The node of the open connection, while there is one. */
  node: ClusterNode | undefined;
  private ws: WebSocket | undefined;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private readonly handlers = new Map<string, Handler[]>();
  private readonly ackWaiters = new Map<string, (d: { delivered: number; queued: number }) => void>();
  private readonly outbox: unknown[] = [];
  private recovering: Promise<void> | undefined;
  private closing = false;

  constructor(
    readonly cluster: Cluster,
    readonly app: string,
    readonly clientId: string,
    private readonly options: ResumingOptions = {},
  ) {}

  /** True while a connection is open and identified. */
  get connected(): boolean {
    return this.ws !== undefined && this.ws.readyState === WebSocket.OPEN && this.node !== undefined;
  }

  on(e: string, handler: Handler): this {
    this.handlers.set(e, [...(this.handlers.get(e) ?? []), handler]);
    return this;
  }

  /** Connects to `node` (or the next available one) and waits for WELCOME. */
  async connect(node?: ClusterNode): Promise<void> {
    const target = node ?? this.cluster.pick();
    if (!target) throw new Error(`no node of cluster ${this.cluster.name} to connect ${this.app}/${this.clientId} to`);
    await this.open(target);
  }

  /** Sends a frame now, or (queueWhileAway) after the next WELCOME; returns whether it went out now. */
  send(frame: unknown): boolean {
    if (this.connected) {
      this.ws!.send(JSON.stringify(frame));
      return true;
    }
    if (this.options.queueWhileAway) this.outbox.push(frame);
    return false;
  }

  dispatch(e: string, to: Record<string, unknown>, d: unknown, nonce?: string): boolean {
    return this.send({ op: 8, e, d, to, ...(nonce === undefined ? {} : { nonce }) });
  }

  /** Resolves with the NERVE_ACK d for `nonce`, or undefined if none came within `timeout`. */
  ack(nonce: string, timeout = 5000): Promise<{ delivered: number; queued: number } | undefined> {
    const known = this.acks.get(nonce);
    if (known) return Promise.resolve(known);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.ackWaiters.delete(nonce);
        resolve(undefined);
      }, timeout);
      this.ackWaiters.set(nonce, (d) => {
        clearTimeout(timer);
        resolve(d);
      });
    });
  }

  /** Resolves once the client is connected again (immediately if it is), or throws after `timeout`. */
  async settled(timeout = 30_000): Promise<void> {
    await waitUntil(
      () => this.connected && this.recovering === undefined,
      (ok) => ok,
      timeout,
      `${this.app}/${this.clientId} connected`,
      20,
    );
  }

  /** Drops the connection without a close frame (the session stays resumable) and resumes on `node`. */
  async moveTo(node: ClusterNode): Promise<void> {
    const old = this.ws;
    this.retire();
    old?.terminate();
    await this.open(node);
  }

  /** Closes with 1000: the session ends. */
  async close(): Promise<void> {
    this.closing = true;
    const ws = this.ws;
    this.retire();
    if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) {
      const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
      ws.close(1000);
      await Promise.race([closed, sleep(2000)]);
      ws.terminate();
    }
  }

  /** Forgets the current connection: its frames are no longer read, and no resume starts from it. */
  private retire(): void {
    clearInterval(this.heartbeat);
    const ws = this.ws;
    this.ws = undefined;
    this.node = undefined;
    // The server closes it (after GO_AWAY), or it is already gone.
    if (ws) {
      ws.removeAllListeners('message');
      ws.removeAllListeners('close');
      ws.on('error', () => {});
    }
  }

  /** Opens a connection to `node`, identifies with reconnect:true and the last s, and waits for WELCOME. */
  private open(node: ClusterNode): Promise<void> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${node.url}/`);
      let welcomed = false;
      let beat: ReturnType<typeof setInterval> | undefined;
      const fail = (why: string) => {
        if (welcomed) return;
        clearTimeout(timer);
        clearInterval(beat);
        ws.removeAllListeners('message');
        ws.removeAllListeners('close');
        ws.on('error', () => {});
        ws.terminate();
        reject(new Error(`${this.app}/${this.clientId} on ${node.runtime} node ${node.worker}: ${why}`));
      };
      const timer = setTimeout(() => fail('no WELCOME in time'), this.options.identifyTimeout ?? NODE_TIMEOUT * 4 + 2000);
      ws.on('error', (error) => fail(String(error)));
      ws.on('unexpected-response', (_req, res) => fail(`upgrade refused with HTTP ${res.statusCode}`));
      ws.on('close', (code, reason) => {
        if (!welcomed) fail(`closed ${code} ${reason.toString()} before WELCOME`);
        else if (this.ws === ws) this.lost(node, `closed ${code} ${reason.toString()}`);
      });
      ws.on('message', (data: Buffer) => {
        let frame: any;
        try {
          frame = JSON.parse(data.toString('utf8'));
        } catch {
          this.refusals.push(`undecodable frame from ${node.worker}`);
          return;
        }
        if (!welcomed) {
          if (frame.op === 0) {
            beat = setInterval(() => {
              if (ws.readyState === WebSocket.OPEN) ws.send('{"op":3}');
            }, this.options.heartbeatEvery ?? 1000);
            const d: Record<string, unknown> = { app_name: this.app, client_id: this.clientId, password: this.cluster.password, reconnect: true, seq: this.lastS };
            if (this.connections.length === 0 && this.options.metadata) d.metadata = this.options.metadata;
            ws.send(JSON.stringify({ op: 1, d }));
          } else if (frame.op === 2) {
            welcomed = true;
            clearTimeout(timer);
            if (this.ws && this.ws !== ws) this.retire();
            this.heartbeat = beat;
            this.ws = ws;
            this.node = node;
            this.connections.push({ worker: node.worker, slot: node.slot, at: Date.now() });
            for (const queued of this.outbox.splice(0)) ws.send(JSON.stringify(queued));
            resolve();
          } else if (frame.op === 6) {
            this.refusals.push(`${node.worker}: ${frame.d}`);
            fail(`NO_U_TBH ${frame.d}`);
          }
          return;
        }
        if (this.ws !== ws) return;
        this.receive(frame, node);
      });
    });
  }

  private receive(frame: any, node: ClusterNode): void {
    if (frame.op === 5) {
      // GO_AWAY: read nothing more from this connection; resume elsewhere.
      this.lost(node, 'GO_AWAY');
      return;
    }
    if (frame.op === 6) {
      this.refusals.push(`${node.worker}: ${frame.d}`);
      return;
    }
    if (frame.op !== 8) return;
    if (frame.e === 'NERVE_ACK') {
      this.acks.set(frame.nonce, frame.d);
      this.ackWaiters.get(frame.nonce)?.(frame.d);
      this.ackWaiters.delete(frame.nonce);
      return;
    }
    if (frame.e === 'NERVE_UNDELIVERABLE') {
      this.undeliverable.push(frame);
      return;
    }
    if (frame.e === 'NERVE_SESSION') {
      this.sessions.push(frame.d);
      return;
    }
    if (typeof frame.s === 'number') {
      if (frame.s <= this.lastS) this.repeatedS.push(frame.s);
      else {
        if (frame.s > this.lastS + 1) this.skippedS.push([this.lastS + 1, frame.s - 1]);
        this.lastS = frame.s;
      }
    }
    this.routed.push({ frame, at: Date.now(), via: node.worker });
    for (const handler of this.handlers.get(frame.e) ?? []) handler(frame, this);
  }

  /** The connection ended (GO_AWAY or a drop): resume on another node, retrying until one takes it. */
  private lost(node: ClusterNode, why: string): void {
    this.retire();
    if (this.closing || this.recovering) return;
    this.recovering = (async () => {
      const deadline = Date.now() + 30_000;
      for (let attempt = 1; !this.closing; attempt++) {
        const target = this.cluster.pick(node);
        try {
          if (!target) throw new Error('no node available');
          await this.open(target);
          return;
        } catch (error) {
          this.failedAttempts.push(`resume after ${why}, attempt ${attempt}: ${(error as Error).message}`);
          if (Date.now() > deadline) return;
          await sleep(Math.min(100 * attempt, 500));
        }
      }
    })().finally(() => {
      this.recovering = undefined;
    });
  }
}
