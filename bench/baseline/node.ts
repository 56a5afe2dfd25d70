// The Node baseline: the fastest plain relay Node allows. `ws` does the handshake
// and reads; the relay frames its own writes, one buffer per socket per turn, and
// encodes a dispatch once, splicing in each recipient's `s`.

import type { Socket } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { baselineConfig, listeningLine } from './common.ts';

interface App {
  byId: Map<string, Conn>;
  list: Conn[];
  cursor: number;
}

interface Conn {
  ws: WebSocket;
  raw: Socket;
  app: App | null;
  id: string;
  /** `"from":{…}` encoded once at IDENTIFY. */
  from: string;
  s: number;
  /** This turn's frames: each payload is heads[i], then (if seqs[i] > 0) seqs[i] in digits and `}`. */
  heads: Buffer[];
  seqs: number[];
}

const cfg = baselineConfig(process.env);
const HELLO = Buffer.from(JSON.stringify({ op: 0, d: { heartbeat_interval: cfg.heartbeatInterval, worker: cfg.worker } }));
const WELCOME = Buffer.from(JSON.stringify({ op: 2, d: "hi i'm dad" }));
const ACK = Buffer.from('{"op":4}');
const CLOSE_BRACE = 0x7d;
const apps = new Map<string, App>();

// A server's frames are unmasked: a 2–10 byte header, then the payload.
const pending: Conn[] = [];
function queue(conn: Conn, head: Buffer, s: number): void {
  if (conn.heads.length === 0 && pending.push(conn) === 1) setImmediate(flushAll);
  conn.heads.push(head);
  conn.seqs.push(s);
}

const digits = (n: number) => (n < 10 ? 1 : n < 100 ? 2 : n < 1000 ? 3 : n < 10000 ? 4 : n < 100000 ? 5 : n < 1000000 ? 6 : n < 10000000 ? 7 : n < 100000000 ? 8 : n < 1000000000 ? 9 : 10);

function flush(conn: Conn): void {
  const { heads, seqs } = conn;
  let total = 0;
  for (let i = 0; i < heads.length; i++) {
    const length = heads[i]!.length + (seqs[i]! > 0 ? digits(seqs[i]!) + 1 : 0);
    total += (length < 126 ? 2 : length < 65536 ? 4 : 10) + length;
  }
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (let i = 0; i < heads.length; i++) {
    const head = heads[i]!;
    const s = seqs[i]!;
    const length = head.length + (s > 0 ? digits(s) + 1 : 0);
    out[at++] = 0x81; // FIN + text
    if (length < 126) out[at++] = length;
    else if (length < 65536) {
      out[at++] = 126;
      out.writeUInt16BE(length, at);
      at += 2;
    } else {
      out[at++] = 127;
      out.writeUInt32BE(0, at);
      out.writeUInt32BE(length, at + 4);
      at += 8;
    }
    at += head.copy(out, at);
    if (s > 0) {
      at += digits(s);
      for (let n = s, k = at - 1; n > 0; n = (n / 10) | 0) out[k--] = 0x30 + (n % 10);
      out[at++] = CLOSE_BRACE;
    }
  }
  heads.length = 0;
  seqs.length = 0;
  if (conn.ws.readyState === 1 && !conn.raw.destroyed) conn.raw.write(out);
}
function flushAll(): void {
  for (let i = 0; i < pending.length; i++) flush(pending[i]!);
  pending.length = 0;
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
      return queue(conn, ACK, 0);
    case 1: {
      const d = f.d ?? {};
      if (d.password !== cfg.password) return conn.ws.close(4401, 'bad password');
      const name = String(d.app_name);
      let app = apps.get(name);
      if (!app) apps.set(name, (app = { byId: new Map(), list: [], cursor: 0 }));
      conn.app = app;
      conn.id = String(d.client_id);
      conn.from = JSON.stringify({ app_name: name, client_id: conn.id });
      app.byId.set(conn.id, conn);
      app.list.push(conn);
      return queue(conn, WELCOME, 0);
    }
    case 8: {
      const to = f.to;
      if (!conn.app || !to) return;
      const app = apps.get(to.app_name);
      if (!app) return;
      const head = Buffer.from(
        '{"op":8,"e":' + JSON.stringify(f.e) + ',"d":' + JSON.stringify(f.d ?? null) + ',"from":' + conn.from +
          (f.nonce !== undefined ? ',"nonce":' + JSON.stringify(f.nonce) : '') + ',"s":',
      );
      if (to.client_id !== undefined) {
        const r = app.byId.get(to.client_id);
        if (r) queue(r, head, ++r.s);
      } else if (to.mode === 'all') {
        for (const r of app.list) if (r !== conn) queue(r, head, ++r.s);
      } else if (app.list.length > 0) {
        const r = app.list[app.cursor++ % app.list.length]!;
        if (r !== conn) queue(r, head, ++r.s);
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

const wss = new WebSocketServer({ port: cfg.port, host: cfg.host, perMessageDeflate: false });
wss.on('connection', (ws) => {
  const raw = (ws as unknown as { _socket: Socket })._socket;
  const conn: Conn = { ws, raw, app: null, id: '', from: '', s: 0, heads: [], seqs: [] };
  queue(conn, HELLO, 0);
  ws.on('message', (data: Buffer) => message(conn, data.toString()));
  ws.on('close', () => closed(conn));
  ws.on('error', () => {});
});
wss.on('listening', () => {
  const addr = wss.address();
  console.log(listeningLine(typeof addr === 'object' && addr ? addr.port : cfg.port, 'node'));
});

const stop = () => {
  for (const ws of wss.clients) ws.terminate();
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 500).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
