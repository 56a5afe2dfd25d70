// docs/cluster.md "Redis restarts or is unreachable": two Node nodes lose
// their redis-server for five seconds, and it comes back on the same port.
// The nodes stay up and serve their own clients, /health says 503 with the
// cluster down, a dispatch for the other node is held rather than lost, and
// when Redis returns the nodes resynchronise by themselves: 200 again, the
// held dispatch arrives once, cross-node traffic flows, nobody is cut off.

import { afterAll, afterEach, expect, it } from 'vitest';
import { closeAllClients, type TestClient } from '../conformance/client.ts';
import { health, identifiedOn, startCluster, waitUntil, type Cluster } from '../support/cluster.ts';
import { describeWithRedis } from '../support/redis.ts';

const OUTAGE = 5000;
const QUEUE_TTL = 20_000;
const ENV = { NERVE_HEARTBEAT_INTERVAL: '5000', NERVE_QUEUE_TTL: String(QUEUE_TTL), NERVE_RESUME_WINDOW: '20000' };

function ackOf(client: TestClient, nonce: string): Promise<any> {
  return client.waitFor((f) => f?.e === 'NERVE_ACK' && f.nonce === nonce, 5000, `NERVE_ACK ${nonce}`);
}

describeWithRedis('Redis outage', () => {
  let cluster: Cluster | undefined;
  afterEach(closeAllClients);
  afterAll(async () => {
    await cluster?.stop();
  });

  it('five seconds without Redis: local traffic flows, /health is 503, a cross-node dispatch is held and arrives after; no restart needed', async () => {
    cluster = await startCluster({ runtimes: ['node', 'node'], env: ENV });
    const [one, two] = [cluster.node(0), cluster.node(1)];
    const local = `local-${Date.now()}`;
    const remote = `remote-${Date.now()}`;
    const a = await identifiedOn(cluster, one, local, 'a');
    const b = await identifiedOn(cluster, one, local, 'b');
    const c = await identifiedOn(cluster, two, remote, 'c');
    const everyone = [a, b, c];

    // Cross-node delivery works to begin with.
    a.send({ op: 8, e: 'BEFORE', d: 0, to: { app_name: remote, client_id: 'c' }, nonce: 'before' });
    expect((await ackOf(a, 'before')).d).toEqual({ delivered: 1, queued: 0 });
    expect(await c.event('BEFORE', 5000)).toMatchObject({ d: 0, s: 1 });

    await cluster.redis.stop();
    const downAt = Date.now();

    // Both nodes say so, and stay up.
    for (const node of [one, two]) {
      await waitUntil(() => health(node), (h) => h?.status === 503 && h.body?.cluster === 'down', 4000, `node ${node.worker} reporting the cluster down`);
    }

    // Traffic between clients of one node keeps flowing.
    for (let k = 1; k <= 5; k++) {
      a.send({ op: 8, e: 'LOCAL', d: k, to: { app_name: local, client_id: 'b' }, nonce: `local-${k}` });
      expect((await ackOf(a, `local-${k}`)).d).toEqual({ delivered: 1, queued: 0 });
      expect(await b.event('LOCAL', 3000)).toMatchObject({ d: k, s: k });
    }

    // A dispatch for the other node is accepted (acknowledged, not refused) and held.
    const heldAt = Date.now();
    a.send({ op: 8, e: 'DURING', d: 'held', to: { app_name: remote, client_id: 'c' }, nonce: 'during' });
    const ack = (await ackOf(a, 'during')).d;
    expect(ack.delivered + ack.queued, `NERVE_ACK ${JSON.stringify(ack)}: one recipient, or held for it`).toBe(1);

    // The outage lasts its five seconds whatever the checks above took.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, downAt + OUTAGE - Date.now())));
    expect(c.log.some((r) => r.frame?.e === 'DURING'), 'nothing can cross while Redis is away').toBe(false);
    for (const node of [one, two]) expect(node.child.exitCode, `node ${node.worker} still running`).toBeNull();
    await cluster.redis.start();

    // Each node finds its way back by itself.
    for (const node of [one, two]) {
      await waitUntil(() => health(node), (h) => h?.status === 200 && h.body?.cluster === 'up', 15_000, `node ${node.worker} reporting the cluster up again`);
    }
    const during = await c.event('DURING', 15_000);
    expect(Date.now() - heldAt, 'arrived within the queue TTL').toBeLessThan(QUEUE_TTL);
    expect(during).toEqual({ op: 8, e: 'DURING', d: 'held', from: { app_name: local, client_id: 'a' }, nonce: 'during', s: 2 });

    // Cross-node traffic flows both ways again, and the registries are whole.
    for (const [client, app, id] of [
      [a, local, 'a'],
      [b, local, 'b'],
      [c, remote, 'c'],
    ] as const) {
      await cluster.waitForClient(app, id, { worker: client === c ? two.worker : one.worker, timeout: 10_000 });
    }
    a.send({ op: 8, e: 'AFTER', d: 1, to: { app_name: remote, client_id: 'c' }, nonce: 'after' });
    expect((await ackOf(a, 'after')).d).toEqual({ delivered: 1, queued: 0 });
    expect(await c.event('AFTER', 5000)).toMatchObject({ d: 1, s: 3 });
    c.send({ op: 8, e: 'BACK', d: 1, to: { app_name: local, client_id: 'b' }, nonce: 'back' });
    expect((await ackOf(c, 'back')).d).toEqual({ delivered: 1, queued: 0 });
    expect(await b.event('BACK', 5000)).toMatchObject({ d: 1, from: { app_name: remote, client_id: 'c' }, s: 6 });

    // Exactly once, nothing undeliverable, and no session was cut off or taken away.
    expect(c.log.filter((r) => r.frame?.e === 'DURING')).toHaveLength(1);
    expect(a.log.filter((r) => r.frame?.e === 'NERVE_UNDELIVERABLE')).toEqual([]);
    for (const client of everyone) expect(client.closeInfo).toBeUndefined();
  }, 60_000);
});
