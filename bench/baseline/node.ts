// The Node baseline: plain `ws`, the relay logic from relay.ts, and every
// socket's writes corked until the end of the event-loop turn (one syscall per
// socket per turn), which is the practical ceiling for a Node WebSocket relay.

import { WebSocketServer, type WebSocket } from 'ws';
import { baselineConfig, createRelay, listeningLine, type Peer } from './relay.ts';

const cfg = baselineConfig(process.env);
const relay = createRelay(cfg);

class CorkedPeer implements Peer {
  corked = false;
  constructor(private readonly ws: WebSocket, private readonly sock: { cork(): void; uncork(): void }) {}
  send(text: string): void {
    if (!this.corked) {
      this.corked = true;
      this.sock.cork();
      pending.push(this);
      if (pending.length === 1) setImmediate(uncorkAll);
    }
    this.ws.send(text);
  }
  close(code: number, reason: string): void {
    this.ws.close(code, reason);
  }
  uncork(): void {
    this.corked = false;
    this.sock.uncork();
  }
}

const pending: CorkedPeer[] = [];
const uncorkAll = () => {
  for (const p of pending) p.uncork();
  pending.length = 0;
};

const wss = new WebSocketServer({ port: cfg.port, host: cfg.host, perMessageDeflate: false });
wss.on('connection', (ws) => {
  const conn = relay.open(new CorkedPeer(ws, (ws as any)._socket));
  ws.on('message', (data, isBinary) => relay.message(conn, isBinary ? String(data) : data.toString()));
  ws.on('close', () => relay.close(conn));
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
