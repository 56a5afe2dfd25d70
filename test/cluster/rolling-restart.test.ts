// docs/cluster.md "A node drains": three Node nodes under steady load
// (request/reply pairs and mode-all broadcasts from clients spread over the
// nodes, each resuming elsewhere on GO_AWAY) are restarted one after another
// with SIGTERM. Nothing acknowledged is lost, nothing arrives twice, and every
// subscriber sees every broadcast once, in the one order.

import { afterAll, expect, it } from 'vitest';
import { startCluster, type Cluster } from '../support/cluster.ts';
import { describeWithRedis } from '../support/redis.ts';
import { Load } from './load.ts';

const ENV = { NERVE_HEARTBEAT_INTERVAL: '5000', NERVE_QUEUE_TTL: '20000', NERVE_RESUME_WINDOW: '20000', NERVE_DRAIN_TIMEOUT: '5000' };

describeWithRedis('rolling restart of a three-node cluster under load', () => {
  let cluster: Cluster | undefined;
  let load: Load | undefined;
  afterAll(async () => {
    await load?.close();
    await cluster?.stop();
  });

  it('every node drained and replaced in turn: nothing acknowledged lost, nothing twice, broadcasts once and in one order', async () => {
    cluster = await startCluster({ runtimes: ['node', 'node', 'node'], env: ENV });
    load = new Load(cluster);
    await load.start();
    await load.progress(30);

    for (const slot of [0, 1, 2]) {
      const leaving = cluster.node(slot);
      const itsClients = load.clientsOn(leaving);
      expect(itsClients.length, `clients on node ${slot} before its restart`).toBeGreaterThan(0);
      // SIGTERM: GO_AWAY to its clients, which resume on the other nodes; then it exits 0.
      expect(await cluster.stopNode(slot), `exit code of node ${slot}`).toBe(0);
      await load.settled();
      for (const client of itsClients) expect(client.node?.worker, `${client.clientId} left node ${slot}`).not.toBe(leaving.worker);
      const fresh = await cluster.startNode(slot);
      expect(fresh.worker).not.toBe(leaving.worker);
      // The new node's registry holds the whole cluster before anyone is sent there.
      await load.listedOn([fresh]);
      await load.progress(30);
    }

    const { problems, totals } = await load.finish();
    expect(problems).toEqual([]);
    expect(totals.requestsAcknowledged).toBeGreaterThan(100);
    expect(totals.broadcastsAcknowledged).toBeGreaterThan(10);
    expect(totals.resumes).toBeGreaterThanOrEqual(load.clients.length);
  }, 60_000);
});
