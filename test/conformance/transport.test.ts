// docs/protocol.md §1 (connecting): the wire formats and frame types, refused
// upgrades, and the size limits on received and inflated bytes.

import { zlibSync } from 'fflate';
import { Packr } from 'msgpackr';
import WebSocket from 'ws';
import { describe, expect, it } from 'vitest';
import { TestClient, wireName, type Wire } from './client.ts';
import { connect, dispatchFrame, expectError, identified, MAX_PAYLOAD, RUNTIMES, uid, useServer } from './harness.ts';

const WIRES: Wire[] = [{}, { format: 'msgpack' }, { compression: 'zlib' }, { format: 'msgpack', compression: 'zlib' }];

/** What a browser or `ws` user sees when the upgrade is refused: status and body. */
function refusedUpgrade(url: string): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.on('open', () => {
      ws.terminate();
      reject(new Error(`upgrade to ${url} was accepted`));
    });
    ws.on('error', () => {});
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, type: String(res.headers['content-type'] ?? '') }));
    });
  });
}

for (const runtime of RUNTIMES) {
  describe(`${runtime}: §1 connecting`, () => {
    const server = useServer(runtime);

    for (const wire of WIRES) {
      it(`HELLO arrives in the right frame type over ${wireName(wire)}`, async () => {
        const client = new TestClient(server().url, wire);
        const hello = await client.nextRaw();
        // Plain JSON travels in text frames; msgpack or zlib in binary frames.
        expect(hello.binary).toBe(wire.format === 'msgpack' || wire.compression === 'zlib');
        expect(hello.frame).toMatchObject({ op: 0, d: { heartbeat_interval: 1000 } });
      });

      it(`IDENTIFY, HEARTBEAT and DISPATCH work over ${wireName(wire)}`, async () => {
        const app = uid('wire');
        const client = await identified(server(), app, 'a', { ...wire, heartbeatEvery: 0 });
        client.send({ op: 3 });
        expect(await client.next()).toEqual({ op: 4 });
        client.send(dispatchFrame('SELF', { app_name: app, client_id: 'a' }, { d: { n: 1, list: [1, 'x', null] } }));
        expect(await client.event('SELF')).toEqual({
          op: 8,
          e: 'SELF',
          d: { n: 1, list: [1, 'x', null] },
          from: { app_name: app, client_id: 'a' },
          s: 1,
        });
      });
    }

    it('every wire format talks to every other: a ring of dispatches with replies', async () => {
      const app = uid('ring');
      const clients = await Promise.all(WIRES.map((wire, i) => identified(server(), app, `c${i}`, wire)));
      for (let i = 0; i < clients.length; i++) {
        const from = clients[i]!;
        const to = clients[(i + 1) % clients.length]!;
        const toId = `c${(i + 1) % clients.length}`;
        const nonce = `req-${i}`;
        from.send(dispatchFrame('PING', { app_name: app, client_id: toId }, { d: { from: i, text: 'héllo ✓' }, nonce }));
        const ping = await to.event('PING');
        // c0 already got c1's PONG, so c3's PING is its second routed frame.
        expect(ping).toEqual({ op: 8, e: 'PING', d: { from: i, text: 'héllo ✓' }, from: { app_name: app, client_id: `c${i}` }, nonce, s: i === clients.length - 1 ? 2 : 1 });
        // The recipient answers the way §6 (Replies) says replies work: to `from`, with the same nonce.
        to.send(dispatchFrame('PONG', { app_name: ping.from.app_name, client_id: ping.from.client_id }, { d: 'pong', nonce }));
        const pong = await from.event('PONG');
        expect(pong).toMatchObject({ e: 'PONG', d: 'pong', nonce, from: { app_name: app, client_id: toId } });
        const ack = await from.waitFor((f) => f.e === 'NERVE_ACK' && f.nonce === nonce, 3000, `NERVE_ACK ${nonce}`);
        expect(ack).toEqual({ op: 8, e: 'NERVE_ACK', nonce, d: { delivered: 1, queued: 0 } });
      }
    });

    it('a msgpack client and a JSON client identify and exchange a dispatch', async () => {
      const app = uid('mixed');
      const packed = await identified(server(), app, 'packed', { format: 'msgpack' });
      const json = await identified(server(), app, 'json');
      packed.send(dispatchFrame('HI', { app_name: app, client_id: 'json' }, { d: { x: 1.5, big: 2 ** 40 } }));
      const raw = await json.waitForRaw((f) => f.e === 'HI');
      expect(raw.binary).toBe(false);
      expect(JSON.parse(raw.raw as string)).toEqual({ op: 8, e: 'HI', d: { x: 1.5, big: 2 ** 40 }, from: { app_name: app, client_id: 'packed' }, s: 1 });
      json.send(dispatchFrame('HO', { app_name: app, client_id: 'packed' }, { d: ['a', { b: true }] }));
      const back = await packed.waitForRaw((f) => f.e === 'HO');
      expect(back.binary).toBe(true);
      // Readable by a plain msgpack decoder (no msgpackr record extension).
      expect(new Packr({ useRecords: false, mapsAsObjects: true }).unpack(back.raw as Buffer)).toEqual({
        op: 8,
        e: 'HO',
        d: ['a', { b: true }],
        from: { app_name: app, client_id: 'json' },
        s: 1,
      });
    });

    it('an unknown format refuses the upgrade with HTTP 400 naming the parameter', async () => {
      const refused = await refusedUpgrade(`${server().url}/?format=xml`);
      expect(refused.status).toBe(400);
      expect(refused.type).toMatch(/^text\/plain/);
      expect(refused.body).toMatch(/format/);
      expect(refused.body).toContain('xml');
    });

    it('an unknown compression refuses the upgrade with HTTP 400 naming the parameter', async () => {
      const refused = await refusedUpgrade(`${server().url}/?compression=gzip`);
      expect(refused.status).toBe(400);
      expect(refused.type).toMatch(/^text\/plain/);
      expect(refused.body).toMatch(/compression/);
      expect(refused.body).toContain('gzip');
    });

    for (const wire of WIRES.slice(1)) {
      it(`a text frame on a ${wireName(wire)} connection closes it with 4400`, async () => {
        const { client } = await connect(server(), wire);
        client.sendRaw(JSON.stringify({ op: 1, d: { app_name: 'a', client_id: 'b', password: server().password } }));
        await expectError(client, 4400, /text frame/);
      });

      // A Durable Object's heartbeat auto-response matches the exact text on every
      // socket it holds, before the object sees the frame, whatever the socket's format.
      it.skipIf(runtime === ('cloudflare' as string))(`the heartbeat text {"op":3} on a ${wireName(wire)} connection closes it with 4400`, async () => {
        const { client } = await connect(server(), wire);
        client.sendRaw('{"op":3}');
        await expectError(client, 4400, /text frame/);
      });
    }

    it('a JSON connection accepts UTF-8 JSON in binary frames', async () => {
      const app = uid('binjson');
      const { client } = await connect(server(), { heartbeatEvery: 0 });
      client.sendRaw(Buffer.from('{"op":3}'));
      expect(await client.next()).toEqual({ op: 4 });
      client.sendRaw(Buffer.from(JSON.stringify({ op: 1, d: { app_name: app, client_id: 'é', password: server().password } })));
      expect(await client.next()).toEqual({ op: 2, d: "hi i'm dad" });
      client.sendRaw(Buffer.from(JSON.stringify(dispatchFrame('ÜBER', { app_name: app, client_id: 'é' }, { d: '✓' }))));
      expect(await client.event('ÜBER')).toMatchObject({ d: '✓', s: 1 });
    });

    it('undecodable bytes are 4400 in every format', async () => {
      for (const wire of WIRES) {
        const { client } = await connect(server(), wire);
        client.sendRaw(Uint8Array.of(0xc1, 0xff, 0x00, 0x13));
        await expectError(client, 4400, /undecodable|not valid UTF-8/);
      }
    });

    it('a zlib frame that inflates past the payload limit closes with 4413', async () => {
      const { client } = await connect(server(), { compression: 'zlib' });
      const bomb = zlibSync(new TextEncoder().encode(`{"op":3,"d":"${' '.repeat(MAX_PAYLOAD * 4)}"}`));
      expect(bomb.byteLength).toBeLessThan(MAX_PAYLOAD);
      client.sendRaw(bomb);
      await expectError(client, 4413, new RegExp(`${MAX_PAYLOAD}`));
    });

    it('a msgpack+zlib bomb closes with 4413 too', async () => {
      const { client } = await connect(server(), { format: 'msgpack', compression: 'zlib' });
      const bomb = zlibSync(new Packr({ useRecords: false }).pack({ op: 3, d: 'x'.repeat(MAX_PAYLOAD * 2) }));
      client.sendRaw(bomb);
      await expectError(client, 4413, new RegExp(`${MAX_PAYLOAD}`));
    });

    it('a zlib frame that inflates to just under the limit is accepted', async () => {
      const { client } = await connect(server(), { compression: 'zlib', heartbeatEvery: 0 });
      const text = `{"op":3,"d":"${' '.repeat(MAX_PAYLOAD - 100)}"}`;
      client.sendRaw(zlibSync(new TextEncoder().encode(text)));
      expect(await client.next()).toEqual({ op: 4 });
    });

    it('a frame over NERVE_MAX_PAYLOAD closes with 4413 naming the limit', async () => {
      const { client } = await connect(server());
      client.sendRaw(`{"op":3,"d":"${'x'.repeat(MAX_PAYLOAD)}"}`);
      await expectError(client, 4413, new RegExp(`${MAX_PAYLOAD}`));
    });

    it('a binary frame over NERVE_MAX_PAYLOAD closes with 4413', async () => {
      const { client } = await connect(server(), { format: 'msgpack' });
      client.sendRaw(new Packr({ useRecords: false }).pack({ op: 3, d: 'x'.repeat(MAX_PAYLOAD) }));
      await expectError(client, 4413, new RegExp(`${MAX_PAYLOAD}`));
    });

    it('a frame many times the limit still gets NO_U_TBH and 4413, not a bare transport close', async () => {
      const { client } = await connect(server());
      client.sendRaw(`{"op":3,"d":"${'x'.repeat(MAX_PAYLOAD * 5)}"}`);
      await expectError(client, 4413, new RegExp(`${MAX_PAYLOAD}`));
    });

    it('a frame exactly at the limit is accepted', async () => {
      const { client } = await connect(server(), { heartbeatEvery: 0 });
      const head = '{"op":3,"d":"';
      client.sendRaw(`${head}${'x'.repeat(MAX_PAYLOAD - head.length - 2)}"}`);
      expect(await client.next()).toEqual({ op: 4 });
    });
  });
}
