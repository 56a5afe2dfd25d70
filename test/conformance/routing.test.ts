// docs/protocol.md §5 (ABOUT_ME metadata) and §6 (DISPATCH routing): targets,
// modes, queries, round robin, sticky keys, ACKs, held queues and their TTL,
// and per-session sequence numbers.

import { describe, expect, it } from 'vitest';
import type { TestClient } from './client.ts';
import {
  connect,
  dispatchFrame,
  expectError,
  getClients,
  identified,
  MAX_METADATA,
  QUEUE_TTL,
  RUNTIMES,
  uid,
  useServer,
} from './harness.ts';

const WELCOME = { op: 2, d: "hi i'm dad" };

/** Sends each frame with a nonce and waits for all their NERVE_ACKs; returns them in order. */
async function dispatchAll(sender: TestClient, frames: Record<string, unknown>[]): Promise<any[]> {
  const nonces = frames.map(() => uid('n'));
  frames.forEach((frame, i) => sender.send({ ...frame, nonce: nonces[i] }));
  const acks = [];
  for (const nonce of nonces) acks.push(await sender.waitFor((f) => f.e === 'NERVE_ACK' && f.nonce === nonce, 3000, `NERVE_ACK ${nonce}`));
  return acks;
}

/**
 * Which client got each event `e`, keyed by its `d`. Call after the ACKs: the
 * server writes to recipients before it ACKs, and each client's sync() barrier
 * flushes what was written to it.
 */
async function whoGot(clients: Record<string, TestClient>, e: string): Promise<Map<unknown, string>> {
  const byD = new Map<unknown, string>();
  for (const [name, client] of Object.entries(clients)) {
    for (const frame of await client.sync()) {
      if (frame.e !== e) continue;
      expect(byD.has(frame.d), `${JSON.stringify(frame.d)} delivered twice`).toBe(false);
      byD.set(frame.d, name);
    }
  }
  return byD;
}

for (const runtime of RUNTIMES) {
  describe(`${runtime}: §5 ABOUT_ME`, () => {
    const server = useServer(runtime);

    it('IDENTIFY metadata, then ABOUT_ME shallow-merges and null removes a key, as GET /clients shows', async () => {
      const app = uid('meta');
      const client = await identified(server(), app, 'c', { metadata: { region: 'eu', load: 1, nested: { a: 1, b: 2 } } });
      expect((await getClients(server(), app))[0].metadata).toEqual({ region: 'eu', load: 1, nested: { a: 1, b: 2 } });
      client.send({ op: 7, d: { load: 0.42, users: ['123', '456'], nested: { c: 3 } } });
      client.send({ op: 7, d: { region: null, gone: null } });
      // ABOUT_ME has no reply: nothing arrives before the barrier's ACK.
      expect(await client.sync()).toEqual([]);
      const [entry] = await getClients(server(), app);
      expect(entry).toMatchObject({ app_name: app, client_id: 'c', metadata: { load: 0.42, users: ['123', '456'], nested: { c: 3 } } });
      expect(Object.keys(entry.metadata).sort()).toEqual(['load', 'nested', 'users']);
      expect(typeof entry.connected_at).toBe('number');
    });

    it('ABOUT_ME applies before the next frame of the same connection is handled', async () => {
      const app = uid('order');
      const client = await identified(server(), app, 'c');
      client.send({ op: 7, d: { ready: true } });
      client.send(dispatchFrame('SELF', { app_name: app, client_id: 'c', query: { ready: true } }, { nonce: 'n1' }));
      expect(await client.event('SELF')).toMatchObject({ s: 1 });
      expect(await client.event('NERVE_ACK')).toMatchObject({ d: { delivered: 1, queued: 0 } });
    });

    for (const [what, d] of [
      ['an array', ['a']],
      ['a string', 'eu'],
      ['null', null],
      ['missing', undefined],
    ] as const) {
      it(`ABOUT_ME with d ${what} → 4400 naming d`, async () => {
        const client = await identified(server(), uid('bad'), 'c');
        client.send({ op: 7, d });
        await expectError(client, 4400, /ABOUT_ME: d must be an object/);
      });
    }

    it(`ABOUT_ME taking metadata over NERVE_MAX_METADATA (${MAX_METADATA}) → 4413 naming the limit`, async () => {
      const client = await identified(server(), uid('big'), 'c', { metadata: { a: 'x'.repeat(MAX_METADATA / 2) } });
      client.send({ op: 7, d: { b: 'y'.repeat(MAX_METADATA / 2) } });
      await expectError(client, 4413, new RegExp(`metadata.*${MAX_METADATA}`));
    });

    it('ABOUT_ME that removes keys to make room is accepted', async () => {
      const app = uid('room');
      const client = await identified(server(), app, 'c', { metadata: { a: 'x'.repeat(MAX_METADATA / 2) } });
      client.send({ op: 7, d: { a: null, b: 'y'.repeat(MAX_METADATA / 2 + 100) } });
      expect(await client.sync()).toEqual([]);
      expect(Object.keys((await getClients(server(), app))[0].metadata)).toEqual(['b']);
    });

    it('IDENTIFY metadata over the limit → 4413', async () => {
      const { client } = await connect(server());
      client.identify({ app_name: uid('big'), client_id: 'c', password: server().password, metadata: { a: 'x'.repeat(MAX_METADATA) } });
      await expectError(client, 4413, /metadata/);
    });
  });

  describe(`${runtime}: §6 DISPATCH`, () => {
    const server = useServer(runtime);

    it('to a client_id: the recipient gets e, d, from, nonce and s; the sender gets NERVE_ACK', async () => {
      const app = uid('direct');
      const senderApp = uid('api');
      const sender = await identified(server(), senderApp, 'api-7f3a');
      const target = await identified(server(), app, 'gw-1');
      sender.send(dispatchFrame('USER_UPDATED', { app_name: app, client_id: 'gw-1' }, { d: { id: '42' }, nonce: 'req-1' }));
      expect(await target.next()).toEqual({
        op: 8,
        e: 'USER_UPDATED',
        d: { id: '42' },
        from: { app_name: senderApp, client_id: 'api-7f3a' },
        nonce: 'req-1',
        s: 1,
      });
      expect(await sender.next()).toEqual({ op: 8, e: 'NERVE_ACK', nonce: 'req-1', d: { delivered: 1, queued: 0 } });
    });

    it('an absent d is delivered as null; no nonce means no nonce field and no ACK', async () => {
      const app = uid('nod');
      const sender = await identified(server(), app, 's');
      const target = await identified(server(), app, 't');
      sender.send(dispatchFrame('EMPTY', { app_name: app, client_id: 't' }));
      expect(await target.next()).toEqual({ op: 8, e: 'EMPTY', d: null, from: { app_name: app, client_id: 's' }, s: 1 });
      expect(await sender.sync()).toEqual([]);
    });

    it('mode one (the default) round-robins over matches in identify order, one cursor per app', async () => {
      const app = uid('rr');
      const clients = { a: await identified(server(), app, 'a'), b: await identified(server(), app, 'b'), c: await identified(server(), app, 'c') };
      const sender = await identified(server(), uid('src'), 's');
      const frames = [0, 1, 2, 3, 4, 5].map((i) => dispatchFrame('RR', { app_name: app, ...(i % 2 ? { mode: 'one' } : {}) }, { d: i }));
      const acks = await dispatchAll(sender, frames);
      for (const ack of acks) expect(ack.d).toEqual({ delivered: 1, queued: 0 });
      const got = await whoGot(clients, 'RR');
      const order = [0, 1, 2, 3, 4, 5].map((i) => got.get(i));
      const start = ['a', 'b', 'c'].indexOf(order[0]!);
      expect(start).toBeGreaterThanOrEqual(0);
      expect(order).toEqual([0, 1, 2, 3, 4, 5].map((i) => ['a', 'b', 'c'][(start + i) % 3]));
    });

    it('round robin skips clients the query does not match', async () => {
      const app = uid('rrq');
      const clients = {
        a: await identified(server(), app, 'a', { metadata: { tier: 'gold' } }),
        b: await identified(server(), app, 'b', { metadata: { tier: 'free' } }),
        c: await identified(server(), app, 'c', { metadata: { tier: 'gold' } }),
      };
      const sender = await identified(server(), uid('src'), 's');
      await dispatchAll(sender, [0, 1, 2, 3].map((i) => dispatchFrame('Q', { app_name: app, query: { tier: 'gold' } }, { d: i })));
      const got = await whoGot(clients, 'Q');
      const order = [0, 1, 2, 3].map((i) => got.get(i));
      expect(order.filter((name) => name === 'a')).toHaveLength(2);
      expect(order.filter((name) => name === 'c')).toHaveLength(2);
      expect(order[0]).not.toBe(order[1]);
    });

    it('mode all reaches every match except the sender; NERVE_ACK counts them', async () => {
      const app = uid('all');
      const sender = await identified(server(), app, 's');
      const a = await identified(server(), app, 'a');
      const b = await identified(server(), app, 'b');
      const [ack] = await dispatchAll(sender, [dispatchFrame('NEWS', { app_name: app, mode: 'all' }, { d: 'x' })]);
      expect(ack.d).toEqual({ delivered: 2, queued: 0 });
      expect(await a.event('NEWS')).toMatchObject({ d: 'x', from: { app_name: app, client_id: 's' }, s: 1 });
      expect(await b.event('NEWS')).toMatchObject({ d: 'x', s: 1 });
      expect((await sender.sync()).filter((f) => f.e === 'NEWS')).toEqual([]);
    });

    it('the sender receives its own dispatch when to.client_id names it', async () => {
      const app = uid('self');
      const sender = await identified(server(), app, 's');
      const other = await identified(server(), app, 'o');
      sender.send(dispatchFrame('ME', { app_name: app, client_id: 's', mode: 'all' }, { d: 1 }));
      expect(await sender.event('ME')).toEqual({ op: 8, e: 'ME', d: 1, from: { app_name: app, client_id: 's' }, s: 1 });
      expect((await other.sync()).filter((f) => f.e === 'ME')).toEqual([]);
    });

    it('mode one never picks the sender: with no one else it is held', async () => {
      const app = uid('alone');
      const sender = await identified(server(), app, 's');
      const [ack] = await dispatchAll(sender, [dispatchFrame('ECHO', { app_name: app }, { d: 'held' })]);
      expect(ack.d).toEqual({ delivered: 0, queued: 1 });
      const later = await identified(server(), app, 'later');
      expect(await later.event('ECHO')).toMatchObject({ d: 'held', from: { client_id: 's' }, s: 1 });
    });

    it('mode all with no match delivers to nobody and holds nothing', async () => {
      const app = uid('void');
      const sender = await identified(server(), uid('src'), 's');
      const [ack] = await dispatchAll(sender, [dispatchFrame('PUB', { app_name: app, mode: 'all' })]);
      expect(ack.d).toEqual({ delivered: 0, queued: 0 });
      const late = await identified(server(), app, 'late');
      expect(await late.sync()).toEqual([]);
    });

    it('queries: the Mongo array rule ({"users":"42"} matches an array containing "42")', async () => {
      const app = uid('users');
      const clients = {
        has: await identified(server(), app, 'has', { metadata: { users: ['7', '42'] } }),
        other: await identified(server(), app, 'other', { metadata: { users: ['7'] } }),
        scalar: await identified(server(), app, 'scalar', { metadata: { users: '42' } }),
        none: await identified(server(), app, 'none'),
      };
      const sender = await identified(server(), uid('src'), 's');
      const [ack] = await dispatchAll(sender, [dispatchFrame('U', { app_name: app, query: { users: '42' }, mode: 'all' }, { d: 1 })]);
      expect(ack.d).toEqual({ delivered: 2, queued: 0 });
      const got = await Promise.all(Object.values(clients).map(async (c) => (await c.sync()).filter((f) => f.e === 'U').length));
      expect(got).toEqual([1, 0, 1, 0]);
    });

    it('queries: comparison, set, existence, size and logical operators', async () => {
      const app = uid('ops');
      const meta = {
        a: { region: 'eu', load: 0.2, tags: ['x', 'y'] },
        b: { region: 'us', load: 0.9, tags: ['x'] },
        c: { region: 'eu', load: 0.7 },
      };
      const clients = Object.fromEntries(
        await Promise.all(Object.entries(meta).map(async ([id, metadata]) => [id, await identified(server(), app, id, { metadata })] as const)),
      );
      const sender = await identified(server(), uid('src'), 's');
      const cases: [Record<string, unknown>, string[]][] = [
        [{ region: { $eq: 'eu' } }, ['a', 'c']],
        [{ region: { $ne: 'eu' } }, ['b']],
        [{ load: { $gt: 0.5 } }, ['b', 'c']],
        [{ load: { $gte: 0.7, $lte: 0.7 } }, ['c']],
        [{ load: { $lt: 0.5 } }, ['a']],
        [{ region: { $in: ['us', 'ap'] } }, ['b']],
        [{ region: { $nin: ['us'] } }, ['a', 'c']],
        [{ tags: { $exists: false } }, ['c']],
        [{ tags: { $all: ['x', 'y'] } }, ['a']],
        [{ tags: { $size: 1 } }, ['b']],
        [{ $and: [{ region: 'eu' }, { load: { $gt: 0.5 } }] }, ['c']],
        [{ $or: [{ region: 'us' }, { load: { $lt: 0.3 } }] }, ['a', 'b']],
        [{ $nor: [{ region: 'us' }, { load: { $lt: 0.3 } }] }, ['c']],
        [{ load: { $not: { $gt: 0.5 } } }, ['a']],
      ];
      const acks = await dispatchAll(
        sender,
        cases.map(([query], i) => dispatchFrame('OP', { app_name: app, query, mode: 'all' }, { d: i })),
      );
      const received: Record<string, number[]> = {};
      for (const [id, client] of Object.entries(clients)) received[id] = (await client.sync()).filter((f) => f.e === 'OP').map((f) => f.d);
      cases.forEach(([query, expected], i) => {
        const reached = Object.keys(received).filter((id) => received[id]!.includes(i)).sort();
        expect(reached, JSON.stringify(query)).toEqual(expected);
        expect(acks[i].d.delivered, JSON.stringify(query)).toBe(expected.length);
      });
    });

    for (const operator of ['$where', '$function', '$regex', '$expr', '$elemMatch']) {
      it(`a query using ${operator} → 4400 naming the operator`, async () => {
        const client = await identified(server(), uid('op'), 'c');
        const value = operator === '$where' ? 'this.a == 1' : operator === '$function' ? { body: 'return true', args: [], lang: 'js' } : {};
        client.send(dispatchFrame('E', { app_name: 'x', query: { a: { [operator]: value } } }));
        const { reason } = await expectError(client, 4400, operator);
        expect(reason).toMatch(/to\.query/);
      });
    }

    it('a top-level $where is refused too', async () => {
      const client = await identified(server(), uid('op'), 'c');
      client.send(dispatchFrame('E', { app_name: 'x', query: { $where: 'true' } }));
      await expectError(client, 4400, '$where');
    });

    it('a malformed operator argument → 4400 naming to.query', async () => {
      const client = await identified(server(), uid('op'), 'c');
      client.send(dispatchFrame('E', { app_name: 'x', query: { a: { $in: 'not-an-array' } } }));
      await expectError(client, 4400, /to\.query.*\$in/);
    });

    it('a reserved NERVE_ event name → 4400', async () => {
      const client = await identified(server(), uid('res'), 'c');
      client.send(dispatchFrame('NERVE_ACK', { app_name: 'x' }));
      await expectError(client, 4400, /NERVE_/);
    });

    const invalid: [string, Record<string, unknown>, RegExp][] = [
      ['e missing', { to: { app_name: 'x' } }, /\be\b/],
      ['e empty', { e: '', to: { app_name: 'x' } }, /\be\b/],
      ['e not a string', { e: 5, to: { app_name: 'x' } }, /\be\b/],
      ['e of 129 characters', { e: 'E'.repeat(129), to: { app_name: 'x' } }, /\be\b.*128/],
      ['to missing', { e: 'E' }, /\bto\b/],
      ['to a string', { e: 'E', to: 'x' }, /\bto\b/],
      ['to an array', { e: 'E', to: [] }, /\bto must be an object/],
      ['to.app_name missing', { e: 'E', to: {} }, /to\.app_name/],
      ['to.app_name empty', { e: 'E', to: { app_name: '' } }, /to\.app_name/],
      ['to.client_id empty', { e: 'E', to: { app_name: 'x', client_id: '' } }, /to\.client_id/],
      ['to.mode unknown', { e: 'E', to: { app_name: 'x', mode: 'some' } }, /to\.mode/],
      ['to.query an array', { e: 'E', to: { app_name: 'x', query: [] } }, /to\.query/],
      ['to.key not a string', { e: 'E', to: { app_name: 'x', key: 1 } }, /to\.key/],
      ['nonce not a string', { e: 'E', to: { app_name: 'x' }, nonce: 1 }, /nonce/],
      ['nonce of 129 characters', { e: 'E', to: { app_name: 'x' }, nonce: 'n'.repeat(129) }, /nonce.*128/],
    ];
    for (const [what, fields, reason] of invalid) {
      it(`DISPATCH with ${what} → 4400 naming the field`, async () => {
        const client = await identified(server(), uid('inv'), 'c');
        client.send({ op: 8, ...fields });
        const { reason: text } = await expectError(client, 4400, reason);
        expect(text).toMatch(/^DISPATCH/);
      });
    }

    it('a held dispatch is delivered when a matching client identifies, with its sender and nonce', async () => {
      const app = uid('held');
      const senderApp = uid('src');
      const sender = await identified(server(), senderApp, 's');
      const [ack] = await dispatchAll(sender, [dispatchFrame('LATER', { app_name: app, query: { ok: true } }, { d: 'waited' })]);
      expect(ack.d).toEqual({ delivered: 0, queued: 1 });
      // A client that does not match does not take it.
      const wrong = await identified(server(), app, 'wrong', { metadata: { ok: false } });
      const right = await identified(server(), app, 'right', { metadata: { ok: true } });
      expect(await right.event('LATER')).toEqual({
        op: 8,
        e: 'LATER',
        d: 'waited',
        from: { app_name: senderApp, client_id: 's' },
        nonce: ack.nonce,
        s: 1,
      });
      expect(await wrong.sync()).toEqual([]);
    });

    it('a held dispatch is delivered as soon as ABOUT_ME makes a connected client match', async () => {
      const app = uid('about');
      const client = await identified(server(), app, 'c', { metadata: { region: 'us' } });
      const sender = await identified(server(), uid('src'), 's');
      const [ack] = await dispatchAll(sender, [dispatchFrame('EU_ONLY', { app_name: app, query: { region: 'eu' } }, { d: 1 })]);
      expect(ack.d).toEqual({ delivered: 0, queued: 1 });
      expect(await client.sync()).toEqual([]);
      client.send({ op: 7, d: { region: 'eu' } });
      expect(await client.event('EU_ONLY')).toMatchObject({ d: 1, s: 1, nonce: ack.nonce });
    });

    it('a dispatch to a client_id that is not there is held for that client only', async () => {
      const app = uid('cid');
      const sender = await identified(server(), uid('src'), 's');
      const [ack] = await dispatchAll(sender, [dispatchFrame('FOR_B', { app_name: app, client_id: 'b' }, { d: 'b' })]);
      expect(ack.d).toEqual({ delivered: 0, queued: 1 });
      const a = await identified(server(), app, 'a');
      const b = await identified(server(), app, 'b');
      expect(await b.event('FOR_B')).toMatchObject({ d: 'b', s: 1 });
      expect(await a.sync()).toEqual([]);
    });

    it(`a held dispatch that finds no one within the TTL (${QUEUE_TTL} ms) → NERVE_UNDELIVERABLE to its sender`, async () => {
      const app = uid('ttl');
      const sender = await identified(server(), uid('src'), 's');
      const sentAt = Date.now();
      sender.send(dispatchFrame('LOST', { app_name: app, query: { never: true } }, { nonce: 'lost-1' }));
      sender.send(dispatchFrame('LOST_TOO', { app_name: app, client_id: 'ghost' }));
      const first = await sender.event('NERVE_UNDELIVERABLE', QUEUE_TTL * 6);
      expect(Date.now() - sentAt).toBeGreaterThanOrEqual(QUEUE_TTL - 20);
      expect(first).toEqual({ op: 8, e: 'NERVE_UNDELIVERABLE', nonce: 'lost-1', d: { reason: expect.any(String), e: 'LOST' } });
      expect(first.d.reason.length).toBeGreaterThan(0);
      const second = await sender.event('NERVE_UNDELIVERABLE', QUEUE_TTL * 6);
      // Without a nonce on the dispatch there is none on the notice.
      expect(second).toEqual({ op: 8, e: 'NERVE_UNDELIVERABLE', d: { reason: expect.any(String), e: 'LOST_TOO' } });
      const acks = sender.log.filter((r) => r.frame.e === 'NERVE_ACK').map((r) => r.frame);
      expect(acks).toEqual([{ op: 8, e: 'NERVE_ACK', nonce: 'lost-1', d: { delivered: 0, queued: 1 } }]);
    });

    it('a held dispatch that was delivered never comes back as NERVE_UNDELIVERABLE', async () => {
      const app = uid('once');
      const sender = await identified(server(), uid('src'), 's');
      await dispatchAll(sender, [dispatchFrame('ONCE', { app_name: app }, { d: 1 })]);
      const client = await identified(server(), app, 'c');
      expect(await client.event('ONCE')).toMatchObject({ s: 1 });
      // Nothing can be awaited for an event that must not happen: outlast the TTL, then look.
      await new Promise((r) => setTimeout(r, QUEUE_TTL * 2));
      expect((await sender.sync()).filter((f) => f.e === 'NERVE_UNDELIVERABLE')).toEqual([]);
      expect((await client.sync()).filter((f) => f.e === 'ONCE')).toEqual([]);
    });

    it('sticky key: the same key picks the same client while the matches do not change', async () => {
      const app = uid('key');
      const clients = { a: await identified(server(), app, 'a'), b: await identified(server(), app, 'b'), c: await identified(server(), app, 'c') };
      const sender = await identified(server(), uid('src'), 's');
      const keys = Array.from({ length: 12 }, (_, i) => `user-${i}`);
      const frames = [0, 1, 2].flatMap((round) => keys.map((key) => dispatchFrame('K', { app_name: app, key }, { d: `${round}:${key}` })));
      await dispatchAll(sender, frames);
      const got = await whoGot(clients, 'K');
      const picked = new Map<string, string>();
      for (const key of keys) {
        const owners = [0, 1, 2].map((round) => got.get(`${round}:${key}`));
        expect(new Set(owners).size, `${key} went to ${owners.join(', ')}`).toBe(1);
        picked.set(key, owners[0]!);
      }
      // Twelve keys over three clients: a hash that spreads them uses more than one.
      expect(new Set(picked.values()).size).toBeGreaterThan(1);

      // A newcomer may take some keys; every other key stays where it was.
      const d = await identified(server(), app, 'd');
      await dispatchAll(sender, keys.map((key) => dispatchFrame('K2', { app_name: app, key }, { d: key })));
      const after = await whoGot({ ...clients, d }, 'K2');
      for (const key of keys) expect([picked.get(key), 'd']).toContain(after.get(key));
    });

    it('s counts per session from 1 over every routed DISPATCH; NERVE_ events carry none', async () => {
      const app = uid('seq');
      const x = await identified(server(), app, 'x');
      const y = await identified(server(), app, 'y');
      const s1 = await identified(server(), uid('src'), 's1');
      const s2 = await identified(server(), uid('src'), 's2');
      await dispatchAll(s1, [dispatchFrame('A', { app_name: app, client_id: 'x' }), dispatchFrame('B', { app_name: app, mode: 'all' })]);
      await dispatchAll(s2, [dispatchFrame('C', { app_name: app, client_id: 'x' })]);
      const res = await fetch(`${server().http}/dispatch`, {
        method: 'POST',
        headers: { authorization: `Bearer ${server().password}`, 'content-type': 'application/json' },
        body: JSON.stringify({ e: 'D', to: { app_name: app, client_id: 'x' } }),
      });
      expect(res.status).toBe(200);
      const xs = (await x.sync()).filter((f) => f.op === 8);
      expect(xs.map((f) => [f.e, f.s])).toEqual([
        ['A', 1],
        ['B', 2],
        ['C', 3],
        ['D', 4],
      ]);
      expect((await y.sync()).map((f) => [f.e, f.s])).toEqual([['B', 1]]);
      for (const frame of [...s1.log, ...s2.log].map((r) => r.frame).filter((f) => f.e?.startsWith('NERVE_'))) {
        expect(frame).not.toHaveProperty('s');
        expect(frame).not.toHaveProperty('from');
      }
    });

    it('a reply to from with the same nonce reaches the original sender (request/reply)', async () => {
      const app = uid('rpc');
      const caller = await identified(server(), uid('caller'), 'caller-1');
      const worker = await identified(server(), app, 'w');
      caller.send(dispatchFrame('ADD', { app_name: app }, { d: [2, 3], nonce: 'call-9' }));
      const request = await worker.event('ADD');
      worker.send(dispatchFrame('ADD_RESULT', { app_name: request.from.app_name, client_id: request.from.client_id }, { d: 5, nonce: request.nonce }));
      expect(await caller.event('ADD_RESULT')).toMatchObject({ d: 5, nonce: 'call-9', from: { app_name: app, client_id: 'w' } });
    });

    it('WELCOME comes before any held dispatch', async () => {
      const app = uid('first');
      const sender = await identified(server(), uid('src'), 's');
      await dispatchAll(sender, [dispatchFrame('QUEUED', { app_name: app })]);
      const { client } = await connect(server());
      client.identify({ app_name: app, client_id: 'c', password: server().password });
      expect(await client.next()).toEqual(WELCOME);
      expect(await client.next()).toMatchObject({ e: 'QUEUED', s: 1 });
    });
  });
}
