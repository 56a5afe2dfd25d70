// Heartbeats answered by the runtime without waking the Durable Object, timeouts
// judged by its one alarm from the auto-response timestamps, and the closing
// handshake: the peer's close is answered, 1005/1006 are never sent back.

import { pack, unpack } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getJson, Peer, sleep, startWorker, type RunningWorker } from './miniflare.ts';

const INTERVAL = 400;
let worker: RunningWorker;
const peers: Peer[] = [];

beforeAll(async () => {
  worker = await startWorker({ NERVE_HEARTBEAT_INTERVAL: String(INTERVAL), NERVE_RESUME_WINDOW: '30000' });
});

afterAll(async () => {
  for (const peer of peers) peer.ws.terminate();
  await worker?.dispose();
});

async function identify(app: string, id: string, extra?: Record<string, unknown>, query = '') {
  const peer = await Peer.identify(worker.url + query, app, id, extra);
  peers.push(peer);
  return peer;
}

async function framesIn(): Promise<number> {
  const text = await fetch(`${worker.http}/metrics`).then((response) => response.text());
  return Number(/^nerve_frames_in_total\{[^}]*\} (\d+)$/m.exec(text)![1]);
}

describe('cloudflare: heartbeats', () => {
  it('answers {"op":3} without the object and keeps a heartbeating client past 1.5 intervals', async () => {
    const live = await identify('hb', 'live');
    const before = await framesIn();
    const timer = setInterval(() => live.send('{"op":3}'), INTERVAL / 2);
    try {
      await sleep(INTERVAL * 4);
    } finally {
      clearInterval(timer);
    }
    expect(live.closed).toBeUndefined();
    expect(live.json().filter((frame) => frame.op === 4).length).toBeGreaterThanOrEqual(5);
    // The runtime answered every one of them: the hub never received a frame.
    expect(await framesIn()).toBe(before);
  });

  it('closes a silent client with 4408 from the alarm', async () => {
    const silent = await identify('hb', 'silent');
    const started = Date.now();
    const closed = await silent.waitClosed(INTERVAL * 10);
    expect(closed.code).toBe(4408);
    expect(silent.json().at(-1)).toEqual({ op: 6, d: `heartbeat timeout: no HEARTBEAT within ${INTERVAL * 1.5} ms` });
    expect(Date.now() - started).toBeGreaterThanOrEqual(INTERVAL * 1.5 - 50);
    // A timeout keeps the session resumable.
    const clients = (await getJson(`${worker.http}/clients?app_name=hb`)) as { client_id: string; connected: boolean }[];
    expect(clients.find((client) => client.client_id === 'silent')).toMatchObject({ connected: false });
  });

  it('wakes the object for msgpack heartbeats and answers in msgpack', async () => {
    const peer = await Peer.connect(`${worker.url}?format=msgpack`);
    peers.push(peer);
    await peer.until(() => peer.frames.length > 0);
    peer.ws.send(pack({ op: 3 }));
    await peer.until(() => peer.frames.slice(1).find((frame) => frame instanceof Uint8Array && unpack(frame).op === 4));
  });
});

describe('cloudflare: close handshake', () => {
  it('answers a close without a code (1005) with 1000; the session stays resumable', async () => {
    const peer = await identify('cl', 'no-code');
    const started = Date.now();
    peer.ws.close();
    const closed = await peer.waitClosed(3_000);
    expect(closed.code).toBe(1000);
    expect(Date.now() - started).toBeLessThan(2_000);
    await sleep(50);
    const clients = (await getJson(`${worker.http}/clients?app_name=cl`)) as { client_id: string; connected: boolean }[];
    expect(clients.find((client) => client.client_id === 'no-code')).toMatchObject({ connected: false });
  });

  it('answers 1000 and 1001 with the same code and ends those sessions', async () => {
    const done = await identify('cl', 'goodbye');
    const leaving = await identify('cl', 'leaving');
    done.ws.close(1000);
    leaving.ws.close(1001);
    expect((await done.waitClosed(3_000)).code).toBe(1000);
    expect((await leaving.waitClosed(3_000)).code).toBe(1001);
    await sleep(50);
    const clients = (await getJson(`${worker.http}/clients?app_name=cl`)) as { client_id: string }[];
    expect(clients.map((client) => client.client_id)).not.toContain('goodbye');
    expect(clients.map((client) => client.client_id)).not.toContain('leaving');
  });

  it('echoes an application close code and keeps the session resumable', async () => {
    const peer = await identify('cl', 'app-code');
    peer.ws.close(4000, 'brb');
    expect(await peer.waitClosed(3_000)).toEqual({ code: 4000, reason: 'brb' });
    const back = await identify('cl', 'app-code', { reconnect: true });
    expect(back.json().at(-1)).toEqual({ op: 2, d: "hi i'm dad" });
  });

  it('treats a dropped TCP connection (1006) as resumable and keeps serving others', async () => {
    const peer = await identify('cl', 'dropped');
    peer.ws.terminate();
    await sleep(100);
    const other = await identify('cl', 'other');
    other.send('{"op":3}');
    await other.frame((frame) => frame.op === 4);
    const clients = (await getJson(`${worker.http}/clients?app_name=cl`)) as { client_id: string; connected: boolean }[];
    expect(clients.find((client) => client.client_id === 'dropped')).toMatchObject({ connected: false });
    const back = await identify('cl', 'dropped', { reconnect: true });
    expect(back.closed).toBeUndefined();
  });

  it('closes with NO_U_TBH and the protocol code, and the peer sees exactly that code', async () => {
    const peer = await Peer.connect(worker.url);
    peers.push(peer);
    peer.send({ op: 1, d: { app_name: 'cl', client_id: 'bad', password: 'wrong' } });
    expect(await peer.waitClosed(3_000)).toEqual({ code: 4401, reason: 'IDENTIFY: wrong password' });
  });
});
