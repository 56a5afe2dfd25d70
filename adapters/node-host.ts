// Node host as a library (`nerve/node`): a hub on `ws` and the shared Hono app,
// either as a server of its own (createNodeServer) or mounted on a path of an
// existing node:http server or Hono app (createNodeHandler). Translation only.

import { getRequestListener } from '@hono/node-server';
import type { Hono } from 'hono';
import { createServer, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import type { HostConfig } from '../src/host/config.ts';
import { announce, mountedApp, normalizePath, resolveConfig, routeWithin, wsUrl, type ConfigInput, type NerveServer, type ServeOptions } from '../src/host/boot.ts';
import { startCluster, type ClusterLink } from '../src/host/cluster/index.ts';
import { refuseUpgrade } from '../src/host/http.ts';
import { Hub } from '../src/host/hub.ts';
import { NodeSocket } from './node-frames.ts';

export type { NerveServer, ServeOptions, ConfigInput } from '../src/host/boot.ts';

/** Nerve on a path of a Node HTTP server you own. */
export interface NodeHandler {
  readonly config: HostConfig;
  readonly hub: Hub;
  /** Where Nerve lives, e.g. `/nerve` (`/` by default). */
  readonly path: string;
  /** Nerve's HTTP routes under `path`, to `route('/', …)` into a Hono app of your own. */
  readonly app: Hono;
  /**
   * A request listener for Nerve's HTTP routes. A request outside `path` goes
   * to `next` (Express/Connect style) or, without one, gets a 404.
   */
  listener(request: IncomingMessage, response: ServerResponse, next?: () => void): void;
  /** Takes a WebSocket upgrade on `path` (answering a bad one with 400 or 503); false for any other path. */
  upgrade(request: IncomingMessage, socket: Duplex, head: Buffer): boolean;
  /** Handles upgrades on `path` of `server`, leaving other paths to its other listeners; returns a detach function. */
  attach(server: Server): () => void;
  /** GO_AWAY to every connection, waits for them (at most config.drainTimeout ms), then drops the rest. */
  close(): Promise<void>;
}

type WsInternals = { _receiver: { prependListener(event: 'error', listener: (error: Error & { code?: string }) => void): void } };

/**
 * ws closes by itself (1009, 1007, 1002) on a frame it will not accept; hearing
 * its receiver's error first lets the core answer with NO_U_TBH and 4413/4400
 * instead, after which ws's own close is a no-op.
 */
function routeTransportErrors(hub: Hub, ws: WebSocket, conn: number): void {
  (ws as unknown as WsInternals)._receiver.prependListener('error', (error) =>
    hub.refused(conn, error.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH', error.message.replace(/^Invalid WebSocket frame: /, '')),
  );
}

/** Writes a fetch Response on a socket that asked for an upgrade, then ends it. */
async function answerUpgrade(socket: Duplex, response: Response): Promise<void> {
  const body = Buffer.from(await response.arrayBuffer());
  const lines = [`HTTP/1.1 ${response.status} ${STATUS_CODES[response.status] ?? ''}`];
  response.headers.forEach((value, name) => lines.push(`${name}: ${value}`));
  lines.push(`content-length: ${body.byteLength}`, 'connection: close', '', '');
  socket.end(Buffer.concat([Buffer.from(lines.join('\r\n')), body]));
}

/** A fetch Request for a Node request's method, URL and headers (no body: upgrades carry none). */
function toRequest(request: IncomingMessage): Request {
  const headers = new Headers();
  for (const [name, value] of Object.entries(request.headers)) {
    if (Array.isArray(value)) for (const item of value) headers.append(name, item);
    else if (value !== undefined) headers.set(name, value);
  }
  return new Request(new URL(request.url ?? '/', `http://${request.headers.host ?? 'localhost'}`), { method: request.method ?? 'GET', headers });
}

export function createNodeHandler(input: ConfigInput = process.env, options: ServeOptions = {}): NodeHandler {
  const config = resolveConfig(input);
  const path = normalizePath(options.path);
  // Per-turn batching: every frame the hub writes to a socket in one event-loop turn leaves as one buffer.
  const hub = new Hub({ config, schedule: setImmediate, ...(options.log ? { log: options.log } : {}) });
  // ws checks a frame's declared length before buffering it, so the limit costs no memory.
  const wss = new WebSocketServer({ noServer: true, maxPayload: config.maxPayload, perMessageDeflate: false });
  const app = mountedApp(hub, path);
  // A library must not swap the process's global Response for @hono/node-server's lighter one.
  const serveHttp = getRequestListener(app.fetch, { overrideGlobalObjects: false });

  function accept(ws: WebSocket, wire: Exclude<ReturnType<typeof refuseUpgrade>, Response>, remote: string | undefined): void {
    const conn = hub.open(new NodeSocket(ws), wire, remote);
    routeTransportErrors(hub, ws, conn);
    ws.on('message', (data: Buffer, isBinary) => hub.receive(conn, isBinary ? data : data.toString()));
    ws.on('close', (code) => hub.closed(conn, code));
    ws.on('ping', () => hub.ping(conn));
    ws.on('error', (error: Error & { code?: string }) => {
      // WS_ERR_* are the peer's bad frames, already answered through the protocol.
      if (!error.code?.startsWith('WS_ERR_')) hub.log('warn', 'socket error', { conn, error: error.message });
    });
  }

  const handler: NodeHandler = {
    config,
    hub,
    path,
    app,
    listener(request, response, next) {
      const pathname = new URL(request.url ?? '/', 'http://localhost').pathname;
      if (routeWithin(path, pathname) !== undefined) return void serveHttp(request, response);
      if (next) return next();
      response.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `no route ${request.method} ${pathname}` }));
    },
    upgrade(request, socket, head) {
      const url = new URL(request.url ?? '/', 'http://localhost');
      if (routeWithin(path, url.pathname) !== '/') return false;
      const wire = refuseUpgrade(url, hub, request.headers.origin);
      // Not `instanceof Response`: another Response class may be the global one by now.
      if (!('format' in wire)) void answerUpgrade(socket, wire);
      // The socket's own address: failed authentications are budgeted per address.
      else wss.handleUpgrade(request, socket, head, (ws) => accept(ws, wire, request.socket.remoteAddress));
      return true;
    },
    attach(server) {
      const onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer) => void handler.upgrade(request, socket, head);
      server.on('upgrade', onUpgrade);
      return () => void server.off('upgrade', onUpgrade);
    },
    async close() {
      await hub.shutdown(config.drainTimeout);
      for (const ws of wss.clients) ws.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
    },
  };
  return handler;
}

export interface NodeServer extends NerveServer {
  /** The node:http server, to add routes or read its address. */
  readonly server: Server;
  readonly handler: NodeHandler;
}

/** A Node HTTP server that is only Nerve: `start()` listens on config.host:config.port. */
export function createNodeServer(input: ConfigInput = process.env, options: ServeOptions = {}): NodeServer {
  const handler = createNodeHandler(input, options);
  const { config, hub, path } = handler;
  const server = createServer((request, response) => handler.listener(request, response));
  // Upgrades elsewhere get the same JSON 404 the Hono app gives every runtime.
  server.on('upgrade', (request: IncomingMessage, socket: Socket, head: Buffer) => {
    if (handler.upgrade(request, socket, head)) return;
    Promise.resolve(handler.app.fetch(toRequest(request))).then(
      (response) => answerUpgrade(socket, response),
      () => socket.destroy(),
    );
  });
  let port = config.port;
  let started: Promise<NodeServer> | undefined;
  let link: ClusterLink | undefined;
  const nodeServer: NodeServer = {
    config,
    hub,
    server,
    handler,
    get port() {
      return port;
    },
    get url() {
      return wsUrl(config.host, port, path);
    },
    start() {
      started ??= (async () => {
        // In a cluster the node links first: a node whose settings differ never listens.
        link = await startCluster(hub, config, 'node');
        try {
          await new Promise<void>((resolve, reject) => {
            server.once('error', reject);
            server.listen(config.port, config.host, () => {
              server.off('error', reject);
              resolve();
            });
          });
        } catch (error) {
          await link?.stop();
          throw error;
        }
        port = (server.address() as AddressInfo).port;
        announce(hub, config, port, 'node', path);
        return nodeServer;
      })();
      return started;
    },
    async stop() {
      const closed = server.listening ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
      await handler.close();
      // After the drain: what it changed is stored before the node leaves its cluster.
      await link?.stop();
      // Idle keep-alive HTTP connections would otherwise hold close() open until they time out.
      server.closeAllConnections();
      await closed;
    },
  };
  return nodeServer;
}
