// The `nerve` command: its flags are exactly the variables config.ts reads,
// --help and --version, one-line errors naming the flag, a flag winning over
// its variable, the generated password printed once, and the hand-over to Bun and Deno.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { FlagError, helpText, parseArgs, settings } from '../../src/cli.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const cli = ['--import', 'tsx', `${root}src/cli.ts`];
const manifest = JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as { version: string };

/** The environment without any NERVE_* setting of the machine running the tests. */
function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) if (!name.startsWith('NERVE_') && value !== undefined) env[name] = value;
  return { ...env, ...extra };
}

function run(args: string[], env = cleanEnv()) {
  return spawnSync(process.execPath, [...cli, ...args], { cwd: root, env, encoding: 'utf8', timeout: 20_000 });
}

interface Started {
  child: ChildProcess;
  lines: string[];
  listening: { port: number; url: string; runtime: string };
}

const children: ChildProcess[] = [];
afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

/** Starts `nerve args…` and waits for its `listening` line. */
function start(args: string[], env = cleanEnv()): Promise<Started> {
  const child = spawn(process.execPath, [...cli, ...args], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const lines: string[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no listening line:\n${lines.join('\n')}`)), 20_000);
    const onData = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n').filter(Boolean)) {
        lines.push(line);
        if (line.includes('"msg":"listening"')) {
          clearTimeout(timer);
          resolve({ child, lines, listening: JSON.parse(line) });
        }
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`exited with ${code}:\n${lines.join('\n')}`)));
  });
}

function stop(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.kill('SIGTERM');
  });
}

/** HELLO from the hub at `url`, after IDENTIFY with `password` answered WELCOME (or not). */
async function greet(url: string, password: string): Promise<{ heartbeatInterval: number; welcomed: boolean }> {
  const ws = new WebSocket(url);
  const frames: { op: number; d?: { heartbeat_interval?: number } }[] = [];
  await new Promise<void>((resolve, reject) => {
    ws.on('message', (data) => {
      const frame = JSON.parse(data.toString());
      frames.push(frame);
      if (frame.op === 0) ws.send(JSON.stringify({ op: 1, d: { app_name: 'cli-test', client_id: 'one', password } }));
      else resolve();
    });
    ws.once('close', () => resolve());
    ws.once('error', reject);
  });
  ws.terminate();
  return { heartbeatInterval: frames[0]?.d?.heartbeat_interval ?? -1, welcomed: frames.some((frame) => frame.op === 2) };
}

describe('nerve flags', () => {
  it('has a flag, a meaning and a default for every NERVE_* variable config.ts reads', () => {
    const source = readFileSync(`${root}src/host/config.ts`, 'utf8');
    const named = new Set(source.match(/NERVE_[A-Z_]+[A-Z]/g));
    const table = settings();
    expect(new Set(table.map((setting) => setting.env))).toEqual(named);
    for (const setting of table) {
      expect(setting.meaning, setting.env).not.toBe('');
      expect(setting.fallback, setting.env).not.toBe('');
      expect(setting.flag).toBe(`--${setting.env.slice(6).toLowerCase().replaceAll('_', '-')}`);
    }
    expect(table.find((setting) => setting.env === 'NERVE_PORT')).toMatchObject({ flag: '--port', fallback: '6669' });
    expect(table.find((setting) => setting.env === 'NERVE_HEARTBEAT_INTERVAL')).toMatchObject({ flag: '--heartbeat-interval', fallback: '45000' });
  });

  it('reads --name value and --name=value, and knows --runtime', () => {
    expect(parseArgs(['--port', '7000', '--password=a=b', '--runtime', 'deno'])).toEqual({
      kind: 'serve',
      runtime: 'deno',
      flags: { NERVE_PORT: '7000', NERVE_PASSWORD: 'a=b' },
    });
    expect(parseArgs([])).toEqual({ kind: 'serve', runtime: 'node', flags: {} });
    expect(parseArgs(['--port', '1', '-h'])).toEqual({ kind: 'help' });
    expect(() => parseArgs(['--prot', '1'])).toThrow(new FlagError('unknown flag --prot (see nerve --help)'));
    expect(() => parseArgs(['--port'])).toThrow(new FlagError('--port needs a value'));
    expect(() => parseArgs(['--port', '--host', 'x'])).toThrow(new FlagError('--port needs a value'));
    expect(() => parseArgs(['--runtime', 'python'])).toThrow(/--runtime must be one of node, bun, deno/);
    expect(() => parseArgs(['serve'])).toThrow(/unexpected argument "serve"/);
  });

  it('--help lists every flag with its variable and default', () => {
    const result = run(['--help']);
    expect(result.status).toBe(0);
    expect(result.stdout).toBe(helpText());
    for (const setting of settings()) {
      const line = result.stdout.split('\n').find((text) => text.trimStart().startsWith(`${setting.flag} `));
      expect(line, setting.flag).toContain(setting.env);
      expect(line, setting.flag).toContain(`(default: ${setting.fallback})`);
    }
    expect(result.stdout).toContain('--runtime <node|bun|deno>');
  });

  it('--version prints the package version', () => {
    const result = run(['--version']);
    expect(result.status).toBe(0);
    expect(result.stdout).toBe(`${manifest.version}\n`);
  });

  it('exits non-zero with one line naming the flag', () => {
    const unknown = run(['--bogus', '1']);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toBe('nerve: unknown flag --bogus (see nerve --help)\n');
    const invalid = run(['--port', 'http']);
    expect(invalid.status).toBe(1);
    expect(invalid.stderr).toBe('nerve: --port must be an integer from 0 to 65535 (got "http")\n');
    // A bad variable is still named as the variable.
    const variable = run([], cleanEnv({ NERVE_QUEUE_TTL: 'soon' }));
    expect(variable.status).toBe(1);
    expect(variable.stderr).toBe('nerve: NERVE_QUEUE_TTL must be an integer ≥ 0 (got "soon")\n');
    const runtime = run(['--runtime', 'bun', '--max-payload', '1']);
    expect(runtime.status).toBe(1);
    expect(runtime.stderr).toMatch(/^nerve: --max-payload must be an integer ≥ \d+ \(got "1"\)\n$/);
  });
});

describe('nerve serving', () => {
  it('starts a Node hub where a flag wins over its variable, and prints the URL and the generated password once', async () => {
    const { child, lines, listening } = await start(['--port', '0', '--heartbeat-interval', '1234'], cleanEnv({ NERVE_HEARTBEAT_INTERVAL: '9999' }));
    expect(listening).toMatchObject({ runtime: 'node', url: `ws://127.0.0.1:${listening.port}/` });
    const generated = lines.map((line) => JSON.parse(line)).find((entry) => entry.password !== undefined) as { password: string };
    expect(generated.password).toMatch(/^[0-9a-f]{32}$/);
    expect(lines.filter((line) => line.includes(generated.password))).toHaveLength(1);
    expect(await greet(listening.url, generated.password)).toEqual({ heartbeatInterval: 1234, welcomed: true });
    expect(await stop(child)).toBe(0);
  });

  for (const runtime of ['bun', 'deno'] as const) {
    it(`--runtime ${runtime} hands the same flags over to ${runtime}`, async () => {
      const env = cleanEnv({ DENO_DIR: `${root}.deno-dir` });
      const { child, listening } = await start(['--runtime', runtime, '--port', '0', '--password', 'pw', '--heartbeat-interval', '4321'], env);
      expect(listening.runtime).toBe(runtime);
      expect(await greet(listening.url, 'pw')).toEqual({ heartbeatInterval: 4321, welcomed: true });
      expect(await stop(child)).toBe(0);
    });
  }
});
