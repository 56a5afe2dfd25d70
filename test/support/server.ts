// Starts a real Nerve server as a child process for black-box tests and waits
// until it listens. Every runtime prints the same JSON "listening" log line.
// A runtime is one entry in `commands`; RUNTIMES is what suites loop over.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { bundleWorker } from './bundle.ts';

export type Runtime = 'node' | 'deno' | 'bun' | 'cloudflare';

export interface RunningServer {
  runtime: Runtime;
  port: number;
  /** ws://127.0.0.1:PORT */
  url: string;
  /** http://127.0.0.1:PORT */
  http: string;
  password: string;
  /** Every stdout/stderr line so far. */
  lines: string[];
  child: ChildProcess;
  /** Sends a signal and resolves with the exit code once the process is gone. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = (name: string) => `${root}node_modules/.bin/${name}`;

const commands: Record<Runtime, string[]> = {
  // Node 20 runs TypeScript through tsx's loader in-process, so signals (even SIGKILL) reach the server itself.
  node: [process.execPath, '--import', 'tsx', 'adapters/node.ts'],
  // The same permissions as `npm run start:deno` (systemMemoryInfo sizes the default
  // NERVE_MAX_MEMORY); DENO_DIR is set below.
  deno: [bin('deno'), 'run', '--allow-net', '--allow-env', '--allow-sys=systemMemoryInfo', '--cached-only', 'adapters/deno.ts'],
  bun: [bin('bun'), 'run', 'adapters/bun.ts'],
  // workerd through wrangler dev, as `npm run start:cloudflare`; bundle, port, vars and storage are added below.
  cloudflare: [bin('wrangler'), 'dev', '--ip', '127.0.0.1', '--show-interactive-dev-session=false'],
};

/** A port nobody listens on right now (wrangler dev cannot report one it picked itself). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

/**
 * wrangler dev passes no process env to the Worker: every NERVE_* setting
 * becomes a --var. It runs a bundle made once for this test process, because
 * wrangler rebuilds and restarts the Worker (dropping every socket) whenever a
 * source file changes. Bundle and storage go to fresh folders, removed at
 * exit; storage must not be inside the bundle's folder, which wrangler watches.
 */
async function cloudflareArgs(env: Record<string, string | undefined>): Promise<{ args: string[]; port: number; folders: string[] }> {
  const port = env.NERVE_PORT && env.NERVE_PORT !== '0' ? Number(env.NERVE_PORT) : await freePort();
  const code = mkdtempSync(`${tmpdir()}/nerve-worker-`);
  const storage = mkdtempSync(`${tmpdir()}/nerve-storage-`);
  writeFileSync(`${code}/worker.js`, await bundleWorker());
  const args = [`${code}/worker.js`, '--no-bundle', '--config', `${root}wrangler.toml`, '--port', String(port), '--persist-to', storage];
  const skip = new Set(['NERVE_PORT', 'NERVE_HOST', 'NERVE_RUNTIMES']);
  for (const [name, value] of Object.entries(env)) {
    if (name.startsWith('NERVE_') && !skip.has(name) && value !== undefined) args.push('--var', `${name}:${value}`);
  }
  return { args, port, folders: [code, storage] };
}

/** wrangler process groups still running: killed if the test process exits first. */
const groups = new Set<number>();
process.once('exit', () => {
  for (const pid of groups) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** Every runtime with an adapter, in the order suites should run them. */
export const RUNTIMES: Runtime[] = Object.keys(commands) as Runtime[];

export async function startServer(runtime: Runtime = 'node', env: Record<string, string> = {}): Promise<RunningServer> {
  // wrangler is given a port found free a moment before; another process can
  // take it first, and wrangler then exits before it is ready. Try again then.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(runtime, env);
    } catch (error) {
      const early = error instanceof Error && error.message.startsWith(`${runtime} server exited with`);
      if (runtime !== 'cloudflare' || !early || attempt === 3 || (env.NERVE_PORT && env.NERVE_PORT !== '0')) throw error;
    }
  }
}

async function startOnce(runtime: Runtime, env: Record<string, string>): Promise<RunningServer> {
  const password = env.NERVE_PASSWORD ?? 'test-password';
  const [cmd, ...args] = commands[runtime];
  const childEnv: Record<string, string | undefined> = { ...process.env, DENO_DIR: `${root}.deno-dir`, NERVE_PORT: '0', NERVE_PASSWORD: password, ...env };
  const cloudflare = runtime === 'cloudflare' ? await cloudflareArgs(childEnv) : undefined;
  if (cloudflare) {
    args.push(...cloudflare.args);
    Object.assign(childEnv, { WRANGLER_SEND_METRICS: 'false', CLOUDFLARE_CF_FETCH_ENABLED: 'false' });
  }
  const child = spawn(cmd!, args, {
    cwd: root,
    env: childEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
    // wrangler runs node, which runs workerd: stop() signals the whole group.
    detached: cloudflare !== undefined,
  });
  if (cloudflare) groups.add(child.pid!);
  const lines: string[] = [];
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      if (cloudflare) {
        groups.delete(child.pid!);
        // workerd may outlive the wrangler process that started it by a moment.
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          // the whole group is gone
        }
        for (const folder of cloudflare.folders) rmSync(folder, { recursive: true, force: true });
      }
      resolve(code);
    }),
  );
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${runtime} server did not start:\n${lines.join('\n')}`)), 30_000);
    const onData = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n')) {
        if (!line) continue;
        lines.push(line);
        // A Worker runs only when a request arrives, so there is no "listening" line of its own.
        if (cloudflare && line.includes(`Ready on http://127.0.0.1:${cloudflare.port}`)) {
          clearTimeout(timer);
          resolve(cloudflare.port);
        }
        try {
          const entry = JSON.parse(line);
          if (entry.msg === 'listening') {
            clearTimeout(timer);
            resolve(entry.port);
          }
        } catch {
          // not a log line
        }
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${runtime} server exited with ${code}:\n${lines.join('\n')}`));
    });
  });
  return {
    runtime,
    port,
    url: `ws://127.0.0.1:${port}`,
    http: `http://127.0.0.1:${port}`,
    password,
    lines,
    child,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) {
        if (cloudflare) process.kill(-child.pid!, signal);
        else child.kill(signal);
      }
      return exited;
    },
  };
}
