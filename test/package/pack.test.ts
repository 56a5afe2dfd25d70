// The package as a user gets it: `npm pack` (which builds), installed from the
// tarball into a scratch project without tsx: on plain Node every subpath
// imports, `npx nerve` serves a NerveClient's request/reply and the client
// loads no server code; Bun and Deno serve through their factories; the Worker
// runs in workerd; tsc accepts the declarations under strict flags.

import { Miniflare } from 'miniflare';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { bundleForWorkers } from '../support/bundle.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string; dependencies: Record<string, string> };

/** What a user's shell has: no tsx loader, no NERVE_* settings. */
const plainEnv: Record<string, string> = {};
for (const [name, value] of Object.entries(process.env)) {
  if (value !== undefined && !name.startsWith('NERVE_') && name !== 'NODE_OPTIONS' && !name.startsWith('VITEST')) plainEnv[name] = value;
}

let scratch = '';
let packed: { filename: string; size: number; unpackedSize: number; files: { path: string }[] };

function run(command: string, args: string[], cwd = scratch, timeout = 60_000): SpawnSyncReturns<string> {
  const result = spawnSync(command, args, { cwd, env: plainEnv, encoding: 'utf8', timeout });
  if (result.error) throw result.error;
  return result;
}

function succeed(command: string, args: string[], cwd = scratch, timeout?: number): string {
  const result = run(command, args, cwd, timeout);
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.status}:\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

/** Runs an ES module in the scratch project on plain Node and returns what it printed. */
function node(source: string, args: string[] = []): string {
  const file = join(scratch, `script-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(file, source);
  return succeed(process.execPath, [file, ...args]);
}

/**
 * `npx nerve args…` in the scratch project, once it listens. Bun and Deno are
 * found where a user's npm scripts would find them: node_modules/.bin on PATH.
 */
async function npxNerve(args: string[]) {
  const server = spawn('npx', ['--no-install', 'nerve', ...args], {
    cwd: scratch,
    env: { ...plainEnv, PATH: `${join(root, 'node_modules/.bin')}:${plainEnv['PATH'] ?? ''}`, DENO_DIR: join(root, '.deno-dir') },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  // npx itself dies of the signal; the server underneath drains, and the pipe closes once it has exited.
  const outputClosed = new Promise((resolve) => server.stdout!.once('close', resolve));
  const lines: string[] = [];
  const listening = await new Promise<{ url: string; runtime: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`npx nerve did not listen:\n${lines.join('\n')}`)), 30_000);
    const onData = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n').filter(Boolean)) {
        lines.push(line);
        if (line.includes('"msg":"listening"')) {
          clearTimeout(timer);
          resolve(JSON.parse(line));
        }
      }
    };
    server.stdout!.on('data', onData);
    server.stderr!.on('data', onData);
    server.once('exit', (code) => reject(new Error(`npx nerve exited with ${code}:\n${lines.join('\n')}`)));
  });
  return {
    listening,
    lines,
    async stop() {
      process.kill(-server.pid!, 'SIGTERM');
      await outputClosed;
    },
  };
}

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), 'nerve-pack-'));
  // prepack builds dist/ first, exactly as for a publish.
  const output = succeed('npm', ['pack', '--json', '--pack-destination', scratch], root, 120_000);
  packed = JSON.parse(output.slice(output.indexOf('[')))[0];
  writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'nerve-consumer', private: true, type: 'module' }));
  // Offline-first: every dependency is already in the npm cache from installing this repository.
  succeed('npm', ['install', join(scratch, packed.filename), '--prefer-offline', '--no-audit', '--no-fund'], scratch, 120_000);
}, 240_000);

afterAll(() => {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

describe('the packed tarball', () => {
  it('ships the built package and its docs, nothing of the repository', () => {
    const paths = packed.files.map((file) => file.path);
    console.log(`nerve ${manifest.version}: tarball ${(packed.size / 1024).toFixed(1)} KiB, unpacked ${(packed.unpackedSize / 1024).toFixed(1)} KiB, ${paths.length} files`);
    for (const path of paths) expect(path).toMatch(/^(dist\/(src|adapters)\/.+\.(js|d\.ts)|docs\/[\w-]+\.md|README\.md|package\.json|LICENSE)$/);
    for (const subpath of ['src/core/index', 'src/client/index', 'src/host/index', 'src/cli', 'adapters/node-host', 'adapters/bun-host', 'adapters/deno-host', 'adapters/cloudflare']) {
      expect(paths).toContain(`dist/${subpath}.js`);
      expect(paths).toContain(`dist/${subpath}.d.ts`);
    }
    expect(packed.size).toBeLessThan(300 * 1024);
  });

  it('installs the runtime dependencies and nothing the repository only builds or tests with', () => {
    const installed = (name: string) => existsSync(join(scratch, 'node_modules', name, 'package.json'));
    for (const name of Object.keys(manifest.dependencies)) expect(installed(name), name).toBe(true);
    for (const name of ['tsx', 'typescript', 'esbuild', 'vitest', 'wrangler', '@redis/client']) expect(installed(name), name).toBe(false);
  });
});

describe('on plain Node, from the tarball', () => {
  it('imports every subpath but the Worker one, which needs workerd', () => {
    const output = node(`
      const names = {};
      for (const subpath of ['core', 'client', 'host', 'node', 'bun', 'deno']) names[subpath] = Object.keys(await import('nerve/' + subpath)).sort();
      let cloudflare = 'loaded';
      try { await import('nerve/cloudflare'); } catch (error) { cloudflare = error.code; }
      console.log(JSON.stringify({ names, cloudflare, tsx: typeof globalThis.__tsx }));
    `);
    const { names, cloudflare } = JSON.parse(output) as { names: Record<string, string[]>; cloudflare: string };
    expect(names['core']).toEqual(expect.arrayContaining(['step', 'createState', 'nextDeadline', 'DEFAULT_LIMITS']));
    expect(names['client']).toEqual(expect.arrayContaining(['NerveClient', 'NerveError']));
    expect(names['host']).toEqual(expect.arrayContaining(['Hub', 'loadConfig', 'ConfigError', 'createHttpApp']));
    expect(names['node']).toEqual(expect.arrayContaining(['createNodeServer', 'createNodeHandler']));
    expect(names['bun']).toEqual(expect.arrayContaining(['serveBun', 'createBunHandler']));
    expect(names['deno']).toEqual(expect.arrayContaining(['serveDeno', 'createDenoHandler']));
    expect(cloudflare).toBe('ERR_UNSUPPORTED_ESM_URL_SCHEME');
  });

  it('loads none of the server’s dependencies for nerve/client', () => {
    // A resolve hook that refuses the server's packages: nerve/client must not reach them; nerve/host must.
    const hook = `data:text/javascript,${encodeURIComponent(`
      const server = /^(hono|@hono\\/node-server|ws|valibot|sift|jose|@redis\\/client)(\\/|$)/;
      export async function resolve(specifier, context, next) {
        if (server.test(specifier)) throw new Error('server dependency loaded: ' + specifier);
        return next(specifier, context);
      }`)}`;
    const output = node(`
      import { register } from 'node:module';
      register(${JSON.stringify(hook)});
      const { NerveClient } = await import('nerve/client');
      let host = 'loaded';
      try { await import('nerve/host'); } catch (error) { host = String(error.message); }
      console.log(JSON.stringify({ client: typeof NerveClient, host }));
    `);
    expect(JSON.parse(output)).toEqual({ client: 'function', host: expect.stringContaining('server dependency loaded') });
  });

  it('npx nerve serves, and one NerveClient gets another’s reply', async () => {
    expect(succeed('npx', ['--no-install', 'nerve', '--version']).trim()).toBe(manifest.version);
    const server = await npxNerve(['--port', '0', '--password', 'pack-pw']);
    try {
      expect(server.listening.runtime).toBe('node');
      const output = node(
        `
        import { NerveClient } from 'nerve/client';
        import WebSocket from 'ws';
        const [url] = process.argv.slice(2);
        const options = (appName, clientId) => ({ url, appName, clientId, password: 'pack-pw', WebSocket });
        const echo = new NerveClient(options('echo', 'echo-1'));
        echo.on('PING', (data, message) => echo.reply(message, { pong: data }));
        await echo.connect();
        const api = new NerveClient(options('api', 'api-1'));
        await api.connect();
        const answer = await api.request('PING', 42, { app_name: 'echo' }, { timeout: 5000 });
        await Promise.all([api.close(), echo.close()]);
        console.log(JSON.stringify(answer));
      `,
        [server.listening.url],
      );
      expect(JSON.parse(output)).toEqual({ pong: 42 });
    } finally {
      await server.stop();
    }
    expect(server.lines.filter((line) => /"msg":"(signal received: draining|stopped)"/.test(line))).toHaveLength(2);
  });

  for (const runtime of ['bun', 'deno']) {
    it(`npx nerve --runtime ${runtime} hands the package's own ${runtime} main the flags`, async () => {
      const server = await npxNerve(['--runtime', runtime, '--port', '0', '--password', 'pack-pw', '--heartbeat-interval', '2345']);
      try {
        expect(server.listening.runtime).toBe(runtime);
        const hello = await new Promise<unknown>((resolve, reject) => {
          const ws = new WebSocket(server.listening.url);
          ws.once('message', (data) => {
            ws.terminate();
            resolve(JSON.parse(data.toString()));
          });
          ws.once('error', reject);
        });
        expect(hello).toMatchObject({ op: 0, d: { heartbeat_interval: 2345 } });
      } finally {
        await server.stop();
      }
      expect(server.lines.some((line) => line.includes('"msg":"stopped"'))).toBe(true);
    });
  }
});

describe('on Bun and Deno, from the tarball', () => {
  // One service for both: a hub from the runtime's own factory, and a request/reply through it with the runtime's WebSocket.
  const service = `
    import { NerveClient } from 'nerve/client';
    const runtime = typeof Deno === 'undefined' ? 'bun' : 'deno';
    const serve = runtime === 'deno' ? (await import('nerve/deno')).serveDeno : (await import('nerve/bun')).serveBun;
    const server = await serve({ NERVE_PORT: '0', NERVE_PASSWORD: 'pw' }, { log: () => {} }).start();
    const options = (appName, clientId) => ({ url: server.url, appName, clientId, password: 'pw' });
    const echo = new NerveClient(options('echo', 'echo-1'));
    echo.on('PING', (data, message) => echo.reply(message, { pong: data, runtime }));
    await echo.connect();
    const api = new NerveClient(options('api', 'api-1'));
    await api.connect();
    const answer = await api.request('PING', 42, { app_name: 'echo' }, { timeout: 5000 });
    await Promise.all([api.close(), echo.close()]);
    await server.stop();
    console.log(JSON.stringify(answer));
  `;
  const commands = {
    bun: [join(root, 'node_modules/.bin/bun'), 'run'],
    deno: [join(root, 'node_modules/.bin/deno'), 'run', '--allow-net', '--allow-env', '--allow-sys=systemMemoryInfo'],
  };

  for (const [runtime, [command, ...args]] of Object.entries(commands)) {
    it(`serves and answers on ${runtime} through nerve/${runtime}, then exits by itself`, () => {
      writeFileSync(join(scratch, 'service.mjs'), service);
      const result = spawnSync(command!, [...args, 'service.mjs'], {
        cwd: scratch,
        env: { ...plainEnv, DENO_DIR: join(root, '.deno-dir') },
        encoding: 'utf8',
        timeout: 30_000,
      });
      expect(result.stderr).toBe('');
      expect(JSON.parse(result.stdout)).toEqual({ pong: 42, runtime });
      expect(result.status).toBe(0);
    });
  }
});

describe('in workerd, from the tarball', () => {
  it('bundles nerve/cloudflare into a Worker that serves a hub', async () => {
    writeFileSync(join(scratch, 'worker.js'), "export { default, NerveHub } from 'nerve/cloudflare';\n");
    const script = await bundleForWorkers('worker.js', scratch);
    const mf = new Miniflare({
      modules: true,
      script,
      compatibilityDate: '2026-04-20',
      durableObjects: { NERVE_HUB: { className: 'NerveHub', useSQLite: true } },
      bindings: { NERVE_PASSWORD: 'pw', NERVE_HEARTBEAT_INTERVAL: '3333' },
      host: '127.0.0.1',
      port: 0,
      cf: false,
      handleRuntimeStdio: () => {},
    });
    try {
      const url = (await mf.ready).href.replace(/^http/, 'ws');
      const hello = await new Promise<unknown>((resolve, reject) => {
        const ws = new WebSocket(url);
        ws.once('message', (data) => {
          ws.terminate();
          resolve(JSON.parse(data.toString()));
        });
        ws.once('error', reject);
      });
      expect(hello).toMatchObject({ op: 0, d: { heartbeat_interval: 3333 } });
    } finally {
      await mf.dispose();
    }
  }, 60_000);
});

describe('in a TypeScript project, from the tarball', () => {
  const strict = {
    strict: true,
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    noPropertyAccessFromIndexSignature: true,
    skipLibCheck: false,
    noEmit: true,
    target: 'ES2022',
    lib: ['ES2023', 'DOM'],
    typeRoots: [join(root, 'node_modules/@types')],
  };
  const resolutions = {
    bundler: { module: 'ESNext', moduleResolution: 'Bundler' },
    node16: { module: 'Node16', moduleResolution: 'Node16' },
  };

  /** Errors tsc reports in Nerve's declarations or the consumer's own file; other packages' are not ours to judge. */
  function typeErrors(name: string, compilerOptions: object, files: string[]): string[] {
    writeFileSync(join(scratch, `tsconfig.${name}.json`), JSON.stringify({ compilerOptions, files }));
    const result = run(join(root, 'node_modules/.bin/tsc'), ['-p', `tsconfig.${name}.json`]);
    return result.stdout.split('\n').filter((line) => /error TS/.test(line) && (line.startsWith('check') || line.includes('node_modules/nerve/')));
  }

  beforeAll(() => {
    writeFileSync(
      join(scratch, 'check.ts'),
      `
      import { DEFAULT_LIMITS, step, createState, type Input, type Output } from 'nerve/core';
      import { NerveClient, NerveError, type NerveClientOptions } from 'nerve/client';
      import { Hub, loadConfig, type HubSocket, type HostConfig } from 'nerve/host';
      import { createNodeServer, createNodeHandler, type NodeServer } from 'nerve/node';
      import { serveDeno, type DenoHandler } from 'nerve/deno';

      const config: HostConfig = loadConfig({ NERVE_PASSWORD: 'secret', NERVE_PORT: '0' });
      const socket: HubSocket = { send: () => {}, close: () => {}, buffered: () => 0, terminate: () => {} };
      const hub = new Hub({ config, schedule: setImmediate });
      hub.open(socket, { format: 'json', compression: 'none' });
      const state = createState({ ...DEFAULT_LIMITS, worker: 'nerve-000000', password: 'x' });
      const input: Input = { type: 'tick', now: 0 };
      const outputs: Output[] = step(state, input)[1];
      const options: NerveClientOptions = { url: 'ws://127.0.0.1:6669', appName: 'a', clientId: 'a-1', password: 'x' };
      const client = new NerveClient(options);
      const server: NodeServer = createNodeServer(config, { path: '/nerve' });
      const handler = createNodeHandler({ NERVE_PASSWORD: 'secret' });
      const deno: (typeof serveDeno) | DenoHandler | undefined = undefined;
      export const used = [outputs, client, server.url, handler.path, deno, NerveError];
      `,
    );
    writeFileSync(join(scratch, 'check-bun.ts'), "import { serveBun } from 'nerve/bun';\nexport const server = serveBun({ NERVE_PASSWORD: 'x' });\n");
    writeFileSync(
      join(scratch, 'check-worker.ts'),
      "import worker, { NerveHub, createWorker } from 'nerve/cloudflare';\nexport { NerveHub };\nexport const handlers = [worker, createWorker({ binding: 'HUBS' })];\n",
    );
  });

  for (const [name, resolution] of Object.entries(resolutions)) {
    it(`type-checks every subpath under moduleResolution ${name} with the strict flags`, () => {
      expect(typeErrors(name, { ...strict, ...resolution, types: ['node'] }, ['check.ts'])).toEqual([]);
      expect(typeErrors(`${name}-bun`, { ...strict, ...resolution, types: ['bun'] }, ['check-bun.ts'])).toEqual([]);
      const workers = { ...strict, ...resolution, lib: ['ES2023'], types: [join(root, 'node_modules/@cloudflare/workers-types')] };
      expect(typeErrors(`${name}-worker`, workers, ['check-worker.ts'])).toEqual([]);
    });
  }
});
