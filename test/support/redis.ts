// A private redis-server for tests: started on a free port in a temp folder,
// with no persistence unless AOF is asked for, stopped gracefully or killed,
// and started again on the same port; ready once it answers PING. Also the
// describeWithRedis convention the cluster suites use when redis-server is
// missing: one line and a skip on a developer's machine, a failure in CI.

import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { describe, it } from 'vitest';
import { freePort } from './server.ts';

/** The redis-server binary on PATH (or where Debian's package puts it), if any. */
export function redisServerPath(): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/usr/sbin', '/usr/local/bin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = join(dir, 'redis-server');
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

export function redisAvailable(): boolean {
  return redisServerPath() !== undefined;
}

const MISSING = 'redis-server is not installed';

/**
 * `describe` for a suite that needs redis-server. Without it: under CI=true
 * the suite fails (CI must install it, see .ci/run); elsewhere it is skipped,
 * and the test run prints one line saying so (once per run, not per file: the
 * files of one run share the parent process, whose id names a marker file).
 */
export function describeWithRedis(name: string, suite: () => void | Promise<void>): void {
  if (redisAvailable()) {
    describe(name, suite);
    return;
  }
  if (process.env.CI === 'true') {
    describe(name, () => {
      it('needs redis-server', () => {
        throw new Error(`${MISSING}: the cluster suites need it (.ci/run installs Debian's redis-server package)`);
      });
    });
    return;
  }
  if (firstToSay(join(tmpdir(), `nerve-redis-missing-${process.ppid}`))) {
    process.stderr.write(`cluster suites skipped: ${MISSING} (apt-get install redis-server)\n`);
  }
  describe.skip(name, suite);
}

/** True for the first caller to create `marker` (a marker left by an earlier run, an hour old, does not count). */
function firstToSay(marker: string): boolean {
  try {
    writeFileSync(marker, '', { flag: 'wx' });
    return true;
  } catch {
    try {
      if (statSync(marker).mtimeMs > Date.now() - 3_600_000) return false;
      writeFileSync(marker, '');
      return true;
    } catch {
      return false;
    }
  }
}

export interface RedisOptions {
  /** Keep data in an append-only file (fsynced on every write), so it survives a stop or a kill. */
  appendonly?: boolean;
  /** Listen here instead of on a free port. */
  port?: number;
}

/** A decoded RESP reply. Error replies are thrown as RedisReplyError. */
export type RespValue = string | number | null | RespValue[];

export class RedisReplyError extends Error {}

/** Every redis-server started here and still running: killed if the test process exits first. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export class RedisServer {
  readonly port: number;
  /** redis://127.0.0.1:PORT */
  readonly url: string;
  /** The working folder (the AOF lives here); removed by dispose(). */
  readonly dir: string;
  /** Every line the server printed, across restarts. */
  readonly lines: string[] = [];
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(
    private readonly binary: string,
    port: number,
    private readonly options: RedisOptions,
  ) {
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
    this.dir = mkdtempSync(join(tmpdir(), 'nerve-redis-'));
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  private args(): string[] {
    const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir, '--daemonize', 'no', '--logfile', '', '--save', ''];
    if (this.options.appendonly) args.push('--appendonly', 'yes', '--appendfsync', 'always');
    else args.push('--appendonly', 'no');
    return args;
  }

  /** Starts the server (again, on the same port and folder) and resolves once it answers PING. */
  async start(timeout = 10_000): Promise<void> {
    if (this.running) throw new Error(`redis-server on port ${this.port} is already running`);
    const child = spawn(this.binary, this.args(), { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    running.add(child);
    const onData = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n')) if (line) this.lines.push(line);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    let gone = false;
    this.exited = new Promise((resolve) =>
      child.once('exit', () => {
        gone = true;
        running.delete(child);
        resolve();
      }),
    );
    child.once('error', (error) => this.lines.push(String(error)));
    const deadline = Date.now() + timeout;
    for (;;) {
      if (gone) throw new Error(`redis-server on port ${this.port} exited while starting:\n${this.lines.slice(-20).join('\n')}`);
      if (await this.ping()) return;
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`redis-server on port ${this.port} did not answer PING within ${timeout} ms:\n${this.lines.slice(-20).join('\n')}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** True when the server answers PING with PONG right now (not while it is still loading its AOF). */
  async ping(timeout = 1000): Promise<boolean> {
    try {
      return (await this.command(['PING'], timeout)) === 'PONG';
    } catch {
      return false;
    }
  }

  /** Sends one command on a fresh connection and resolves with the reply. */
  command(args: string[], timeout = 2000): Promise<RespValue> {
    return respCommand(this.port, args, timeout);
  }

  /** Graceful stop: SHUTDOWN NOSAVE (an AOF is still flushed), then SIGTERM, then SIGKILL if it lingers. */
  async stop(): Promise<void> {
    if (!this.running) return this.exited;
    const child = this.child!;
    await this.command(['SHUTDOWN', 'NOSAVE']).catch(() => undefined);
    if (await exitsWithin(this.exited, 5000)) return;
    child.kill('SIGTERM');
    if (await exitsWithin(this.exited, 5000)) return;
    child.kill('SIGKILL');
    return this.exited;
  }

  /** SIGKILL: gone at once, with whatever it had not written. */
  async kill(): Promise<void> {
    if (this.running) this.child!.kill('SIGKILL');
    return this.exited;
  }

  /** Stops the server and removes its folder. */
  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function exitsWithin(exited: Promise<void>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    exited.then(() => true),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Starts a redis-server on a free port (or options.port) and waits until it answers PING. */
export async function startRedis(options: RedisOptions = {}): Promise<RedisServer> {
  const binary = redisServerPath();
  if (!binary) throw new Error(`${MISSING} (apt-get install redis-server)`);
  const server = new RedisServer(binary, options.port ?? (await freePort()), options);
  try {
    await server.start();
  } catch (error) {
    rmSync(server.dir, { recursive: true, force: true });
    throw error;
  }
  return server;
}

// RESP, just enough to ask a test server something: one command per connection.

function encodeCommand(args: string[]): Buffer {
  const parts = [`*${args.length}\r\n`];
  for (const arg of args) parts.push(`$${Buffer.byteLength(arg)}\r\n${arg}\r\n`);
  return Buffer.from(parts.join(''));
}

/** Parses one reply at `at`: [value, next offset], or undefined while incomplete. */
function parseReply(buffer: Buffer, at: number): [RespValue | RedisReplyError, number] | undefined {
  const end = buffer.indexOf('\r\n', at);
  if (end < 0) return undefined;
  const line = buffer.toString('utf8', at + 1, end);
  const next = end + 2;
  switch (String.fromCharCode(buffer[at]!)) {
    case '+':
      return [line, next];
    case '-':
      return [new RedisReplyError(line), next];
    case ':':
      return [Number(line), next];
    case '$': {
      const length = Number(line);
      if (length < 0) return [null, next];
      if (buffer.length < next + length + 2) return undefined;
      return [buffer.toString('utf8', next, next + length), next + length + 2];
    }
    case '*': {
      const count = Number(line);
      if (count < 0) return [null, next];
      const items: RespValue[] = [];
      let offset = next;
      for (let i = 0; i < count; i++) {
        const item = parseReply(buffer, offset);
        if (!item) return undefined;
        if (item[0] instanceof RedisReplyError) return [item[0], item[1]];
        items.push(item[0]);
        offset = item[1];
      }
      return [items, offset];
    }
    default:
      throw new Error(`not a RESP reply: ${JSON.stringify(buffer.toString('utf8', at, Math.min(buffer.length, at + 40)))}`);
  }
}

/**
 * One command over a raw TCP connection. A connection the server closes
 * without a reply resolves with null (what SHUTDOWN does when it works).
 */
export function respCommand(port: number, args: string[], timeout = 2000): Promise<RespValue> {
  return new Promise((resolve, reject) => {
    let received = Buffer.alloc(0);
    let settled = false;
    const finish = (error: Error | undefined, value?: RespValue) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(value ?? null);
    };
    const socket = connect(port, '127.0.0.1', () => socket.write(encodeCommand(args)));
    const timer = setTimeout(() => finish(new Error(`no reply to ${args[0]} from port ${port} within ${timeout} ms`)), timeout);
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      let parsed: ReturnType<typeof parseReply>;
      try {
        parsed = parseReply(received, 0);
      } catch (error) {
        finish(error as Error);
        return;
      }
      if (!parsed) return;
      if (parsed[0] instanceof RedisReplyError) finish(parsed[0]);
      else finish(undefined, parsed[0]);
    });
    socket.on('error', (error) => finish(error));
    socket.on('close', () => finish(undefined, null));
  });
}
