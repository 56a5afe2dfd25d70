// What the hostile, slow-consumer and memory suites share: hand-made msgpack
// bytes, the healthy request/reply pair checked after every probe, the
// server's resident memory read from /proc, and raw HTTP bodies streamed in.

import { zlibSync } from 'fflate';
import { readdirSync, readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect as netConnect, type Socket } from 'node:net';
import { expect } from 'vitest';
import { toMsgpack } from '../core/fuzz-frames.ts';
import { TestClient } from './client.ts';
import { dispatchFrame, expectError, identified, uid, type RunningServer } from './harness.ts';

export { deepArray, deepObject, deepQuery, EXTENSIONS, Raw, REDOS_VICTIM, toJson, toMsgpack, uint64 } from '../core/fuzz-frames.ts';

/** /health must answer within this even right after a hostile frame: the hub never stalls on one. */
export const HEALTH_MS = 1_000;

/** GET /health, timed. */
export async function timedHealth(server: RunningServer): Promise<{ ms: number; status: number; body: any }> {
  const started = performance.now();
  const res = await fetch(`${server.http}/health`, { signal: AbortSignal.timeout(10_000) });
  const body = await res.json();
  return { ms: performance.now() - started, status: res.status, body };
}

/**
 * Waits for `until`, asking /health once a second meanwhile, and returns its value with the moment
 * it settled: no request to the server follows five idle seconds.
 *
 * `wrangler dev` (4.86.0) answers through a proxy workerd, which forwards each request to the
 * Worker's workerd on a pooled connection it reuses for up to 5 s, while that workerd closes a
 * connection after 5 s without a request (kj's defaults, both). A request forwarded as its
 * connection closes fails ("Network connection lost."), and wrangler's ProxyWorker puts a failed GET
 * whose path is not `/` in a retry queue that only the next request into the proxy empties: the GET
 * hangs until one comes. Seen with no WebSocket at all, two GET /health 4.98 to 5.01 s apart (7 of
 * 45 hung); a hung request reached the Worker only along with the next one, while the hub answered
 * /health sent straight to the Worker's workerd within 3 ms. Other runtimes have no proxy.
 */
export async function askingHealth<T>(server: RunningServer, until: Promise<T>, every = 1_000): Promise<{ value: T; at: number }> {
  const settled = until.then((value) => ({ value, at: performance.now() }));
  for (;;) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const tick = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), every);
    });
    const done = await Promise.race([settled, tick]);
    clearTimeout(timer);
    if (done) return done;
    await timedHealth(server);
  }
}

export interface Pair {
  requester: TestClient;
  responder: TestClient;
  /** One request and its reply, each within HEALTH_MS; returns the round trip in ms. */
  exchange(): Promise<number>;
  close(): Promise<void>;
}

let exchanges = 0;

/** Two well-behaved clients, one asking, one answering, as a bystander of every attack. */
export async function healthyPair(server: RunningServer): Promise<Pair> {
  const app = uid('healthy');
  const responder = await identified(server, app, 'responder');
  const requester = await identified(server, uid('healthy-api'), 'requester');
  return {
    requester,
    responder,
    async exchange() {
      const nonce = `healthy-${++exchanges}`;
      const started = performance.now();
      requester.send(dispatchFrame('PING', { app_name: app }, { d: { nonce }, nonce }));
      const ping = await responder.waitFor((f) => f?.op === 8 && f.e === 'PING' && f.nonce === nonce, HEALTH_MS * 3, `PING ${nonce}`);
      responder.send(dispatchFrame('PONG', { app_name: ping.from.app_name, client_id: ping.from.client_id }, { d: { ok: true }, nonce }));
      const pong = await requester.waitFor((f) => f?.op === 8 && f.e === 'PONG' && f.nonce === nonce, HEALTH_MS * 3, `PONG ${nonce}`);
      expect(pong.d).toEqual({ ok: true });
      return performance.now() - started;
    },
    async close() {
      await Promise.all([requester.close(1000), responder.close(1000)]);
    },
  };
}

/**
 * The bystander's view after a probe: /health answers at once, a fresh (or the
 * given) request/reply pair still gets its answer promptly, and the server
 * logged no internal error since line `since` of its output.
 */
export async function expectHealthy(server: RunningServer, options: { pair?: Pair; since?: number } = {}): Promise<void> {
  const { pair, since = 0 } = options;
  const health = await timedHealth(server);
  expect(health.status, `/health: ${JSON.stringify(health.body)}`).toBe(200);
  expect(health.ms, '/health answered promptly').toBeLessThan(HEALTH_MS);
  const own = pair === undefined;
  const used = pair ?? (await healthyPair(server));
  try {
    expect(await used.exchange(), 'request/reply round trip in ms').toBeLessThan(HEALTH_MS);
  } finally {
    if (own) await used.close();
  }
  expect(server.lines.slice(since).filter((line) => line.includes('"level":"error"')), 'internal errors logged').toEqual([]);
}

/** Writes a frame as hand-made msgpack (extensions and all), deflated if the connection is zlib. */
export function sendPacked(client: TestClient, frame: unknown): void {
  const bytes = toMsgpack(frame);
  client.sendRaw(client.wire.compression === 'zlib' ? zlibSync(bytes) : bytes);
}

/** expectError, failing with what was seen when the close never completes rather than hanging the test. */
export async function expectErrorWithin(client: TestClient, code: number, reason: RegExp | string, ms = 5_000): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const seen = client.log.map((r) => JSON.stringify(r.frame)).join(', ');
      reject(new Error(`no close ${code} within ${ms} ms; received: ${seen || 'nothing'}; socket state ${client.ws.readyState}`));
    }, ms);
  });
  try {
    await Promise.race([expectError(client, code, reason, ms), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** "msgpack extension 0x78", "extension type 120"…: a refusal must say which extension it met. */
export function namesExtension(type: number): RegExp {
  const hex = (type & 0xff).toString(16).padStart(2, '0');
  const names = [`0x${hex}`, `0x${hex.replace(/^0/, '')}`, String(type & 0xff)];
  if (type === -1) names.push('-1', 'timestamp');
  if (type === 0) names.push('undefined');
  return new RegExp(`extension[\\s\\S]*(${names.join('|')})\\b|\\b(${names.join('|')})\\b[\\s\\S]*extension`, 'i');
}

// ── server memory ───────────────────────────────────────────────────────────

function parentOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return undefined;
  }
}

function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

/**
 * The process that runs the hub: the child itself for Node, Deno and Bun;
 * for Cloudflare, the workerd that wrangler started under it.
 */
export function hubPid(server: RunningServer): number {
  const root = server.child.pid!;
  if (server.runtime !== 'cloudflare') return root;
  const tree = new Set([root]);
  // Two passes reach grandchildren whatever order /proc lists them in.
  for (let pass = 0; pass < 3; pass++) {
    for (const entry of readdirSync('/proc')) {
      const pid = Number(entry);
      if (!Number.isInteger(pid) || tree.has(pid)) continue;
      const parent = parentOf(pid);
      if (parent !== undefined && tree.has(parent)) tree.add(pid);
    }
  }
  const workerd = [...tree].find((pid) => commandOf(pid) === 'workerd');
  if (workerd === undefined) throw new Error(`no workerd process under wrangler (pid ${root})`);
  return workerd;
}

/** Resident set size of the hub's process, in bytes, from /proc/<pid>/status (VmRSS). */
export function serverRss(server: RunningServer): number {
  const status = readFileSync(`/proc/${hubPid(server)}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (!match) throw new Error('no VmRSS in /proc status');
  return Number(match[1]) * 1024;
}

/** Samples the hub's RSS every `every` ms until stopped; keeps the peak. */
export function watchRss(server: RunningServer, every = 50): { readonly peak: number; stop(): number } {
  let peak = serverRss(server);
  const timer = setInterval(() => {
    try {
      peak = Math.max(peak, serverRss(server));
    } catch {
      // the process is exiting
    }
  }, every);
  return {
    get peak() {
      return peak;
    },
    stop() {
      clearInterval(timer);
      return peak;
    },
  };
}

export const MiB = 1_048_576;

export function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

// ── raw HTTP ────────────────────────────────────────────────────────────────

export interface StreamedPost {
  status: number | undefined;
  body: string;
  /** Bytes of the body written before the answer came (or the connection ended). */
  written: number;
  error?: string;
}

/**
 * POSTs `total` bytes of a JSON-looking body in 64 KiB chunks, declared with
 * Content-Length or sent chunked, and stops writing as soon as an answer
 * arrives: what a server that refuses early answers, without reading the rest.
 */
export function streamPost(server: RunningServer, path: string, total: number, options: { chunked?: boolean; password?: string } = {}): Promise<StreamedPost> {
  return new Promise((resolve) => {
    const headers: Record<string, string> = {
      authorization: `Bearer ${options.password ?? server.password}`,
      'content-type': 'application/json',
    };
    if (!options.chunked) headers['content-length'] = String(total);
    const req = httpRequest({ host: '127.0.0.1', port: server.port, method: 'POST', path, headers });
    let written = 0;
    let answered = false;
    let settled = false;
    const finish = (result: StreamedPost) => {
      if (settled) return;
      settled = true;
      req.destroy();
      resolve(result);
    };
    req.on('response', (res) => {
      answered = true;
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => finish({ status: res.statusCode, body, written }));
      res.on('error', (error) => finish({ status: res.statusCode, body, written, error: error.message }));
    });
    req.on('error', (error) => {
      if (!answered) finish({ status: undefined, body: '', written, error: error.message });
    });
    const chunk = Buffer.alloc(65_536, 0x20);
    chunk.write('{"e":"BIG","to":{"app_name":"nobody"},"d":"');
    const pump = () => {
      while (!answered && !settled && written < total) {
        const size = Math.min(chunk.length, total - written);
        written += size;
        if (!req.write(size === chunk.length ? chunk : chunk.subarray(0, size))) {
          req.once('drain', pump);
          return;
        }
      }
      if (!answered && !settled && written >= total) req.end();
    };
    pump();
  });
}

// ── a peer that never finishes closing ──────────────────────────────────────

export interface StuckPeer {
  socket: Socket;
  /** Resolves with the close code once the server's close frame has arrived (the peer never answers it). */
  closeFrame: Promise<number>;
}

/** Completes the upgrade, keeps reading, and never sends a frame: not even the reply to a close. */
export function stuckPeer(server: RunningServer): Promise<StuckPeer> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(server.port, '127.0.0.1', () => {
      socket.write(
        'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
      );
    });
    let buffer = Buffer.alloc(0);
    let upgraded = false;
    let onClose: (code: number) => void = () => {};
    const closeFrame = new Promise<number>((r) => (onClose = r));
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      if (!upgraded) {
        const end = buffer.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buffer.subarray(0, end).toString('latin1');
        buffer = buffer.subarray(end + 4);
        upgraded = true;
        if (head.startsWith('HTTP/1.1 101')) resolve({ socket, closeFrame });
        else reject(new Error(`upgrade refused: ${head.split('\r\n')[0]}`));
      }
      // Server frames are unmasked: opcode, length, payload.
      while (buffer.length >= 2) {
        const opcode = buffer[0]! & 0x0f;
        let length = buffer[1]! & 0x7f;
        let offset = 2;
        if (length === 126) {
          if (buffer.length < 4) return;
          length = buffer.readUInt16BE(2);
          offset = 4;
        } else if (length === 127) {
          if (buffer.length < 10) return;
          length = Number(buffer.readBigUInt64BE(2));
          offset = 10;
        }
        if (buffer.length < offset + length) return;
        if (opcode === 0x8) onClose(length >= 2 ? buffer.readUInt16BE(offset) : 1005);
        buffer = buffer.subarray(offset + length);
      }
    });
    socket.on('error', () => {});
  });
}
