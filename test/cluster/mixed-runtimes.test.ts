// docs/cluster.md "What a client sees", over a cluster of one Node, one Deno
// and one Bun node sharing one redis-server: identity and take-over, every
// routing mode, NERVE_ACK and NERVE_UNDELIVERABLE, held messages, resume on
// another node, GET /clients and POST /dispatch, with clients on all three.

import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { closeAllClients, TestClient } from '../conformance/client.ts';
import { health, identifiedOn, startCluster, waitUntil, type Cluster, type ClusterNode, type NodeRuntime } from '../support/cluster.ts';
import { describeWithRedis } from '../support/redis.ts';

const RUNTIMES: NodeRuntime[] = ['node', 'deno', 'bun'];
const QUEUE_TTL = 3000;

let counter = 0;
const uid = (prefix: string) => `${prefix}-${++counter}-${Math.random().toString(16).slice(2, 8)}`;

/** Every DISPATCH of event `e` a client has received so far, consumed or not. */
function received(client: TestClient, e: string): any[] {
  return client.log.filter((r) => r.frame?.op === 8 && r.frame.e === e).map((r) => r.frame);
}

function ackOf(client: TestClient, nonce: string): Promise<any> {
  return client.waitFor((f) => f?.e === 'NERVE_ACK' && f.nonce === nonce, 5000, `NERVE_ACK ${nonce}`);
}

describeWithRedis('a cluster of one Node, one Deno and one Bun node', () => {
  let cluster: Cluster;
  const node = (runtime: NodeRuntime): ClusterNode => cluster.node(RUNTIMES.indexOf(runtime));

  beforeAll(async () => {
    cluster = await startCluster({
      runtimes: RUNTIMES,
      env: { NERVE_HEARTBEAT_INTERVAL: '5000', NERVE_QUEUE_TTL: String(QUEUE_TTL), NERVE_RESUME_WINDOW: '10000' },
    });
  });
  afterEach(closeAllClients);
  afterAll(async () => {
    await closeAllClients();
    await cluster?.stop();
  });

  /** Identifies app/clientId on the node of `runtime`; every node lists it before this resolves. */
  const on = (runtime: NodeRuntime, app: string, clientId: string, options: Parameters<typeof identifiedOn>[4] = {}) =>
    identifiedOn(cluster, node(runtime), app, clientId, options);

  /**
   * Sends MARK from `sender` to each recipient and waits until each has it.
   * One session's dispatches to another arrive in the order sent, so
   * whatever `sender` sent a recipient before has arrived by then.
   */
  async function barrier(sender: TestClient, recipients: [app: string, clientId: string, client: TestClient][]): Promise<void> {
    for (const [app, clientId, client] of recipients) {
      const mark = uid('mark');
      sender.send({ op: 8, e: 'MARK', d: mark, to: { app_name: app, client_id: clientId } });
      await client.waitFor((f) => f?.e === 'MARK' && f.d === mark, 5000, `MARK ${mark}`);
    }
  }

  it('each node is up in one cluster with a worker id of its own, the one its HELLO gives', async () => {
    for (const runtime of RUNTIMES) {
      const answer = await health(node(runtime));
      expect(answer, runtime).toMatchObject({ status: 200, body: { status: 'ok', cluster: 'up', worker: node(runtime).worker } });
      const client = new TestClient(node(runtime).url);
      expect((await client.next()).d.worker).toBe(node(runtime).worker);
    }
    expect(new Set(cluster.nodes.map((n) => n.worker)).size).toBe(3);
  });

  it('client_id dispatch between every pair of runtimes: the exact frame arrives, and NERVE_ACK says delivered', async () => {
    const app = uid('pair');
    const clients = await Promise.all(RUNTIMES.map((runtime) => on(runtime, app, runtime)));
    const lastS: Record<string, number> = {};
    for (const [i, from] of RUNTIMES.entries()) {
      for (const [j, to] of RUNTIMES.entries()) {
        if (i === j) continue;
        const nonce = `${from}->${to}`;
        clients[i]!.send({ op: 8, e: 'PAIR', d: { from, to }, to: { app_name: app, client_id: to }, nonce });
        lastS[to] = (lastS[to] ?? 0) + 1;
        expect(await clients[j]!.event('PAIR', 5000)).toEqual({ op: 8, e: 'PAIR', d: { from, to }, from: { app_name: app, client_id: from }, nonce, s: lastS[to] });
        expect(await ackOf(clients[i]!, nonce)).toEqual({ op: 8, e: 'NERVE_ACK', nonce, d: { delivered: 1, queued: 0 } });
      }
    }
  });

  it('mode one spreads over the workers of every node: each sending node round-robins fairly', async () => {
    const app = uid('rr');
    const src = uid('src');
    const workers = await Promise.all(RUNTIMES.map((runtime) => on(runtime, app, `w-${runtime}`)));
    const senders = await Promise.all(RUNTIMES.map((runtime) => on(runtime, src, `s-${runtime}`)));
    for (const [i, sender] of senders.entries()) {
      const nonces = [0, 1, 2, 3, 4, 5].map((k) => `${RUNTIMES[i]}-${k}`);
      for (const nonce of nonces) sender.send({ op: 8, e: 'RR', d: nonce, to: { app_name: app }, nonce });
      for (const nonce of nonces) expect((await ackOf(sender, nonce)).d).toEqual({ delivered: 1, queued: 0 });
    }
    await waitUntil(() => workers.reduce((n, w) => n + received(w, 'RR').length, 0), (n) => n >= 18, 5000, '18 RR delivered');
    for (const [i, sender] of senders.entries()) {
      await barrier(sender, workers.map((w, j) => [app, `w-${RUNTIMES[j]}`, w] as [string, string, TestClient]));
      const perWorker = workers.map((w) => received(w, 'RR').filter((f) => f.from.client_id === `s-${RUNTIMES[i]}`).length);
      expect(perWorker, `what s-${RUNTIMES[i]}'s six went to`).toEqual([2, 2, 2]);
    }
    const all = workers.flatMap((w) => received(w, 'RR').map((f) => f.d));
    expect(all.length).toBe(18);
    expect(new Set(all).size).toBe(18);
  });

  it('key: the same key picks the same worker from every node', async () => {
    const app = uid('key');
    const src = uid('src');
    const workers = await Promise.all(RUNTIMES.map((runtime) => on(runtime, app, `w-${runtime}`)));
    const senders = await Promise.all(RUNTIMES.map((runtime) => on(runtime, src, `s-${runtime}`)));
    const keys = Array.from({ length: 12 }, (_, i) => `user-${i}`);
    for (const [i, sender] of senders.entries()) {
      for (const key of keys) sender.send({ op: 8, e: 'K', d: `${RUNTIMES[i]}|${key}`, to: { app_name: app, key }, nonce: `${RUNTIMES[i]}|${key}` });
      for (const key of keys) expect((await ackOf(sender, `${RUNTIMES[i]}|${key}`)).d).toEqual({ delivered: 1, queued: 0 });
    }
    await waitUntil(() => workers.reduce((n, w) => n + received(w, 'K').length, 0), (n) => n >= 36, 5000, '36 K delivered');
    const owner = new Map<string, string>();
    for (const [j, worker] of workers.entries()) for (const frame of received(worker, 'K')) owner.set(frame.d, RUNTIMES[j]!);
    const picked = new Set<string>();
    for (const key of keys) {
      const owners = RUNTIMES.map((runtime) => owner.get(`${runtime}|${key}`));
      expect(new Set(owners).size, `${key} went to ${owners.join(', ')}`).toBe(1);
      picked.add(owners[0]!);
    }
    // Twelve keys over three workers: a hash that spreads them uses more than one.
    expect(picked.size).toBeGreaterThan(1);
  });

  it('mode all reaches the matching sessions of every node once; NERVE_ACK counts them', async () => {
    const app = uid('all');
    const subs = await Promise.all(RUNTIMES.map((runtime) => on(runtime, app, `sub-${runtime}`)));
    const src = uid('src');
    const sender = await on('bun', src, 's');
    sender.send({ op: 8, e: 'NEWS', d: 'x', to: { app_name: app, mode: 'all' }, nonce: 'all-1' });
    expect((await ackOf(sender, 'all-1')).d).toEqual({ delivered: 3, queued: 0 });
    for (const sub of subs) expect(await sub.event('NEWS', 5000)).toEqual({ op: 8, e: 'NEWS', d: 'x', from: { app_name: src, client_id: 's' }, nonce: 'all-1', s: 1 });
    await barrier(sender, subs.map((sub, j) => [app, `sub-${RUNTIMES[j]}`, sub] as [string, string, TestClient]));
    for (const sub of subs) expect(received(sub, 'NEWS')).toHaveLength(1);
  });

  it('mode-all dispatches from senders on every node reach every subscriber in one order', async () => {
    const app = uid('order');
    const src = uid('src');
    const subs = await Promise.all(RUNTIMES.map((runtime) => on(runtime, app, `sub-${runtime}`)));
    const senders = await Promise.all(RUNTIMES.map((runtime) => on(runtime, src, `s-${runtime}`)));
    for (let k = 0; k < 10; k++) {
      for (const [i, sender] of senders.entries()) sender.send({ op: 8, e: 'B', d: `${RUNTIMES[i]}-${k}`, to: { app_name: app, mode: 'all' } });
    }
    await waitUntil(() => subs.map((sub) => received(sub, 'B').length), (counts) => counts.every((n) => n >= 30), 10_000, '30 B at every subscriber');
    const orders = subs.map((sub) => received(sub, 'B').map((f) => f.d));
    for (const order of orders) {
      expect(new Set(order).size).toBe(30);
      // One sender's dispatches stay in the order sent.
      for (const runtime of RUNTIMES) expect(order.filter((d: string) => d.startsWith(`${runtime}-`))).toEqual(Array.from({ length: 10 }, (_, k) => `${runtime}-${k}`));
    }
    expect(orders[1]).toEqual(orders[0]);
    expect(orders[2]).toEqual(orders[0]);
  });

  it('a dispatch nobody can take is acknowledged as queued, and NERVE_UNDELIVERABLE reaches its sender on the node it moved to', async () => {
    const app = uid('nobody');
    const src = uid('src');
    const sender = await on('deno', src, 'mover');
    const sentAt = Date.now();
    sender.send({ op: 8, e: 'GHOST', d: 1, to: { app_name: app, client_id: 'ghost' }, nonce: 'lost-1' });
    expect(await ackOf(sender, 'lost-1')).toEqual({ op: 8, e: 'NERVE_ACK', nonce: 'lost-1', d: { delivered: 0, queued: 1 } });
    await sender.terminate();
    await cluster.waitDropped(src, 'mover');
    const moved = await on('bun', src, 'mover', { reconnect: true, seq: 0 });
    const notice = await moved.event('NERVE_UNDELIVERABLE', QUEUE_TTL * 3);
    expect(Date.now() - sentAt).toBeGreaterThanOrEqual(QUEUE_TTL - 50);
    expect(notice).toEqual({ op: 8, e: 'NERVE_UNDELIVERABLE', nonce: 'lost-1', d: { reason: expect.any(String), e: 'GHOST' } });
  });

  it('take-over: IDENTIFY with reconnect on another node takes the session; the old connection gets NO_U_TBH and 4409', async () => {
    const app = uid('take');
    const old = await on('node', app, 'c', { metadata: { zone: 'a' } });
    const fresh = await on('deno', app, 'c', { reconnect: true });
    expect(await old.waitFor((f) => f?.op === 6, 5000, 'NO_U_TBH')).toEqual({ op: 6, d: 'Session taken over by a new connection' });
    expect(await old.closed).toEqual({ code: 4409, reason: 'Session taken over by a new connection' });
    // The session lives on the Deno node now, with its metadata.
    const sender = await on('bun', uid('src'), 's');
    sender.send({ op: 8, e: 'AFTER', d: 1, to: { app_name: app, query: { zone: 'a' } } });
    expect(await fresh.event('AFTER', 5000)).toMatchObject({ d: 1, from: { client_id: 's' }, s: 1 });

    // A plain IDENTIFY on a third node for the connected session is the newcomer's 4409.
    const newcomer = new TestClient(node('bun').url);
    expect((await newcomer.next()).op).toBe(0);
    newcomer.identify({ app_name: app, client_id: 'c', password: cluster.password });
    const refused = await newcomer.waitFor((f) => f?.op === 6, 5000, 'NO_U_TBH');
    expect(refused.d).toMatch(new RegExp(`${app}/c.*already connected`));
    expect((await newcomer.closed).code).toBe(4409);
    sender.send({ op: 8, e: 'STILL', d: 2, to: { app_name: app, client_id: 'c' } });
    expect(await fresh.event('STILL', 5000)).toMatchObject({ d: 2, s: 2 });
    expect(fresh.closeInfo).toBeUndefined();
  });

  for (const [from, to, via] of [
    ['node', 'deno', 'bun'],
    ['deno', 'bun', 'node'],
    ['bun', 'node', 'deno'],
  ] as const) {
    it(`resume: a session dropped on the ${from} node resumes on the ${to} node with seq, and gets what it missed in order, once`, async () => {
      const app = uid('resume');
      const src = uid('src');
      const sender = await on(via, src, 's');
      const send = async (d: number) => {
        const nonce = uid('n');
        sender.send({ op: 8, e: 'EV', d, to: { app_name: app, client_id: 'r' }, nonce });
        return { nonce, ack: (await ackOf(sender, nonce)).d };
      };
      const receiver = await on(from, app, 'r');
      for (const d of [1, 2, 3]) {
        expect((await send(d)).ack).toEqual({ delivered: 1, queued: 0 });
        expect(await receiver.event('EV', 5000)).toMatchObject({ d, s: d });
      }
      await receiver.terminate();
      await cluster.waitDropped(app, 'r');
      const missed = [];
      for (const d of [4, 5, 6]) {
        const sent = await send(d);
        expect(sent.ack, 'sent while away: buffered for the session').toEqual({ delivered: 1, queued: 0 });
        missed.push(sent.nonce);
      }
      const back = await on(to, app, 'r', { reconnect: true, seq: 3 });
      expect(await back.next(5000)).toEqual({ op: 8, e: 'NERVE_SESSION', d: { resumed: true, s: 6, replayed: 3, missed: 0 } });
      for (const [k, d] of [4, 5, 6].entries()) {
        expect(await back.next(5000)).toEqual({ op: 8, e: 'EV', d, from: { app_name: src, client_id: 's' }, nonce: missed[k], s: d });
      }
      // Numbering goes on from there, and nothing came twice.
      await send(7);
      expect(await back.next(5000)).toMatchObject({ e: 'EV', d: 7, s: 7 });
      expect(received(back, 'EV').map((f) => f.s)).toEqual([4, 5, 6, 7]);
    });
  }

  it('a held dispatch reaches exactly one client, whichever node it identifies on', async () => {
    const app = uid('held');
    const src = uid('src');
    const sender = await on('node', src, 's');
    sender.send({ op: 8, e: 'HELD', d: 'waited', to: { app_name: app }, nonce: 'h-1' });
    expect((await ackOf(sender, 'h-1')).d).toEqual({ delivered: 0, queued: 1 });
    const first = await on('deno', app, 'first');
    expect(await first.event('HELD', 5000)).toEqual({ op: 8, e: 'HELD', d: 'waited', from: { app_name: src, client_id: 's' }, nonce: 'h-1', s: 1 });
    const second = await on('bun', app, 'second');
    await barrier(sender, [
      [app, 'first', first],
      [app, 'second', second],
    ]);
    expect(received(first, 'HELD')).toHaveLength(1);
    expect(received(second, 'HELD')).toEqual([]);

    // Held for one client_id: another client of the app does not take it.
    sender.send({ op: 8, e: 'FOR_X', d: 'x', to: { app_name: app, client_id: 'x' }, nonce: 'h-2' });
    expect((await ackOf(sender, 'h-2')).d).toEqual({ delivered: 0, queued: 1 });
    const y = await on('deno', app, 'y');
    const x = await on('bun', app, 'x');
    expect(await x.event('FOR_X', 5000)).toMatchObject({ d: 'x', nonce: 'h-2', s: 1 });
    await barrier(sender, [
      [app, 'x', x],
      [app, 'y', y],
    ]);
    expect(received(x, 'FOR_X')).toHaveLength(1);
    expect(received(y, 'FOR_X')).toEqual([]);
  });

  it('GET /clients on any node lists the clients of every node, each with the node that holds it', async () => {
    const app = uid('list');
    for (const runtime of RUNTIMES) await on(runtime, app, `c-${runtime}`, { metadata: { runtime } });
    for (const runtime of RUNTIMES) {
      const list = (await cluster.clientsOn(node(runtime), app)).sort((a, b) => a.client_id.localeCompare(b.client_id));
      expect(list.map((c) => c.client_id), `GET /clients on the ${runtime} node`).toEqual(['c-bun', 'c-deno', 'c-node']);
      for (const entry of list) {
        const holder = entry.metadata.runtime as NodeRuntime;
        expect(entry).toMatchObject({ app_name: app, connected: true, metadata: { runtime: holder }, node: node(holder).worker, connected_at: expect.any(Number) });
      }
      const all = await cluster.clientsOn(node(runtime));
      expect(all.filter((c) => c.app_name === app)).toHaveLength(3);
    }
  });

  it('POST /dispatch on one node reaches clients on the others', async () => {
    const app = uid('post');
    const target = await on('bun', app, 'target');
    const other = await on('node', app, 'other');
    const post = (via: NodeRuntime, body: unknown) =>
      fetch(`${node(via).http}/dispatch`, {
        method: 'POST',
        headers: { authorization: `Bearer ${cluster.password}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    const res = await post('node', { e: 'FROM_HTTP', d: { x: 1 }, to: { app_name: app, client_id: 'target' }, nonce: 'h-1' });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ delivered: 1, queued: 0 });
    expect(await target.event('FROM_HTTP', 5000)).toEqual({ op: 8, e: 'FROM_HTTP', d: { x: 1 }, from: { app_name: 'http' }, nonce: 'h-1', s: 1 });

    const all = await post('deno', { e: 'ALL', to: { app_name: app, mode: 'all' } });
    expect(await all.json()).toEqual({ delivered: 2, queued: 0 });
    expect(await target.event('ALL', 5000)).toMatchObject({ from: { app_name: 'http' }, s: 2 });
    expect(await other.event('ALL', 5000)).toMatchObject({ from: { app_name: 'http' }, s: 1 });
  });
});
