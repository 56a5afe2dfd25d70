// Deno host: the shared Hono app on Deno.serve, WebSockets from
// Deno.upgradeWebSocket inside fetch. Translation only — every protocol
// decision is in src/core.

import { announce, boot, onSignals } from '../src/host/boot.ts';
import { createHttpApp } from '../src/host/http.ts';

const booted = boot(Deno.env.toObject(), (code) => Deno.exit(code));
const { config, hub } = booted;

// Deno has no per-socket payload limit to set; it accepts frames up to its own
// built-in maximum and the core answers anything over NERVE_MAX_PAYLOAD with 4413.
const app = createHttpApp(hub, (c, wire) => {
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
  // Sending before `open` throws on Deno, so the hub (and its HELLO) waits for it.
  socket.onopen = () => {
    conn = hub.open(
      {
        // Deno throws on send after the peer's close frame; the close event is already on its way.
        send: (data) => socket.readyState === WebSocket.OPEN && socket.send(data),
        close: (code, reason) => socket.close(code, reason),
      },
      wire,
    );
  };
  socket.onmessage = (event) => {
    if (conn !== undefined) hub.receive(conn, typeof event.data === 'string' ? event.data : new Uint8Array(event.data));
  };
  socket.onclose = (event) => {
    if (conn !== undefined) hub.closed(conn, event.code);
  };
  socket.onerror = (event) => {
    hub.log('warn', 'socket error', { conn, error: (event as ErrorEvent).message ?? 'unknown' });
  };
  return response;
});

const server = Deno.serve(
  { port: config.port, hostname: config.host, onListen: ({ port }) => announce(booted, port, 'deno') },
  app.fetch,
);

onSignals(
  booted,
  (signal, handler) => Deno.addSignalListener(signal as Deno.Signal, handler),
  () => setTimeout(() => void server.shutdown(), 0),
  (code) => Deno.exit(code),
);
