#!/usr/bin/env node
// The `nerve` command: starts a Node server, or hands over to Bun or Deno, with
// settings from flags and NERVE_* variables (a flag wins over its variable).
// The flags are the variables src/host/config.ts reads, found by watching it read.

import { spawn } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync, realpathSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, ConfigError, type HostConfig } from './host/config.ts';

export interface Setting {
  /** NERVE_HEARTBEAT_INTERVAL */
  env: string;
  /** --heartbeat-interval */
  flag: string;
  meaning: string;
  /** The default as --help shows it. */
  fallback: string;
}

/**
 * What each variable means, for --help. Only the wording lives here: which
 * variables exist, and their defaults, come from loadConfig itself.
 */
const MEANINGS: Readonly<Record<string, { meaning: string; fallback?: string }>> = {
  NERVE_PORT: { meaning: 'listen port (0 picks a free one)' },
  NERVE_HOST: { meaning: 'listen address; a non-loopback host requires a password' },
  NERVE_PASSWORD: { meaning: 'the shared password clients identify with', fallback: 'random, printed once at start' },
  NERVE_HEARTBEAT_INTERVAL: { meaning: 'ms between heartbeats, sent in HELLO' },
  NERVE_MAX_PAYLOAD: { meaning: 'bytes per inbound frame (received, and inflated)' },
  NERVE_QUEUE_TTL: { meaning: 'ms a mode-one dispatch waits for a recipient' },
  NERVE_RESUME_WINDOW: { meaning: 'ms a dropped session can be resumed' },
  NERVE_MAX_METADATA: { meaning: "bytes of a client's metadata as JSON" },
  NERVE_DRAIN_TIMEOUT: { meaning: 'ms shutdown waits for sockets to close' },
  NERVE_CLOSE_GRACE: { meaning: 'ms a connection the server closed has to read what it was sent and answer the close before it is dropped (Node; Bun: before its unsent bytes are)' },
  NERVE_RATE_LIMIT: { meaning: 'inbound frames per second per connection (burst: 2 s worth)', fallback: '0 (off)' },
  NERVE_QUEUE_MAX_COUNT: { meaning: 'held dispatches per app' },
  NERVE_QUEUE_MAX_BYTES: { meaning: 'bytes of held dispatches per app' },
  NERVE_REPLAY_MAX_COUNT: { meaning: 'dispatches kept per session for replay' },
  NERVE_REPLAY_MAX_BYTES: { meaning: 'bytes of dispatches kept per session for replay' },
  NERVE_MAX_DEPTH: { meaning: 'nesting levels of objects and arrays in a frame or HTTP body' },
  NERVE_MAX_QUERY_OPERANDS: { meaning: 'elements of one $in, $nin or $all operand' },
  NERVE_MAX_QUERY_TERMS: { meaning: 'keys and values in one query' },
  NERVE_MAX_QUERY_CONDITIONS: { meaning: 'operators in one query (a plain value is one $eq)' },
  NERVE_MAX_QUERY_WORK: { meaning: "metadata values one dispatch's query may look at across all clients" },
  NERVE_MAX_OUTBOUND: { meaning: 'bytes a connection may leave unread before it is cut as a slow consumer (at least replay bytes + payload)' },
  NERVE_MAX_MEMORY: { meaning: 'bytes of held events, replay buffers and metadata across the hub', fallback: 'a quarter of the heap limit' },
  NERVE_MAX_CONNECTIONS: { meaning: 'open WebSocket connections' },
  NERVE_MAX_UNIDENTIFIED: { meaning: 'open connections that have not identified yet' },
  NERVE_AUTH_FAILURES: { meaning: 'failed authentications per address per minute before a minute of 4429', fallback: '20 (0: off)' },
  NERVE_JWT_SECRET: { meaning: 'HS256 secret (32+ characters) for browser tokens', fallback: 'none: no tokens' },
  NERVE_JWT_PUBLIC_KEYS: { meaning: 'JWKS document (JSON) for RS256/ES256/EdDSA browser tokens', fallback: 'none: no tokens' },
  NERVE_JWT_ISSUER: { meaning: 'the `iss` a token must carry', fallback: 'any' },
  NERVE_JWT_AUDIENCE: { meaning: 'the `aud` a token must carry', fallback: 'any' },
  NERVE_ALLOWED_ORIGINS: { meaning: 'comma-separated origins browsers may connect from; * for any', fallback: 'any origin' },
  NERVE_REDIS_URL: { meaning: 'redis://[user:pass@]host:port[/db] or rediss://… of Redis ≥ 7 or Valkey: join a cluster of nodes (needs @redis/client)', fallback: 'unset: one node, no Redis' },
  NERVE_CLUSTER: { meaning: 'name of the cluster; every Redis key starts with it (letters, digits, -_.:)', fallback: 'nerve' },
  NERVE_NODE_TIMEOUT: { meaning: 'ms after which a node that stopped renewing its liveness is taken for dead and adopted', fallback: '10000' },
};

/** NERVE_HEARTBEAT_INTERVAL → heartbeatInterval, the HostConfig field it sets. */
function fieldOf(env: string): string {
  return env
    .slice('NERVE_'.length)
    .toLowerCase()
    .replace(/_([a-z])/g, (_, letter: string) => letter.toUpperCase());
}

/** Every NERVE_* variable loadConfig reads, in the order it reads them, with its flag and default. */
export function settings(): Setting[] {
  const read: string[] = [];
  const watched = new Proxy({} as Record<string, string | undefined>, {
    get(_, name) {
      if (typeof name === 'string' && name.startsWith('NERVE_') && !read.includes(name)) read.push(name);
      return undefined;
    },
  });
  const defaults = loadConfig(watched) as unknown as Record<string, unknown>;
  // Listening settings first, as the docs list them; a variable without a wording yet goes last.
  const rank = (env: string) => (env in MEANINGS ? Object.keys(MEANINGS).indexOf(env) : Infinity);
  read.sort((a, b) => rank(a) - rank(b));
  return read.map((env) => {
    const known = MEANINGS[env];
    return {
      env,
      flag: `--${env.slice('NERVE_'.length).toLowerCase().replaceAll('_', '-')}`,
      meaning: known?.meaning ?? '',
      fallback: known?.fallback ?? String(defaults[fieldOf(env)] ?? ''),
    };
  });
}

export const RUNTIMES = ['node', 'bun', 'deno'] as const;
export type Runtime = (typeof RUNTIMES)[number];

export type Command =
  | { kind: 'help' }
  | { kind: 'version' }
  | { kind: 'serve'; runtime: Runtime; flags: Record<string, string> };

/** A bad command line; the message names the flag. */
export class FlagError extends Error {}

/** Reads `--name value` and `--name=value`; `flags` maps each variable given to its value. */
export function parseArgs(argv: readonly string[], table: readonly Setting[] = settings()): Command {
  const byFlag = new Map(table.map((setting) => [setting.flag, setting]));
  const flags: Record<string, string> = {};
  let runtime: Runtime = 'node';
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--help' || arg === '-h') return { kind: 'help' };
    if (arg === '--version' || arg === '-v') return { kind: 'version' };
    if (!arg.startsWith('--')) throw new FlagError(`unexpected argument ${JSON.stringify(arg)} (flags start with --; see nerve --help)`);
    const equals = arg.indexOf('=');
    const flag = equals === -1 ? arg : arg.slice(0, equals);
    const setting = byFlag.get(flag);
    if (!setting && flag !== '--runtime') throw new FlagError(`unknown flag ${flag} (see nerve --help)`);
    let value: string;
    if (equals !== -1) value = arg.slice(equals + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) throw new FlagError(`${flag} needs a value`);
      value = next;
      i++;
    }
    if (setting) flags[setting.env] = value;
    else if ((RUNTIMES as readonly string[]).includes(value)) runtime = value as Runtime;
    else throw new FlagError(`--runtime must be one of ${RUNTIMES.join(', ')} (got ${JSON.stringify(value)})`);
  }
  return { kind: 'serve', runtime, flags };
}

export function helpText(table: readonly Setting[] = settings()): string {
  const rows = table.map((s) => [`${s.flag} <value>`, s.env, `${s.meaning} (default: ${s.fallback})`]);
  rows.push(['--runtime <node|bun|deno>', '', 'run the server on this runtime, if installed (default: node)']);
  rows.push(['--help, -h', '', 'print this and exit'], ['--version, -v', '', "print Nerve's version and exit"]);
  const width = (column: number) => Math.max(...rows.map((row) => row[column]!.length));
  const [flagWidth, envWidth] = [width(0), width(1)];
  const lines = rows.map(([flag, env, text]) => `  ${flag!.padEnd(flagWidth)}  ${env!.padEnd(envWidth)}  ${text}`.trimEnd());
  return [
    'Usage: nerve [flags]',
    '',
    'Starts a Nerve hub: a WebSocket server that routes events between services by their metadata.',
    'Each setting is a flag or its NERVE_* environment variable; the flag wins.',
    '',
    ...lines,
    '',
  ].join('\n');
}

/** Nerve's package.json, found from this file in the repository (src/) and in the package (dist/src/). */
export function version(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'package.json');
    if (existsSync(candidate)) {
      const manifest = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: string; version?: string };
      if (manifest.name === 'nerve' && manifest.version) return manifest.version;
    }
    const parent = dirname(dir);
    if (parent === dir) return 'unknown';
    dir = parent;
  }
}

/** A config error in terms of what the user typed: flags they gave are named as flags. */
export function explain(message: string, flags: Readonly<Record<string, string>>): string {
  return message.replace(/\bNERVE_[A-Z_]+\b/g, (env) => (env in flags ? `--${env.slice(6).toLowerCase().replaceAll('_', '-')}` : env));
}

/** The runtime's executable on PATH (npx and npm scripts put node_modules/.bin there) or in a node_modules/.bin above. */
function findExecutable(name: string): string | undefined {
  const dirs = (process.env['PATH'] ?? '').split(delimiter).filter(Boolean);
  for (let dir = process.cwd(); ; dir = dirname(dir)) {
    dirs.push(join(dir, 'node_modules', '.bin'));
    if (dirname(dir) === dir) break;
  }
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** This package's main for `runtime`, next to this file's folder (TypeScript in the repository, JavaScript when built). */
function mainFor(runtime: Runtime): string {
  const extension = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
  return fileURLToPath(new URL(`../adapters/${runtime}.${extension}`, import.meta.url));
}

/**
 * Bun and Deno run their own main with the flags as variables. The child gets
 * its own process group, so a terminal's Ctrl-C reaches it once, through us,
 * rather than twice (a second signal means "exit now").
 */
function handOver(runtime: Exclude<Runtime, 'node'>, env: Record<string, string | undefined>): void {
  const executable = findExecutable(runtime);
  if (!executable) {
    console.error(`nerve: --runtime ${runtime}: no ${runtime} executable on PATH or in node_modules/.bin`);
    process.exit(1);
  }
  // systemMemoryInfo: the default NERVE_MAX_MEMORY is sized from the machine's memory.
  const args = runtime === 'bun' ? ['run', mainFor('bun')] : ['run', '--allow-net', '--allow-env', '--allow-sys=systemMemoryInfo', mainFor('deno')];
  const child = spawn(executable, args, { env, stdio: ['ignore', 'inherit', 'inherit'], detached: true });
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => child.kill(signal));
  child.once('error', (error) => {
    console.error(`nerve: cannot start ${runtime}: ${error.message}`);
    process.exit(1);
  });
  child.once('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
}

async function main(argv: readonly string[]): Promise<void> {
  let command: Command;
  try {
    command = parseArgs(argv);
  } catch (error) {
    if (!(error instanceof FlagError)) throw error;
    console.error(`nerve: ${error.message}`);
    process.exit(2);
  }
  if (command.kind === 'help') return void process.stdout.write(helpText());
  if (command.kind === 'version') return void console.log(version());

  const env = { ...process.env, ...command.flags };
  if (command.runtime !== 'node') {
    // Checked here too, so that a bad value names the flag rather than the variable the child sees.
    try {
      loadConfig(env);
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      console.error(`nerve: ${explain(error.message, command.flags)}`);
      process.exit(1);
    }
    return handOver(command.runtime, env);
  }
  const [{ runUntilSignalled }, { createNodeServer }] = await Promise.all([
    import('./host/boot.ts'),
    import('../adapters/node-host.ts'),
  ]);
  await runUntilSignalled(
    env,
    (config: HostConfig) => createNodeServer(config),
    {
      onSignal: (signal, handler) => process.on(signal, handler),
      exit: (code) => process.exit(code),
      error: (line) => console.error(line),
    },
    (message) => explain(message, command.flags),
  );
}

// Run only as the command itself, not when a test imports the parser.
if (process.argv[1] && fileURLToPath(import.meta.url) === realpathSync(process.argv[1])) {
  await main(process.argv.slice(2));
}
