// docs/protocol.md §3 (lifecycle) and §4 (errors): HELLO, IDENTIFY, WELCOME,
// heartbeats, both timeouts, and every error close (NO_U_TBH first, same
// reason, the right code), including the order of the checks and the rate limit.

import { describe, expect, it } from 'vitest';
import { TestClient } from './client.ts';
import { connect, dispatchFrame, eventually, expectError, HEARTBEAT_INTERVAL, identified, RUNTIMES, uid, useServer } from './harness.ts';

const QUIET = { heartbeatEvery: 0 };

for (const runtime of RUNTIMES) {
  describe(`${runtime}: §3 lifecycle`, () => {
    const server = useServer(runtime);

    it('HELLO announces the heartbeat interval and a worker id', async () => {
      const { hello } = await connect(server());
      expect(Object.keys(hello).sort()).toEqual(['d', 'op']);
      expect(Object.keys(hello.d).sort()).toEqual(['heartbeat_interval', 'worker']);
      expect(hello.d.heartbeat_interval).toBe(HEARTBEAT_INTERVAL);
      expect(hello.d.worker).toMatch(/^nerve-[0-9a-f]{6}$/);
    });

    it('the worker id of HELLO is in every log line, including the one an IDENTIFY writes', async () => {
      const app = uid('logged');
      const { hello } = await connect(server());
      await identified(server(), app, 'c');
      const entries = () =>
        server().lines.flatMap((line) => {
          try {
            const entry = JSON.parse(line.slice(line.indexOf('{')));
            return entry && typeof entry === 'object' ? [entry] : [];
          } catch {
            return [];
          }
        });
      await eventually(
        async () => entries(),
        (list) => list.some((entry) => entry.app_name === app),
        3000,
        `a log line about ${app}`,
      );
      for (const entry of entries()) expect(entry.worker, JSON.stringify(entry)).toBe(hello.d.worker);
    });

    it('every connection to one server sees the same worker id', async () => {
      const a = await connect(server());
      const b = await connect(server(), { format: 'msgpack' });
      expect(b.hello.d.worker).toBe(a.hello.d.worker);
    });

    it('WELCOME is exactly {"op":2,"d":"hi i\'m dad"}', async () => {
      const { client } = await connect(server(), QUIET);
      client.identify({ app_name: uid('w'), client_id: 'c', password: server().password });
      const welcome = await client.nextRaw();
      expect(welcome.binary).toBe(false);
      expect(JSON.parse(welcome.raw as string)).toEqual({ op: 2, d: "hi i'm dad" });
    });

    it('HEARTBEAT {"op":3} is answered with exactly the text {"op":4}, d ignored', async () => {
      const client = await identified(server(), uid('hb'), 'c', QUIET);
      client.sendRaw('{"op":3}');
      const ack = await client.nextRaw();
      expect(ack).toMatchObject({ binary: false, raw: '{"op":4}' });
      client.send({ op: 3, d: { anything: [1, 2] }, extra: true });
      expect((await client.nextRaw()).raw).toBe('{"op":4}');
      client.send({ op: 3, d: 17 });
      expect((await client.nextRaw()).raw).toBe('{"op":4}');
    });

    it('HEARTBEAT is allowed before IDENTIFY', async () => {
      const { client } = await connect(server(), QUIET);
      client.sendRaw('{"op":3}');
      expect((await client.nextRaw()).raw).toBe('{"op":4}');
      client.identify({ app_name: uid('hb'), client_id: 'c', password: server().password });
      expect(await client.next()).toEqual({ op: 2, d: "hi i'm dad" });
    });

    it('unknown fields on inbound frames and in IDENTIFY are ignored', async () => {
      const { client } = await connect(server());
      client.send({ op: 1, d: { app_name: uid('x'), client_id: 'c', password: server().password, shoe_size: 44 }, e: 'ignored', s: 9 });
      expect(await client.next()).toEqual({ op: 2, d: "hi i'm dad" });
    });

  });

  // Each of these waits out a real deadline; they run side by side on their own server.
  describe.concurrent(`${runtime}: §3 timeouts`, () => {
    const server = useServer(runtime, {}, { concurrent: true });

    it('no IDENTIFY within heartbeat_interval → NO_U_TBH and 4408', async () => {
      const started = Date.now();
      const { client } = await connect(server(), QUIET);
      // Timed at NO_U_TBH: local workerd keeps the TCP connection of a peer that
      // never sent a frame open for a while after the close handshake, so the
      // socket's close event can come late there (docs/cloudflare.md).
      const noU = await client.waitFor((f) => f?.op === 6, 4 * HEARTBEAT_INTERVAL, 'NO_U_TBH');
      const elapsed = Date.now() - started;
      expect(noU.d).toMatch(/identify timeout/i);
      expect(elapsed).toBeGreaterThanOrEqual(HEARTBEAT_INTERVAL - 50);
      expect(elapsed).toBeLessThan(HEARTBEAT_INTERVAL * 2.5);
      expect(await client.closed).toEqual({ code: 4408, reason: noU.d });
    });

    it('heartbeats before IDENTIFY do not extend the identify deadline', async () => {
      const { client } = await connect(server(), { heartbeatEvery: 200 });
      await expectError(client, 4408, /identify timeout/i, 4 * HEARTBEAT_INTERVAL);
    });

    it('no HEARTBEAT for 1.5 × heartbeat_interval → NO_U_TBH and 4408', async () => {
      const started = Date.now();
      const client = await identified(server(), uid('hbt'), 'c', QUIET);
      await expectError(client, 4408, /heartbeat timeout/i, 5 * HEARTBEAT_INTERVAL);
      const elapsed = Date.now() - started;
      expect(elapsed).toBeGreaterThanOrEqual(HEARTBEAT_INTERVAL * 1.5 - 50);
      expect(elapsed).toBeLessThan(HEARTBEAT_INTERVAL * 3);
    });

    it('the heartbeat deadline runs from the last HEARTBEAT', async () => {
      const client = await identified(server(), uid('hbt'), 'c', QUIET);
      // Heartbeats at 0.8 × interval keep the connection past several 1.5 × intervals.
      for (let i = 0; i < 3; i++) {
        await new Promise((r) => setTimeout(r, HEARTBEAT_INTERVAL * 0.8));
        client.sendRaw('{"op":3}');
        expect((await client.nextRaw()).raw).toBe('{"op":4}');
      }
      const stoppedAt = Date.now();
      await expectError(client, 4408, /heartbeat timeout/i, 5 * HEARTBEAT_INTERVAL);
      expect(Date.now() - stoppedAt).toBeGreaterThanOrEqual(HEARTBEAT_INTERVAL * 1.5 - 50);
    });
  });

  describe(`${runtime}: §4 errors`, () => {
    const server = useServer(runtime);

    /** Connects, optionally identifies, sends one frame and checks the error close. */
    async function rejects(frame: string | Uint8Array | object, code: number, reason: RegExp | string, identifyFirst = false) {
      const client = identifyFirst ? await identified(server(), uid('err'), 'c') : (await connect(server())).client;
      if (typeof frame === 'string' || frame instanceof Uint8Array) client.sendRaw(frame);
      else client.send(frame);
      return expectError(client, code, reason);
    }

    const undecodable: [string, string, RegExp][] = [
      ['bad JSON', '{"op":3', /JSON/],
      ['a JSON array', '[1,2]', /object/],
      ['a JSON string', '"op"', /object/],
      ['null', 'null', /object/],
      ['a missing op', '{"d":{}}', /\bop\b/],
      ['a string op', '{"op":"3"}', /\bop\b/],
      ['a fractional op', '{"op":3.5}', /\bop\b/],
      ['an unknown op', '{"op":42}', /unknown op 42/],
      ['a negative op', '{"op":-1}', /op -1/],
    ];
    for (const [what, frame, reason] of undecodable) {
      it(`${what} → 4400 before IDENTIFY`, () => rejects(frame, 4400, reason));
      it(`${what} → 4400 after IDENTIFY`, () => rejects(frame, 4400, reason, true));
    }

    for (const op of [0, 2, 4, 5, 6]) {
      it(`server-only op ${op} → 4400 naming it, before and after IDENTIFY`, async () => {
        await rejects({ op, d: null }, 4400, new RegExp(`op ${op}\\b.*server`));
        await rejects({ op, d: null }, 4400, new RegExp(`op ${op}\\b.*server`), true);
      });
    }

    const base = () => ({ app_name: uid('id'), client_id: 'c', password: server().password });
    const invalidIdentify: [string, () => unknown, RegExp][] = [
      ['d missing', () => undefined, /\bd\b.*object/],
      ['d an array', () => [1], /\bd\b.*object/],
      ['app_name missing', () => ({ ...base(), app_name: undefined }), /app_name/],
      ['app_name empty', () => ({ ...base(), app_name: '' }), /app_name/],
      ['app_name not a string', () => ({ ...base(), app_name: 7 }), /app_name/],
      ['app_name of 129 characters', () => ({ ...base(), app_name: 'a'.repeat(129) }), /app_name.*128/],
      ['client_id missing', () => ({ ...base(), client_id: undefined }), /client_id/],
      ['client_id empty', () => ({ ...base(), client_id: '' }), /client_id/],
      ['client_id of 129 characters', () => ({ ...base(), client_id: 'c'.repeat(129) }), /client_id.*128/],
      ['password missing', () => ({ ...base(), password: undefined }), /password/],
      ['password not a string', () => ({ ...base(), password: 1234 }), /password/],
      ['metadata an array', () => ({ ...base(), metadata: ['a'] }), /metadata/],
      ['metadata a string', () => ({ ...base(), metadata: 'eu' }), /metadata/],
      ['metadata null', () => ({ ...base(), metadata: null }), /metadata/],
      ['reconnect not a boolean', () => ({ ...base(), reconnect: 'yes' }), /reconnect/],
      ['seq negative', () => ({ ...base(), seq: -1 }), /seq/],
      ['seq not an integer', () => ({ ...base(), seq: 1.5 }), /seq/],
    ];
    for (const [what, d, reason] of invalidIdentify) {
      it(`IDENTIFY with ${what} → 4400 naming the field`, async () => {
        const { reason: text } = await rejects({ op: 1, d: d() }, 4400, reason);
        expect(text).toMatch(/^IDENTIFY/);
      });
    }

    it('IDENTIFY names of exactly 128 characters are accepted', async () => {
      const { client } = await connect(server());
      client.identify({ app_name: uid('n').padEnd(128, 'a'), client_id: 'c'.repeat(128), password: server().password });
      expect(await client.next()).toEqual({ op: 2, d: "hi i'm dad" });
    });

    it('a wrong password → 4401, and the reason does not echo it', async () => {
      const { reason } = await rejects({ op: 1, d: { ...base(), password: 'hunter2' } }, 4401, /password/);
      expect(reason).not.toContain('hunter2');
      expect(reason).not.toContain(server().password);
    });

    it('DISPATCH before IDENTIFY → 4403', () =>
      rejects(dispatchFrame('E', { app_name: 'x' }), 4403, /DISPATCH.*IDENTIFY/));

    it('ABOUT_ME before IDENTIFY → 4403', () => rejects({ op: 7, d: { a: 1 } }, 4403, /ABOUT_ME.*IDENTIFY/));

    it('a second IDENTIFY → 4403', () => rejects({ op: 1, d: base() }, 4403, /IDENTIFY/, true));

    it('a connected (app_name, client_id) → 4409 for the newcomer; the first connection is untouched', async () => {
      const app = uid('dup');
      const first = await identified(server(), app, 'same');
      const { client: second } = await connect(server());
      second.identify({ app_name: app, client_id: 'same', password: server().password });
      await expectError(second, 4409, new RegExp(`${app}/same.*already connected`));
      const { client: third } = await connect(server());
      third.identify({ app_name: app, client_id: 'same', password: server().password, reconnect: false });
      await expectError(third, 4409, /already connected/);
      first.send(dispatchFrame('STILL_HERE', { app_name: app, client_id: 'same' }));
      expect(await first.event('STILL_HERE')).toMatchObject({ s: 1 });
      expect(first.closeInfo).toBeUndefined();
    });

    it('reconnect:true takes over a connected session: the old connection gets NO_U_TBH and 4409', async () => {
      const app = uid('takeover');
      const old = await identified(server(), app, 'c', { metadata: { zone: 'a' } });
      const fresh = await identified(server(), app, 'c', { reconnect: true });
      await expectError(old, 4409, 'Session taken over by a new connection');
      expect(old.log.find((r) => r.frame.op === 6)!.frame).toEqual({ op: 6, d: 'Session taken over by a new connection' });
      // The new connection is the session now: it receives, and metadata survived.
      const sender = await identified(server(), uid('sender'), 's');
      sender.send(dispatchFrame('AFTER', { app_name: app, query: { zone: 'a' } }));
      expect(await fresh.event('AFTER')).toMatchObject({ e: 'AFTER', from: { client_id: 's' } });
    });

    describe('order of checks: decoding and op (4400), then state (4403), then fields (4400)', () => {
      it('an unknown op before IDENTIFY is 4400, not 4403', () => rejects({ op: 99 }, 4400, /unknown op 99/));
      it('a server-only op before IDENTIFY is 4400, not 4403', () => rejects({ op: 5 }, 4400, /op 5/));
      it('bad JSON before IDENTIFY is 4400', () => rejects('{op:7}', 4400, /JSON/));
      it('ABOUT_ME with an invalid d before IDENTIFY is 4403, not 4400', () => rejects({ op: 7, d: 'x' }, 4403, /ABOUT_ME/));
      it('DISPATCH with no fields before IDENTIFY is 4403, not 4400', () => rejects({ op: 8 }, 4403, /DISPATCH/));
      it('a second IDENTIFY with invalid fields is 4403, not 4400', () => rejects({ op: 1, d: { app_name: '' } }, 4403, /IDENTIFY/, true));
      it('a second IDENTIFY with a wrong password is 4403, not 4401', () =>
        rejects({ op: 1, d: { ...base(), password: 'nope' } }, 4403, /IDENTIFY/, true));
      it('an invalid IDENTIFY field is checked before the password (4400, not 4401)', () =>
        rejects({ op: 1, d: { app_name: '', client_id: 'c', password: 'nope' } }, 4400, /app_name/));
    });

    it('a reason longer than 123 bytes is sent whole in NO_U_TBH and truncated in the close', async () => {
      const operator = `$${'é'.repeat(80)}`;
      const client = await identified(server(), uid('long'), 'c');
      client.send(dispatchFrame('E', { app_name: 'x', query: { [operator]: 1 } }));
      const { reason, closed } = await expectError(client, 4400, operator);
      expect(Buffer.byteLength(reason)).toBeGreaterThan(123);
      expect(Buffer.byteLength(closed.reason)).toBeLessThanOrEqual(123);
      expect(reason.startsWith(closed.reason)).toBe(true);
    });

    it('a protocol error on one connection does not affect another', async () => {
      const app = uid('iso');
      const a = await identified(server(), app, 'a');
      const b = await identified(server(), app, 'b');
      a.sendRaw('garbage');
      await expectError(a, 4400, /JSON/);
      b.send(dispatchFrame('OK', { app_name: app, client_id: 'b' }));
      expect(await b.event('OK')).toMatchObject({ s: 1 });
    });

    it('frames after the error frame are ignored, and the close code still arrives', async () => {
      const { client } = await connect(server(), QUIET);
      client.sendRaw('{"op":42}');
      // A pipelining client keeps writing before it reads the close.
      for (let i = 0; i < 10; i++) client.sendRaw('{"op":3}');
      await expectError(client, 4400, /unknown op/);
      expect(client.log.map((r) => r.frame.op)).toEqual([0, 6]);
    });

    it('a client writing right after connecting, without reading, still gets NO_U_TBH and the close code', async () => {
      const client = new TestClient(server().url, QUIET);
      await client.opened;
      client.sendRaw('{"op":42}');
      for (let i = 0; i < 5; i++) client.sendRaw('{"op":3}');
      await expectError(client, 4400, /unknown op 42/);
      expect(client.log.map((r) => r.frame.op)).toEqual([0, 6]);
    });
  });

  describe(`${runtime}: §4 errors: rate limit`, () => {
    const server = useServer(runtime, { NERVE_RATE_LIMIT: '5' });

    it('frames within the burst (2 s worth) are served', async () => {
      const { client } = await connect(server(), QUIET);
      for (let i = 0; i < 8; i++) client.sendRaw('{"op":3}');
      for (let i = 0; i < 8; i++) expect((await client.nextRaw()).raw).toBe('{"op":4}');
      expect(client.closeInfo).toBeUndefined();
    });

    it('frames faster than NERVE_RATE_LIMIT → 4429 after the burst', async () => {
      const client = await identified(server(), uid('rl'), 'c', QUIET);
      for (let i = 0; i < 30; i++) client.sendRaw('{"op":3}');
      await expectError(client, 4429, /rate limit/);
      const acks = client.log.filter((r) => r.frame.op === 4).length;
      // Burst is 2 s worth (10 frames); IDENTIFY used one token.
      expect(acks).toBeGreaterThanOrEqual(8);
      expect(acks).toBeLessThanOrEqual(10);
    });

    it('a rate-limited connection does not affect another', async () => {
      const app = uid('rl');
      const calm = await identified(server(), app, 'calm', QUIET);
      const { client: noisy } = await connect(server(), QUIET);
      for (let i = 0; i < 30; i++) noisy.sendRaw('{"op":3}');
      await expectError(noisy, 4429, /rate limit/);
      calm.send(dispatchFrame('OK', { app_name: app, client_id: 'calm' }));
      expect(await calm.event('OK')).toMatchObject({ s: 1 });
    });
  });
}
