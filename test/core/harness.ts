// A virtual hub for core tests: drives `step` with a virtual clock and decodes
// outputs back into frames, so tests read like a conversation.

import { Packr } from 'msgpackr';
import { unzlibSync, zlibSync } from 'fflate';
import { createState, DEFAULT_LIMITS, nextDeadline, step, type CoreConfig, type Output, type State } from '../../src/core/index.ts';
import type { Claims } from '../../src/core/auth.ts';
import type { Wire } from '../../src/core/protocol.ts';

const packr = new Packr({ useRecords: false });

export type Event =
  | { conn: number; frame: Record<string, unknown> }
  | { conn: number; close: number; reason: string }
  | { log: string; fields?: Record<string, unknown> }
  | { dispatched: { delivered: number; queued: number } }
  | { rejected: string; status: number }
  | { conn: number; terminate: true }
  | { conn: number; verify: string }
  | { conn: number; discard: true }
  | { relay: unknown; to: string | undefined }
  | { claim: unknown };

export const JSON_WIRE: Wire = { format: 'json', compression: 'none' };

export class Sim {
  state: State;
  now = 1_000;
  readonly wires = new Map<number, Wire>();
  /** Raw outputs of the last step, for byte-level assertions. */
  raw: Output[] = [];
  /** Error logs: the core reporting a bug of its own. Tests expect none. */
  readonly internalErrors: string[] = [];
  private request = 1;

  constructor(config: Partial<CoreConfig> = {}) {
    this.state = createState({ ...DEFAULT_LIMITS, worker: 'nerve-abc123', password: 'pw', ...config });
  }

  private decode(output: Output): Event {
    switch (output.type) {
      case 'send': {
        const wire = this.wires.get(output.conn) ?? JSON_WIRE;
        let data = output.data;
        if (wire.compression === 'zlib') data = unzlibSync(data as Uint8Array);
        const frame = wire.format === 'msgpack' ? packr.unpack(data as Uint8Array) : JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data));
        return { conn: output.conn, frame };
      }
      case 'close':
        return { conn: output.conn, close: output.code, reason: output.reason };
      case 'log':
        return { log: output.msg, fields: output.fields };
      case 'dispatched':
        return { dispatched: { delivered: output.delivered, queued: output.queued } };
      case 'rejected':
        return { rejected: output.error, status: output.status };
      case 'terminate':
        return { conn: output.conn, terminate: true };
      case 'verify':
        return { conn: output.conn, verify: output.token };
      case 'discard':
        return { conn: output.conn, discard: true };
      case 'relay':
        return { relay: output.msg, to: output.to };
      case 'claim':
        return { claim: output };
    }
  }

  private run(input: Parameters<typeof step>[1]): Event[] {
    const [next, outputs] = step(this.state, input);
    this.state = next;
    this.raw = outputs;
    for (const output of outputs) {
      if (output.type === 'log' && output.level === 'error') this.internalErrors.push(`${output.msg} ${JSON.stringify(output.fields)}`);
    }
    return outputs.map((output) => this.decode(output));
  }

  /** Everything but log lines, which most tests do not care about. */
  private quiet(events: Event[]): Event[] {
    return events.filter((event) => !('log' in event));
  }

  open(conn: number, wire: Wire = JSON_WIRE, remote?: string): Event[] {
    this.wires.set(conn, wire);
    return this.quiet(this.run(remote === undefined ? { type: 'open', now: this.now, conn, wire } : { type: 'open', now: this.now, conn, wire, remote }));
  }

  /** The host's answer to a `verify` output. */
  verified(conn: number, answer: { claims: Claims } | { error: string }): Event[] {
    return this.quiet(this.run({ type: 'verified', now: this.now, conn, ...answer }));
  }

  /** Sends a frame object (encoded for the connection's wire) or raw data as is. */
  send(conn: number, frame: object | string | Uint8Array): Event[] {
    let data: string | Uint8Array;
    if (typeof frame === 'string' || frame instanceof Uint8Array) data = frame;
    else {
      const wire = this.wires.get(conn) ?? JSON_WIRE;
      data = wire.format === 'msgpack' ? packr.pack(frame) : JSON.stringify(frame);
      if (wire.compression === 'zlib') data = zlibSync(typeof data === 'string' ? new TextEncoder().encode(data) : data);
    }
    return this.quiet(this.run({ type: 'message', now: this.now, conn, data }));
  }

  sendWithLogs(conn: number, frame: object): Event[] {
    return this.run({ type: 'message', now: this.now, conn, data: JSON.stringify(frame) });
  }

  refused(conn: number, tooLarge: boolean, detail?: string): Event[] {
    return this.quiet(this.run({ type: 'refused', now: this.now, conn, tooLarge, detail }));
  }

  close(conn: number, code?: number): Event[] {
    return this.quiet(this.run({ type: 'close', now: this.now, conn, code }));
  }

  /** Any other input, as the host would feed it; log lines left out. */
  step(input: Parameters<typeof step>[1]): Event[] {
    return this.quiet(this.run(input));
  }

  /** The host wrote everything queued (a batching host, once per flush). */
  flushed(): Event[] {
    return this.quiet(this.run({ type: 'flushed', now: this.now }));
  }

  /** The host reports what its transport still holds for a connection. */
  backlog(conn: number, bytes: number, unflushedFrom: number, queuedFrom = unflushedFrom): Event[] {
    return this.quiet(this.run({ type: 'backlog', now: this.now, conn, bytes, unflushedFrom, queuedFrom }));
  }

  httpDispatch(body: unknown): Event[] {
    return this.quiet(this.run({ type: 'dispatch', now: this.now, request: this.request++, body }));
  }

  shutdown(): Event[] {
    return this.quiet(this.run({ type: 'shutdown', now: this.now }));
  }

  /** Moves the clock forward, ticking at every deadline on the way, like the host's one timer. */
  advance(ms: number): Event[] {
    const until = this.now + ms;
    const events: Event[] = [];
    for (let deadline = nextDeadline(this.state); deadline !== undefined && deadline <= until; deadline = nextDeadline(this.state)) {
      this.now = Math.max(this.now, deadline);
      events.push(...this.quiet(this.run({ type: 'tick', now: this.now })));
    }
    this.now = until;
    return events;
  }

  /** Opens and identifies a client; returns nothing on success, throws otherwise. */
  connect(conn: number, app: string, clientId: string, extra: Record<string, unknown> = {}, wire: Wire = JSON_WIRE): Event[] {
    this.open(conn, wire);
    const events = this.send(conn, { op: 1, d: { app_name: app, client_id: clientId, password: 'pw', ...extra } });
    const welcome = events[0];
    if (!welcome || !('frame' in welcome) || welcome.frame.op !== 2) throw new Error(`identify failed: ${JSON.stringify(events)}`);
    return events.slice(1);
  }

  dispatch(conn: number, e: string, d: unknown, to: Record<string, unknown>, nonce?: string): Event[] {
    return this.send(conn, nonce === undefined ? { op: 8, e, d, to } : { op: 8, e, d, to, nonce });
  }
}

/** The frames delivered to one connection in a list of events. */
export function framesTo(events: Event[], conn: number): Record<string, unknown>[] {
  return events.flatMap((event) => ('frame' in event && event.conn === conn ? [event.frame] : []));
}

/** NO_U_TBH + close, as a connection sees an error. */
export function failure(conn: number, code: number, reason: string): Event[] {
  return [
    { conn, frame: { op: 6, d: reason } },
    { conn, close: code, reason },
  ];
}
