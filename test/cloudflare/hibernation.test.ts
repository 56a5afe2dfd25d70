// A hub evicted from memory between frames (workerd evicts an idle Durable
// Object after 10 s and keeps its hibernatable sockets) wakes up knowing its
// clients, their metadata, cursors, held queues and replay buffers.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getJson, Peer, sleep, startWorker, type RunningWorker } from './miniflare.ts';

let worker: RunningWorker;
const peers: Peer[] = [];

beforeAll(async () => {
  worker = await startWorker();
});

afterAll(async () => {
  for (const peer of peers) peer.ws.terminate();
  await worker?.dispose();
});

async function identify(app: string, id: string, extra?: Record<string, unknown>, path = '') {
  const peer = await Peer.identify(worker.url + path, app, id, extra);
  peers.push(peer);
  return peer;
}

/** Idles until workerd has dropped the object; any request then wakes a fresh instance. */
async function waitForEviction(): Promise<Record<string, unknown>> {
  for (let attempt = 0; attempt < 4; attempt++) {
    await sleep(10_500);
    await fetch(`${worker.http}/health`);
    // The first instance woke with nothing; a second one means the first was dropped.
    const woken = worker.logs('awake');
    if (woken.length > 1) return woken[1]!;
  }
  throw new Error(`the object was never evicted:\n${worker.lines.join('\n')}`);
}

describe('cloudflare: hibernation', () => {
  it('routes by metadata, round robin, held queues and replay after the object is evicted', async () => {
    const api = await identify('api', 'api-1');
    const gw1 = await identify('gw', 'gw-1', { metadata: { users: ['7'] } });
    const gw2 = await identify('gw', 'gw-2', { metadata: { users: ['8'] } });
    const away = await identify('wk', 'wk-1');

    // Round robin starts at gw-1; the cursor must survive so the next pick is gw-2.
    api.send({ op: 8, e: 'RR', d: 1, to: { app_name: 'gw' } });
    expect(await gw1.event('RR')).toMatchObject({ s: 1 });
    // Held for a client that has not connected yet.
    api.send({ op: 8, e: 'LATER', d: 'x', to: { app_name: 'late', client_id: 'l-1' }, nonce: 'held-1' });
    expect(await api.event('NERVE_ACK')).toMatchObject({ nonce: 'held-1', d: { delivered: 0, queued: 1 } });
    // Buffered for a session inside its resume window.
    away.ws.close(4000, 'brb');
    await away.waitClosed();
    api.send({ op: 8, e: 'MISSED', d: 42, to: { app_name: 'wk', client_id: 'wk-1' }, nonce: 'buf-1' });
    await api.frame((frame) => frame.e === 'NERVE_ACK' && frame.nonce === 'buf-1');
    expect(worker.logs('awake')).toHaveLength(1);

    const restored = await waitForEviction();
    expect(restored).toMatchObject({ connections: 3, sessions: 4, clients: 3 });

    const clients = (await getJson(`${worker.http}/clients`)) as { client_id: string; metadata: unknown; connected: boolean }[];
    expect(clients.map(({ client_id, metadata, connected }) => ({ client_id, metadata, connected }))).toEqual([
      { client_id: 'api-1', metadata: {}, connected: true },
      { client_id: 'gw-1', metadata: { users: ['7'] }, connected: true },
      { client_id: 'gw-2', metadata: { users: ['8'] }, connected: true },
      { client_id: 'wk-1', metadata: {}, connected: false },
    ]);

    // Metadata query over sockets that were never re-opened.
    api.send({ op: 8, e: 'Q', d: 'eight', to: { app_name: 'gw', query: { users: '8' }, mode: 'all' } });
    expect(await gw2.event('Q')).toMatchObject({ d: 'eight', from: { app_name: 'api', client_id: 'api-1' }, s: 1 });
    api.send({ op: 8, e: 'RR', d: 2, to: { app_name: 'gw' } });
    expect(await gw2.frame((frame) => frame.e === 'RR')).toMatchObject({ d: 2, s: 2 });
    expect(gw1.json().filter((frame) => frame.e === 'Q' || frame.e === 'RR')).toHaveLength(1);

    // The other direction: a reply reaches the adopted api socket, with gw-1's sequence continuing.
    gw1.send({ op: 8, e: 'REPLY', d: null, to: { app_name: 'api', client_id: 'api-1' } });
    expect(await api.event('REPLY')).toMatchObject({ from: { app_name: 'gw', client_id: 'gw-1' } });
    api.send({ op: 8, e: 'RR', d: 3, to: { app_name: 'gw' } });
    expect(await gw1.frame((frame) => frame.e === 'RR' && frame.d === 3)).toMatchObject({ s: 2 });

    const late = await identify('late', 'l-1');
    expect(await late.event('LATER')).toMatchObject({ d: 'x', nonce: 'held-1', from: { client_id: 'api-1' } });

    const back = await identify('wk', 'wk-1', { reconnect: true });
    expect(await back.event('MISSED')).toMatchObject({ d: 42, s: 1, nonce: 'buf-1' });

    // Heartbeats are still answered on a connection opened before the eviction.
    gw1.send('{"op":3}');
    await gw1.frame((frame) => frame.op === 4);
  }, 60_000);

  it('keeps hubs apart: /hubs/<name>/ is its own object', async () => {
    const main = (await getJson(`${worker.http}/health`, false)) as { worker: string };
    const other = (await getJson(`${worker.http}/hubs/other/health`, false)) as { worker: string; clients: number };
    expect(other.worker).not.toBe(main.worker);
    const peer = await identify('solo', 's-1', {}, 'hubs/other/');
    expect(peer.json()[0]).toMatchObject({ op: 0, d: { worker: other.worker } });
    const inOther = (await getJson(`${worker.http}/hubs/other/clients`)) as unknown[];
    const inMain = (await getJson(`${worker.http}/clients?app_name=solo`)) as unknown[];
    expect(inOther).toHaveLength(1);
    expect(inMain).toHaveLength(0);
    for (const name of ['a%20b', '%E0', 'x'.repeat(65)]) expect((await fetch(`${worker.http}/hubs/${name}/health`)).status).toBe(400);
  });
});
