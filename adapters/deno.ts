// Deno host: the shared Hono app on Deno.serve, WebSockets from
// Deno.upgradeWebSocket inside fetch. Translation only — every protocol
// decision is in src/core.

import { announce, boot, onSignals } from '../src/host/boot.ts';
import { createHttpApp } from '../src/host/http.ts';

const booted = boot(Deno.env.toObject(), (code) => Deno.exit(code));
const { config, hub } = booted;

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

function closeWhenQuiet(socket: WebSocket, code: number, reason: string): void {
  const since = Date.now();
  let frames = 0;
  let seen = 0;
  let quietChecks = 0;
  socket.onmessage = () => frames++;
  const check = () => {
    quietChecks = frames === seen ? quietChecks + 1 : 0;
    seen = frames;
    if (quietChecks >= 2 || Date.now() - since >= LINGER_MS) socket.close(code, reason);
    else setTimeout(check, QUIET_MS);
  };
  setTimeout(check, QUIET_MS);
}

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
        send: (data) => socket.send(data),
        close: (code, reason) => closeWhenQuiet(socket, code, reason),
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

Deno.serve(
  { port: config.port, hostname: config.host, onListen: ({ port }) => announce(booted, port, 'deno') },
  app.fetch,
);

onSignals(
  booted,
  (signal, handler) => Deno.addSignalListener(signal as Deno.Signal, handler),
  // Not server.shutdown(): it would close the upgraded sockets itself (1001,
  // "Server shutting down") ahead of GO_AWAY's delayed close. While draining,
  // upgrades are refused with 503 and /health says 503; exit closes the listener.
  () => {},
  (code) => Deno.exit(code),
);
