// docs/protocol.md §7 (sessions and resume): replay with and without seq, fresh
// sessions, which closes keep a session, and what happens to undelivered
// messages when the resume window ends.

import { describe, expect, it } from 'vitest';
import type { TestClient } from './client.ts';
import {
  connect,
  dispatchFrame,
  droppedOnServer,
  expectError,
  getClients,
  goneOnServer,
  identified,
  QUEUE_TTL,
  RESUME_WINDOW,
  RUNTIMES,
  uid,
  useServer,
  type RunningServer,
} from './harness.ts';

/** Sends to `to` with a nonce and returns the ACK's d. */
async function send(sender: TestClient, e: string, to: Record<string, unknown>, d: unknown): Promise<{ delivered: number; queued: number }> {
  const nonce = uid('n');
  sender.send(dispatchFrame(e, to, { d, nonce }));
  return (await sender.waitFor((f) => f.e === 'NERVE_ACK' && f.nonce === nonce, 3000, `NERVE_ACK ${nonce}`)).d;
}

/** A receiver that got s 1..3, then dropped without a close frame; the server has noticed. */
async function droppedAfterThree(server: RunningServer) {
  const app = uid('resume');
  const sender = await identified(server, uid('src'), 's');
  const receiver = await identified(server, app, 'r', { metadata: { zone: 'z1' } });
  for (const d of [1, 2, 3]) await send(sender, 'EV', { app_name: app, client_id: 'r' }, d);
  for (const s of [1, 2, 3]) expect(await receiver.event('EV')).toMatchObject({ d: s, s });
  await receiver.terminate();
  await droppedOnServer(server, app, 'r');
  return { app, sender };
}

/** Every routed DISPATCH up to the barrier, as [s, d]. */
async function routed(client: TestClient): Promise<[number, unknown][]> {
  return (await client.sync()).filter((f) => f.op === 8 && !f.e.startsWith('NERVE_')).map((f) => [f.s, f.d]);
}

for (const runtime of RUNTIMES) {
  describe(`${runtime}: §7 resume`, () => {
    const server = useServer(runtime);

    it('reconnect:true with seq replays only what came after it, in order, with the original s, once', async () => {
      const { app, sender } = await droppedAfterThree(server());
      // Sent while the receiver is away: buffered in its session, counted as delivered.
      expect(await send(sender, 'EV', { app_name: app, client_id: 'r' }, 4)).toEqual({ delivered: 1, queued: 0 });
      expect(await send(sender, 'EV', { app_name: app, mode: 'all' }, 5)).toEqual({ delivered: 1, queued: 0 });
      expect(await send(sender, 'EV', { app_name: app, client_id: 'r' }, 6)).toEqual({ delivered: 1, queued: 0 });
      const back = await identified(server(), app, 'r', { reconnect: true, seq: 3 });
      expect(await routed(back)).toEqual([
        [4, 4],
        [5, 5],
        [6, 6],
      ]);
      const replayed = back.log.filter((r) => r.frame.e === 'EV').map((r) => r.frame);
      expect(replayed[0]).toEqual({ op: 8, e: 'EV', d: 4, from: { app_name: expect.any(String), client_id: 's' }, nonce: expect.any(String), s: 4 });
      // Numbering continues; metadata was kept.
      await send(sender, 'EV', { app_name: app, query: { zone: 'z1' } }, 7);
      expect(await back.event('EV')).toMatchObject({ d: 7, s: 7 });
      expect((await getClients(server(), app))[0].metadata).toEqual({ zone: 'z1' });
      expect(sender.log.filter((r) => r.frame.e === 'NERVE_UNDELIVERABLE')).toEqual([]);
    });

    it('reconnect:true without seq replays the whole buffer (at least once)', async () => {
      const { app, sender } = await droppedAfterThree(server());
      await send(sender, 'EV', { app_name: app, client_id: 'r' }, 4);
      const back = await identified(server(), app, 'r', { reconnect: true });
      expect(await routed(back)).toEqual([
        [1, 1],
        [2, 2],
        [3, 3],
        [4, 4],
      ]);
    });

    it('NERVE_SESSION comes right after WELCOME on a resume: resumed, the last s, how many follow', async () => {
      const { app, sender } = await droppedAfterThree(server());
      await send(sender, 'EV', { app_name: app, client_id: 'r' }, 4);
      const back = await identified(server(), app, 'r', { reconnect: true, seq: 2 });
      const frames = await back.sync();
      expect(frames[0]).toEqual({ op: 8, e: 'NERVE_SESSION', d: { resumed: true, s: 4, replayed: 2, missed: 0 } });
      expect(frames.slice(1).map((f) => f.s)).toEqual([3, 4]);
    });

    it('a seq ahead of the session is refused with 4400; the session stays resumable', async () => {
      const { app } = await droppedAfterThree(server());
      const { client } = await connect(server());
      client.send({ op: 1, d: { app_name: app, client_id: 'r', password: server().password, reconnect: true, seq: 99 } });
      await expectError(client, 4400, 'IDENTIFY: seq 99 is ahead of the session, whose last s is 3');
      const back = await identified(server(), app, 'r', { reconnect: true, seq: 3 });
      expect((await back.sync())[0]).toMatchObject({ e: 'NERVE_SESSION', d: { resumed: true, s: 3 } });
    });

    it('reconnect:true with seq equal to the last s replays nothing', async () => {
      const { app } = await droppedAfterThree(server());
      const back = await identified(server(), app, 'r', { reconnect: true, seq: 3 });
      expect(await routed(back)).toEqual([]);
    });

    it('a plain IDENTIFY for a resumable session starts fresh: no replay, s restarts at 1', async () => {
      const { app, sender } = await droppedAfterThree(server());
      const fresh = await identified(server(), app, 'r');
      expect(await fresh.sync()).toEqual([]);
      expect((await getClients(server(), app))[0].metadata).toEqual({});
      await send(sender, 'EV', { app_name: app, client_id: 'r' }, 'new');
      expect(await fresh.event('EV')).toMatchObject({ d: 'new', s: 1 });
    });

    it('a fresh IDENTIFY gets back the directed messages the old session never delivered, renumbered from 1', async () => {
      const { app, sender } = await droppedAfterThree(server());
      await send(sender, 'EV', { app_name: app, client_id: 'r' }, 'while-away');
      const fresh = await identified(server(), app, 'r');
      const got = (await fresh.sync()).filter((f) => f.e === 'EV');
      expect(got).toEqual([{ op: 8, e: 'EV', d: 'while-away', from: { app_name: expect.any(String), client_id: 's' }, nonce: expect.any(String), s: 1 }]);
    });

    it('reconnect:true with no existing session is a plain IDENTIFY', async () => {
      const app = uid('none');
      const client = await identified(server(), app, 'r', { reconnect: true, seq: 10 });
      expect(await client.sync()).toEqual([{ op: 8, e: 'NERVE_SESSION', d: { resumed: false, s: 0, replayed: 0 } }]);
      const sender = await identified(server(), uid('src'), 's');
      await send(sender, 'EV', { app_name: app, client_id: 'r' }, 1);
      expect(await client.event('EV')).toMatchObject({ s: 1 });
    });

    for (const code of [1000, 1001]) {
      it(`a client close with ${code} ends the session: nothing to resume`, async () => {
        const app = uid('bye');
        const sender = await identified(server(), uid('src'), 's');
        const client = await identified(server(), app, 'r', { metadata: { kept: false } });
        await send(sender, 'EV', { app_name: app, client_id: 'r' }, 1);
        await client.event('EV');
        await client.close(code);
        await goneOnServer(server(), app, 'r');
        // With no session, a dispatch to the client_id waits in the app queue.
        expect(await send(sender, 'EV', { app_name: app, client_id: 'r' }, 2)).toEqual({ delivered: 0, queued: 1 });
        const back = await identified(server(), app, 'r', { reconnect: true, seq: 0 });
        expect(await routed(back)).toEqual([[1, 2]]);
        expect((await getClients(server(), app))[0].metadata).toEqual({});
      });
    }

    it('a client close with another code (4000) keeps the session resumable', async () => {
      const app = uid('keep');
      const sender = await identified(server(), uid('src'), 's');
      const client = await identified(server(), app, 'r');
      await client.close(4000);
      await droppedOnServer(server(), app, 'r');
      expect(await send(sender, 'EV', { app_name: app, client_id: 'r' }, 1)).toEqual({ delivered: 1, queued: 0 });
      const back = await identified(server(), app, 'r', { reconnect: true, seq: 0 });
      expect(await routed(back)).toEqual([[1, 1]]);
    });

    it('a protocol-error close (4400) ends the session', async () => {
      const app = uid('err');
      const sender = await identified(server(), uid('src'), 's');
      const client = await identified(server(), app, 'r');
      client.sendRaw('not json');
      await expectError(client, 4400, /JSON/);
      await goneOnServer(server(), app, 'r');
      expect(await send(sender, 'EV', { app_name: app, client_id: 'r' }, 1)).toEqual({ delivered: 0, queued: 1 });
    });

    it('a session taken over keeps its buffer: the new connection resumes with seq', async () => {
      const app = uid('take');
      const sender = await identified(server(), uid('src'), 's');
      const old = await identified(server(), app, 'r');
      await send(sender, 'EV', { app_name: app, client_id: 'r' }, 1);
      await send(sender, 'EV', { app_name: app, client_id: 'r' }, 2);
      const back = await identified(server(), app, 'r', { reconnect: true, seq: 1 });
      await expectError(old, 4409, 'Session taken over by a new connection');
      expect(await routed(back)).toEqual([[2, 2]]);
    });
  });

  // Each of these waits out a real resume window; they run side by side on their own server.
  describe.concurrent(`${runtime}: §7 resume window`, () => {
    const server = useServer(runtime, {}, { concurrent: true });

    it('a heartbeat timeout (4408) keeps the session resumable', async () => {
      const app = uid('hbt');
      const sender = await identified(server(), uid('src'), 's');
      const client = await identified(server(), app, 'r', { heartbeatEvery: 0 });
      await expectError(client, 4408, /heartbeat timeout/, 5000);
      expect(await send(sender, 'EV', { app_name: app, client_id: 'r' }, 1)).toEqual({ delivered: 1, queued: 0 });
      const back = await identified(server(), app, 'r', { reconnect: true, seq: 0 });
      expect(await routed(back)).toEqual([[1, 1]]);
    });

    it('when the window ends, an undelivered directed message goes back to the queue and ends as NERVE_UNDELIVERABLE', async () => {
      const app = uid('expire');
      const sender = await identified(server(), uid('src'), 's');
      const client = await identified(server(), app, 'r');
      await client.terminate();
      await droppedOnServer(server(), app, 'r');
      const droppedAt = Date.now();
      sender.send(dispatchFrame('AWAY', { app_name: app, client_id: 'r' }, { d: 1, nonce: 'away-1' }));
      expect((await sender.event('NERVE_ACK')).d).toEqual({ delivered: 1, queued: 0 });
      const notice = await sender.event('NERVE_UNDELIVERABLE', (RESUME_WINDOW + QUEUE_TTL) * 3);
      // Not before the window is over, and after it the queue's TTL starts afresh.
      expect(Date.now() - droppedAt).toBeGreaterThanOrEqual(RESUME_WINDOW + QUEUE_TTL - 100);
      expect(notice).toEqual({ op: 8, e: 'NERVE_UNDELIVERABLE', nonce: 'away-1', d: { reason: expect.any(String), e: 'AWAY' } });
    });

    it('when the window ends, a held message reaches the client that identifies afresh within the TTL', async () => {
      const app = uid('requeue');
      const senderApp = uid('src');
      const sender = await identified(server(), senderApp, 's');
      const client = await identified(server(), app, 'r');
      await client.terminate();
      await droppedOnServer(server(), app, 'r');
      sender.send(dispatchFrame('AWAY', { app_name: app, client_id: 'r' }, { d: 'kept', nonce: 'away-2' }));
      await sender.event('NERVE_ACK');
      await goneOnServer(server(), app, 'r', RESUME_WINDOW * 3);
      const fresh = await identified(server(), app, 'r');
      expect(await fresh.event('AWAY')).toEqual({ op: 8, e: 'AWAY', d: 'kept', from: { app_name: senderApp, client_id: 's' }, nonce: 'away-2', s: 1 });
    });

    it('a resume after the window is over is a fresh session', async () => {
      const app = uid('late');
      const sender = await identified(server(), uid('src'), 's');
      const client = await identified(server(), app, 'r');
      await send(sender, 'EV', { app_name: app, mode: 'all' }, 1);
      await client.event('EV');
      await client.terminate();
      await goneOnServer(server(), app, 'r', RESUME_WINDOW * 3);
      const back = await identified(server(), app, 'r', { reconnect: true, seq: 0 });
      expect(await routed(back)).toEqual([]);
    });
  });
}
