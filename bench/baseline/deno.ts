// The Deno baseline: Deno.serve with Deno.upgradeWebSocket and the relay
// logic from relay.ts. Deno's WebSocket has no cork, so each send is written
// as it comes; that is the practical ceiling there.

import { baselineConfig, createRelay, listeningLine } from './relay.ts';

// Typed loosely so the repo's Node-only tsconfig checks this file too.
declare const Deno: any;

const cfg = baselineConfig(Deno.env.toObject());
const relay = createRelay(cfg);

const server = Deno.serve(
  {
    port: cfg.port,
    hostname: cfg.host,
    onListen: ({ port }: { port: number }) => console.log(listeningLine(port, 'deno')),
  },
  (req: Request) => {
    if (req.headers.get('upgrade') !== 'websocket') return new Response('baseline relay', { status: 426 });
    const { socket, response } = Deno.upgradeWebSocket(req);
    let conn: ReturnType<typeof relay.open> | null = null;
    socket.onopen = () => {
      conn = relay.open({
        send: (t) => {
          if (socket.readyState === 1) socket.send(t);
        },
        close: (c, r) => socket.close(c, r),
      });
    };
    socket.onmessage = (ev: MessageEvent) => {
      if (conn) relay.message(conn, typeof ev.data === 'string' ? ev.data : new TextDecoder().decode(ev.data));
    };
    socket.onclose = () => {
      if (conn) relay.close(conn);
    };
    socket.onerror = () => {};
    return response;
  },
);

const stop = () => {
  server.shutdown();
  Deno.exit(0);
};
Deno.addSignalListener('SIGTERM', stop);
Deno.addSignalListener('SIGINT', stop);
