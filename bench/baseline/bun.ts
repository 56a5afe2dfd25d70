// The Bun baseline: Bun.serve's native WebSocket, the relay logic from
// relay.ts, and writes queued per socket and sent inside one `ws.cork` per
// event-loop turn, the practical ceiling for a Bun WebSocket relay.

import { baselineConfig, createRelay, listeningLine, type Peer, type RelayConn } from './relay.ts';

// Typed loosely so the repo's Node-only tsconfig checks this file too.
declare const Bun: any;
declare const process: { env: Record<string, string | undefined>; on(s: string, f: () => void): void; exit(c: number): never };

interface BunWs {
  data: { conn: RelayConn };
  send(text: string): number;
  cork(f: () => void): void;
  close(code: number, reason: string): void;
}

const cfg = baselineConfig(process.env);
const relay = createRelay(cfg);

class QueuedPeer implements Peer {
  out: string[] = [];
  constructor(readonly ws: BunWs) {}
  send(text: string): void {
    if (this.out.length === 0) {
      pending.push(this);
      if (pending.length === 1) setImmediate(flushAll);
    }
    this.out.push(text);
  }
  close(code: number, reason: string): void {
    this.ws.close(code, reason);
  }
  flush(): void {
    const out = this.out;
    this.ws.cork(() => {
      for (let i = 0; i < out.length; i++) this.ws.send(out[i]);
    });
    out.length = 0;
  }
}

const pending: QueuedPeer[] = [];
const flushAll = () => {
  for (const p of pending) p.flush();
  pending.length = 0;
};

const server = Bun.serve({
  port: cfg.port,
  hostname: cfg.host,
  fetch(req: Request, srv: any) {
    if (srv.upgrade(req, { data: {} })) return undefined;
    return new Response('baseline relay', { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    open(ws: BunWs) {
      ws.data.conn = relay.open(new QueuedPeer(ws));
    },
    message(ws: BunWs, msg: string | Uint8Array) {
      relay.message(ws.data.conn, typeof msg === 'string' ? msg : new TextDecoder().decode(msg));
    },
    close(ws: BunWs) {
      relay.close(ws.data.conn);
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
