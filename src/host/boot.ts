// What every long-running host (Node, Deno, Bun) shares around its listener:
// the config a factory accepts, the handle it returns, the "listening" line,
// and the process-level main that drains on SIGTERM/SIGINT and exits.

import { Hono } from 'hono';
import { ClusterError } from './cluster/redis.ts';
import { ConfigError, loadConfig, type HostConfig } from './config.ts';
import { createHttpApp, type Upgrade } from './http.ts';
import type { Hub } from './hub.ts';

/** An environment record as process.env, Deno.env.toObject() or Worker vars give it. */
export type Env = Readonly<Record<string, string | undefined>>;

/** A factory takes a config loadConfig already validated, or the NERVE_* variables to validate. */
export type ConfigInput = HostConfig | Env;

/** The config behind `input`; throws ConfigError naming the first bad variable. */
export function resolveConfig(input: ConfigInput = {}): HostConfig {
  return isHostConfig(input) ? input : loadConfig(input);
}

function isHostConfig(input: ConfigInput): input is HostConfig {
  return typeof input['worker'] === 'string' && typeof input['heartbeatInterval'] === 'number';
}

/** Options every server factory accepts besides its config. */
export interface ServeOptions {
  /**
   * Where Nerve lives: WebSockets upgrade on this path and the HTTP routes
   * (/health, /metrics, /clients, /dispatch) sit under it. Default `/`.
   */
  path?: string;
  /** Receives each JSON log line; console.log by default. */
  log?: (line: string) => void;
}

/** What a server factory returns: start it, inspect it, drain and stop it. */
export interface NerveServer {
  readonly config: HostConfig;
  readonly hub: Hub;
  /** The port it listens on once started (the configured one before). */
  readonly port: number;
  /** `ws://host:port/path`, with the real port once started. */
  readonly url: string;
  /**
   * Resolves once the listener accepts connections; logs the `listening`
   * line. In a cluster (NERVE_REDIS_URL) it links to the cluster first.
   */
  start(): Promise<NerveServer>;
  /**
   * GO_AWAY to every connection, waits for them to close (at most
   * `config.drainTimeout` ms), drops the rest and closes the listener; in a
   * cluster it then stores the final state and leaves. Resolves once nothing
   * of this server keeps the process alive.
   */
  stop(): Promise<void>;
}

/** `/`, `/nerve` or `/a/b`: one leading slash, no trailing one except for the root. */
export function normalizePath(path = '/'): string {
  const trimmed = path.replace(/\/+$/, '');
  if (trimmed === '') return '/';
  return trimmed.startsWith('/') ? trimmed : `/${trimmed}`;
}

/** The path inside Nerve's routes of a request for `pathname`, or undefined when it is outside `mount`. */
export function routeWithin(mount: string, pathname: string): string | undefined {
  if (mount === '/') return pathname;
  if (pathname === mount) return '/';
  return pathname.startsWith(`${mount}/`) ? pathname.slice(mount.length) : undefined;
}

export function wsUrl(host: string, port: number, path: string): string {
  const bracketed = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  return `ws://${bracketed}:${port}${path === '/' ? '/' : path}`;
}

/** The line every runtime prints once it listens (scripts and tests wait for it). */
export function announce(hub: Hub, config: HostConfig, port: number, runtime: string, path = '/'): void {
  if (config.generatedPassword) {
    hub.log('info', 'no NERVE_PASSWORD set: generated one for this run', { password: config.password });
  }
  hub.log('info', 'listening', { port, host: config.host, runtime, url: wsUrl(config.host, port, path) });
}

/** What a main needs of its runtime's process. */
export interface ProcessHooks {
  onSignal(signal: 'SIGTERM' | 'SIGINT', handler: () => void): void;
  exit(code: number): void;
  /** Prints one line to stderr. */
  error(line: string): void;
}

/**
 * The body of every runtime's main: validate the config (a bad value is one
 * line naming it, and exit 1), start, and on SIGTERM or SIGINT drain and exit
 * 0. A second signal while draining exits 1 at once. `explain` rewrites a
 * config error for the user (the CLI names its flags instead of variables).
 */
export async function runUntilSignalled(
  env: Env,
  create: (config: HostConfig) => NerveServer,
  hooks: ProcessHooks,
  explain: (message: string) => string = (message) => message,
): Promise<NerveServer | undefined> {
  let config: HostConfig;
  try {
    config = loadConfig(env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    hooks.error(`nerve: ${explain(error.message)}`);
    hooks.exit(1);
    return undefined;
  }
  const server = create(config);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return hooks.exit(1);
    stopping = true;
    server.hub.log('info', 'signal received: draining', { signal, drain_timeout: config.drainTimeout });
    server.stop().then(
      () => {
        server.hub.log('info', 'stopped');
        hooks.exit(0);
      },
      (error: unknown) => {
        server.hub.log('error', 'stop failed', { error: String(error) });
        hooks.exit(1);
      },
    );
  };
  hooks.onSignal('SIGTERM', () => stop('SIGTERM'));
  hooks.onSignal('SIGINT', () => stop('SIGINT'));
  try {
    await server.start();
  } catch (error) {
    // Settings that differ from the cluster's, or a Redis that cannot be reached: one line each.
    if (error instanceof ConfigError || error instanceof ClusterError) hooks.error(`nerve: ${explain(error.message)}`);
    // EADDRINUSE and friends: one line, as for a bad setting.
    else hooks.error(`nerve: cannot listen on ${config.host}:${config.port}: ${(error as Error).message}`);
    hooks.exit(1);
    return undefined;
  }
  return server;
}

/**
 * Nerve's Hono app with its routes under `path` (`/nerve`, `/nerve/`,
 * `/nerve/health`, …), ready to serve alone or to `route('/', …)` into an app
 * of your own. The request objects stay the runtime's own, so Bun's and Deno's
 * upgrades still work inside it.
 */
export function mountedApp(hub: Hub, path: string, upgrade?: Upgrade): Hono {
  const app = createHttpApp(hub, upgrade);
  return path === '/' ? app : new Hono({ strict: false }).route(path, app);
}
