// The Bun baseline: the fastest plain relay Bun allows. Bun.serve's native
// WebSocket; each recipient's frame from one JSON.stringify, queued and sent in
// one ws.cork per socket per event-loop turn; mode all through ws.publish.

import { baselineConfig, listeningLine } from './common.ts';

// Typed loosely so the repo's Node-only tsconfig checks this file too.
declare const Bun: any;
declare const process: { env: Record<string, string | undefined>; on(s: string, f: () => void): void; exit(c: number): never };

interface BunWs {
  data: Conn;
  send(text: string): number;
  cork(f: () => void): void;
  subscribe(topic: string): void;
  publish(topic: string, text: string): number;
  close(code: number, reason: string): void;
}

interface App {
  byId: Map<string, Conn>;
  list: Conn[];
  cursor: number;
  /** Fan-out goes out as one published frame, so its `s` counts per app, not per recipient. */
  s: number;
  topic: string;
}

interface Conn {
  ws: BunWs;
  closed: boolean;
  app: App | null;
  id: string;
  from: { app_name: string; client_id: string } | null;
  s: number;
  out: string[];
}

const cfg = baselineConfig(process.env);
const HELLO = JSON.stringify({ op: 0, d: { heartbeat_interval: cfg.heartbeatInterval, worker: cfg.worker } });
const WELCOME = JSON.stringify({ op: 2, d: "hi i'm dad" });
const apps = new Map<string, App>();

const pending: Conn[] = [];
function queue(conn: Conn, text: string): void {
  if (conn.out.length === 0 && pending.push(conn) === 1) setImmediate(flush);
  conn.out.push(text);
}
function flush(): void {
  for (let i = 0; i < pending.length; i++) {
    const { ws, out, closed } = pending[i]!;
    if (!closed) {
      ws.cork(() => {
        for (let j = 0; j < out.length; j++) ws.send(out[j]!);
      });
    }
    out.length = 0;
  }
  pending.length = 0;
}

function deliver(to: Conn, f: any, from: Conn['from']): void {
  queue(to, JSON.stringify({ op: 8, e: f.e, d: f.d ?? null, from, nonce: f.nonce, s: ++to.s }));
}

function message(conn: Conn, text: string): void {
  let f: any;
  try {
    f = JSON.parse(text);
  } catch {
    return conn.ws.close(4400, 'bad frame');
  }
  switch (f?.op) {
    case 3:
      return queue(conn, '{"op":4}');
    case 1: {
      const d = f.d ?? {};
      if (d.password !== cfg.password) return conn.ws.close(4401, 'bad password');
      const name = String(d.app_name);
      let app = apps.get(name);
      if (!app) apps.set(name, (app = { byId: new Map(), list: [], cursor: 0, s: 0, topic: `app:${name}` }));
      conn.app = app;
      conn.id = String(d.client_id);
      conn.from = { app_name: name, client_id: conn.id };
      app.byId.set(conn.id, conn);
      app.list.push(conn);
      conn.ws.subscribe(app.topic);
      return queue(conn, WELCOME);
    }
    case 8: {
      const to = f.to;
      if (!conn.from || !to) return;
      const app = apps.get(to.app_name);
      if (!app) return;
      if (to.client_id !== undefined) {
        const r = app.byId.get(to.client_id);
        if (r) deliver(r, f, conn.from);
      } else if (to.mode === 'all') {
        // Bun's native fan-out, one frame to every subscriber but the sender, is
        // what a plain relay on Bun would use. It costs per-session `s` (this
        // frame carries the app's count), which Nerve must keep: this baseline
        // is a ceiling, not a protocol-complete relay.
        conn.ws.publish(app.topic, JSON.stringify({ op: 8, e: f.e, d: f.d ?? null, from: conn.from, nonce: f.nonce, s: ++app.s }));
      } else if (app.list.length > 0) {
        const r = app.list[app.cursor++ % app.list.length]!;
        if (r !== conn) deliver(r, f, conn.from);
      }
      return;
    }
  }
}

function closed(conn: Conn): void {
  conn.closed = true;
  const app = conn.app;
  if (!app) return;
  if (app.byId.get(conn.id) === conn) app.byId.delete(conn.id);
  const i = app.list.indexOf(conn);
  if (i >= 0) app.list.splice(i, 1);
}

const server = Bun.serve({
  port: cfg.port,
  hostname: cfg.host,
  fetch(req: Request, srv: any) {
    if (srv.upgrade(req, { data: null })) return undefined;
    return new Response('baseline relay', { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    idleTimeout: 0,
    open(ws: BunWs) {
      ws.data = { ws, closed: false, app: null, id: '', from: null, s: 0, out: [] };
      queue(ws.data, HELLO);
    },
    message(ws: BunWs, msg: string | Uint8Array) {
      message(ws.data, typeof msg === 'string' ? msg : new TextDecoder().decode(msg));
    },
    close(ws: BunWs) {
      closed(ws.data);
    },
  },
});
console.log(listeningLine(server.port, 'bun'));

const stop = () => {
  server.stop(true);
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
