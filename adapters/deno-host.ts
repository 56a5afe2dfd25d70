// Deno host as a library (`nerve/deno`): the shared Hono app on Deno.serve,
// WebSockets from Deno.upgradeWebSocket inside fetch. serveDeno runs it alone;
// createDenoHandler's fetch (or app) goes into a Deno.serve of your own.

import type { Hono } from 'hono';
import type { HostConfig } from '../src/host/config.ts';
import { announce, mountedApp, normalizePath, resolveConfig, wsUrl, type ConfigInput, type NerveServer, type ServeOptions } from '../src/host/boot.ts';
import { startCluster, type ClusterLink } from '../src/host/cluster/index.ts';
import { Hub, type HubSocket } from '../src/host/hub.ts';

export type { NerveServer, ServeOptions, ConfigInput } from '../src/host/boot.ts';

// Deno ends a server socket at once, without a close frame and often with a TCP
// reset, when any frame arrives after close() (the CLOSING check in its
// ext/websocket event loop). A peer that just broke a rule usually has frames
// in flight, so the close frame waits until two checks QUIET_MS apart saw no
// new frame (LINGER_MS at most); their frames are ones the core ignores anyway.
// Two checks, not one interval of wall time: after a stall the timer can run
// before the frames that arrived meanwhile are read, and the second check
// comes after at least one full turn of reading.
const QUIET_MS = 20;
const LINGER_MS = 1_000;

/**
 * Deno hands a frame to the OS in a later turn of the event loop, so
 * `bufferedAmount` counts every frame just sent even when the socket keeps up
 * (measured: 100 right after send(), still 100 after microtasks, 0 after a
 * setTimeout of 0). Read as is, every write would look like a reader falling
 * behind, and a peer that closes right after reading would have its last
 * events counted as never handed over. So a socket's backlog is what it held
 * before this turn's writes, as far as that has not drained since.
 */
let turn = 0;
let turnEndScheduled = false;
function currentTurn(): number {
  if (!turnEndScheduled) {
    turnEndScheduled = true;
    setTimeout(() => {
      turn++;
      turnEndScheduled = false;
    }, 0);
  }
  return turn;
}

/**
 * A Deno socket as the hub sees it. Deno keeps `bufferedAmount` current for
 * server sockets (it falls as the OS takes the bytes). It has no way to drop
 * a connection outright, so terminate() sends the close frame at once instead
 * of waiting for the peer to go quiet.
 */
class DenoSocket implements HubSocket {
  private closeTimer: ReturnType<typeof setTimeout> | undefined;
  private closeFrame: { code: number; reason: string } | undefined;
  private sentInTurn = -1;
  private heldBeforeTurn = 0;

  constructor(private readonly socket: WebSocket) {}

  send(frames: readonly (string | Uint8Array)[]): void {
    const now = currentTurn();
    if (now !== this.sentInTurn) {
      this.sentInTurn = now;
      this.heldBeforeTurn = this.socket.bufferedAmount;
    }
    // The core's bytes are never over a SharedArrayBuffer, which is all the narrower type rules out.
    for (let i = 0; i < frames.length; i++) this.socket.send(frames[i] as string | Uint8Array<ArrayBuffer>);
  }

  close(code: number, reason: string): void {
    if (this.closeFrame) return;
    this.closeFrame = { code, reason };
    const since = Date.now();
    let frames = 0;
    let seen = 0;
    let quietChecks = 0;
    this.socket.onmessage = () => frames++;
    const check = () => {
      quietChecks = frames === seen ? quietChecks + 1 : 0;
      seen = frames;
      if (quietChecks >= 2 || Date.now() - since >= LINGER_MS) this.sendCloseFrame();
      else this.closeTimer = setTimeout(check, QUIET_MS);
    };
    this.closeTimer = setTimeout(check, QUIET_MS);
  }

  buffered(): number {
    const held = this.socket.bufferedAmount;
    return this.sentInTurn === turn ? Math.min(held, this.heldBeforeTurn) : held;
  }

  terminate(): void {
    this.closeFrame ??= { code: 1001, reason: '' };
    this.sendCloseFrame();
  }

  private sendCloseFrame(): void {
    clearTimeout(this.closeTimer);
    this.closeTimer = undefined;
    if (this.socket.readyState === WebSocket.CLOSING || this.socket.readyState === WebSocket.CLOSED) return;
    this.socket.close(this.closeFrame!.code, this.closeFrame!.reason);
  }
}

/** Nerve inside a Deno.serve of your own: pass `fetch`, or mount `app`. */
export interface DenoHandler {
  readonly config: HostConfig;
  readonly hub: Hub;
  readonly path: string;
  /** Nerve's HTTP routes and upgrade under `path`. */
  readonly app: Hono;
  /** Deno.serve's handler; `info` gives the peer's address, which failed authentications are budgeted by. */
  fetch(request: Request, info?: { remoteAddr?: { hostname?: string } }): Response | Promise<Response>;
  /** GO_AWAY to every connection, waits for them (at most config.drainTimeout ms), then drops the rest. */
  close(): Promise<void>;
}

export function createDenoHandler(input: ConfigInput = Deno.env.toObject(), options: ServeOptions = {}): DenoHandler {
  const config = resolveConfig(input);
  const path = normalizePath(options.path);
  const hub = new Hub({ config, ...(options.log ? { log: options.log } : {}) });
  const open = new Set<DenoSocket>();
  // Deno has no per-socket payload limit to set; it accepts frames up to its own
  // built-in maximum and the core answers anything over NERVE_MAX_PAYLOAD with 4413.
  const app = mountedApp(hub, path, (c, wire) => {
    // Read before the upgrade: afterwards Deno reports the request as closed and throws.
    const remote = (c.env as { remoteAddr?: { hostname?: string } } | undefined)?.remoteAddr?.hostname;
    let upgraded: ReturnType<typeof Deno.upgradeWebSocket>;
    try {
      // idleTimeout 0: liveness is Nerve's own heartbeat (4408), as on Node, not Deno's pings.
      upgraded = Deno.upgradeWebSocket(c.req.raw, { idleTimeout: 0 });
    } catch (error) {
      return c.text(`not a valid WebSocket upgrade: ${(error as Error).message}\n`, 400);
    }
    const { socket, response } = upgraded;
    socket.binaryType = 'arraybuffer';
    let conn: number | undefined;
    const peer = new DenoSocket(socket);
    // Sending before `open` throws on Deno, so the hub (and its HELLO) waits for it.
    socket.onopen = () => {
      open.add(peer);
      conn = hub.open(peer, wire, remote);
    };
    socket.onmessage = (event) => {
      if (conn !== undefined) hub.receive(conn, typeof event.data === 'string' ? event.data : new Uint8Array(event.data));
    };
    socket.onclose = (event) => {
      open.delete(peer);
      if (conn !== undefined) hub.closed(conn, event.code);
    };
    socket.onerror = (event) => {
      hub.log('warn', 'socket error', { conn, error: (event as ErrorEvent).message ?? 'unknown' });
    };
    return response;
  });
  return {
    config,
    hub,
    path,
    app,
    fetch: (request, info) => app.fetch(request, info),
    async close() {
      await hub.shutdown(config.drainTimeout);
      for (const peer of open) peer.terminate();
    },
  };
}

export interface DenoNerveServer extends NerveServer {
  readonly handler: DenoHandler;
}

/** A Deno server that is only Nerve: `start()` listens on config.host:config.port. */
export function serveDeno(input: ConfigInput = Deno.env.toObject(), options: ServeOptions = {}): DenoNerveServer {
  const handler = createDenoHandler(input, options);
  const { config, hub, path } = handler;
  let server: Deno.HttpServer | undefined;
  let port = config.port;
  let link: ClusterLink | undefined;
  let starting: Promise<DenoNerveServer> | undefined;
  const denoServer: DenoNerveServer = {
    config,
    hub,
    handler,
    get port() {
      return port;
    },
    get url() {
      return wsUrl(config.host, port, path);
    },
    start() {
      starting ??= (async () => {
        // In a cluster the node links first: a node whose settings differ never listens.
        link = await startCluster(hub, config, 'deno');
        try {
          await new Promise<void>((resolve, reject) => {
            try {
              server = Deno.serve(
                {
                  port: config.port,
                  hostname: config.host,
                  onListen: (address) => {
                    port = (address as { port: number }).port;
                    announce(hub, config, port, 'deno', path);
                    resolve();
                  },
                },
                handler.fetch,
              );
            } catch (error) {
              reject(error);
            }
          });
        } catch (error) {
          await link?.stop();
          throw error;
        }
        return denoServer;
      })();
      return starting;
    },
    async stop() {
      // Not shutdown() first: it would close the upgraded sockets itself (1001,
      // "Server shutting down") ahead of GO_AWAY's delayed close. While draining,
      // upgrades are refused with 503 and /health says 503.
      await handler.close();
      // After the drain: what it changed is stored before the node leaves its cluster.
      await link?.stop();
      await server?.shutdown();
    },
  };
  return denoServer;
}
