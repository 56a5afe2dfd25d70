// docs/protocol.md §9 (HTTP on the WebSocket port): /health, /metrics, /clients
// and POST /dispatch, with their auth and error answers.

import { describe, expect, it } from 'vitest';
import { connect, dispatchFrame, eventually, expectError, identified, RUNTIMES, uid, useServer, type RunningServer } from './harness.ts';

const METRICS: [name: string, type: 'gauge' | 'counter'][] = [
  ['nerve_connections', 'gauge'],
  ['nerve_clients', 'gauge'],
  ['nerve_sessions_resumable', 'gauge'],
  ['nerve_held_dispatches', 'gauge'],
  ['nerve_frames_in_total', 'counter'],
  ['nerve_frames_out_total', 'counter'],
  ['nerve_dispatches_total', 'counter'],
  ['nerve_deliveries_total', 'counter'],
  ['nerve_dispatches_queued_total', 'counter'],
  ['nerve_dispatches_undeliverable_total', 'counter'],
  ['nerve_errors_total', 'counter'],
];

async function health(server: RunningServer) {
  const res = await fetch(`${server.http}/health`);
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.json() };
}

/** Samples of the Prometheus text, as "name{labels}" → value. */
async function metrics(server: RunningServer): Promise<{ text: string; type: string; samples: Map<string, number> }> {
  const res = await fetch(`${server.http}/metrics`);
  expect(res.status).toBe(200);
  const text = await res.text();
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    expect(match, `not a Prometheus sample line: ${line}`).not.toBeNull();
    samples.set(match![1]! + (match![2] ?? ''), Number(match![3]));
  }
  return { text, type: res.headers.get('content-type') ?? '', samples };
}

/** The value of a metric whose labels include every `labels` pair (summed over other labels). */
function sample(samples: Map<string, number>, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const [key, value] of samples) {
    if (!key.startsWith(`${name}{`) && key !== name) continue;
    if (Object.entries(labels).every(([k, v]) => key.includes(`${k}="${v}"`))) total += value;
  }
  return total;
}

function post(server: RunningServer, body: unknown, auth: string | null = `Bearer ${server.password}`) {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (auth !== null) headers.authorization = auth;
  return fetch(`${server.http}/dispatch`, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
}

for (const runtime of RUNTIMES) {
  describe(`${runtime}: §9 HTTP`, () => {
    const server = useServer(runtime);

    // First in the file, so the counts start from an idle server.
    it('GET /health: status, worker, open sockets and identified sessions', async () => {
      const idle = await health(server());
      expect(idle.status).toBe(200);
      expect(idle.type).toMatch(/^application\/json/);
      expect(Object.keys(idle.body).sort()).toEqual(['clients', 'connections', 'status', 'worker']);
      expect(idle.body).toEqual({ status: 'ok', worker: expect.stringMatching(/^nerve-[0-9a-f]{6}$/), connections: 0, clients: 0 });
      const { hello } = await connect(server());
      await identified(server(), uid('h'), 'a');
      await identified(server(), uid('h'), 'b', { format: 'msgpack' });
      expect(idle.body.worker).toBe(hello.d.worker);
      await eventually(() => health(server()), (h) => h.body.connections === 3 && h.body.clients === 2, 3000, 'health counts');
    });

    it('GET /metrics: Prometheus text with every documented metric', async () => {
      const { text, type, samples } = await metrics(server());
      expect(type).toMatch(/^text\/plain/);
      for (const [name, kind] of METRICS) {
        expect(text).toContain(`# TYPE ${name} ${kind}`);
        expect(text).toMatch(new RegExp(`^# HELP ${name} \\S`, 'm'));
      }
      for (const [name] of METRICS.filter(([n]) => n !== 'nerve_errors_total')) {
        expect([...samples.keys()].some((key) => key.startsWith(`${name}{`)), `${name} has a sample`).toBe(true);
      }
    });

    it('GET /metrics counts frames, dispatches, queued, undeliverable and errors by close code', async () => {
      const before = (await metrics(server())).samples;
      const app = uid('m');
      const a = await identified(server(), app, 'a');
      const b = await identified(server(), app, 'b');
      a.send(dispatchFrame('ONE', { app_name: app, client_id: 'b' }));
      await b.event('ONE');
      a.send(dispatchFrame('HELD', { app_name: uid('nobody') }, { nonce: 'h' }));
      await a.event('NERVE_ACK');
      await a.event('NERVE_UNDELIVERABLE');
      const { client } = await connect(server());
      client.sendRaw('{"op":42}');
      await expectError(client, 4400, /unknown op/);
      const after = await eventually(
        async () => (await metrics(server())).samples,
        (s) => sample(s, 'nerve_errors_total', { code: '4400' }) > sample(before, 'nerve_errors_total', { code: '4400' }),
        3000,
        'nerve_errors_total{code="4400"} to grow',
      );
      const grew = (name: string, by: number) => expect(sample(after, name) - sample(before, name), name).toBeGreaterThanOrEqual(by);
      grew('nerve_frames_in_total', 5);
      grew('nerve_frames_out_total', 5);
      grew('nerve_dispatches_total', 2);
      grew('nerve_deliveries_total', 1);
      grew('nerve_dispatches_queued_total', 1);
      grew('nerve_dispatches_undeliverable_total', 1);
      expect(sample(after, 'nerve_clients')).toBeGreaterThanOrEqual(2);
    });

    it('GET /clients needs the bearer password: 401 JSON without it or with a wrong one', async () => {
      for (const authorization of [undefined, 'Bearer wrong', `Basic ${server().password}`, `Bearer ${server().password}x`, server().password]) {
        const res = await fetch(`${server().http}/clients`, { headers: authorization ? { authorization } : {} });
        expect(res.status, String(authorization)).toBe(401);
        expect(res.headers.get('content-type')).toMatch(/^application\/json/);
        expect(await res.json()).toEqual({ error: expect.any(String) });
      }
    });

    it('GET /clients lists identified sessions; ?app_name= filters', async () => {
      const app = uid('list');
      const other = uid('other');
      await identified(server(), app, 'a', { metadata: { region: 'eu' } });
      await identified(server(), app, 'b');
      await identified(server(), other, 'c');
      await connect(server()); // not identified: not a client
      const res = await fetch(`${server().http}/clients?app_name=${app}`, { headers: { authorization: `Bearer ${server().password}` } });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^application\/json/);
      const list = await res.json();
      expect(list.map((c: any) => c.client_id).sort()).toEqual(['a', 'b']);
      const a = list.find((c: any) => c.client_id === 'a');
      expect(a).toMatchObject({ app_name: app, client_id: 'a', metadata: { region: 'eu' }, connected_at: expect.any(Number) });
      expect(Math.abs(a.connected_at - Date.now())).toBeLessThan(60_000);
      const all = await (await fetch(`${server().http}/clients`, { headers: { authorization: `Bearer ${server().password}` } })).json();
      expect(all.some((c: any) => c.app_name === other && c.client_id === 'c')).toBe(true);
      const none = await (await fetch(`${server().http}/clients?app_name=${uid('nobody')}`, { headers: { authorization: `Bearer ${server().password}` } })).json();
      expect(none).toEqual([]);
    });

    it('POST /dispatch routes like a DISPATCH from {"app_name":"http"} and answers delivered/queued', async () => {
      const app = uid('post');
      const a = await identified(server(), app, 'a');
      const b = await identified(server(), app, 'b', { format: 'msgpack' });
      const res = await post(server(), { e: 'FROM_HTTP', d: { x: 1 }, to: { app_name: app, client_id: 'a' }, nonce: 'h-1' });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^application\/json/);
      expect(await res.json()).toEqual({ delivered: 1, queued: 0 });
      expect(await a.event('FROM_HTTP')).toEqual({ op: 8, e: 'FROM_HTTP', d: { x: 1 }, from: { app_name: 'http' }, nonce: 'h-1', s: 1 });

      const all = await post(server(), { e: 'ALL', to: { app_name: app, mode: 'all' } });
      expect(await all.json()).toEqual({ delivered: 2, queued: 0 });
      expect(await a.event('ALL')).toEqual({ op: 8, e: 'ALL', d: null, from: { app_name: 'http' }, s: 2 });
      expect(await b.event('ALL')).toEqual({ op: 8, e: 'ALL', d: null, from: { app_name: 'http' }, s: 1 });

      const held = await post(server(), { e: 'LATER', to: { app_name: uid('empty') } });
      expect(await held.json()).toEqual({ delivered: 0, queued: 1 });
    });

    it('POST /dispatch held for a client that identifies later is delivered to it', async () => {
      const app = uid('posth');
      expect(await (await post(server(), { e: 'WAIT', d: 7, to: { app_name: app, client_id: 'x' } })).json()).toEqual({ delivered: 0, queued: 1 });
      const x = await identified(server(), app, 'x');
      expect(await x.event('WAIT')).toEqual({ op: 8, e: 'WAIT', d: 7, from: { app_name: 'http' }, s: 1 });
    });

    it('POST /dispatch needs the bearer password: 401 JSON, and nothing is routed', async () => {
      const app = uid('noauth');
      const a = await identified(server(), app, 'a');
      for (const auth of [null, 'Bearer nope']) {
        const res = await post(server(), { e: 'X', to: { app_name: app } }, auth);
        expect(res.status).toBe(401);
        expect(await res.json()).toEqual({ error: expect.any(String) });
      }
      expect(await a.sync()).toEqual([]);
    });

    const malformed: [string, unknown, RegExp][] = [
      ['not JSON', '{"e":', /body|JSON/],
      ['a JSON array', [], /body|object/],
      ['e missing', { to: { app_name: 'x' } }, /\be\b/],
      ['e empty', { e: '', to: { app_name: 'x' } }, /\be\b/],
      ['a reserved e', { e: 'NERVE_ACK', to: { app_name: 'x' } }, /NERVE_/],
      ['to missing', { e: 'E' }, /\bto\b/],
      ['to.app_name missing', { e: 'E', to: {} }, /to\.app_name/],
      ['to.mode unknown', { e: 'E', to: { app_name: 'x', mode: 'every' } }, /to\.mode/],
      ['a $where query', { e: 'E', to: { app_name: 'x', query: { $where: 'true' } } }, /\$where/],
      ['nonce not a string', { e: 'E', to: { app_name: 'x' }, nonce: 5 }, /nonce/],
    ];
    for (const [what, body, reason] of malformed) {
      it(`POST /dispatch with ${what} → 400 JSON naming the problem`, async () => {
        const res = await post(server(), body);
        expect(res.status).toBe(400);
        expect(res.headers.get('content-type')).toMatch(/^application\/json/);
        const json = await res.json();
        expect(json).toEqual({ error: expect.any(String) });
        expect(json.error).toMatch(reason);
      });
    }
  });
}
