// Start-up and shutdown steps that are the same on every long-running runtime
// (Node, Deno, Bun): read the config or exit with one line, announce, drain.

import { ConfigError, loadConfig, type HostConfig } from './config.ts';
import { Hub } from './hub.ts';

export interface Booted {
  config: HostConfig;
  hub: Hub;
}

/** Loads the config; on a bad value prints one line naming the variable and exits non-zero. */
export function boot(env: Record<string, string | undefined>, exit: (code: number) => never): Booted {
  let config: HostConfig;
  try {
    config = loadConfig(env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`nerve: ${error.message}`);
    return exit(1);
  }
  return { config, hub: new Hub({ config }) };
}

/** The line every runtime prints once it listens (tests and scripts wait for it). */
export function announce({ config, hub }: Booted, port: number, runtime: string): void {
  if (config.generatedPassword) {
    hub.log('info', 'no NERVE_PASSWORD set: generated one for this run', { password: config.password });
  }
  hub.log('info', 'listening', { port, host: config.host, runtime, url: `ws://${config.host}:${port}/` });
}

/**
 * GO_AWAY to every connection, wait for them to close (at most the drain
 * timeout), then let the runtime exit. A second signal exits at once.
 */
export function onSignals(
  { config, hub }: Booted,
  listen: (signal: string, handler: () => void) => void,
  stopListening: () => void,
  exit: (code: number) => void,
): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return exit(1);
    stopping = true;
    hub.log('info', 'signal received: draining', { signal, drain_timeout: config.drainTimeout });
    stopListening();
    hub.shutdown(config.drainTimeout).then(() => {
      hub.log('info', 'stopped');
      exit(0);
    });
  };
  listen('SIGTERM', () => stop('SIGTERM'));
  listen('SIGINT', () => stop('SIGINT'));
}
