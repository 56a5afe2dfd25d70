// docs/cluster.md "A node crashes": three Node nodes under steady load, and
// one of them is killed with SIGKILL. Its clients reconnect to the others and
// resume with their last `s` (their IDENTIFY may wait until the dead node is
// adopted, within NERVE_NODE_TIMEOUT and one scan); nothing acknowledged is
// lost and nothing is delivered twice, save what the docs allow: an event the
// killed node wrote in its last turn before storing it may come again.

import { afterAll, expect, it } from 'vitest';
import { health, NODE_TIMEOUT, startCluster, waitUntil, type Cluster, type ClusterNode } from '../support/cluster.ts';
import { describeWithRedis } from '../support/redis.ts';
import { Load } from './load.ts';

const ENV = { NERVE_HEARTBEAT_INTERVAL: '5000', NERVE_QUEUE_TTL: '20000', NERVE_RESUME_WINDOW: '20000' };

/** A gauge from a node's /metrics. */
async function gauge(node: ClusterNode, name: string): Promise<number | undefined> {
  const text = await (await fetch(`${node.http}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describeWithRedis('a node killed under load', () => {
  let cluster: Cluster | undefined;
  let load: Load | undefined;
  afterAll(async () => {
    await load?.close();
    await cluster?.stop();
  });

  it('SIGKILL: its clients resume on the others; nothing acknowledged is lost, nothing is delivered twice', async () => {
    cluster = await startCluster({ runtimes: ['node', 'node', 'node'], env: ENV });
    load = new Load(cluster);
    await load.start();
    await load.progress(30);

    const victim = cluster.node(1);
    const itsClients = load.clientsOn(victim);
    expect(itsClients.length).toBeGreaterThan(0);
    const survivors = [cluster.node(0), cluster.node(2)];
    const killedAt = Date.now();
    await cluster.killNode(1);

    // Declared dead within the node timeout (plus one scan of a second), by both others.
    for (const node of survivors) {
      await waitUntil(() => gauge(node, 'nerve_cluster_nodes'), (n) => n === 2, NODE_TIMEOUT + 1000 + 2000, `${node.worker} counting 2 live nodes`);
    }
    // Its clients are back, on the others, once the dead node's sessions were adopted.
    await load.settled(NODE_TIMEOUT * 5);
    for (const client of itsClients) expect(survivors.map((n) => n.worker), `${client.clientId} resumed on a survivor`).toContain(client.node?.worker);
    for (const node of survivors) expect(await health(node)).toMatchObject({ status: 200, body: { cluster: 'up' } });
    await load.progress(30);

    const { problems, totals } = await load.finish({ worker: victim.worker, at: killedAt });
    expect(problems).toEqual([]);
    expect(totals.requestsAcknowledged).toBeGreaterThan(50);
    expect(totals.resumes).toBeGreaterThanOrEqual(itsClients.length);
  }, 60_000);
});
