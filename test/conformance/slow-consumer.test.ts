// A consumer that stops reading while a producer floods it, on every runtime that can see unsent bytes: cut
// with 4507, the hub's memory flat as the flood goes on, and after resuming with seq every acknowledged event
// was received once or reported NERVE_UNDELIVERABLE. At SIGTERM, the rest is reported "server is shutting down".

import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { startServer } from '../support/server.ts';
import type { TestClient } from './client.ts';
import { dispatchFrame, eventually, FAST_ENV, getClients, identified, KEEPALIVE, RUNTIMES, uid, useServer, type RunningServer } from './harness.ts';
import { expectHealthy, mib, MiB, serverRss, watchRss } from './hostile-helpers.ts';

// workerd's WebSocket has no bufferedAmount, on accepted or on hibernatable
// sockets (checked on workerd 2026-04-26: not in its prototype, and no
// compatibility flag adds it), and send() returns nothing: a Durable Object
// cannot tell a slow reader from a fast one.
const NO_BUFFERED_AMOUNT: readonly string[] = ['cloudflare'];
const SKIP_REASON = "workerd's WebSocket exposes no bufferedAmount, so a Durable Object cannot see a slow reader";
/**
 * Where a runtime cannot keep what it already handed to the OS for a reader
 * it ended: Deno resets a connection when a frame (a heartbeat) arrives after
 * its close, and a reset makes the reader's kernel discard what it had not
 * read yet; Bun drops what it still buffers when the process exits. Stated in
 * docs/runtimes.md; on these runtimes a reader that resumes with seq gets
 * what its replay buffer still holds, and NERVE_SESSION counts the rest.
 */
const LOSES_SENT_ON_CLOSE: Record<string, { heartbeating?: string; shutdown?: string }> = {
  deno: {
    heartbeating: 'Deno resets a connection that receives a frame after its close; the reader\'s kernel then drops what it had not read',
    shutdown: 'Deno resets a connection that receives a frame after its close; the reader\'s kernel then drops what it had not read',
  },
  bun: { shutdown: 'Bun drops what it still buffers for a reader when the process exits' },
};

const OUTBOUND = 256 * 1024;
const EVENT_BYTES = 4_000;
/** Far past what the kernel's socket buffers absorb (~4 MiB on loopback) plus OUTBOUND: the cut must come. */
const DIRECTED = 4_000;
/**
 * After the cut the flood goes on in larger events, in three more bursts: a
 * hub that stopped writing to the consumer holds at most its replay buffer,
 * so past the first burst (which grows the runtime's heap to its working
 * size: measured +6 to +54 MiB) its peak memory barely moves (measured +1 to
 * +8 MiB over the next two); one that kept buffering grows by every byte.
 * Only a rise of one burst's bytes over the last two counts.
 */
const BURST_EVENTS = 1_000;
const BURST_EVENT_BYTES = 60_000;
const BURSTS = 3;
/** Mode all reaches only the sessions that exist, at most once each. */
const FAN_OUT = 2_500;

const SLOW_ENV = {
  NERVE_MAX_OUTBOUND: String(OUTBOUND),
  // The outbound limit must hold a whole replay buffer (and a frame): a resume sends it at once.
  NERVE_REPLAY_MAX_BYTES: String(OUTBOUND - Number(FAST_ENV.NERVE_MAX_PAYLOAD)),
  // Room for the flood to finish and the consumer to come back.
  NERVE_RESUME_WINDOW: '20000',
  // The consumer reads again only after the bursts below, which may take seconds on a busy machine; a reader
  // that stays silent past the close grace loses what was in flight on some runtimes (docs/runtimes.md).
  NERVE_CLOSE_GRACE: '30000',
};

interface Flood {
  app: string;
  producer: TestClient;
  consumer: TestClient;
  mode: 'direct' | 'all';
}

interface Tally {
  /** Dispatches the producer was told were delivered or held. */
  acked: Set<string>;
  undeliverable: Map<string, string>;
}

/** The consumer's TCP socket under ws: pausing it stops reading while sends (heartbeats) still go out. */
function socketOf(client: TestClient): Socket {
  return (client.ws as unknown as { _socket: Socket })._socket;
}

/** Events of the flood a connection received, in arrival order. */
function floodEvents(client: TestClient): { s: number; nonce: string }[] {
  return client.log.filter((r) => r.frame?.op === 8 && r.frame.e === 'FLOOD').map((r) => ({ s: r.frame.s, nonce: r.frame.nonce }));
}

function tally(producer: TestClient): Tally {
  const acked = new Set<string>();
  const undeliverable = new Map<string, string>();
  for (const { frame } of producer.log) {
    if (frame?.op !== 8) continue;
    if (frame.e === 'NERVE_ACK' && (frame.d.delivered === 1 || frame.d.queued === 1)) acked.add(frame.nonce);
    if (frame.e === 'NERVE_UNDELIVERABLE') undeliverable.set(frame.nonce, frame.d.reason);
  }
  return { acked, undeliverable };
}

function acks(producer: TestClient): number {
  return producer.log.filter((r) => r.frame?.op === 8 && r.frame.e === 'NERVE_ACK').length;
}

/** Sends `count` ~4 KB events at a consumer that has stopped reading its socket, and waits for every ACK. */
async function flood(server: RunningServer, options: { count: number; mode: 'direct' | 'all'; heartbeat: boolean }): Promise<Flood> {
  const app = uid('gw');
  const consumer = await identified(server, app, 'consumer', { heartbeatEvery: options.heartbeat ? KEEPALIVE.heartbeatEvery : 0 });
  const producer = await identified(server, uid('api'), 'producer');
  socketOf(consumer).pause();
  const flooded = { app, producer, consumer, mode: options.mode };
  await send(flooded, options.count, EVENT_BYTES);
  return flooded;
}

/** `count` more events of `bytes` each, numbered after those already sent; waits for every ACK. */
async function send(flooded: Flood, count: number, bytes: number): Promise<void> {
  const { app, producer, mode } = flooded;
  const to = mode === 'direct' ? { app_name: app, client_id: 'consumer' } : { app_name: app, mode: 'all' };
  const pad = 'x'.repeat(bytes);
  const from = acks(producer);
  for (let i = from; i < from + count; i++) {
    producer.send(dispatchFrame('FLOOD', to, { d: { i, pad }, nonce: `f${i}` }));
    // Let the producer's own socket drain now and then, as a real sender would.
    if (i % 250 === 249) await new Promise((resolve) => setImmediate(resolve));
  }
  await eventually(async () => acks(producer), (n) => n === from + count, 30_000, `${from + count} NERVE_ACKs`);
}

/** Reads what the paused connection still holds, until it ends; returns its close code. */
async function drain(consumer: TestClient): Promise<number> {
  socketOf(consumer).resume();
  const closed = await Promise.race([consumer.closed, new Promise<undefined>((resolve) => setTimeout(resolve, 15_000))]);
  if (!closed) throw new Error('the slow consumer\'s connection was neither closed nor dropped within 15 s of reading again');
  return closed.code;
}

/**
 * The counting rule at the producer: every acknowledged event was received
 * once (by s and by nonce, across both connections) or reported undeliverable,
 * never both, and nothing arrived that was not acknowledged.
 */
function expectAccounted(flooded: Flood, received: { s: number; nonce: string }[], reasons?: RegExp): void {
  const { acked, undeliverable } = tally(flooded.producer);
  const nonces = received.map((r) => r.nonce);
  const seqs = received.map((r) => r.s);
  expect(new Set(seqs).size, 'no s received twice').toBe(seqs.length);
  expect(new Set(nonces).size, 'no event received twice').toBe(nonces.length);
  expect(nonces.filter((nonce) => !acked.has(nonce)), 'received but never acknowledged').toEqual([]);
  expect(nonces.filter((nonce) => undeliverable.has(nonce)), 'received and reported undeliverable').toEqual([]);
  const got = new Set(nonces);
  const missing = [...acked].filter((nonce) => !undeliverable.has(nonce) && !got.has(nonce));
  expect(missing.length, `acknowledged, never received, never reported (first: ${missing.slice(0, 5).join(', ')})`).toBe(0);
  expect(nonces.length + undeliverable.size).toBe(acked.size);
  if (reasons) for (const reason of undeliverable.values()) expect(reason).toMatch(reasons);
}

/**
 * s only grows on a connection, past `after`: the order the server routed
 * them in. Gaps are allowed — what fell out of the replay buffer was reported
 * undeliverable, which expectAccounted checks.
 */
function expectInOrder(events: { s: number }[], after: number): void {
  let previous = after;
  for (const [index, event] of events.entries()) {
    if (!(event.s > previous)) expect.fail(`event ${index} has s ${event.s}, after s ${previous}`);
    previous = event.s;
  }
}

async function resumeAndCollect(server: RunningServer, flooded: Flood, seq: number): Promise<{ s: number; nonce: string }[]> {
  const resumed = await identified(server, flooded.app, 'consumer', { reconnect: true, seq });
  // Until every acknowledged event is accounted for (or nothing more comes).
  await eventually(
    async () => {
      const { acked, undeliverable } = tally(flooded.producer);
      return floodEvents(flooded.consumer).length + floodEvents(resumed).length + undeliverable.size - acked.size;
    },
    (shortfall) => shortfall >= 0,
    15_000,
    'every acknowledged event received or reported',
  ).catch(() => undefined);
  // A client that reads promptly is not cut again while its replay is written.
  expect(resumed.closeInfo, `the resumed connection stays open (${floodEvents(resumed).length} events received on it)`).toBeUndefined();
  // Anything still in flight (a duplicate, a late report) arrives before these barriers.
  for (const [who, client] of [
    ['resumed consumer', resumed],
    ['producer', flooded.producer],
  ] as const) {
    await client.sync(10_000).catch((error: Error) => Promise.reject(new Error(`${who}: ${error.message} (closed: ${JSON.stringify(client.closeInfo)})`)));
  }
  const events = floodEvents(resumed);
  expectInOrder(events, seq);
  return events;
}

for (const runtime of RUNTIMES) {
  if (NO_BUFFERED_AMOUNT.includes(runtime)) {
    describe(`${runtime}: slow consumers`, () => {
      it.skip(`not run: ${SKIP_REASON}`, () => {});
    });
    continue;
  }

  /**
   * Floods a paused consumer, checks the cut (and, for directed events, that
   * the flood going on after it costs no memory), resumes with seq and checks
   * that every acknowledged event is accounted for.
   */
  async function cutAndResume(server: RunningServer, mode: 'direct' | 'all', count: number): Promise<void> {
    const baseline = serverRss(server);
    let rss = watchRss(server);
    const flooded = await flood(server, { count, mode, heartbeat: true });
    // The server stops writing to it and closes; its session waits to be resumed.
    await eventually(() => getClients(server, flooded.app), (list) => list.some((c) => c.client_id === 'consumer' && !c.connected), 15_000, 'consumer cut');
    if (mode === 'direct') {
      const peaks = [rss.stop()];
      for (let burst = 0; burst < BURSTS; burst++) {
        rss = watchRss(server);
        await send(flooded, BURST_EVENTS, BURST_EVENT_BYTES);
        peaks.push(rss.stop());
      }
      const burstBytes = BURST_EVENTS * BURST_EVENT_BYTES;
      const report = `RSS ${mib(baseline)} → peaks ${peaks.map(mib).join(', ')}: ${mib(count * EVENT_BYTES)}, then ${BURSTS} × ${mib(burstBytes)} more after the cut`;
      expect.soft(peaks.at(-1)! - peaks[1]!, report).toBeLessThan(burstBytes);
    }
    rss.stop();
    const code = await drain(flooded.consumer);
    console.info(`${runtime}: the slow consumer's connection ended with ${code} after ${floodEvents(flooded.consumer).length} events`);
    const first = floodEvents(flooded.consumer);
    expectInOrder(first, 0);
    // 4507 after NO_U_TBH if the close frame came through; 1006 if the server dropped TCP after its grace.
    expect.soft([4507, 1006], `${runtime} ended the slow consumer with ${code}`).toContain(code);
    if (code === 4507) expect.soft(flooded.consumer.log.some((r) => r.frame?.op === 6), 'NO_U_TBH before 4507').toBe(true);
    const second = await resumeAndCollect(server, flooded, first.at(-1)?.s ?? 0);
    expectAccounted(flooded, [...first, ...second]);
    if (mode === 'all') expect(tally(flooded.producer).undeliverable.size, 'mode all: the replay buffer held everything').toBe(0);
    await expectHealthy(server);
  }

  describe(`${runtime}: slow consumers`, () => {
    const server = useServer(runtime, SLOW_ENV);

    const heartbeatingSkip = LOSES_SENT_ON_CLOSE[runtime]?.heartbeating;
    (heartbeatingSkip ? it.skip : it)(`${DIRECTED} × 4 KB directed events at a consumer that stopped reading: cut with 4507 past ${OUTBOUND / 1024} KiB, memory flat as the flood goes on, nothing lost after resuming with seq${heartbeatingSkip ? ` (not on ${runtime}: ${heartbeatingSkip})` : ''}`, async () => {
      await cutAndResume(server(), 'direct', DIRECTED);
    });

    it('a consumer that stops reading and heartbeating: cut (4507 or 4408) and, after resuming with seq, nothing acknowledged is lost or doubled', async () => {
      const flooded = await flood(server(), { count: 4_000, mode: 'direct', heartbeat: false });
      await eventually(() => getClients(server(), flooded.app), (list) => list.some((c) => c.client_id === 'consumer' && !c.connected), 15_000, 'consumer cut');
      const code = await drain(flooded.consumer);
      console.info(`${runtime}: the consumer that also stopped heartbeating ended with ${code}`);
      expect([4507, 4408, 1006], `closed with ${code}`).toContain(code);
      const first = floodEvents(flooded.consumer);
      expectInOrder(first, 0);
      const second = await resumeAndCollect(server(), flooded, first.at(-1)?.s ?? 0);
      expectAccounted(flooded, [...first, ...second]);
      await expectHealthy(server());
    });
  });

  describe(`${runtime}: a slow consumer of a fan-out`, () => {
    const server = useServer(runtime, SLOW_ENV);

    it(`${FAN_OUT} × 4 KB mode-all events at a consumer that stopped reading: cut with 4507; after resuming with seq it gets each at most once, in order, and NERVE_SESSION counts exactly what the replay buffer no longer held`, async () => {
      const flooded = await flood(server(), { count: FAN_OUT, mode: 'all', heartbeat: true });
      await eventually(() => getClients(server(), flooded.app), (list) => list.some((c) => c.client_id === 'consumer' && !c.connected), 15_000, 'consumer cut');
      const code = await drain(flooded.consumer);
      expect.soft([4507, 1006], `${runtime} ended the slow consumer with ${code}`).toContain(code);
      const first = floodEvents(flooded.consumer);
      expectInOrder(first, 0);
      const seq = first.at(-1)?.s ?? 0;
      const resumed = await identified(server(), flooded.app, 'consumer', { reconnect: true, seq });
      const frames = await resumed.sync(10_000);
      const session = frames.find((f) => f.e === 'NERVE_SESSION');
      expect(session?.d).toMatchObject({ resumed: true, s: FAN_OUT });
      const second = floodEvents(resumed);
      expectInOrder(second, seq);
      // Mode all is at most once (docs/protocol.md §8): what fell out of the buffer is counted, never silent.
      expect(first.length + session!.d.missed + second.length).toBe(FAN_OUT);
      expect(new Set([...first, ...second].map((e) => e.nonce)).size).toBe(first.length + second.length);
      await expectHealthy(server());
    });
  });

  describe(`${runtime}: a slow consumer at SIGTERM`, () => {
    const shutdownSkip = LOSES_SENT_ON_CLOSE[runtime]?.shutdown;
    (shutdownSkip ? it.skip : it)(`SIGTERM while a consumer is behind: it is cut, and the producer gets NERVE_UNDELIVERABLE "server is shutting down" for all it did not receive${shutdownSkip ? ` (not on ${runtime}: ${shutdownSkip})` : ''}`, async () => {
      // Limits it cannot reach: still behind, not yet cut, nothing reported yet when the signal comes.
      const server = await startServer(runtime, {
        ...FAST_ENV,
        ...SLOW_ENV,
        NERVE_MAX_OUTBOUND: String(256 * MiB),
        NERVE_REPLAY_MAX_COUNT: '100000',
        NERVE_REPLAY_MAX_BYTES: String(64 * MiB),
        NERVE_DRAIN_TIMEOUT: '3000',
      });
      try {
        const flooded = await flood(server, { count: 4_000, mode: 'direct', heartbeat: true });
        const signalled = performance.now();
        const exited = server.stop('SIGTERM');
        const goAway = await flooded.producer.waitFor((f) => f?.op === 5, 10_000, 'GO_AWAY');
        expect(goAway).toEqual({ op: 5, d: 'go away.' });
        expect((await flooded.producer.closed).code).toBe(1001);
        const code = await drain(flooded.consumer);
        console.info(`${runtime}: at SIGTERM the behind consumer's connection ended with ${code}`);
        // 1001 after GO_AWAY when what its transport held and the close frame got through; 1006 if dropped first.
        expect([4507, 1001, 1006], `${runtime} ended the behind consumer with ${code}`).toContain(code);
        const received = floodEvents(flooded.consumer);
        expectInOrder(received, 0);
        // Everything it did not get was reported before GO_AWAY reached the producer.
        expectAccounted(flooded, received, /shutting down/);
        expect(tally(flooded.producer).undeliverable.size, 'a backlog existed at the signal').toBeGreaterThan(0);
        expect(await exited).toBe(0);
        expect(performance.now() - signalled).toBeLessThan(3000 + 2000);
      } finally {
        await server.stop('SIGKILL');
      }
    });
  });
}
