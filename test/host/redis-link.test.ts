// The cluster link's Redis side, against a real redis-server this file starts
// on a free port: the settings fingerprint, claims, a changeset written to a
// namespace and loaded back, one XADD per destination per turn, NERVE_ACK held
// until the write is done, the link going down and up with Redis, and the
// adoption of a node whose liveness lapsed.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NodeMessage } from '../../src/core/cluster-messages.ts';
import { DEFAULT_LIMITS, type CoreConfig, type Input } from '../../src/core/io.ts';
import type { Changeset, Stored } from '../../src/core/persist.ts';
import { ClusterLink } from '../../src/host/cluster/link.ts';
import { ClusterKeys } from '../../src/host/cluster/keys.ts';
import { changesetCommands, claimCommand, cursorsCommand, loadNamespace, messageLines, ReplayChunks, xaddCommand } from '../../src/host/cluster/namespace.ts';
import { connectRedis, type RedisPort } from '../../src/host/cluster/redis.ts';
import { ConfigError } from '../../src/host/config.ts';
import { createHttpApp } from '../../src/host/http.ts';
import { Hub, type HubSocket } from '../../src/host/hub.ts';
import { freePort } from '../support/server.ts';

const REDIS_SERVER = spawnSync('redis-server', ['--version']).status === 0;
if (!REDIS_SERVER && process.env.CI === 'true') throw new Error('redis-server is not installed, and CI must run the cluster link tests');
if (!REDIS_SERVER) console.log('test/host/redis-link.test.ts skipped: no redis-server on PATH (apt-get install redis-server)');

const PASSWORD = 'cluster-password';
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(condition: () => boolean | Promise<boolean>, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A redis-server on `port`, without persistence, that can be stopped and started again on the same port. */
class RedisServer {
  private process: ChildProcess | undefined;
  constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.process = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    await until(() => spawnSync('redis-cli', ['-p', String(this.port), 'ping'], { encoding: 'utf8' }).stdout.trim() === 'PONG', 'redis-server to answer');
  }

  async stop(): Promise<void> {
    const child = this.process;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    spawnSync('redis-cli', ['-p', String(this.port), 'shutdown', 'nosave']);
    await exited;
  }

  cli(...args: string[]): string {
    return spawnSync('redis-cli', ['-p', String(this.port), ...args], { encoding: 'utf8' }).stdout.trim();
  }
}

/** A socket that keeps what it was sent. */
class FakeSocket implements HubSocket {
  frames: string[] = [];
  send(frames: readonly (string | Uint8Array)[]): void {
    for (const frame of frames) this.frames.push(String(frame));
  }
  close(): void {}
  buffered(): number {
    return 0;
  }
  terminate(): void {}
}

interface Node {
  hub: Hub;
  link: ClusterLink;
  inputs: Input[];
  logs: { level: string; msg: string }[];
}

let redis: RedisServer;
let admin: RedisPort;
const running: Node[] = [];
let clusters = 0;

function nodeConfig(worker: string, limits: Partial<CoreConfig> = {}): CoreConfig {
  return { ...DEFAULT_LIMITS, worker, password: PASSWORD, cluster: true, ...limits };
}

function newHub(config: CoreConfig): Omit<Node, 'link'> {
  const inputs: Input[] = [];
  const logs: { level: string; msg: string }[] = [];
  const hub = new Hub({
    config,
    schedule: setImmediate,
    log: (line) => logs.push(JSON.parse(line) as { level: string; msg: string }),
    afterStep: (input) => inputs.push(structuredClone(input)),
  });
  return { hub, inputs, logs };
}

async function startNode(cluster: string, worker: string, options: { nodeTimeout?: number; limits?: Partial<CoreConfig> } = {}): Promise<Node> {
  const parts = newHub(nodeConfig(worker, options.limits));
  const link = await ClusterLink.start({ hub: parts.hub, settings: { redisUrl: redis.url, name: cluster, nodeTimeout: options.nodeTimeout ?? 2_000 }, runtime: 'node' });
  const node = { ...parts, link };
  running.push(node);
  return node;
}

async function stopNode(node: Node): Promise<void> {
  await node.hub.shutdown(50);
  await node.link.stop();
}

function newCluster(): string {
  return `t${process.pid}-${++clusters}`;
}

const ofType = <T extends Input['type']>(inputs: Input[], type: T) => inputs.filter((input): input is Extract<Input, { type: T }> => input.type === type);

describe.skipIf(!REDIS_SERVER)('cluster link against redis-server', () => {
  beforeAll(async () => {
    redis = new RedisServer(await freePort());
    await redis.start();
    admin = await connectRedis({ url: redis.url, name: 'test-admin', replyTimeout: 5_000, counters: { commands: 0, errors: 0 } }, 5_000);
  });

  afterAll(async () => {
    for (const node of running) await node.link.stop().catch(() => undefined);
    await admin?.close();
    await redis?.stop();
  });

  it('refuses a node whose password or limits differ from the cluster, naming the setting, never the password', async () => {
    const cluster = newCluster();
    const first = await startNode(cluster, 'nerve-a00001');
    const payload = startNode(cluster, 'nerve-a00002', { limits: { maxPayload: 2048 } });
    await expect(payload).rejects.toThrow(ConfigError);
    await expect(payload).rejects.toThrow(`NERVE_MAX_PAYLOAD is 2048 here but ${DEFAULT_LIMITS.maxPayload} in cluster "${cluster}"`);
    const password = startNode(cluster, 'nerve-a00003', { limits: { password: 'another-secret' } });
    await expect(password).rejects.toThrow('NERVE_PASSWORD differs');
    await expect(password).rejects.not.toThrow('another-secret');
    expect(redis.cli('GET', `${cluster}:config`)).not.toContain(PASSWORD);
    // Per-node capacity may differ.
    const bigger = await startNode(cluster, 'nerve-a00004', { limits: { maxMemory: 12_345_678, maxConnections: 7 } });
    expect(bigger.link.linked).toBe(true);
    // Once no node runs with the old settings, a node with new ones may start the cluster over.
    await stopNode(first);
    await stopNode(bigger);
    const renewed = await startNode(cluster, 'nerve-a00005', { limits: { maxPayload: 2048 } });
    expect(renewed.link.linked).toBe(true);
    await stopNode(renewed);
  });

  it('claims with compare-and-set and answers the core with the owner', async () => {
    const cluster = newCluster();
    const owners = `${cluster}:{a:api}:owners`;
    const a = await startNode(cluster, 'nerve-b00001');
    const b = await startNode(cluster, 'nerve-b00002');
    const answers = (node: Node) => ofType(node.inputs, 'claimed');
    // A session the core creates on A is claimed for A first.
    const socket = new FakeSocket();
    const conn = a.hub.open(socket, { format: 'json', compression: 'none' });
    a.hub.receive(conn, JSON.stringify({ op: 1, d: { app_name: 'api', client_id: 'c1', password: PASSWORD } }));
    await until(() => answers(a).length === 1, 'the first claim');
    expect(answers(a)[0]).toMatchObject({ key: 'api\u0000c1', owner: undefined });
    expect(redis.cli('HGET', owners, 'c1')).toBe('nerve-b00001');
    // Another node's claim with no owner expected is refused, and told who owns it.
    b.link.collect({ type: 'claim', app: 'api', client: 'c1', node: 'nerve-b00002', expected: '', answer: true });
    await until(() => answers(b).length === 1, 'the refused claim');
    expect(answers(b)[0]).toMatchObject({ key: 'api\u0000c1', owner: 'nerve-b00001' });
    // With the owner as expected (a handoff), it moves; a claim without an answer is not answered.
    a.link.collect({ type: 'claim', app: 'api', client: 'c1', node: 'nerve-b00002', expected: 'nerve-b00001', answer: false });
    await until(() => redis.cli('HGET', owners, 'c1') === 'nerve-b00002', 'the handed-over claim');
    await sleep(50);
    expect(answers(a)).toHaveLength(1);
    // The owner claiming again succeeds; the previous one no longer can; node '' gives it up.
    expect(await admin.command(claimCommand(owners, 'c1', 'nerve-b00002', ''))).toBe('');
    expect(await admin.command(claimCommand(owners, 'c1', 'nerve-b00001', ''))).toBe('nerve-b00002');
    expect(await admin.command(claimCommand(owners, 'c1', '', 'nerve-b00001'))).toBe('nerve-b00002');
    expect(await admin.command(claimCommand(owners, 'c1', '', 'nerve-b00002'))).toBe('');
    expect(redis.cli('HEXISTS', owners, 'c1')).toBe('0');
    await stopNode(a);
    await stopNode(b);
  });

  it('writes a changeset into a namespace and loads back the same Stored', async () => {
    const keys = new ClusterKeys(newCluster()).node('nerve-c00001');
    const msg = { e: 'E', d: { n: 1 }, from: { app_name: 'web', client_id: 'w1' }, to: { app_name: 'api', mode: 'one' as const } };
    const first: Changeset = {
      meta: { nextOrdinal: 4, nextHeld: 3, counters: { framesIn: 1, framesOut: 2, dispatches: 3, deliveries: 4, queued: 5, undeliverable: 0, errors: {}, refused: {}, slowConsumers: 0 } },
      dropSessions: [],
      droppedReplay: [],
      sessions: [
        { ord: 1, app: 'api', id: 'c1', md: { role: 'x' }, conn: null, at: 10, seq: 3, exp: 99, wr: 1 },
        { ord: 2, app: 'api', id: 'c2', md: {}, conn: 7, at: 11, seq: 1, exp: 0, wr: 1, au: 'token:iss/sub', dt: ['api'] },
      ],
      trimReplay: [],
      replay: [
        { ord: 1, s: 1, text: '{"op":8,"s":1}' },
        { ord: 1, s: 2, text: '{"op":8,"s":2}' },
        { ord: 1, s: 3, msg },
        { ord: 2, s: 1, text: '{"op":8,"s":1}' },
      ],
      dropApps: [],
      apps: [{ name: 'api', cursor: 2 }],
      dropHeld: [],
      held: [
        { id: 1, app: 'api', exp: 500, msg },
        { id: 2, app: 'api', exp: 600, msg },
      ],
    };
    // One index of replay chunks across writes, as a link keeps it.
    const chunks = new ReplayChunks();
    await admin.transaction([...changesetCommands(keys, first, chunks), cursorsCommand(keys, { inbox: '5-0', bus: '7-1' })]);
    // One field per session and write, not per row.
    expect(await admin.command(['HLEN', keys.replay])).toBe(2);
    let loaded = await loadNamespace(admin, keys);
    const sort = (stored: Stored) => ({
      ...stored,
      sessions: [...stored.sessions].sort((x, y) => x.ord - y.ord),
      replay: [...stored.replay].sort((x, y) => x.ord - y.ord || x.s - y.s),
      held: [...stored.held].sort((x, y) => x.id - y.id),
    });
    expect(sort(loaded.stored)).toEqual({ meta: first.meta, sessions: first.sessions, replay: first.replay, apps: first.apps, held: first.held });
    expect(loaded.cursors).toEqual({ inbox: '5-0', bus: '7-1' });
    expect(loaded.skipped).toBe(0);

    // Drops name their rows exactly: session 2 with its replay range, the rows of 1 below 3, an app, a held event.
    const second: Changeset = {
      dropSessions: [2],
      droppedReplay: [{ ord: 2, first: 1, last: 1 }],
      sessions: [{ ...first.sessions[0]!, seq: 4 }],
      trimReplay: [{ ord: 1, below: 3, from: 1 }],
      replay: [{ ord: 1, s: 4, text: '{"op":8,"s":4}' }],
      dropApps: ['gone'],
      apps: [],
      dropHeld: [1],
      held: [],
    };
    await admin.transaction(changesetCommands(keys, second, chunks));
    // Session 2's chunk is gone; session 1 keeps its first chunk (row 3 is still buffered), the new one and its trim point.
    expect(((await admin.command(['HKEYS', keys.replay])) as string[]).sort()).toEqual(['1:1-3', '1:4-4', '1:below']);
    // A row that is not a record is skipped, not thrown.
    await admin.command(['HSET', keys.held, '9', 'not json']);
    loaded = await loadNamespace(admin, keys);
    expect(sort(loaded.stored)).toEqual({
      meta: first.meta,
      sessions: [{ ...first.sessions[0]!, seq: 4 }],
      replay: [first.replay[2], { ord: 1, s: 4, text: '{"op":8,"s":4}' }],
      apps: first.apps,
      held: [first.held[1]],
    });
    expect(loaded.skipped).toBe(1);

    // A trim past a whole chunk deletes it; dropping the buffer deletes every chunk and the trim point.
    const empty: Changeset = { dropSessions: [], droppedReplay: [], sessions: [], trimReplay: [], replay: [], dropApps: [], apps: [], dropHeld: [], held: [] };
    await admin.transaction(changesetCommands(keys, { ...empty, trimReplay: [{ ord: 1, below: 4, from: 3 }] }, chunks));
    expect(((await admin.command(['HKEYS', keys.replay])) as string[]).sort()).toEqual(['1:4-4', '1:below']);
    expect((await loadNamespace(admin, keys)).stored.replay).toEqual([{ ord: 1, s: 4, text: '{"op":8,"s":4}' }]);
    await admin.transaction(changesetCommands(keys, { ...empty, dropSessions: [1], droppedReplay: [{ ord: 1, first: 4, last: 4 }] }, chunks));
    expect(await admin.command(['HLEN', keys.replay])).toBe(0);
  });

  it('stores the state of a session the core creates, with the stream cursors, and gives up its owner field when it ends', async () => {
    const cluster = newCluster();
    const a = await startNode(cluster, 'nerve-d00001', { limits: { resumeWindow: 0 } });
    const socket = new FakeSocket();
    const conn = a.hub.open(socket, { format: 'json', compression: 'none' });
    a.hub.receive(conn, JSON.stringify({ op: 1, d: { app_name: 'api', client_id: 'c1', password: PASSWORD, metadata: { role: 'worker' } } }));
    const keys = new ClusterKeys(cluster);
    await until(async () => (await loadNamespace(admin, keys.node('nerve-d00001'))).stored.sessions.length === 1, 'the session to be stored');
    const loaded = await loadNamespace(admin, keys.node('nerve-d00001'));
    expect(loaded.stored.sessions[0]).toMatchObject({ app: 'api', id: 'c1', md: { role: 'worker' } });
    expect(loaded.cursors.bus).toMatch(/^\d+-\d+$/);
    expect(redis.cli('HGET', keys.owners('api'), 'c1')).toBe('nerve-d00001');
    a.hub.closed(conn, 1000);
    await until(async () => (await loadNamespace(admin, keys.node('nerve-d00001'))).stored.sessions.length === 0, 'the session to be dropped');
    await until(() => redis.cli('HEXISTS', keys.owners('api'), 'c1') === '0', 'the owner field to go');
    await stopNode(a);
  });

  it('sends everything a turn relays to one node as one XADD, and the other node reads it as one input', async () => {
    const cluster = newCluster();
    const a = await startNode(cluster, 'nerve-e00001');
    const b = await startNode(cluster, 'nerve-e00002');
    const keys = new ClusterKeys(cluster);
    await sleep(100);
    const busBefore = Number(redis.cli('XLEN', keys.bus));
    const msgs: NodeMessage[] = Array.from({ length: 25 }, (_, i) => ({ t: 'down', app: 'api', id: `gone-${i}`, node: 'nerve-e00001' }));
    for (const msg of msgs) a.link.collect({ type: 'relay', to: 'nerve-e00002', msg });
    for (const msg of msgs.slice(0, 5)) a.link.collect({ type: 'relay', to: undefined, msg });
    await until(() => Number(redis.cli('XLEN', keys.inbox('nerve-e00002'))) === 1, 'the XADD to the inbox');
    await sleep(50);
    expect(Number(redis.cli('XLEN', keys.inbox('nerve-e00002')))).toBe(1);
    expect(Number(redis.cli('XLEN', keys.bus))).toBe(busBefore + 1);
    const fromA = () => ofType(b.inputs, 'node').filter((input) => input.from === 'nerve-e00001' && input.msgs.length === 25);
    await until(() => fromA().length === 1, 'node B to read the entry');
    expect(fromA()[0]!.msgs).toEqual(msgs);
    // An inbox entry is just its messages; a bus entry also says where on the bus it is.
    expect((fromA()[0] as { at?: string }).at).toBeUndefined();
    const busEntry = () => ofType(b.inputs, 'node').find((input) => input.from === 'nerve-e00001' && input.msgs.length === 5) as { at?: string } | undefined;
    await until(() => busEntry() !== undefined, 'node B to read the bus entry');
    expect(busEntry()!.at).toBe(redis.cli('XREVRANGE', keys.bus, '+', '-', 'COUNT', '1').split('\n')[0]);
    // The bus entry reaches every node, its sender too.
    await until(() => ofType(a.inputs, 'node').some((input) => input.from === 'nerve-e00001' && input.msgs.length === 5), 'node A to read its own bus entry');
    await until(() => b.link.metrics().received >= 30, 'the received count');
    expect(a.link.metrics().relayed).toBeGreaterThanOrEqual(30);
    await stopNode(a);
    await stopNode(b);
  });

  it('delivers an inbox entry only after the bus entry it names: a mode-all event, then a directed one its sender sent after the ACK, arrive in that order', async () => {
    const cluster = newCluster();
    const a = await startNode(cluster, 'nerve-f00001');
    const b = await startNode(cluster, 'nerve-f00002');
    const keys = new ClusterKeys(cluster);
    const socket = new FakeSocket();
    const conn = b.hub.open(socket, { format: 'json', compression: 'none' });
    b.hub.receive(conn, JSON.stringify({ op: 1, d: { app_name: 'api', client_id: 'c1', password: PASSWORD } }));
    await until(() => socket.frames.some((frame) => frame.includes('"op":2')), 'the client to be welcomed');
    const from = { app_name: 'web', client_id: 'w1' };
    const head = (e: string) => `{"op":8,"e":"${e}","d":1,"from":{"app_name":"web","client_id":"w1"}`;
    const all: NodeMessage = { t: 'all', msg: { e: 'FIRST', h: head('FIRST'), from, to: { app_name: 'api', mode: 'all' } } };
    const directed: NodeMessage = { t: 'event', to: 'api\u0000c1', hops: 0, msg: { e: 'SECOND', h: head('SECOND'), from, to: { app_name: 'api', client_id: 'c1' } } };
    // Both are on their streams when node B reads; the bus entry gets an id a little ahead, so B reads the inbox entry first.
    const busId = `${Date.now() + 1_000}-0`;
    await admin.command(xaddCommand(keys.inbox('nerve-f00002'), 'nerve-f00001', messageLines(directed), busId));
    await sleep(300);
    const events = () => socket.frames.filter((frame) => frame.includes('"op":8') && !frame.includes('NERVE_')).map((frame) => (JSON.parse(frame) as { e: string }).e);
    expect(events(), 'the directed event waits for the bus entry it names').toEqual([]);
    await admin.command(['XADD', keys.bus, busId, 'from', 'nerve-f00001', 'msgs', messageLines(all)]);
    await until(() => events().length === 2, 'both events');
    expect(events()).toEqual(['FIRST', 'SECOND']);
    await stopNode(a);
    await stopNode(b);
  });

  it('a node that joins reads the bus from its start before it takes clients; /clients names each session\'s node', async () => {
    const cluster = newCluster();
    const a = await startNode(cluster, 'nerve-j00001');
    const socket = new FakeSocket();
    const conn = a.hub.open(socket, { format: 'json', compression: 'none' });
    a.hub.receive(conn, JSON.stringify({ op: 1, d: { app_name: 'api', client_id: 'c1', password: PASSWORD, metadata: { zone: 'x' } } }));
    await until(() => socket.frames.some((frame) => frame.includes('"op":2')), 'WELCOME');
    await sleep(100);
    const b = await startNode(cluster, 'nerve-j00002');
    // Known as soon as start resolves, before any client could connect to B.
    expect(b.hub.clients()).toEqual([{ app_name: 'api', client_id: 'c1', metadata: { zone: 'x' }, connected_at: expect.any(Number), connected: true, node: 'nerve-j00001' }]);
    expect(a.hub.clients()).toMatchObject([{ client_id: 'c1', connected: true, node: 'nerve-j00001' }]);
    expect(b.link.metrics().remoteSessions).toBe(1);
    await until(() => a.link.metrics().nodes === 2, 'node A to see node B');
    expect(a.hub.health()).toMatchObject({ cluster: 'up', nodes: 2 });
    const metrics = b.hub.metrics();
    for (const name of ['nerve_cluster_up', 'nerve_cluster_nodes', 'nerve_cluster_remote_sessions', 'nerve_cluster_relayed_total', 'nerve_cluster_received_total', 'nerve_cluster_redis_commands_total', 'nerve_cluster_redis_errors_total', 'nerve_cluster_adopted_total']) {
      expect(metrics).toContain(`# TYPE ${name} `);
    }
    expect(metrics).toContain('nerve_cluster_remote_sessions{worker="nerve-j00002"} 1');
    await stopNode(a);
    await stopNode(b);
  });

  it('holds a NERVE_ACK, and the HTTP dispatch answer, until the write that stores the step is done', async () => {
    const cluster = newCluster();
    const a = await startNode(cluster, 'nerve-f00001');
    const socket = new FakeSocket();
    const conn = a.hub.open(socket, { format: 'json', compression: 'none' });
    a.hub.receive(conn, JSON.stringify({ op: 1, d: { app_name: 'api', client_id: 'c1', password: PASSWORD } }));
    await until(() => socket.frames.some((frame) => frame.includes('"op":2')), 'WELCOME');
    await sleep(50);
    // Writes stall while Redis is paused for writes; reads and the rest go on.
    await admin.command(['CLIENT', 'PAUSE', '400', 'WRITE']);
    const paused = Date.now();
    a.hub.receive(conn, JSON.stringify({ op: 8, e: 'JOB', d: 1, to: { app_name: 'nobody', mode: 'one' }, nonce: 'n1' }));
    const http = createHttpApp(a.hub);
    let answered = 0;
    const response = Promise.resolve(
      http.request('/dispatch', { method: 'POST', headers: { authorization: `Bearer ${PASSWORD}` }, body: JSON.stringify({ e: 'JOB', d: 2, to: { app_name: 'nobody', mode: 'one' } }) }),
    ).then((r) => ((answered = Date.now()), r));
    await sleep(200);
    expect(socket.frames.some((frame) => frame.includes('NERVE_ACK'))).toBe(false);
    expect(answered).toBe(0);
    await until(() => socket.frames.some((frame) => frame.includes('NERVE_ACK')), 'the NERVE_ACK');
    expect(Date.now() - paused).toBeGreaterThanOrEqual(350);
    const answer = await response;
    expect(answer.status).toBe(200);
    expect(await answer.json()).toEqual({ delivered: 0, queued: 1 });
    expect(answered - paused).toBeGreaterThanOrEqual(350);
    // Once stored, the held events are in Redis.
    expect((await loadNamespace(admin, new ClusterKeys(cluster).node('nerve-f00001'))).stored.held).toHaveLength(2);
    await stopNode(a);
  });

  it('goes down with Redis and up again once it is back, storing its state and registering again', async () => {
    const cluster = newCluster();
    const a = await startNode(cluster, 'nerve-g00001');
    const socket = new FakeSocket();
    const conn = a.hub.open(socket, { format: 'json', compression: 'none' });
    a.hub.receive(conn, JSON.stringify({ op: 1, d: { app_name: 'api', client_id: 'c1', password: PASSWORD } }));
    await until(() => socket.frames.some((frame) => frame.includes('"op":2')), 'WELCOME');
    const http = createHttpApp(a.hub);
    expect((await http.request('/health')).status).toBe(200);

    await redis.stop();
    await until(() => !a.link.linked, 'the link to go down');
    expect(ofType(a.inputs, 'link').at(-1)).toMatchObject({ up: false, nodes: ['nerve-g00001'] });
    const health = await http.request('/health');
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({ cluster: 'down', nodes: 1 });
    expect(a.hub.metrics()).toContain('nerve_cluster_up{worker="nerve-g00001"} 0');
    // While down there is nothing to wait for: a NERVE_ACK goes out at once.
    a.hub.receive(conn, JSON.stringify({ op: 8, e: 'JOB', d: 1, to: { app_name: 'nobody', mode: 'one' }, nonce: 'n1' }));
    await until(() => socket.frames.some((frame) => frame.includes('NERVE_ACK')), 'the NERVE_ACK while down');
    await sleep(300);

    await redis.start();
    await until(() => a.link.linked, 'the link to come back', 8_000);
    expect(a.logs.filter((line) => line.msg === 'cluster link down')).toHaveLength(1);
    expect(a.logs.filter((line) => line.msg === 'cluster link up')).toHaveLength(2);
    expect(ofType(a.inputs, 'link').at(-1)).toMatchObject({ up: true, nodes: ['nerve-g00001'] });
    expect((await http.request('/health')).status).toBe(200);
    const keys = new ClusterKeys(cluster);
    await until(async () => (await loadNamespace(admin, keys.node('nerve-g00001'))).stored.sessions.length === 1, 'the state to be written again');
    expect((await loadNamespace(admin, keys.node('nerve-g00001'))).stored.held).toHaveLength(1);
    expect(redis.cli('HEXISTS', keys.nodes, 'nerve-g00001')).toBe('1');
    expect(redis.cli('EXISTS', keys.alive('nerve-g00001'))).toBe('1');
    // The core claimed its session again.
    expect(redis.cli('HGET', keys.owners('api'), 'c1')).toBe('nerve-g00001');
    await stopNode(a);
  }, 20_000);

  it('takes a Redis that stops answering for a lost link, within the node timeout, and links again when it answers', async () => {
    const cluster = newCluster();
    const a = await startNode(cluster, 'nerve-k00001', { nodeTimeout: 500 });
    await admin.command(['CLIENT', 'PAUSE', '1500', 'ALL']);
    const paused = Date.now();
    await until(() => !a.link.linked, 'the link to go down', 3_000);
    expect(Date.now() - paused).toBeLessThan(1_400);
    expect(a.logs.find((line) => line.msg === 'cluster link down')).toMatchObject({ reason: expect.stringContaining('no reply from Redis within 500 ms') });
    await until(() => a.link.linked, 'the link to come back', 6_000);
    await stopNode(a);
  }, 15_000);

  it('adopts a node whose liveness lapsed: claims its sessions, hands the core its state and unread inboxes, then deletes its keys', async () => {
    const cluster = newCluster();
    const keys = new ClusterKeys(cluster);
    const dead = 'nerve-dead01';
    const deadKeys = keys.node(dead);
    const msg = { e: 'E', d: 1, from: { app_name: 'web', client_id: 'w1' }, to: { app_name: 'api', mode: 'one' as const } };
    const handled: NodeMessage = { t: 'down', app: 'x', id: 'handled', node: 'nerve-other1' };
    const unread: NodeMessage = { t: 'down', app: 'x', id: 'unread', node: 'nerve-other1' };
    const handledId = await admin.command(xaddCommand(deadKeys.inbox, 'nerve-other1', messageLines(handled)));
    await admin.command(xaddCommand(deadKeys.inbox, 'nerve-other1', messageLines(unread)));
    // A node the dead one had adopted, whose inbox it was still reading.
    const grand = 'nerve-grand1';
    const grandHandled = await admin.command(xaddCommand(keys.inbox(grand), 'nerve-other1', messageLines({ ...handled, id: 'grand-handled' })));
    const grandUnread: NodeMessage = { t: 'down', app: 'x', id: 'grand-unread', node: 'nerve-other1' };
    await admin.command(xaddCommand(keys.inbox(grand), 'nerve-other1', messageLines(grandUnread)));
    const state: Changeset = {
      dropSessions: [],
      droppedReplay: [],
      sessions: [
        { ord: 1, app: 'api', id: 'mine', md: {}, conn: 3, at: 1, seq: 1, exp: 0, wr: 0 },
        { ord: 2, app: 'api', id: 'moved', md: {}, conn: null, at: 1, seq: 0, exp: Date.now() + 30_000, wr: 0 },
        { ord: 3, app: 'api', id: 'orphan', md: {}, conn: null, at: 1, seq: 0, exp: Date.now() + 30_000, wr: 0 },
      ],
      trimReplay: [],
      replay: [{ ord: 1, s: 1, msg }],
      dropApps: [],
      apps: [{ name: 'api', cursor: 1 }],
      dropHeld: [],
      held: [{ id: 1, app: 'api', exp: Date.now() + 30_000, msg }],
    };
    await admin.transaction([...changesetCommands(deadKeys, state), cursorsCommand(deadKeys, { inbox: String(handledId), bus: '0-0', inherited: { [grand]: String(grandHandled) } })]);
    // `moved` belongs to a live node now; `orphan` to a node that claimed it and died before storing it.
    await admin.command(['HSET', keys.owners('api'), 'mine', dead, 'moved', 'nerve-other1', 'orphan', 'nerve-gone99']);
    await admin.command(['HSET', keys.nodes, 'nerve-other1', JSON.stringify({ runtime: 'node', started: 1 })]);
    await admin.command(['SET', keys.alive('nerve-other1'), '1', 'PX', '20000']);
    await admin.command(['HSET', keys.nodes, dead, JSON.stringify({ runtime: 'node', started: 1 })]);
    await admin.command(['SET', keys.alive(dead), '1', 'PX', '300']);

    const a = await startNode(cluster, 'nerve-h00001', { nodeTimeout: 600 });
    const adopted = () => ofType(a.inputs, 'adopt');
    await until(() => adopted().length === 1, 'the adoption', 6_000);
    const input = adopted()[0]!;
    expect(input.node).toBe(dead);
    // The session a live node owns by now is not taken, nor its rows.
    expect(input.stored.sessions.map((record) => record.id).sort()).toEqual(['mine', 'orphan']);
    expect(input.stored.replay).toEqual([{ ord: 1, s: 1, msg }]);
    expect(input.stored.held).toHaveLength(1);
    expect(input.inbox).toEqual([unread, grandUnread]);
    expect(redis.cli('HGET', keys.owners('api'), 'mine')).toBe('nerve-h00001');
    expect(redis.cli('HGET', keys.owners('api'), 'moved')).toBe('nerve-other1');
    expect(redis.cli('HGET', keys.owners('api'), 'orphan')).toBe('nerve-h00001');
    expect(a.link.metrics().adopted).toBe(1);
    expect(redis.cli('GET', keys.reap(dead))).toBe('nerve-h00001');

    // Its inbox is still read for a while: a node that had not noticed yet relays there.
    const late: NodeMessage = { t: 'down', app: 'x', id: 'late', node: 'nerve-other1' };
    await admin.command(xaddCommand(deadKeys.inbox, 'nerve-other1', messageLines(late)));
    await until(() => ofType(a.inputs, 'node').some((node) => node.msgs.some((m) => m.t === 'down' && m.id === 'late')), 'the late relay');
    // Once the adopter stored it, it is reaped: its state and its place in the node list go; the inboxes it read are the adopter's to read, with their cursors.
    await until(() => redis.cli('EXISTS', deadKeys.sessions) === '0', 'its state to be deleted');
    await until(() => redis.cli('HEXISTS', keys.nodes, dead) === '0', 'its node entry to be deleted');
    const meta = keys.node('nerve-h00001').meta;
    await until(() => redis.cli('HEXISTS', meta, `inbox:${grand}`) === '1', 'the inherited cursors to be stored');
    expect(redis.cli('HEXISTS', meta, `inbox:${dead}`)).toBe('1');
    // After two timeouts, its inbox and the rest of its keys go, and the cursors with them.
    await until(() => redis.cli('EXISTS', deadKeys.inbox, deadKeys.meta) === '0', 'its inbox to be deleted', 6_000);
    await until(() => redis.cli('HEXISTS', meta, `inbox:${dead}`) === '0' && redis.cli('HEXISTS', meta, `inbox:${grand}`) === '0', 'their cursors to be removed');
    // The adopter stored the session as its own.
    const mine = await loadNamespace(admin, keys.node('nerve-h00001'));
    expect(mine.stored.sessions.map((record) => record.id).sort()).toEqual(['mine', 'orphan']);
    await stopNode(a);
  }, 20_000);

  it('leaves on stop: the final state stays, the liveness key goes, so another node adopts at once', async () => {
    const cluster = newCluster();
    const keys = new ClusterKeys(cluster);
    const a = await startNode(cluster, 'nerve-i00001', { nodeTimeout: 600 });
    const socket = new FakeSocket();
    const conn = a.hub.open(socket, { format: 'json', compression: 'none' });
    a.hub.receive(conn, JSON.stringify({ op: 1, d: { app_name: 'api', client_id: 'c1', password: PASSWORD } }));
    await until(() => socket.frames.some((frame) => frame.includes('"op":2')), 'WELCOME');
    const b = await startNode(cluster, 'nerve-i00002', { nodeTimeout: 600 });
    await sleep(700);
    await stopNode(a);
    expect(redis.cli('EXISTS', keys.alive('nerve-i00001'))).toBe('0');
    await until(() => ofType(b.inputs, 'adopt').length === 1, 'node B to adopt node A', 4_000);
    expect(ofType(b.inputs, 'adopt')[0]!.stored.sessions.map((record) => record.id)).toEqual(['c1']);
    expect(redis.cli('HGET', keys.owners('api'), 'c1')).toBe('nerve-i00002');
    await stopNode(b);
  }, 15_000);
});
