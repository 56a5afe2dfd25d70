// The hub over a transport like Bun's: one that refuses sends past its
// backpressure limit and whose close throws away what it still holds. Every
// event acknowledged to the producer must reach the consumer once or be
// reported undeliverable, even when the transport refused part of a batch.
// Timers are vitest's fake ones: nothing here waits for real time.

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../src/host/config.ts';
import { Hub, type HubSocket } from '../../src/host/hub.ts';

const MAX_OUTBOUND = 32 * 1024;
const MAX_PAYLOAD = 8 * 1024;
/** Where Bun's backpressure limit is set (adapters/bun-host.ts). */
const BUN_LIMIT = 2 * MAX_OUTBOUND + MAX_PAYLOAD;
const EVENT_BYTES = 2_000;

/** Accepts frames until `limit` bytes wait for the reader, then refuses every later one (as BunSocket does). */
class RefusingSocket implements HubSocket {
  /** Frames accepted and not yet read. */
  private pending: string[] = [];
  private pendingBytes = 0;
  private refusedBytes = 0;
  /** What the reader got, in order. */
  readonly read: Record<string, unknown>[] = [];
  closed: { code: number; reason: string } | undefined;

  constructor(private readonly limit = BUN_LIMIT) {}

  get refused(): number {
    return this.refusedBytes;
  }

  send(frames: readonly (string | Uint8Array)[]): void {
    for (const frame of frames) {
      const text = frame as string;
      if (this.refusedBytes > 0 || this.pendingBytes + text.length > this.limit) this.refusedBytes += text.length;
      else {
        this.pending.push(text);
        this.pendingBytes += text.length;
      }
    }
  }

  close(code: number, reason: string): void {
    // What it still holds is thrown away, like Bun's close.
    this.pending = [];
    this.pendingBytes = 0;
    this.closed = { code, reason };
  }

  buffered(): number {
    return this.pendingBytes + this.refusedBytes;
  }

  sending(): number {
    return this.pendingBytes;
  }

  terminate(): void {
    this.close(1006, '');
  }

  /** The reader reads everything accepted so far. */
  readAll(): void {
    for (const text of this.pending) this.read.push(JSON.parse(text) as Record<string, unknown>);
    this.pending = [];
    this.pendingBytes = 0;
  }
}

/** A reader that reads every frame at once. */
class PromptSocket extends RefusingSocket {
  override send(frames: readonly (string | Uint8Array)[]): void {
    super.send(frames);
    this.readAll();
  }
}

let turn: (() => void)[] = [];
let hub: Hub;

function endTurn(): void {
  for (const callback of turn.splice(0)) callback();
}

function connect(socket: HubSocket, app: string, client: string, extra: Record<string, unknown> = {}): number {
  const conn = hub.open(socket, { format: 'json', compression: 'none' });
  hub.receive(conn, JSON.stringify({ op: 1, d: { app_name: app, client_id: client, password: 'pw', ...extra } }));
  endTurn();
  return conn;
}

beforeEach(() => {
  vi.useFakeTimers();
  const config = loadConfig({
    NERVE_PASSWORD: 'pw',
    NERVE_MAX_OUTBOUND: String(MAX_OUTBOUND),
    NERVE_REPLAY_MAX_BYTES: String(16 * 1024),
    NERVE_MAX_PAYLOAD: String(MAX_PAYLOAD),
    NERVE_CLOSE_GRACE: '30000',
    NERVE_RATE_LIMIT: '0',
  });
  hub = new Hub({ config, now: () => Date.now(), schedule: (callback) => void turn.push(callback)});
});

afterEach(() => {
  vi.useRealTimers();
});

/**
 * Floods a consumer that reads nothing with one turn's events, lets the hub
 * see the backlog and cut it, lets it read what its transport held, resumes
 * it with seq, and checks the counting rule at the producer.
 */
function floodCutAndResume(consumer: RefusingSocket): { first: Record<string, unknown>[] } {
  const producer = new PromptSocket();
  connect(consumer, 'sink', 'c1');
  consumer.readAll();
  connect(producer, 'source', 'p1');
  const count = 200;
  for (let i = 0; i < count; i++) {
    const d = { i, pad: 'x'.repeat(EVENT_BYTES) };
    hub.receive(2, JSON.stringify({ op: 8, e: 'FLOOD', d, nonce: `n${i}`, to: { app_name: 'sink', client_id: 'c1' } }));
  }
  endTurn();
  // The hub sees the backlog and the core cuts the reader; the close waits for what the transport is sending.
  vi.advanceTimersByTime(100);
  endTurn();
  expect(consumer.closed, 'the close waits while the transport still sends').toBeUndefined();
  consumer.readAll();
  vi.advanceTimersByTime(100);
  endTurn();
  expect(consumer.closed?.code).toBe(4507);

  const events = (socket: RefusingSocket) => socket.read.filter((frame) => frame.op === 8 && frame.e === 'FLOOD') as { s: number; nonce: string }[];
  const first = events(consumer);
  const resumed = new PromptSocket();
  connect(resumed, 'sink', 'c1', { reconnect: true, seq: first.at(-1)!.s });
  vi.advanceTimersByTime(100);
  endTurn();

  const acked = new Set(producer.read.filter((frame) => frame.e === 'NERVE_ACK').map((frame) => frame.nonce as string));
  const undeliverable = new Set(producer.read.filter((frame) => frame.e === 'NERVE_UNDELIVERABLE').map((frame) => frame.nonce as string));
  const received = [...first, ...events(resumed)].map((event) => event.nonce);
  expect(acked.size).toBe(count);
  expect(new Set(received).size, 'nothing read twice').toBe(received.length);
  expect(received.filter((nonce) => undeliverable.has(nonce)), 'read and reported undeliverable').toEqual([]);
  const missing = [...acked].filter((nonce) => !received.includes(nonce) && !undeliverable.has(nonce));
  expect(missing, 'acknowledged, never read, never reported').toEqual([]);
  return { first: consumer.read };
}

describe('a transport with a backpressure limit', () => {
  it('is handed a burst a batch of NERVE_MAX_OUTBOUND at a time, never past its limit; the reader is cut with NO_U_TBH and nothing acknowledged is lost', () => {
    const consumer = new RefusingSocket();
    const { first } = floodCutAndResume(consumer);
    expect(consumer.refused, 'bytes the transport refused').toBe(0);
    expect(first.at(-1), 'NO_U_TBH, the last frame before the close').toMatchObject({ op: 6 });
  });

  it('that refuses part of a batch anyway: every acknowledged event is read once or reported undeliverable', () => {
    const consumer = new RefusingSocket(MAX_OUTBOUND / 4);
    floodCutAndResume(consumer);
    expect(consumer.refused, 'bytes the transport refused').toBeGreaterThan(0);
  });
});
