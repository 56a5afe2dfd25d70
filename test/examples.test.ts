// The two SDK example services as a new user runs them: without a password or
// with a wrong one they say what to set in one line and exit 1, never with a
// stack trace; with the right one they join the hub and leave cleanly on SIGTERM.

import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from './support/server.ts';

const root = resolve(import.meta.dirname, '..');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs an example until it exits, or until `until` matches its stdout and then SIGTERM. */
function runExample(name: string, env: Record<string, string | undefined>, until?: RegExp): Promise<Run> {
  const childEnv: Record<string, string | undefined> = { ...process.env, ...env };
  for (const [key, value] of Object.entries(env)) if (value === undefined) delete childEnv[key];
  const child = spawn(process.execPath, ['--import', 'tsx', `examples/${name}.ts`], { cwd: root, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  let signalled = false;
  child.stdout.on('data', (chunk) => {
    stdout += chunk;
    // Once: a second signal would find no handler left and kill the process.
    if (!signalled && until?.test(stdout)) signalled = child.kill('SIGTERM');
  });
  child.stderr.on('data', (chunk) => (stderr += chunk));
  return new Promise((done) =>
    child.once('exit', (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr });
    }),
  );
}

/** One line on stderr that names what to do, and nothing that looks like a crash. */
function expectOneLine(run: Run, name: string, says: RegExp): void {
  expect(run.code, run.stderr).toBe(1);
  const lines = run.stderr.trim().split('\n');
  expect(lines, run.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(new RegExp(`^${name}: `));
  expect(lines[0]).toMatch(says);
  expect(run.stdout + run.stderr).not.toMatch(/\n\s+at |Unhandled|NerveError:/);
}

describe.each(['gateway', 'api'])('examples/%s.ts', (name) => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startServer('node', { NERVE_PASSWORD: 'example-password' });
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('without NERVE_PASSWORD: says to set it, in one line, and exits 1', async () => {
    const run = await runExample(name, { NERVE_PASSWORD: undefined, NERVE_URL: server.url });
    expectOneLine(run, name, /set NERVE_PASSWORD/);
  });

  it('with a wrong password: says the hub refused it, in one line, and exits 1', async () => {
    const run = await runExample(name, { NERVE_PASSWORD: 'not-it', NERVE_URL: server.url });
    expectOneLine(run, name, /wrong password.*check NERVE_PASSWORD/);
  });

  it('with the password: joins the hub, and exits 0 on SIGTERM', async () => {
    const run = await runExample(name, { NERVE_PASSWORD: 'example-password', NERVE_URL: server.url }, /Ctrl-C to leave/);
    expect(run.stdout).toMatch(/\] ready/);
    expect(run.code, run.stderr).toBe(0);
  });
});
