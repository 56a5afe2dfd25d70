// Bun host: Bun.serve with its native WebSocket handlers (no per-frame
// wrapper objects) and the shared Hono app for HTTP and the upgrade check.
// Translation only — every protocol decision is in src/core.

import type { Server, ServerWebSocket } from 'bun';
import type { Wire } from '../src/core/protocol.ts';
import { announce, boot, onSignals } from '../src/host/boot.ts';
import { createHttpApp } from '../src/host/http.ts';
import type { HubSocket } from '../src/host/hub.ts';

interface SocketData {
  wire: Wire;
  conn: number;
  peer: Peer;
}

const booted = boot(process.env, (code) => process.exit(code));
const { config, hub } = booted;

// Bun corks a socket only inside its own callbacks, and a dispatch writes to
// other sockets; so writes are queued per socket and flushed once per turn,
// each socket's batch inside one cork (one syscall), as bench/baseline/bun.ts does.
const pending: Peer[] = [];
function flushAll(): void {
  for (let i = 0; i < pending.length; i++) pending[i]!.flush();
  pending.length = 0;
}

class Peer implements HubSocket {
  private readonly queue: (string | Uint8Array)[] = [];
  /** True while inside ws.close(), which runs Bun's close handler synchronously. */
  closing = false;
  constructor(private readonly ws: ServerWebSocket<SocketData>) {}

  send(data: string | Uint8Array): void {
    if (this.queue.length === 0 && pending.push(this) === 1) setImmediate(flushAll);
    this.queue.push(data);
  }

  close(code: number, reason: string): void {
    // NO_U_TBH (or GO_AWAY) is queued just before; it must leave before the close frame.
    this.flush();
    this.closing = true;
    this.ws.close(code, reason);
    this.closing = false;
  }

  flush(): void {
    const { queue, ws } = this;
    if (queue.length === 0) return;
    ws.cork(() => {
      for (let i = 0; i < queue.length; i++) ws.send(queue[i]!);
    });
    queue.length = 0;
  }

  drop(): void {
    this.queue.length = 0;
  }
}

const app = createHttpApp(hub, (c, wire) => {
  const server = c.env as Server<SocketData>;
  const data = { wire, conn: 0 } as SocketData;
  if (server.upgrade(c.req.raw, { data })) return new Response(null);
  return c.text('not a valid WebSocket upgrade\n', 400);
});

const server = Bun.serve({
  port: config.port,
  hostname: config.host,
  fetch: (request, server) => app.fetch(request, server),
  websocket: {
    data: {} as SocketData,
    // Bun closes an oversized frame itself (1009, no NO_U_TBH) and offers no hook
    // before it does, so frames well past the limit must reach the core for its
    // 4413: at least 4× the limit, and never less than Bun's own 16 MiB default.
    maxPayloadLength: Math.max(config.maxPayload * 4, 16 * 1_048_576),
    perMessageDeflate: false,
    // Liveness is Nerve's heartbeat (4408) on every runtime, not Bun's idle pings.
    idleTimeout: 0,
    open(ws) {
      const data = ws.data;
      data.peer = new Peer(ws);
      data.conn = hub.open(data.peer, data.wire);
    },
    message(ws, message) {
      hub.receive(ws.data.conn, message);
    },
    close(ws, code) {
      const { peer, conn } = ws.data;
      peer.drop();
      // A close the hub asked for lands here while it is still executing that
      // step's outputs; report it as the next event, not from inside the step.
      if (peer.closing) queueMicrotask(() => hub.closed(conn, code));
      else hub.closed(conn, code);
    },
  },
});
announce(booted, server.port ?? config.port, 'bun');

onSignals(
  booted,
  (signal, handler) => process.on(signal, handler),
  // stop() without `true` stops listening and leaves open sockets to drain.
  () => void server.stop(),
  (code) => process.exit(code),
);
