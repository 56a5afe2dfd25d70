// The driver every runtime shares: it owns the core state, feeds `step`,
// executes the outputs on the host's sockets, and keeps exactly one timer armed
// at the core's next deadline. Adapters only translate events into these calls.

import { createState, nextDeadline, step, type State } from '../core/index.ts';
import type { ConnId, CoreConfig, Input, Output } from '../core/io.ts';
import { listClients, stats, type ClientInfo } from '../core/inspect.ts';
import type { Wire } from '../core/protocol.ts';
import { renderMetrics } from './metrics.ts';

/** What the hub needs of a WebSocket; every runtime's socket fits in a line or two. */
export interface HubSocket {
  send(data: string | Uint8Array): void;
  close(code: number, reason: string): void;
}

export interface HubOptions {
  config: CoreConfig;
  /** Writes one log line (already JSON). */
  log?: (line: string) => void;
  now?: () => number;
  /**
   * Arms the host's single timer; `undefined` disarms it. When it fires the
   * host calls `hub.tick()`. Defaults to setTimeout.
   */
  arm?: (at: number | undefined) => void;
  /** Start from this state instead of an empty one (a Durable Object waking from hibernation). */
  state?: State;
  /** Called after every step, once its outputs ran: a host that persists state saves what changed here. */
  afterStep?: (input: Input, outputs: Output[]) => void;
}

export type DispatchResult =
  | { ok: true; delivered: number; queued: number }
  | { ok: false; status: 400 | 503; error: string };

export class Hub {
  readonly config: CoreConfig;
  readonly state: State;
  private readonly sockets = new Map<ConnId, HubSocket>();
  private nextConn = 1;
  private nextRequest = 1;
  private armedAt: number | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly now: () => number;
  private readonly writeLog: (line: string) => void;
  private readonly arm: (at: number | undefined) => void;
  private idleWaiters: (() => void)[] = [];
  private readonly messageInput: Input & { type: 'message' } = { type: 'message', now: 0, conn: 0, data: '' };
  private readonly afterStep: ((input: Input, outputs: Output[]) => void) | undefined;

  constructor(options: HubOptions) {
    this.config = options.config;
    this.state = options.state ?? createState(options.config);
    this.afterStep = options.afterStep;
    this.now = options.now ?? Date.now;
    this.writeLog = options.log ?? ((line) => console.log(line));
    this.arm = options.arm ?? ((at) => this.armTimeout(at));
  }

  get draining(): boolean {
    return this.state.draining;
  }

  log(level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void {
    this.writeLog(JSON.stringify({ time: new Date(this.now()).toISOString(), level, worker: this.config.worker, msg, ...fields }));
  }

  /** A WebSocket was accepted; returns the id to pass to receive/closed. */
  open(socket: HubSocket, wire: Wire): ConnId {
    const conn = this.nextConn++;
    this.sockets.set(conn, socket);
    this.run({ type: 'open', now: this.now(), conn, wire });
    return conn;
  }

  /** Re-attaches the socket of a connection the restored state already knows. */
  adopt(conn: ConnId, socket: HubSocket): void {
    this.sockets.set(conn, socket);
    if (conn >= this.nextConn) this.nextConn = conn + 1;
  }

  /** A HEARTBEAT the runtime answered by itself at `at` (ms). */
  heartbeat(conn: ConnId, at: number): void {
    this.run({ type: 'heartbeat', now: this.now(), conn, at });
  }

  receive(conn: ConnId, data: string | Uint8Array): void {
    // One input object reused for every frame: step reads it and keeps nothing.
    const input = this.messageInput;
    input.now = this.now();
    input.conn = conn;
    input.data = data;
    this.run(input);
    input.data = '';
  }

  /** The transport refused a frame of this connection (too large, or malformed at the WebSocket level). */
  refused(conn: ConnId, tooLarge: boolean, detail?: string): void {
    this.run({ type: 'refused', now: this.now(), conn, tooLarge, detail });
  }

  /** The transport is closed; `code` is the peer's close code if it sent one. */
  closed(conn: ConnId, code?: number): void {
    if (!this.sockets.delete(conn)) return;
    this.run({ type: 'close', now: this.now(), conn, code });
    if (this.sockets.size === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  tick(): void {
    this.armedAt = undefined;
    this.run({ type: 'tick', now: this.now() });
  }

  dispatch(body: unknown): DispatchResult {
    const request = this.nextRequest++;
    const outputs = this.run({ type: 'dispatch', now: this.now(), request, body });
    for (const output of outputs) {
      if (output.type === 'dispatched' && output.request === request) {
        return { ok: true, delivered: output.delivered, queued: output.queued };
      }
      if (output.type === 'rejected' && output.request === request) {
        return { ok: false, status: output.status, error: output.error };
      }
    }
    throw new Error('dispatch produced no answer');
  }

  /** GO_AWAY to everyone; resolves when every socket is closed or after `drainTimeout` ms. */
  async shutdown(drainTimeout: number): Promise<void> {
    this.run({ type: 'shutdown', now: this.now() });
    if (this.sockets.size > 0) {
      let timeout: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((resolve) => this.idleWaiters.push(resolve)),
        new Promise<void>((resolve) => (timeout = setTimeout(resolve, drainTimeout))),
      ]);
      if (timeout !== undefined) clearTimeout(timeout);
    }
    this.arm(undefined);
  }

  health() {
    return { status: this.draining ? 'draining' : 'ok', worker: this.config.worker, connections: this.sockets.size, clients: this.state.connectedClients };
  }

  metrics(): string {
    return renderMetrics(this.config.worker, stats(this.state));
  }

  clients(appName?: string): ClientInfo[] {
    return listClients(this.state, appName);
  }

  private run(input: Input): Output[] {
    const outputs = step(this.state, input)[1];
    for (let i = 0; i < outputs.length; i++) this.execute(outputs[i]!);
    this.afterStep?.(input, outputs);
    const deadline = nextDeadline(this.state);
    if (deadline !== this.armedAt) {
      this.armedAt = deadline;
      this.arm(deadline);
    }
    return outputs;
  }

  private execute(output: Output): void {
    switch (output.type) {
      case 'send':
      case 'close':
        try {
          const socket = this.sockets.get(output.conn);
          if (output.type === 'send') socket?.send(output.data);
          else socket?.close(output.code, output.reason);
        } catch (error) {
          // A socket that died under us; its close event follows and ends the connection.
          this.log('warn', `socket ${output.type} failed`, { conn: output.conn, error: String(error) });
        }
        break;
      case 'log':
        this.log(output.level, output.msg, output.fields);
        break;
    }
  }

  private armTimeout(at: number | undefined): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (at === undefined) return;
    // A timer that fires a little early finds nothing due; the tick then re-arms for the same deadline.
    this.timer = setTimeout(() => this.tick(), Math.max(0, at - this.now()));
  }
}
