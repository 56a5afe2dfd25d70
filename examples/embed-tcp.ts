// Embedding the pure core in a transport Nerve does not ship: newline-delimited
// JSON over plain TCP (node:net). This file owns the whole host — state, the
// one timer, executing outputs — to show the contract in docs/embedding.md.
//
//   NERVE_PASSWORD=secret npx tsx examples/embed-tcp.ts      # port 6670, or NERVE_TCP_PORT
//   nc 127.0.0.1 6670    then type: {"op":1,"d":{"app_name":"a","client_id":"a1","password":"secret"}}
//
// Framing: one protocol frame per line. A line without `op`, `{"close":CODE,"reason":"…"}`,
// is this transport's stand-in for a WebSocket close frame, in either direction.

import { createServer, type Socket } from 'node:net';
import { pathToFileURL } from 'node:url';
import { DEFAULT_LIMITS, createState, nextDeadline, step, type CoreConfig, type Input } from '../src/core/index.ts';

export interface TcpHub {
  port: number;
  /** GO_AWAY to everyone, then resolves once every socket is gone (or after `drainMs`). */
  shutdown(drainMs?: number): Promise<void>;
}

/** The code of a `{"close":CODE}` control line; anything else is an ordinary frame for the core to judge. */
function closeCode(line: string): number | undefined {
  try {
    const code = (JSON.parse(line) as { close?: unknown }).close;
    return Number.isInteger(code) ? (code as number) : undefined;
  } catch {
    return undefined;
  }
}

export interface TcpHubOptions {
  password: string;
  port?: number;
  host?: string;
  worker?: string;
  limits?: Partial<CoreConfig>;
  /** Receives each log line as JSON; console.log by default. */
  log?: (line: string) => void;
}

export function startTcpHub(options: TcpHubOptions): Promise<TcpHub> {
  const log = options.log ?? console.log;
  const config: CoreConfig = {
    ...DEFAULT_LIMITS,
    ...options.limits,
    password: options.password,
    // The core takes no randomness; the host names itself.
    worker: options.worker ?? `nerve-${Math.floor(Math.random() * 0xffffff).toString(16).padStart(6, '0')}`,
  };
  const state = createState(config);
  const sockets = new Map<number, Socket>();
  let nextConn = 1;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let armedAt: number | undefined;
  let idle: (() => void) | undefined;

  // Every event goes through here: step, execute the outputs in order, re-arm the one timer.
  function run(input: Input): void {
    const [, outputs] = step(state, input);
    for (const output of outputs) {
      switch (output.type) {
        case 'send':
          // A JSON, uncompressed connection only ever gets strings, and JSON.stringify never emits a raw newline.
          sockets.get(output.conn)?.write(`${output.data as string}\n`);
          break;
        case 'close': {
          const socket = sockets.get(output.conn);
          socket?.end(`${JSON.stringify({ close: output.code, reason: output.reason })}\n`);
          // Like a WebSocket close handshake, give the peer a moment to hang up, then cut it.
          setTimeout(() => socket?.destroy(), 5_000).unref();
          break;
        }
        case 'log':
          log(JSON.stringify({ level: output.level, worker: config.worker, msg: output.msg, ...output.fields }));
          break;
        // 'dispatched' / 'rejected' answer a `dispatch` input (HTTP on the shipped hosts); none are fed here.
      }
    }
    const at = nextDeadline(state);
    if (at !== armedAt) {
      armedAt = at;
      clearTimeout(timer);
      // A tick may come late, never early: the core handles every deadline at or before `now`.
      if (at !== undefined) timer = setTimeout(() => ((armedAt = undefined), run({ type: 'tick', now: Date.now() })), Math.max(0, at - Date.now()));
    }
  }

  const server = createServer((socket) => {
    const conn = nextConn++;
    sockets.set(conn, socket);
    socket.setEncoding('utf8');
    socket.setNoDelay(true);
    let buffered = '';
    let peerCode: number | undefined;
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      let newline: number;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        const code = line.startsWith('{"close"') ? closeCode(line) : undefined;
        if (code !== undefined) {
          peerCode = code;
          socket.end();
          return;
        }
        if (line.length > 0) run({ type: 'message', now: Date.now(), conn, data: line });
      }
      // More characters than maxPayload is more bytes too: the frame is too large
      // whatever follows, so the core answers 4413 without the rest being buffered.
      if (buffered.length > config.maxPayload) {
        run({ type: 'refused', now: Date.now(), conn, tooLarge: true });
        buffered = '';
      }
    });
    socket.on('close', () => {
      sockets.delete(conn);
      // The peer's own close code, if it sent one; none means a drop, and the session stays resumable.
      run({ type: 'close', now: Date.now(), conn, code: peerCode });
      if (sockets.size === 0) idle?.();
    });
    socket.on('error', () => {}); // 'close' follows and ends the connection
    run({ type: 'open', now: Date.now(), conn, wire: { format: 'json', compression: 'none' } });
  });

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      resolve({
        port,
        async shutdown(drainMs = 10_000) {
          server.close();
          run({ type: 'shutdown', now: Date.now() });
          if (sockets.size > 0) {
            await new Promise<void>((done) => {
              const give = setTimeout(done, drainMs);
              idle = () => (clearTimeout(give), done());
            });
          }
          for (const socket of sockets.values()) socket.destroy();
          clearTimeout(timer);
        },
      });
    });
  });
}

// Run as a program: the same NERVE_PASSWORD as the shipped hosts, port from NERVE_TCP_PORT.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const password = process.env.NERVE_PASSWORD;
  if (!password) {
    console.error('nerve: set NERVE_PASSWORD for the TCP example');
    process.exit(1);
  }
  const hub = await startTcpHub({ password, port: Number(process.env.NERVE_TCP_PORT ?? 6670) });
  console.log(JSON.stringify({ level: 'info', msg: 'listening', port: hub.port, transport: 'tcp+ndjson' }));
  const stop = () => hub.shutdown().then(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
