// Cloudflare host (`nerve/cloudflare`, and wrangler's main): a Worker that
// sends each request to its hub's Durable Object, and the NerveHub Durable
// Object that runs one hub on the WebSocket Hibernation API. Translation only.

import { DurableObject } from 'cloudflare:workers';
import type { ConnId, Input, Output } from '../src/core/io.ts';
import { connRecord, Persister, type ConnRecord } from '../src/core/persist.ts';
import { HEARTBEAT_ACK_FRAME, HEARTBEAT_FRAME, type Wire } from '../src/core/protocol.ts';
import { ConfigError, loadConfig, type HostConfig } from '../src/host/config.ts';
import { createHttpApp, type Upgrade } from '../src/host/http.ts';
import { Hub, type HubSocket } from '../src/host/hub.ts';
import { SqliteStorage } from '../src/host/sqlite-storage.ts';
import { StorageWriter } from '../src/host/storage.ts';

/** The Worker's bindings: the NerveHub namespace and the NERVE_* vars and secrets. */
export interface NerveEnv {
  NERVE_HUB: DurableObjectNamespace<NerveHub>;
  [name: string]: unknown;
}

export interface WorkerOptions {
  /** The Durable Object binding of the NerveHub class in wrangler.toml. Default `NERVE_HUB`. */
  binding?: string;
  /** The hub a path outside `/hubs/<name>` reaches. Default `main`. */
  defaultHub?: string;
}

/** `/hubs/<name>/<route>` reaches hub `<name>`; every other path reaches the default hub. */
const HUB_PATH = /^\/hubs\/([^/]+)(\/.*)?$/;
const HUB_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

/** The Worker: sends each request to its hub's Durable Object. */
export function createWorker(options: WorkerOptions = {}): ExportedHandler<NerveEnv> & { fetch(request: Request, env: NerveEnv): Promise<Response> } {
  const binding = options.binding ?? 'NERVE_HUB';
  const defaultHub = options.defaultHub ?? 'main';
  return {
    async fetch(request: Request, env: NerveEnv): Promise<Response> {
      const url = new URL(request.url);
      let name = defaultHub;
      const match = HUB_PATH.exec(url.pathname);
      if (match) {
        try {
          name = decodeURIComponent(match[1]!);
        } catch {
          name = '';
        }
        if (!HUB_NAME.test(name)) {
          return Response.json({ error: 'hub name must be 1 to 64 characters of A-Z a-z 0-9 _ . -' }, { status: 400 });
        }
        url.pathname = match[2] ?? '/';
      }
      const namespace = env[binding] as DurableObjectNamespace<NerveHub> | undefined;
      if (!namespace) return new Response(`nerve: no Durable Object binding ${binding}\n`, { status: 500, headers: { 'content-type': 'text/plain' } });
      const stub = namespace.get(namespace.idFromName(name));
      // A body the hub answers without reading (a 401) must not still be streaming
      // to it afterwards: the runtime then fails the request ("Can't read from request
      // stream after response has been sent"). Bodies here are small; read them first.
      if (!request.body) return stub.fetch(new Request(url, request));
      return stub.fetch(new Request(url, { method: request.method, headers: request.headers, body: await request.arrayBuffer() }));
    },
  };
}

export default createWorker();

/** Worker vars are strings, or numbers and booleans when written unquoted in wrangler.toml. */
function nerveVars(env: NerveEnv): Record<string, string | undefined> {
  const vars: Record<string, string | undefined> = {};
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('NERVE_')) continue;
    if (typeof value === 'string') vars[name] = value;
    else if (typeof value === 'number' || typeof value === 'boolean') vars[name] = String(value);
  }
  return vars;
}

/**
 * The code to answer a peer's close with: its own, except that 1005, 1006 and
 * 1015 only describe a close and are never sent (close() throws on them), and
 * anything outside what close() accepts becomes 1000.
 */
function replyCode(code: number): number {
  return code === 1000 || code === 1001 || (code >= 3000 && code <= 4999) ? code : 1000;
}

/**
 * A hibernatable WebSocket as the hub sees it. workerd's WebSocket has no
 * `bufferedAmount` (checked with workerd 2026-04-26: the property does not
 * exist), so the backlog stays with the runtime and reads as 0; nor can a
 * socket be dropped without a close frame, so terminate() is a close.
 */
function socketOf(ws: WebSocket): HubSocket {
  return {
    send: (frames) => {
      for (let i = 0; i < frames.length; i++) ws.send(frames[i]!);
    },
    close: (code, reason) => ws.close(code, reason),
    buffered: () => 0,
    terminate: () => {
      try {
        ws.close(1011, 'terminated');
      } catch {
        // Already closed: nothing left to drop.
      }
    },
  };
}

/** How soon a step runs again after a failed storage write, so an idle hub is not evicted with it unwritten. */
const STORAGE_RETRY_MS = 1_000;

interface Running {
  config: HostConfig;
  hub: Hub;
  writer: StorageWriter;
  app: { fetch(request: Request): Response | Promise<Response> };
}

/**
 * One hub. Memory may be dropped between any two events (hibernation), so
 * every event starts from `running()`, which rebuilds the hub from socket
 * attachments and SQLite storage when this instance is new; every step ends
 * by writing what it changed (src/host/storage.ts says what a failed write does).
 */
export class NerveHub extends DurableObject<NerveEnv> {
  private current: Running | undefined;
  private failure: string | undefined;
  private readonly sockets = new Map<ConnId, WebSocket>();
  private readonly ids = new WeakMap<WebSocket, ConnId>();
  /** Last attachment written per connection, to skip identical rewrites. */
  private readonly attached = new Map<ConnId, string>();
  private opening: WebSocket | undefined;
  /** The hub's own deadline, and a sooner one while storage is behind: the one alarm carries the earlier. */
  private hubAlarm: number | undefined;
  private retryAlarm: number | undefined;

  /** This object's hub, rebuilt from storage if it was asleep; undefined while the config is invalid. */
  get hub(): Hub | undefined {
    return this.running()?.hub;
  }

  override async fetch(request: Request): Promise<Response> {
    const running = this.running();
    if (!running) return new Response(`nerve: ${this.failure}\n`, { status: 500, headers: { 'content-type': 'text/plain' } });
    return running.app.fetch(request);
  }

  override async webSocketMessage(ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
    const running = this.running();
    const conn = this.idOf(ws);
    if (!running || conn === undefined) return;
    running.hub.receive(conn, typeof message === 'string' ? message : new Uint8Array(message));
  }

  override async webSocketClose(ws: WebSocket, code: number, reason: string): Promise<void> {
    const running = this.running();
    const conn = this.idOf(ws);
    // 1005 means the peer sent no code, 1006 that there was no close frame at all.
    if (running && conn !== undefined) running.hub.closed(conn, code === 1005 || code === 1006 ? undefined : code);
    try {
      // Completes the closing handshake where the runtime has not already answered the peer's close frame.
      ws.close(replyCode(code), reason);
    } catch {
      // Already closed: nothing left to answer.
    }
  }

  override async webSocketError(ws: WebSocket, error: unknown): Promise<void> {
    const running = this.running();
    const conn = this.idOf(ws);
    if (!running || conn === undefined) return;
    running.hub.log('warn', 'socket error', { conn, error: String(error) });
    running.hub.closed(conn);
  }

  override async alarm(): Promise<void> {
    const running = this.running();
    if (!running) return;
    // Heartbeats the runtime answered on its own count before any timeout is judged.
    for (const ws of this.ctx.getWebSockets()) {
      const conn = this.idOf(ws);
      const at = this.ctx.getWebSocketAutoResponseTimestamp(ws)?.getTime();
      if (conn !== undefined && at !== undefined) running.hub.heartbeat(conn, at);
    }
    this.retryAlarm = undefined;
    running.hub.tick();
    // The hub re-arms only when its deadline moved; an alarm that fired early for a retry must not lose it.
    this.setAlarm();
  }

  private setAlarm(): void {
    const at = this.retryAlarm === undefined ? this.hubAlarm : Math.min(this.retryAlarm, this.hubAlarm ?? Infinity);
    void (at === undefined ? this.ctx.storage.deleteAlarm() : this.ctx.storage.setAlarm(at));
  }

  private idOf(ws: WebSocket): ConnId | undefined {
    let id = this.ids.get(ws);
    if (id === undefined) {
      id = (ws.deserializeAttachment() as ConnRecord | null)?.id;
      if (id !== undefined) this.ids.set(ws, id);
    }
    return id;
  }

  private running(): Running | undefined {
    if (this.current || this.failure) return this.current;
    let config: HostConfig;
    try {
      config = loadConfig(nerveVars(this.env), `nerve-${this.ctx.id.toString().slice(0, 6)}`);
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      this.failure = error.message;
    }
    if (!this.failure && config!.generatedPassword) {
      // A password generated here would differ on every wake and in every hub.
      this.failure = 'NERVE_PASSWORD is not set: `wrangler secret put NERVE_PASSWORD` (or `--var NERVE_PASSWORD:…` with wrangler dev)';
    }
    if (this.failure) {
      console.error(JSON.stringify({ time: new Date().toISOString(), level: 'error', msg: `nerve: ${this.failure}` }));
      return undefined;
    }
    this.current = this.wake(config!);
    return this.current;
  }

  /** Rebuilds the hub from storage and the sockets that stayed open while it slept. */
  private wake(config: HostConfig): Running {
    // Heartbeats are answered by the runtime without waking the object and their
    // arrival read back before each tick; a rate limit has to see every frame, though.
    if (config.rateLimit > 0) this.ctx.setWebSocketAutoResponse();
    else this.ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair(HEARTBEAT_FRAME, HEARTBEAT_ACK_FRAME));
    const storage = new SqliteStorage(this.ctx.storage);
    const stored = storage.load();
    const live: { ws: WebSocket; record: ConnRecord }[] = [];
    for (const ws of this.ctx.getWebSockets()) {
      const record = ws.deserializeAttachment() as ConnRecord | null;
      if (!record) continue;
      const answered = this.ctx.getWebSocketAutoResponseTimestamp(ws)?.getTime() ?? 0;
      live.push({ ws, record: { ...record, h: Math.max(record.h, answered) } });
    }
    const now = Date.now();
    const { state, persister } = Persister.restore(
      config,
      stored,
      live.map(({ record }) => record),
      now,
    );
    const hub = new Hub({
      config,
      state,
      // The runtime owns the closing handshake of a hibernatable socket.
      closeGrace: 0,
      arm: (at) => {
        this.hubAlarm = at;
        this.setAlarm();
      },
      afterStep: (input, outputs) => this.afterStep(input, outputs),
    });
    for (const { ws, record } of live) {
      hub.adopt(record.id, socketOf(ws));
      this.sockets.set(record.id, ws);
      this.ids.set(ws, record.id);
      this.attached.set(record.id, JSON.stringify(record));
    }
    const writer = new StorageWriter(storage, persister, (level, msg, fields) => hub.log(level, msg, fields));
    const running: Running = { config, hub, writer, app: createHttpApp(hub, this.upgrade) };
    this.current = running;
    // Once per instance: a hub that hibernated logs this again when it wakes, with what it got back.
    hub.log('info', 'awake', { connections: live.length, sessions: state.sessions.size, clients: state.connectedClients });
    // Handles whatever fell due while asleep, writes what the restore changed, and arms the alarm.
    hub.tick();
    return running;
  }

  private readonly upgrade: Upgrade = (c, wire: Wire) => {
    // A socket a Durable Object accepts and closes in the same event never
    // finishes its close for the peer (workerd waits on it), so a hub at
    // capacity says so before the upgrade, with HTTP 503.
    const { state, config } = this.current!.hub;
    if (state.liveConns >= config.maxConnections || state.unidentifiedConns >= config.maxUnidentified) {
      return Response.json({ error: 'too many connections: this hub is at capacity; retry later' }, { status: 503 });
    }
    const { 0: client, 1: server } = new WebSocketPair();
    this.ctx.acceptWebSocket(server);
    this.opening = server;
    try {
      // Cloudflare's view of the client's address: failed authentications are budgeted per address.
      this.current!.hub.open(socketOf(server), wire, c.req.header('cf-connecting-ip'));
    } finally {
      this.opening = undefined;
    }
    return new Response(null, { status: 101, webSocket: client });
  };

  private afterStep(input: Input, outputs: Output[]): void {
    const running = this.current;
    if (!running) return;
    if (input.type === 'open' && this.opening) {
      this.sockets.set(input.conn, this.opening);
      this.ids.set(this.opening, input.conn);
    }
    running.writer.save(running.hub.state);
    if (running.writer.retrying && this.retryAlarm === undefined) {
      this.retryAlarm = Date.now() + STORAGE_RETRY_MS;
      this.setAlarm();
    }

    if (input.type === 'close') {
      this.sockets.delete(input.conn);
      this.attached.delete(input.conn);
      return;
    }
    if ('conn' in input) this.attach(running, input.conn);
    for (const output of outputs) if (output.type === 'close') this.attach(running, output.conn);
  }

  /** Socket attachments live in memory outside the isolate: cheap, so written whenever they change. */
  private attach(running: Running, id: ConnId): void {
    const conn = running.hub.state.conns.get(id);
    const ws = this.sockets.get(id);
    if (!conn || !ws) return;
    const record = connRecord(conn, running.config.rateLimit > 0);
    const json = JSON.stringify(record);
    if (this.attached.get(id) === json) return;
    ws.serializeAttachment(record);
    this.attached.set(id, json);
  }
}
