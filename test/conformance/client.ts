// A bare wire-level client for the conformance suite: speaks the three wire
// formats, queues every decoded frame, and exposes next()/waitFor()/closed so
// tests await events instead of sleeping. It never hides a protocol detail.

import { zlibSync, unzlibSync } from 'fflate';
import { Packr } from 'msgpackr';
import WebSocket from 'ws';

// Plain msgpack maps only: what a client in any other language would send.
const packr = new Packr({ useRecords: false, mapsAsObjects: true });

export interface Wire {
  format?: 'json' | 'msgpack';
  compression?: 'zlib';
}

export interface Received {
  /** The decoded frame, or `{ undecodable: <why> }`. */
  frame: any;
  /** Exactly what arrived: text as a string, binary as bytes. */
  raw: string | Buffer;
  binary: boolean;
}

export interface Closed {
  code: number;
  reason: string;
}

export interface ClientOptions extends Wire {
  /**
   * Sends HEARTBEAT every this many ms and swallows the matching ACKs, so a
   * test longer than 1.5 × heartbeat_interval is not cut by the timeout.
   * 0 = never (timeout tests, byte-exact heartbeat tests, rate-limit tests).
   */
  heartbeatEvery?: number;
}

type Waiter = {
  match: (frame: any) => boolean;
  resolve: (received: Received) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
};

/** Who is owed each HEARTBEAT_ACK still in flight: the server answers heartbeats in order. */
type AckOwner = 'auto' | ((before: any[]) => void);

const live = new Set<TestClient>();

export function wireQuery(wire: Wire): string {
  const params = new URLSearchParams();
  if (wire.format) params.set('format', wire.format);
  if (wire.compression) params.set('compression', wire.compression);
  const query = params.toString();
  return query ? `/?${query}` : '/';
}

export function wireName(wire: Wire): string {
  return `${wire.format ?? 'json'}${wire.compression ? `+${wire.compression}` : ''}`;
}

export function encode(frame: unknown, wire: Wire): string | Uint8Array {
  const body = wire.format === 'msgpack' ? packr.pack(frame) : JSON.stringify(frame);
  if (wire.compression !== 'zlib') return body;
  return zlibSync(typeof body === 'string' ? new TextEncoder().encode(body) : body);
}

function decode(data: Buffer, binary: boolean, wire: Wire): any {
  try {
    let bytes: Uint8Array | string = binary ? data : data.toString('utf8');
    if (wire.compression === 'zlib') {
      if (!binary) return { undecodable: 'text frame on a zlib connection' };
      bytes = unzlibSync(bytes as Uint8Array);
    }
    if (wire.format === 'msgpack') {
      if (typeof bytes === 'string') return { undecodable: 'text frame on a msgpack connection' };
      return packr.unpack(bytes as Uint8Array);
    }
    return JSON.parse(typeof bytes === 'string' ? bytes : new TextDecoder().decode(bytes));
  } catch (error) {
    return { undecodable: String(error) };
  }
}

export class TestClient {
  readonly ws: WebSocket;
  readonly wire: Wire;
  /** Every frame ever received, in order (the ACKs of automatic heartbeats excluded). */
  readonly log: Received[] = [];
  readonly opened: Promise<void>;
  readonly closed: Promise<Closed>;
  closeInfo: Closed | undefined;
  private queue: Received[] = [];
  private waiters: Waiter[] = [];
  private acksOwed: AckOwner[] = [];
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;

  constructor(url: string, options: ClientOptions = {}) {
    this.wire = { format: options.format, compression: options.compression };
    this.ws = new WebSocket(url + wireQuery(this.wire));
    live.add(this);
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('error', reject);
      this.ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused with HTTP ${res.statusCode}`)));
    });
    this.opened.catch(() => {});
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code, reason) => {
        clearInterval(this.heartbeatTimer);
        live.delete(this);
        this.closeInfo = { code, reason: reason.toString('utf8') };
        for (const waiter of this.waiters.splice(0)) {
          clearTimeout(waiter.timer);
          waiter.reject(new Error(`socket closed (${code} ${this.closeInfo.reason}) while waiting for a frame`));
        }
        resolve(this.closeInfo);
      });
    });
    this.ws.on('error', () => {});
    this.ws.on('message', (data: Buffer, isBinary) => this.receive(data, isBinary));
    const every = options.heartbeatEvery ?? 0;
    if (every > 0) {
      this.heartbeatTimer = setInterval(() => {
        if (this.ws.readyState !== WebSocket.OPEN) return;
        this.acksOwed.push('auto');
        this.send({ op: 3 });
      }, every);
    }
  }

  private receive(data: Buffer, binary: boolean): void {
    const received: Received = { frame: decode(data, binary, this.wire), raw: binary ? data : data.toString('utf8'), binary };
    if (received.frame?.op === 4 && this.acksOwed.length > 0) {
      const owner = this.acksOwed.shift()!;
      if (owner === 'auto') return;
      this.log.push(received);
      owner(this.queue.splice(0).map((r) => r.frame));
      return;
    }
    this.log.push(received);
    const index = this.waiters.findIndex((waiter) => waiter.match(received.frame));
    if (index >= 0) {
      const [waiter] = this.waiters.splice(index, 1);
      clearTimeout(waiter!.timer);
      waiter!.resolve(received);
    } else this.queue.push(received);
  }

  /** Resolves with the first queued or future frame matching `match`, removing it from the queue. */
  waitForRaw(match: (frame: any) => boolean, timeout = 3000, what = 'a matching frame'): Promise<Received> {
    const index = this.queue.findIndex((received) => match(received.frame));
    if (index >= 0) return Promise.resolve(this.queue.splice(index, 1)[0]!);
    if (this.closeInfo) {
      return Promise.reject(new Error(`socket already closed (${this.closeInfo.code} ${this.closeInfo.reason}); wanted ${what}`));
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        match,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          const seen = this.queue.map((r) => JSON.stringify(r.frame)).join('\n  ');
          reject(new Error(`no ${what} within ${timeout} ms; queued:\n  ${seen || '(nothing)'}`));
        }, timeout),
      };
      this.waiters.push(waiter);
    });
  }

  async waitFor(match: (frame: any) => boolean, timeout?: number, what?: string): Promise<any> {
    return (await this.waitForRaw(match, timeout, what)).frame;
  }

  next(timeout?: number): Promise<any> {
    return this.waitFor(() => true, timeout, 'frame');
  }

  nextRaw(timeout?: number): Promise<Received> {
    return this.waitForRaw(() => true, timeout, 'frame');
  }

  /** The next DISPATCH of event `e` (skipping nothing else: other frames stay queued). */
  event(e: string, timeout?: number): Promise<any> {
    return this.waitFor((f) => f?.op === 8 && f.e === e, timeout, `DISPATCH ${e}`);
  }

  /**
   * A barrier: sends HEARTBEAT and resolves with every frame that arrived
   * before its ACK. The server handles one connection's frames in order, so
   * anything caused by an earlier frame of ours (or already routed to us)
   * comes back in this list.
   */
  sync(timeout = 3000): Promise<any[]> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no HEARTBEAT_ACK within ${timeout} ms`)), timeout);
      this.acksOwed.push((before) => {
        clearTimeout(timer);
        resolve(before);
      });
      // Not the byte-exact {"op":3}: a Durable Object's runtime answers that one
      // itself, ahead of frames the object has not handled yet.
      this.send({ op: 3, d: 'sync' });
    });
  }

  /** Frames received and not yet consumed. */
  pending(): any[] {
    return this.queue.map((r) => r.frame);
  }

  send(frame: unknown): void {
    this.ws.send(encode(frame, this.wire));
  }

  /** Text for a string, a binary frame for bytes. */
  sendRaw(data: string | Uint8Array): void {
    this.ws.send(data, { binary: typeof data !== 'string' });
  }

  identify(d: Record<string, unknown>): void {
    this.send({ op: 1, d });
  }

  close(code = 1000): Promise<Closed> {
    if (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN) this.ws.close(code);
    return this.closed;
  }

  /** Drops the TCP connection without a close frame, like a crashed process or a dead network. */
  terminate(): Promise<Closed> {
    this.ws.terminate();
    return this.closed;
  }
}

/** Closes every client still open; run after each test so sessions end cleanly. */
export async function closeAllClients(): Promise<void> {
  const clients = [...live];
  await Promise.all(
    clients.map((client) =>
      Promise.race([client.close(1000), new Promise<void>((r) => setTimeout(r, 1000))]).then(() => client.ws.terminate()),
    ),
  );
}
