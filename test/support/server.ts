// Starts a real Nerve server as a child process for black-box tests and waits
// until it listens. Every runtime prints the same JSON "listening" log line.
// A runtime is one entry in `commands`; RUNTIMES is what suites loop over.

import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export type Runtime = 'node' | 'deno' | 'bun';

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
  // The same permissions as `npm run start:deno`; DENO_DIR is set below.
  deno: [bin('deno'), 'run', '--allow-net', '--allow-env', '--cached-only', 'adapters/deno.ts'],
  bun: [bin('bun'), 'run', 'adapters/bun.ts'],
};

/** Every runtime with an adapter, in the order suites should run them. */
export const RUNTIMES: Runtime[] = Object.keys(commands) as Runtime[];

export async function startServer(
  runtime: Runtime = 'node',
  env: Record<string, string> = {},
): Promise<RunningServer> {
  const password = env.NERVE_PASSWORD ?? 'test-password';
  const [cmd, ...args] = commands[runtime];
  const child = spawn(cmd!, args, {
    cwd: root,
    env: { ...process.env, DENO_DIR: `${root}.deno-dir`, NERVE_PORT: '0', NERVE_PASSWORD: password, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${runtime} server did not start:\n${lines.join('\n')}`)), 30_000);
    const onData = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n')) {
        if (!line) continue;
        lines.push(line);
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
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}
