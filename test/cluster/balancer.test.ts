// examples/balancer.ts in front of three Node nodes sharing one redis-server,
// as examples/cluster.sh runs them: connections through it land on different
// nodes in turn, a client_id dispatch crosses from one node to another, plain
// HTTP passes too, a node that refuses is skipped, bad arguments get one usage
// line and exit 1, and SIGTERM exits 0 with clients still connected.

import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { closeAllClients, TestClient } from '../conformance/client.ts';
import { startCluster, type Cluster } from '../support/cluster.ts';
import { describeWithRedis } from '../support/redis.ts';
import { freePort } from '../support/server.ts';

const root = resolve(import.meta.dirname, '../..');

interface Balancer {
  port: number;
  child: ChildProcess;
  /** Every stdout/stderr line so far. */
  lines: string[];
  /** Sends SIGTERM and resolves with the exit code once the process is gone. */
  stop(): Promise<number | null>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

function spawnBalancer(args: string[]): { child: ChildProcess; lines: string[]; exited: Promise<number | null> } {
  const child = spawn(process.execPath, ['--import', 'tsx', 'examples/balancer.ts', ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  const lines: string[] = [];
  const onData = (chunk: Buffer) => lines.push(...chunk.toString().split('\n').filter(Boolean));
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<number | null>((done) =>
    child.once('exit', (code) => {
      running.delete(child);
      done(code);
    }),
  );
  return { child, lines, exited };
}

/** Starts the balancer on a free port in front of `nodes` and waits for its "balancing" line. */
async function startBalancer(nodes: number[]): Promise<Balancer> {
  const port = await freePort();
  const { child, lines, exited } = spawnBalancer([String(port), ...nodes.map(String)]);
  const deadline = Date.now() + 10_000;
  while (!lines.some((line) => line.includes('"balancing"'))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`balancer did not start:\n${lines.join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    port,
    child,
    lines,
    stop: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

describeWithRedis('examples/balancer.ts in front of a three-node cluster', () => {
  let cluster: Cluster;
  let balancer: Balancer;
  const others: Balancer[] = [];

  beforeAll(async () => {
    cluster = await startCluster({ runtimes: ['node', 'node', 'node'], env: { NERVE_HEARTBEAT_INTERVAL: '5000' } });
    balancer = await startBalancer(cluster.nodes.map((node) => node.port));
  });
  afterAll(async () => {
    await closeAllClients();
    await Promise.all([balancer, ...others].map((b) => b?.stop()));
    await cluster?.stop();
  });

  it('says in one JSON line where it listens and which nodes it balances', () => {
    const line = balancer.lines.find((l) => l.includes('"balancing"'))!;
    expect(JSON.parse(line)).toEqual({ msg: 'balancing', port: balancer.port, nodes: cluster.nodes.map((node) => node.port) });
  });

  it('two clients land on different nodes; a client_id dispatch reaches the other, and NERVE_ACK says delivered', async () => {
    const app = `balanced-${Math.random().toString(16).slice(2, 8)}`;
    const workers = cluster.nodes.map((node) => node.worker);
    const clients: TestClient[] = [];
    const landedOn: string[] = [];
    for (const clientId of ['a', 'b']) {
      const client = new TestClient(`ws://127.0.0.1:${balancer.port}`, { heartbeatEvery: 500 });
      await client.opened;
      const hello = await client.next();
      expect(hello.op).toBe(0);
      expect(workers).toContain(hello.d.worker);
      client.identify({ app_name: app, client_id: clientId, password: cluster.password });
      expect((await client.next(5000)).op).toBe(2);
      clients.push(client);
      landedOn.push(hello.d.worker);
    }
    expect(landedOn[0]).not.toBe(landedOn[1]);
    const [a, b] = clients as [TestClient, TestClient];
    // Every node's registry lists both sessions before a dispatch names one.
    await cluster.waitForClient(app, 'a', { worker: landedOn[0] });
    await cluster.waitForClient(app, 'b', { worker: landedOn[1] });

    a.send({ op: 8, e: 'THROUGH', d: { hello: 'b' }, to: { app_name: app, client_id: 'b' }, nonce: 'n-1' });
    expect(await b.event('THROUGH', 5000)).toEqual({ op: 8, e: 'THROUGH', d: { hello: 'b' }, from: { app_name: app, client_id: 'a' }, nonce: 'n-1', s: 1 });
    const ack = await a.waitFor((f) => f?.e === 'NERVE_ACK' && f.nonce === 'n-1', 5000, 'NERVE_ACK n-1');
    expect(ack).toEqual({ op: 8, e: 'NERVE_ACK', nonce: 'n-1', d: { delivered: 1, queued: 0 } });
  });

  it('plain HTTP passes through: GET /health answers 200', async () => {
    const res = await fetch(`http://127.0.0.1:${balancer.port}/health`, { signal: AbortSignal.timeout(3000) });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: 'ok', cluster: 'up' });
  });

  it('a node that refuses the connection is skipped; when every node refuses, the connection is closed', async () => {
    const dead = await freePort();
    const skipping = await startBalancer([dead, cluster.node(0).port]);
    others.push(skipping);
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`http://127.0.0.1:${skipping.port}/health`, { signal: AbortSignal.timeout(3000) });
      expect(res.status).toBe(200);
    }
    const nobody = await startBalancer([dead]);
    others.push(nobody);
    await expect(fetch(`http://127.0.0.1:${nobody.port}/health`, { signal: AbortSignal.timeout(3000) })).rejects.toThrow();
  });

  it.each([[[]], [['6669']], [['6669', 'x']], [['70000', '7001']]])('bad arguments %j: one usage line and exit 1', async (args) => {
    const { lines, exited } = spawnBalancer(args);
    expect(await exited).toBe(1);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^usage: node --import tsx examples\/balancer\.ts <listen-port> <node-port>/);
  });

  it('exits 0 on SIGTERM, with clients still connected through it', async () => {
    const client = new TestClient(`ws://127.0.0.1:${balancer.port}`);
    await client.opened;
    expect((await client.next()).op).toBe(0);
    expect(await balancer.stop()).toBe(0);
    expect((await client.closed).code).toBeGreaterThan(0);
  });
});
