// The Deno baseline: the fastest plain relay Deno allows. Deno.serve with
// Deno.upgradeWebSocket; Deno's WebSocket has no cork, so each frame is sent as
// it comes. A dispatch is encoded once; each recipient's copy only gets its `s`.

import { baselineConfig, listeningLine } from './common.ts';

// Typed loosely so the repo's Node-only tsconfig checks this file too.
declare const Deno: any;

interface App {
  byId: Map<string, Conn>;
  list: Conn[];
  cursor: number;
}

interface Conn {
  socket: WebSocket;
  app: App | null;
  id: string;
  /** `"from":{…}` encoded once at IDENTIFY. */
  from: string;
  s: number;
}

const cfg = baselineConfig(Deno.env.toObject());
const HELLO = JSON.stringify({ op: 0, d: { heartbeat_interval: cfg.heartbeatInterval, worker: cfg.worker } });
const WELCOME = JSON.stringify({ op: 2, d: "hi i'm dad" });
const apps = new Map<string, App>();

function send(conn: Conn, text: string): void {
  if (conn.socket.readyState === 1) conn.socket.send(text);
}

function message(conn: Conn, text: string): void {
  let f: any;
  try {
    f = JSON.parse(text);
  } catch {
    return conn.socket.close(4400, 'bad frame');
  }
  switch (f?.op) {
    case 3:
      return send(conn, '{"op":4}');
    case 1: {
      const d = f.d ?? {};
      if (d.password !== cfg.password) return conn.socket.close(4401, 'bad password');
      const name = String(d.app_name);
      let app = apps.get(name);
      if (!app) apps.set(name, (app = { byId: new Map(), list: [], cursor: 0 }));
      conn.app = app;
      conn.id = String(d.client_id);
      conn.from = JSON.stringify({ app_name: name, client_id: conn.id });
      app.byId.set(conn.id, conn);
      app.list.push(conn);
      return send(conn, WELCOME);
    }
    case 8: {
      const to = f.to;
      if (!conn.app || !to) return;
      const app = apps.get(to.app_name);
      if (!app) return;
      const head =
        '{"op":8,"e":' + JSON.stringify(f.e) + ',"d":' + JSON.stringify(f.d ?? null) + ',"from":' + conn.from +
        (f.nonce !== undefined ? ',"nonce":' + JSON.stringify(f.nonce) : '') + ',"s":';
      if (to.client_id !== undefined) {
        const r = app.byId.get(to.client_id);
        if (r) send(r, head + ++r.s + '}');
      } else if (to.mode === 'all') {
        for (const r of app.list) if (r !== conn) send(r, head + ++r.s + '}');
      } else if (app.list.length > 0) {
        const r = app.list[app.cursor++ % app.list.length]!;
        if (r !== conn) send(r, head + ++r.s + '}');
      }
      return;
    }
  }
}

function closed(conn: Conn): void {
  const app = conn.app;
  if (!app) return;
  if (app.byId.get(conn.id) === conn) app.byId.delete(conn.id);
  const i = app.list.indexOf(conn);
  if (i >= 0) app.list.splice(i, 1);
}

const server = Deno.serve(
  {
    port: cfg.port,
    hostname: cfg.host,
    onListen: ({ port }: { port: number }) => console.log(listeningLine(port, 'deno')),
  },
  (req: Request) => {
    if (req.headers.get('upgrade') !== 'websocket') return new Response('baseline relay', { status: 426 });
    const { socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
    const conn: Conn = { socket, app: null, id: '', from: '', s: 0 };
    socket.onopen = () => send(conn, HELLO);
    socket.onmessage = (ev: MessageEvent) => message(conn, typeof ev.data === 'string' ? ev.data : new TextDecoder().decode(ev.data));
    socket.onclose = () => closed(conn);
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
