// Bun host as a library (`nerve/bun`): Bun.serve with its native WebSocket
// handlers (no per-frame wrapper objects) and the shared Hono app for HTTP and
// the upgrade check. serveBun runs it alone; createBunHandler composes it.

import type { Server, ServerWebSocket, WebSocketHandler } from 'bun';
import type { Hono } from 'hono';
import type { Wire } from '../src/core/protocol.ts';
import type { HostConfig } from '../src/host/config.ts';
import { announce, mountedApp, normalizePath, resolveConfig, wsUrl, type ConfigInput, type NerveServer, type ServeOptions } from '../src/host/boot.ts';
import { startCluster, type ClusterLink } from '../src/host/cluster/index.ts';
import { Hub, wireSize, type HubSocket } from '../src/host/hub.ts';

export type { NerveServer, ServeOptions, ConfigInput } from '../src/host/boot.ts';

/** What Nerve keeps in `ws.data` of each of its sockets. */
export interface NerveSocketData {
  wire: Wire;
  conn: number;
  /** The peer's address: failed authentications are budgeted per address. */
  remote: string | undefined;
}

/**
 * A Bun socket as the hub sees it: one flush is one cork (one syscall). A
 * frame Bun refuses (past backpressureLimit) is never written, and neither is
 * any frame after it: a gap would lose it silently. The refused bytes stay in
 * the backlog, so the core cuts the socket as a slow consumer, and the hub
 * tells it, at the close, that they were dropped.
 */
class BunSocket implements HubSocket {
  private refusedBytes = 0;
  constructor(private readonly ws: ServerWebSocket<NerveSocketData>) {}

  send(frames: readonly (string | Uint8Array)[]): void {
    const ws = this.ws;
    ws.cork(() => {
      for (let i = 0; i < frames.length; i++) {
        if (this.refusedBytes > 0 || ws.send(frames[i]!) === 0) this.refusedBytes += wireSize(frames[i]!);
      }
    });
  }

  close(code: number, reason: string): void {
    this.closed = true;
    this.ws.close(code, reason);
  }

  buffered(): number {
    return this.ws.getBufferedAmount() + this.refusedBytes;
  }

  /** Bun's close() ends the TCP connection at once and drops what it still buffers: the hub waits for this to reach 0. */
  sending(): number {
    return this.ws.getBufferedAmount();
  }

  /**
   * Bun's close() already sends what it holds, then the close frame, and ends
   * the TCP connection without waiting for the peer; terminate() would throw
   * that away. So a socket the hub closed is left to finish.
   */
  terminate(): void {
    if (!this.closed) this.ws.terminate();
  }

  private closed = false;
}

/** Nerve inside a Bun.serve of your own: pass `fetch` (or mount `app`) and `websocket`. */
export interface BunHandler {
  readonly config: HostConfig;
  readonly hub: Hub;
  readonly path: string;
  /** Nerve's HTTP routes and upgrade under `path`; call its fetch with Bun's server as the second argument. */
  readonly app: Hono;
  fetch(request: Request, server: Server<NerveSocketData>): Response | Promise<Response>;
  /** Bun.serve's `websocket` option: every upgraded socket of this server is Nerve's. */
  readonly websocket: WebSocketHandler<NerveSocketData>;
  /** GO_AWAY to every connection, waits for them (at most config.drainTimeout ms), then drops the rest. */
  close(): Promise<void>;
}

export function createBunHandler(input: ConfigInput = process.env, options: ServeOptions = {}): BunHandler {
  const config = resolveConfig(input);
  const path = normalizePath(options.path);
  // Bun corks a socket only inside its own callbacks, and a dispatch writes to
  // other sockets; so the hub flushes once per turn, each socket's frames in one cork.
  const hub = new Hub({ config, schedule: setImmediate, ...(options.log ? { log: options.log } : {}) });
  const open = new Set<ServerWebSocket<NerveSocketData>>();
  const app = mountedApp(hub, path, (c, wire) => {
    const server = c.env as Server<NerveSocketData>;
    const remote = server.requestIP(c.req.raw)?.address;
    if (server.upgrade(c.req.raw, { data: { wire, conn: 0, remote } })) return new Response(null);
    return c.text('not a valid WebSocket upgrade\n', 400);
  });
  return {
    config,
    hub,
    path,
    app,
    fetch: (request, server) => app.fetch(request, server),
    websocket: {
      // Bun closes an oversized frame itself (1009, no NO_U_TBH) and offers no hook
      // before it does, so frames well past the limit must reach the core for its
      // 4413: at least 4× the limit, and never less than Bun's own 16 MiB default.
      maxPayloadLength: Math.max(config.maxPayload * 4, 16 * 1_048_576),
      // Past this Bun drops sends (reported as a backlog the core cuts at
      // maxOutbound), so it must sit above what the core lets a socket hold.
      backpressureLimit: 2 * config.maxOutbound + config.maxPayload,
      closeOnBackpressureLimit: false,
      perMessageDeflate: false,
      // Liveness is Nerve's heartbeat (4408) on every runtime, not Bun's idle pings.
      idleTimeout: 0,
      open(ws) {
        open.add(ws);
        ws.data.conn = hub.open(new BunSocket(ws), ws.data.wire, ws.data.remote);
      },
      message(ws, message) {
        hub.receive(ws.data.conn, message);
      },
      ping(ws) {
        hub.ping(ws.data.conn);
      },
      close(ws, code) {
        open.delete(ws);
        hub.closed(ws.data.conn, code);
      },
    },
    async close() {
      await hub.shutdown(config.drainTimeout);
      for (const ws of open) ws.terminate();
    },
  };
}

export interface BunNerveServer extends NerveServer {
  /** Bun's server once started. */
  readonly server: Server<NerveSocketData> | undefined;
  readonly handler: BunHandler;
}

/** A Bun server that is only Nerve: `start()` listens on config.host:config.port. */
export function serveBun(input: ConfigInput = process.env, options: ServeOptions = {}): BunNerveServer {
  const handler = createBunHandler(input, options);
  const { config, hub, path } = handler;
  let server: Server<NerveSocketData> | undefined;
  let link: ClusterLink | undefined;
  let starting: Promise<void> | undefined;
  const bunServer: BunNerveServer = {
    config,
    hub,
    handler,
    get server() {
      return server;
    },
    get port() {
      return server?.port ?? config.port;
    },
    get url() {
      return wsUrl(config.host, this.port, path);
    },
    async start() {
      starting ??= (async () => {
        // In a cluster the node links first: a node whose settings differ never listens.
        link = await startCluster(hub, config, 'bun');
        try {
          server = Bun.serve({ port: config.port, hostname: config.host, fetch: handler.fetch, websocket: handler.websocket });
        } catch (error) {
          await link?.stop();
          throw error;
        }
        announce(hub, config, server.port ?? config.port, 'bun', path);
      })();
      await starting;
      return bunServer;
    },
    async stop() {
      // stop() without `true` stops listening and leaves open sockets to receive GO_AWAY and drain.
      const stopped = server?.stop();
      await handler.close();
      // After the drain: what it changed is stored before the node leaves its cluster.
      await link?.stop();
      await server?.stop(true);
      await stopped;
    },
  };
  return bunServer;
}
