// `npm run start:cloudflare`: the Worker on local workerd through wrangler dev.
// wrangler dev gives a Worker no process environment, so every NERVE_* variable
// set here becomes a `--var`, as the other runtimes read them from their env.

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfig } from '../src/host/config.ts';

/** Where wrangler dev listens; every other NERVE_* setting is the Worker's to read. */
const LISTEN_SETTINGS = new Set(['NERVE_PORT', 'NERVE_HOST']);

/** `--var NAME:value` for each NERVE_* variable the Worker reads. */
export function workerVarArgs(env: Readonly<Record<string, string | undefined>>): string[] {
  const args: string[] = [];
  for (const [name, value] of Object.entries(env)) {
    if (name.startsWith('NERVE_') && !LISTEN_SETTINGS.has(name) && value !== undefined) args.push('--var', `${name}:${value}`);
  }
  return args;
}

/** wrangler's arguments for `env`, then `extra` (what follows `--` on the npm command line). */
export function wranglerDevArgs(env: Readonly<Record<string, string | undefined>>, extra: readonly string[] = []): string[] {
  return [
    'dev',
    '--ip',
    env['NERVE_HOST']?.trim() || '127.0.0.1',
    '--port',
    env['NERVE_PORT']?.trim() || '6669',
    '--show-interactive-dev-session=false',
    ...workerVarArgs(env),
    ...extra,
  ];
}

function main(): void {
  const env = process.env;
  if (!env['NERVE_PASSWORD']) {
    console.error('nerve: set NERVE_PASSWORD: a hub on Cloudflare needs a fixed password');
    process.exit(1);
  }
  // The Worker would answer every request with this error; saying it once, now, is kinder.
  try {
    loadConfig(env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`nerve: ${error.message}`);
    process.exit(1);
  }
  const wrangler = fileURLToPath(new URL('../node_modules/.bin/wrangler', import.meta.url));
  const child = spawn(wrangler, wranglerDevArgs(env, process.argv.slice(2)), {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    env: { ...env, WRANGLER_SEND_METRICS: 'false', CLOUDFLARE_CF_FETCH_ENABLED: 'false' },
    stdio: ['ignore', 'inherit', 'inherit'],
    // Its own process group: a terminal's Ctrl-C reaches wrangler once, through us.
    detached: true,
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => child.kill(signal));
  child.once('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) main();
