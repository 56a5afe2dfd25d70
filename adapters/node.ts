// Node host: the shared Hono app on @hono/node-server, WebSockets on `ws`.
// Translation only — every protocol decision is in src/core.

import { serve } from '@hono/node-server';
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { announce, boot, onSignals } from '../src/host/boot.ts';
import { createHttpApp, refuseUpgrade } from '../src/host/http.ts';
import { BatchedSocket } from './node-frames.ts';

const booted = boot(process.env, (code) => process.exit(code));
const { config, hub } = booted;

// ws checks a frame's declared length before buffering it, so the limit costs no memory.
const wss = new WebSocketServer({ noServer: true, maxPayload: config.maxPayload, perMessageDeflate: false });

type WsInternals = { _socket: Socket; _receiver: { prependListener(event: 'error', listener: (error: Error & { code?: string }) => void): void } };

/**
 * ws closes by itself (1009, 1007, 1002) on a frame it will not accept; hearing
 * its receiver's error first lets the core answer with NO_U_TBH and 4413/4400
 * instead, after which ws's own close is a no-op.
 */
function routeTransportErrors(ws: WebSocket, conn: number): void {
  (ws as unknown as WsInternals)._receiver.prependListener('error', (error) =>
    hub.refused(conn, error.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH', error.message.replace(/^Invalid WebSocket frame: /, '')),
  );
}

const server = serve({ fetch: createHttpApp(hub).fetch, port: config.port, hostname: config.host }, (info) =>
  announce(booted, info.port, 'node'),
);

server.on('upgrade', (request, socket, head) => {
  const url = new URL(request.url ?? '/', 'http://localhost');
  const refused = url.pathname === '/' ? refuseUpgrade(url, hub) : new Response('not found\n', { status: 404 });
  if (refused instanceof Response) {
    refused.text().then((body) => {
      const status = `${refused.status} ${STATUS_CODES[refused.status]}`;
      const headers = `Content-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close`;
      socket.end(`HTTP/1.1 ${status}\r\n${headers}\r\n\r\n${body}`);
    });
    return;
  }
  const wire = refused;
  wss.handleUpgrade(request, socket, head, (ws) => {
    const conn = hub.open(new BatchedSocket(ws), wire);
    routeTransportErrors(ws, conn);
    ws.on('message', (data: Buffer, isBinary) => hub.receive(conn, isBinary ? data : data.toString()));
    ws.on('close', (code) => hub.closed(conn, code));
    ws.on('error', (error: Error & { code?: string }) => {
      // WS_ERR_* are the peer's bad frames, already answered through the protocol.
      if (!error.code?.startsWith('WS_ERR_')) hub.log('warn', 'socket error', { conn, error: error.message });
    });
  });
});

onSignals(
  booted,
  (signal, handler) => process.on(signal, handler),
  () => server.close(),
  (code) => process.exit(code),
);
