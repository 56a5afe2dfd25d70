// A deliberately small RFC 6455 client over node:net for the load generator.
// It exists so the client side costs far less CPU than the server under test:
// no per-frame objects, batched writes, and frames handed over as byte ranges.

import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';

/** Called for every complete text/binary frame: the payload is buf[start, end). */
export type FrameHandler = (conn: WsConn, buf: Buffer, start: number, end: number) => void;

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export class WsConn {
  /** Frames that arrive before the first handler is set (HELLO can come with the 101) are kept for it. */
  private early: Buffer[] | null = [];
  private handler: FrameHandler = (_c, buf, start, end) => {
    this.early?.push(Buffer.from(buf.subarray(start, end)));
  };
  get onFrame(): FrameHandler {
    return this.handler;
  }
  set onFrame(h: FrameHandler) {
    this.handler = h;
    const early = this.early;
    this.early = null;
    if (early) for (const b of early) h(this, b, 0, b.length);
  }
  onClose: (conn: WsConn) => void = () => {};
  closed = false;
  private rest: Buffer | null = null;
  private out: string[] = [];
  private outLens: number[] = [];
  private outBytes = 0;

  constructor(readonly sock: net.Socket) {}

  /** Queue a text frame; it goes out with the next flush(). */
  queue(text: string): void {
    const len = Buffer.byteLength(text);
    this.out.push(text);
    this.outLens.push(len);
    this.outBytes += len + headerSize(len);
  }

  /** One write for everything queued since the last flush. */
  flush(): void {
    const n = this.out.length;
    if (n === 0 || this.closed) return;
    const buf = Buffer.allocUnsafe(this.outBytes);
    let o = 0;
    for (let i = 0; i < n; i++) {
      const s = this.out[i];
      o = writeHeader(buf, o, this.outLens[i]);
      // The mask key is zero, so the payload goes out unchanged: legal (the
      // server must unmask whatever the key) and it keeps the client cheap.
      o += buf.write(s, o, 'utf8');
    }
    this.out.length = 0;
    this.outLens.length = 0;
    this.outBytes = 0;
    this.sock.write(buf);
  }

  send(text: string): void {
    this.queue(text);
    this.flush();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    // A close frame (code 1000) then FIN; the servers' close paths are not under test.
    const f = Buffer.from([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
    this.sock.end(f);
  }

  destroy(): void {
    this.closed = true;
    this.sock.destroy();
  }

  /** @internal */
  data(chunk: Buffer): void {
    let b = chunk;
    if (this.rest) {
      b = Buffer.concat([this.rest, chunk]);
      this.rest = null;
    }
    let i = 0;
    const n = b.length;
    while (n - i >= 2) {
      const b0 = b[i];
      const b1 = b[i + 1];
      let len = b1 & 0x7f;
      let h = 2;
      if (len === 126) {
        if (n - i < 4) break;
        len = b.readUInt16BE(i + 2);
        h = 4;
      } else if (len === 127) {
        if (n - i < 10) break;
        len = b.readUInt32BE(i + 2) * 0x100000000 + b.readUInt32BE(i + 6);
        h = 10;
      }
      if (b1 & 0x80) h += 4; // servers never mask; tolerate it anyway by skipping the key
      if (n - i < h + len) break;
      const op = b0 & 0x0f;
      const start = i + h;
      const end = start + len;
      i = end;
      if (op === 1 || op === 2) this.handler(this, b, start, end);
      else if (op === 9) this.sendControl(0x8a, b.subarray(start, end));
      else if (op === 8) {
        if (!this.closed) this.close();
      }
      // op 0 (continuation) is never produced by the servers for frames this small.
    }
    if (i < n) this.rest = b.subarray(i);
  }

  private sendControl(first: number, payload: Buffer): void {
    const f = Buffer.alloc(6 + payload.length);
    f[0] = first;
    f[1] = 0x80 | payload.length;
    payload.copy(f, 6);
    this.sock.write(f);
  }
}

function headerSize(len: number): number {
  return len < 126 ? 6 : len < 65536 ? 8 : 14;
}

function writeHeader(buf: Buffer, o: number, len: number): number {
  buf[o++] = 0x81;
  if (len < 126) buf[o++] = 0x80 | len;
  else if (len < 65536) {
    buf[o++] = 0x80 | 126;
    buf.writeUInt16BE(len, o);
    o += 2;
  } else {
    buf[o++] = 0x80 | 127;
    buf.writeUInt32BE(Math.floor(len / 0x100000000), o);
    buf.writeUInt32BE(len >>> 0, o + 4);
    o += 8;
  }
  buf.writeUInt32BE(0, o);
  return o + 4;
}

/** Open a socket and complete the HTTP upgrade; frames that arrive with the 101 are kept. */
export function connect(port: number, host = '127.0.0.1', path = '/', timeoutMs = 10_000): Promise<WsConn> {
  return new Promise((resolve, reject) => {
    const key = randomBytes(16).toString('base64');
    const expect = createHash('sha1').update(key + GUID).digest('base64');
    const sock = net.connect({ port, host, noDelay: true });
    const conn = new WsConn(sock);
    let head: Buffer | null = Buffer.alloc(0);
    const timer = setTimeout(() => fail(new Error(`upgrade timed out after ${timeoutMs} ms`)), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      sock.destroy();
      reject(err);
    };
    sock.on('connect', () => {
      sock.write(
        `GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    sock.on('data', (chunk: Buffer) => {
      if (head === null) return conn.data(chunk);
      head = Buffer.concat([head, chunk]);
      const at = head.indexOf('\r\n\r\n');
      if (at < 0) return;
      const text = head.subarray(0, at).toString('latin1');
      const rest = head.subarray(at + 4);
      head = null;
      if (!/^HTTP\/1\.1 101/.test(text)) return fail(new Error(`upgrade refused: ${text.split('\r\n')[0]}`));
      const accept = /sec-websocket-accept:\s*(\S+)/i.exec(text)?.[1];
      if (accept !== expect) return fail(new Error('bad Sec-WebSocket-Accept'));
      clearTimeout(timer);
      resolve(conn);
      if (rest.length) conn.data(rest);
    });
    sock.on('error', (err) => {
      if (head !== null) fail(err);
      else conn.closed = true;
    });
    sock.on('close', () => {
      conn.closed = true;
      conn.onClose(conn);
    });
  });
}

const T_KEY = Buffer.from('"t":');

/**
 * The integer after `"t":` inside buf[start, end), or -1. The load client
 * stamps every dispatch with `"t":<µs>` in `d` and reads it back here
 * without decoding the frame.
 */
export function readStamp(buf: Buffer, start: number, end: number): number {
  const at = buf.indexOf(T_KEY, start);
  if (at < 0 || at >= end) return -1;
  let i = at + 4;
  while (buf[i] === 0x20) i++;
  let v = 0;
  let any = false;
  for (; i < end; i++) {
    const c = buf[i] - 48;
    if (c < 0 || c > 9) break;
    v = v * 10 + c;
    any = true;
  }
  return any ? v : -1;
}
