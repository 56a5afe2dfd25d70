// `npm run bench`: starts each server (baseline relay and Nerve, per runtime)
// pinned to core 0, drives it with bench/load.ts pinned to core 1, alternates
// baseline/Nerve run by run, and prints medians, ratios and targets.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createServer as createNetServer } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { ENTRIES, runCommand, type Kind, type Runtime } from './entries.ts';
import type { LoadConfig } from './load.ts';
import { median } from './lib/stats.ts';
import { topSelf } from './profile.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const BIN = join(ROOT, 'node_modules/.bin');
const PASSWORD = 'bench-password';

type Scenario = 'pairs' | 'latency' | 'fanout' | 'connections' | 'core' | 'cluster-pairs' | 'cluster-fanout';
const ALL_RUNTIMES: Runtime[] = ['node', 'bun', 'deno'];
const ALL_SCENARIOS: Scenario[] = ['pairs', 'latency', 'fanout', 'connections', 'core', 'cluster-pairs', 'cluster-fanout'];
/** What a cluster scenario compares: one node alone, and two nodes joined through Redis. */
type ClusterKind = 'one-node' | 'cluster';
const CLUSTER_KINDS: ClusterKind[] = ['one-node', 'cluster'];
const isClusterScenario = (sc: Scenario): sc is 'cluster-pairs' | 'cluster-fanout' => sc.startsWith('cluster-');

// ---- options: flags win over BENCH_* env, which wins over the defaults ----

function options() {
  const argv = process.argv.slice(2);
  const flag = (name: string): string | undefined => {
    const eq = argv.find((a) => a.startsWith(`--${name}=`));
    if (eq) return eq.slice(name.length + 3);
    const i = argv.indexOf(`--${name}`);
    if (i >= 0 && argv[i + 1] && !argv[i + 1].startsWith('--')) return argv[i + 1];
    return process.env[`BENCH_${name.toUpperCase().replace(/-/g, '_')}`];
  };
  const has = (name: string) => argv.includes(`--${name}`) || process.env[`BENCH_${name.toUpperCase()}`] === '1';
  if (has('help')) {
    console.log(HELP);
    process.exit(0);
  }
  const smoke = has('smoke');
  const num = (name: string, def: number, smokeDef: number): number => {
    const v = flag(name);
    const n = v === undefined ? (smoke ? smokeDef : def) : Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name}: expected a number, got ${v}`);
    return n;
  };
  const list = <T extends string>(name: string, all: T[]): T[] => {
    const v = flag(name);
    if (!v) return all;
    const xs = v.split(',').map((s) => s.trim()) as T[];
    for (const x of xs) if (!all.includes(x)) throw new Error(`--${name}: unknown ${x} (known: ${all.join(', ')})`);
    return xs;
  };
  return {
    smoke,
    profile: has('profile'),
    runtimes: list('runtimes', ALL_RUNTIMES),
    scenarios: list('scenarios', ALL_SCENARIOS),
    servers: list<Kind>('servers', ['baseline', 'nerve']),
    runs: num('runs', 5, 1),
    warmupMs: num('warmup-ms', 1000, 200),
    measureMs: num('measure-ms', 3000, 500),
    latencyMs: num('latency-ms', 2000, 500),
    pairs: num('pairs', 8, 2),
    window: num('window', 500, 50),
    consumers: num('consumers', 200, 20),
    fanWindow: num('fan-window', 32, 4),
    payloadBytes: num('payload-bytes', 100, 100),
    connections: num('connections', 5000, 200),
    concurrency: num('concurrency', 100, 50),
    holdMs: num('hold-ms', 2000, 300),
    coreMs: num('core-ms', 500, 100),
    quietWaitMs: num('quiet-wait-ms', 3000, 0),
    out: flag('out'),
  };
}
type Options = ReturnType<typeof options>;

const HELP = `npm run bench -- [flags]   (each flag also reads BENCH_<NAME>, e.g. BENCH_RUNS=5)
  --smoke                seconds-long run with tiny counts (CI)
  --runtimes node,bun,deno   --scenarios pairs,latency,fanout,connections,core,cluster-pairs,cluster-fanout
  --servers baseline,nerve   --runs N (5)          --profile (--cpu-prof of the Node and Bun servers, top functions printed)
  --warmup-ms 1000  --measure-ms 3000  --latency-ms 2000  --hold-ms 2000  --core-ms 500
  --pairs 8  --window 500  --consumers 200  --fan-window 32  --payload-bytes 100
  --connections 5000  --concurrency 100  --out FILE.json
  --quiet-wait-ms 3000   before each run, wait up to this long for other processes to go quiet`;

// ---- processes ----

const hasTaskset = spawnSync('taskset', ['-c', '0', 'true']).status === 0;
const pin = (core: number, cmd: string[]) => (hasTaskset ? ['taskset', '-c', String(core), ...cmd] : cmd);

function profileDir(kind: Kind, scenario: string, run: number): string {
  return join(ROOT, 'bench/results/profiles', `${kind}-${scenario}-${run + 1}`);
}

function serverCommand(runtime: Runtime, kind: Kind, opts: Options, prof?: string): string[] {
  return runCommand(ROOT, runtime, ENTRIES[kind][runtime], opts.profile ? prof : undefined);
}

function runtimeAvailable(runtime: Runtime): string | null {
  if (runtime === 'node') return process.version;
  const r = spawnSync(join(BIN, runtime), ['--version'], { encoding: 'utf8', timeout: 20_000 });
  return r.status === 0 ? r.stdout.split('\n')[0].trim() : null;
}

/** /proc/PID/status VmRSS in bytes. */
function rss(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** User + system CPU seconds of a process, from /proc/PID/stat. */
function cpuSeconds(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // fields 14 and 15, in USER_HZ (100 on Linux)
  } catch {
    return NaN;
  }
}

/** Busy CPU seconds of the whole machine (all cores), from /proc/stat. */
function machineBusySeconds(): number {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / 100;
  } catch {
    return NaN;
  }
}

/** The process that actually serves: the spawned one or its largest descendant (a runtime may re-exec). */
function servingPid(root: number): number {
  const children = new Map<number, number[]>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]);
      (children.get(ppid) ?? children.set(ppid, []).get(ppid)!).push(Number(d));
    } catch {
      /* gone */
    }
  }
  let best = root;
  const walk = (p: number) => {
    for (const c of children.get(p) ?? []) {
      if (rss(c) > rss(best)) best = c;
      walk(c);
    }
  };
  walk(root);
  return best;
}

interface Server {
  proc: ChildProcess;
  port: number;
  pid: number;
  log: string[];
}

function startServer(cmd: string[], env: Record<string, string>): Promise<Server> {
  return new Promise((resolvePromise, reject) => {
    const full = pin(0, cmd);
    const proc = spawn(full[0], full.slice(1), {
      cwd: ROOT,
      env: { ...process.env, DENO_DIR: join(ROOT, '.deno-dir'), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const log: string[] = [];
    const keep = (line: string) => {
      log.push(line);
      if (log.length > 40) log.shift();
    };
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`server did not print its listening line in 30 s: ${cmd.join(' ')}\n${log.join('\n')}`));
    }, 30_000);
    let ready = false;
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      if (!ready) {
        try {
          const j = JSON.parse(line);
          if (j.msg === 'listening' && typeof j.port === 'number') {
            ready = true;
            clearTimeout(timer);
            resolvePromise({ proc, port: j.port, pid: servingPid(proc.pid!), log });
            return;
          }
        } catch {
          /* not JSON: an ordinary log line */
        }
      }
      keep(line);
    });
    createInterface({ input: proc.stderr! }).on('line', keep);
    proc.on('exit', (code, sig) => {
      if (!ready) {
        clearTimeout(timer);
        reject(new Error(`server exited (${code ?? sig}) before listening: ${cmd.join(' ')}\n${log.join('\n')}`));
      }
    });
  });
}

async function stopServer(s: Server): Promise<void> {
  if (s.proc.exitCode !== null || s.proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => s.proc.once('exit', () => r()));
  s.proc.kill('SIGTERM');
  const t = setTimeout(() => s.proc.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(t);
}

interface LoadOutcome {
  result: any;
  serverCpu?: number;
  /** Each server process's share of serverCpu, in the order of its pids (the first node, the others, Redis). */
  serverCpuEach?: number[];
  /** Cores busy during the window, machine-wide: what is not server or client is a neighbour. */
  machineCpu?: number;
  rssBefore?: number;
  rssAfter?: number;
}

/** Extra processes whose CPU counts as the server's (the other nodes and Redis), and what to read at the window's edges. */
interface LoadExtras {
  pids?: number[];
  atWindowStart?: () => void;
  atWindowEnd?: () => void;
}

function runLoad(server: Server, cfg: LoadConfig, extras: LoadExtras = {}): Promise<LoadOutcome> {
  const pids = [server.pid, ...(extras.pids ?? [])];
  const cpuEach = () => pids.map((pid) => cpuSeconds(pid));
  return new Promise((resolvePromise, reject) => {
    const cmd = pin(1, [process.execPath, '--import', 'tsx', 'bench/load.ts', JSON.stringify(cfg)]);
    const proc = spawn(cmd[0], cmd.slice(1), { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    const outcome: LoadOutcome = { result: null };
    let cpu0 = 0;
    let each0: number[] = [];
    let busy0 = 0;
    let t0 = 0;
    let stderr = '';
    const timer = setTimeout(() => proc.kill('SIGKILL'), cfg.deadlineMs + 10_000);
    proc.stderr!.on('data', (b) => (stderr = (stderr + b).slice(-4000)));
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      let ev: any;
      try {
        ev = JSON.parse(line);
      } catch {
        return;
      }
      if (ev.event === 'window-start') {
        extras.atWindowStart?.();
        each0 = cpuEach();
        cpu0 = each0.reduce((sum, cpu) => sum + cpu, 0);
        busy0 = machineBusySeconds();
        t0 = performance.now();
      } else if (ev.event === 'window-end') {
        const secs = (performance.now() - t0) / 1000;
        const each = cpuEach();
        outcome.serverCpuEach = each.map((cpu, i) => (cpu - each0[i]!) / secs);
        outcome.serverCpu = (each.reduce((sum, cpu) => sum + cpu, 0) - cpu0) / secs;
        outcome.machineCpu = (machineBusySeconds() - busy0) / secs;
        extras.atWindowEnd?.();
      } else if (ev.event === 'before') {
        outcome.rssBefore = rss(server.pid);
        proc.stdin!.write('\n');
      } else if (ev.event === 'sample') {
        outcome.rssAfter = rss(server.pid);
        proc.stdin!.write('\n');
      } else if (ev.event === 'result') outcome.result = ev;
      else if (ev.event === 'error') stderr += ev.error;
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      if (outcome.result) resolvePromise(outcome);
      else reject(new Error(`load client failed (exit ${code}): ${stderr.trim().slice(-1500)}`));
    });
  });
}

/**
 * Other work on this machine skews every figure; before a run, wait (bounded)
 * until less than half a core is busy. Returns the busy cores last seen.
 */
async function waitForQuiet(maxMs: number): Promise<number> {
  const until = Date.now() + maxMs;
  for (;;) {
    const b0 = machineBusySeconds();
    await new Promise((r) => setTimeout(r, 300));
    const busy = (machineBusySeconds() - b0) / 0.3;
    if (busy < 0.5 || Date.now() >= until) return busy;
    await new Promise((r) => setTimeout(r, 700));
  }
}

// ---- one measured run ----

/**
 * What each run measures and the summary gives the median of. `otherCpu` is the
 * CPU (in cores) used during the window by processes other than this server and client.
 */
const MEASURES = ['rate', 'p50Us', 'p99Us', 'clientCpu', 'serverCpu', 'otherCpu', 'bytesPerConn', 'connectSeconds'] as const;
type Measures = { [K in (typeof MEASURES)[number]]?: number };

interface Row extends Measures {
  runtime: Runtime;
  scenario: Scenario;
  server: Kind | ClusterKind;
  /** Cluster scenarios: Redis commands per message delivered during the window. */
  redisPerDelivery?: number;
  run: number;
  ok: boolean;
  error?: string;
  clientSaturated?: boolean;
  lost?: number;
  errorCount?: number;
  rssBefore?: number;
  rssAfter?: number;
  raw?: unknown;
}

/** What the load client is told to do against `port`. */
function loadConfig(scenario: LoadConfig['scenario'], port: number, measureMs: number, opts: Options): LoadConfig {
  return {
    scenario,
    port,
    password: PASSWORD,
    warmupMs: opts.warmupMs,
    measureMs,
    drainMs: 2000,
    payloadBytes: opts.payloadBytes,
    pairs: opts.pairs,
    window: opts.window,
    consumers: opts.consumers,
    fanWindow: opts.fanWindow,
    connections: opts.connections,
    concurrency: opts.concurrency,
    holdMs: opts.holdMs,
    deadlineMs: 30_000 + opts.warmupMs + measureMs + opts.holdMs + opts.connections * 10,
  };
}

/** One run's row from what the load client and /proc reported; `saturable`: the client's CPU can cap the figure. */
function rowOf(base: Pick<Row, 'runtime' | 'scenario' | 'server' | 'run'>, o: LoadOutcome, saturable: boolean): Row {
  const r = o.result;
  const row: Row = {
    ...base,
    ok: r.count > 0 && r.errorCount === 0,
    rate: r.rate,
    p50Us: r.p50Us,
    p99Us: r.p99Us,
    clientCpu: r.clientCpu,
    serverCpu: o.serverCpu,
    otherCpu: o.machineCpu === undefined ? undefined : Math.max(0, o.machineCpu - (o.serverCpu ?? 0) - r.clientCpu),
    clientSaturated: saturable && r.clientCpu > 0.9,
    lost: r.lost,
    errorCount: r.errorCount,
    raw: r,
  };
  if (r.errorCount) row.error = r.errors.join('; ');
  return row;
}

async function socketRun(runtime: Runtime, scenario: 'pairs' | 'latency' | 'fanout' | 'connections', kind: Kind, run: number, opts: Options): Promise<Row> {
  const base = { runtime, scenario, server: kind, run };
  const prof = runtime !== 'deno' && opts.profile ? profileDir(kind, scenario, run) : undefined;
  // A profile left by an earlier invocation must not be mistaken for this run's.
  if (prof) rmSync(prof, { recursive: true, force: true });
  const cmd = serverCommand(runtime, kind, opts, prof);
  const env: Record<string, string> = { NERVE_PORT: '0', NERVE_HOST: '127.0.0.1', NERVE_PASSWORD: PASSWORD };
  // Short enough that idle connections really heartbeat while they are held.
  if (scenario === 'connections') env.NERVE_HEARTBEAT_INTERVAL = '2000';
  const measureMs = scenario === 'latency' ? opts.latencyMs : opts.measureMs;
  let server: Server | undefined;
  try {
    server = await startServer(cmd, env);
    await new Promise((r) => setTimeout(r, 300));
    const cfg = loadConfig(scenario, server.port, measureMs, opts);
    const o = await runLoad(server, cfg);
    const r = o.result;
    const row = rowOf(base, o, scenario !== 'connections');
    if (scenario === 'connections') {
      row.rssBefore = o.rssBefore;
      row.rssAfter = o.rssAfter;
      row.bytesPerConn = ((o.rssAfter ?? NaN) - (o.rssBefore ?? NaN)) / opts.connections;
      row.connectSeconds = r.seconds;
      row.ok = row.ok && r.open === opts.connections;
    }
    return row;
  } catch (err) {
    return { ...base, ok: false, error: String((err as Error).message ?? err).slice(0, 2000) };
  } finally {
    if (server) await stopServer(server);
    if (prof) printProfile(prof);
  }
}

// ---- cluster scenarios ----

/** The redis-server binary, or undefined when it is not installed. */
function redisServer(): string | undefined {
  const found = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' });
  return found.status === 0 ? found.stdout.trim() : undefined;
}

function redisCommandsProcessed(port: number): number {
  const info = spawnSync('redis-cli', ['-p', String(port), 'info', 'stats'], { encoding: 'utf8', timeout: 5_000 });
  const match = /total_commands_processed:(\d+)/.exec(info.stdout ?? '');
  return match ? Number(match[1]) : NaN;
}

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createNetServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolvePort(port));
    });
  });
}

/** A redis-server pinned with the nodes (core 0), without persistence; resolves once it answers PING. */
async function startRedis(): Promise<{ proc: ChildProcess; port: number }> {
  const port = await freePort();
  const cmd = pin(0, [redisServer()!, '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
  const proc = spawn(cmd[0], cmd.slice(1), { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    const ping = spawnSync('redis-cli', ['-p', String(port), 'ping'], { encoding: 'utf8' });
    if (ping.stdout?.trim() === 'PONG') return { proc, port };
    await new Promise((r) => setTimeout(r, 50));
  }
  proc.kill('SIGKILL');
  throw new Error(`redis-server did not answer on port ${port}`);
}

/** Waits until a node's /health says it is linked to the cluster. */
async function clusterUp(port: number): Promise<void> {
  const until = Date.now() + 20_000;
  while (Date.now() < until) {
    try {
      const health = (await (await fetch(`http://127.0.0.1:${port}/health`)).json()) as { cluster?: string };
      if (health.cluster === 'up') return;
    } catch {
      /* not yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`node on port ${port} did not join the cluster in 20 s`);
}

/**
 * One node alone, or two nodes and Redis, all on core 0 (the load on core 1):
 * pairs with every consumer on the second node, fan-out with every other one.
 */
async function clusterRun(runtime: Runtime, scenario: 'cluster-pairs' | 'cluster-fanout', kind: ClusterKind, run: number, opts: Options): Promise<Row> {
  const base = { runtime, scenario, server: kind, run };
  const profiles = [0, 1].map((node) => (runtime !== 'deno' && opts.profile ? profileDir('nerve', `${scenario}-${kind}-node${node + 1}`, run) : undefined));
  for (const prof of profiles) if (prof) rmSync(prof, { recursive: true, force: true });
  const env: Record<string, string> = { NERVE_PORT: '0', NERVE_HOST: '127.0.0.1', NERVE_PASSWORD: PASSWORD };
  const started: Server[] = [];
  let redis: { proc: ChildProcess; port: number } | undefined;
  try {
    if (kind === 'cluster') {
      redis = await startRedis();
      env.NERVE_REDIS_URL = `redis://127.0.0.1:${redis.port}`;
      env.NERVE_CLUSTER = `bench-${process.pid}-${run}`;
    }
    started.push(await startServer(serverCommand(runtime, 'nerve', opts, profiles[0]), env));
    if (kind === 'cluster') {
      started.push(await startServer(serverCommand(runtime, 'nerve', opts, profiles[1]), env));
      for (const node of started) await clusterUp(node.port);
    }
    await new Promise((r) => setTimeout(r, 300));
    const [first, second] = started;
    const cfg = loadConfig(scenario === 'cluster-pairs' ? 'pairs' : 'fanout', first!.port, opts.measureMs, opts);
    if (second) cfg.consumerPort = second.port;
    let commands0 = NaN;
    let commands = NaN;
    const o = await runLoad(first!, cfg, {
      pids: [...started.slice(1).map((node) => node.pid), ...(redis?.proc.pid ? [redis.proc.pid] : [])],
      atWindowStart: () => {
        if (redis) commands0 = redisCommandsProcessed(redis.port);
      },
      atWindowEnd: () => {
        if (redis) commands = redisCommandsProcessed(redis.port) - commands0;
      },
    });
    const row = rowOf(base, o, true);
    if (redis) row.redisPerDelivery = commands / o.result.count;
    if (kind === 'cluster' && o.serverCpuEach) {
      const [a, b, r] = o.serverCpuEach.map((cpu) => fmtPct(cpu));
      process.stderr.write(`  CPU: producers' node ${a}, consumers' node ${b}, Redis ${r}\n`);
    }
    return row;
  } catch (err) {
    return { ...base, ok: false, error: String((err as Error).message ?? err).slice(0, 2000) };
  } finally {
    for (const node of started) await stopServer(node);
    redis?.proc.kill('SIGKILL');
    for (const prof of profiles) if (prof) printProfile(prof);
  }
}

/** The top self-time functions of the main thread's profile (the largest file; tsx adds a loader thread). */
function printProfile(dir: string): void {
  if (!existsSync(dir)) return;
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => join(dir, f))
    .sort((a, b) => statSync(b).size - statSync(a).size);
  if (!files.length) return;
  process.stderr.write(`  profile ${files[0]}\n`);
  for (const r of topSelf(files[0], 15)) process.stderr.write(`  ${r.pct.toFixed(1).padStart(5)}%  ${r.name}  ${r.where}\n`);
}

async function coreRun(runtime: Runtime, opts: Options): Promise<any> {
  const full = pin(0, runCommand(ROOT, runtime, 'bench/core.ts'));
  const r = spawnSync(full[0], full.slice(1), {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 120_000,
    env: {
      ...process.env,
      DENO_DIR: join(ROOT, '.deno-dir'),
      BENCH_CORE: JSON.stringify({ ms: opts.coreMs, runs: opts.runs, consumers: opts.consumers, payloadBytes: opts.payloadBytes }),
    },
  });
  const line = r.stdout?.split('\n').find((l) => l.includes('"scenario":"core"'));
  if (!line) return { ok: false, error: `core bench failed: ${(r.stderr || r.error?.message || '').slice(-1500)}` };
  return { ok: true, ...JSON.parse(line) };
}

// ---- report ----

const fmtRate = (x?: number) => (x === undefined || !Number.isFinite(x) ? '—' : Math.round(x).toLocaleString('en-US'));
const fmtUs = (x?: number) =>
  x === undefined || !Number.isFinite(x) ? '—' : x >= 10_000 ? `${(x / 1000).toFixed(1)} ms` : x >= 1000 ? `${(x / 1000).toFixed(2)} ms` : `${Math.round(x)} µs`;
const fmtPct = (x?: number) => (x === undefined || !Number.isFinite(x) ? '—' : `${Math.round(x * 100)}%`);
const fmtBytes = (x?: number) => (x === undefined || !Number.isFinite(x) ? '—' : x >= 1024 ? `${(x / 1024).toFixed(1)} KiB` : `${Math.round(x)} B`);
const fmtRatio = (x?: number) => (x === undefined || !Number.isFinite(x) ? '—' : `${x.toFixed(2)}×`);

function table(rows: string[][]): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r, k) => r.map((c, i) => (i < 3 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ') + (k === 0 ? '\n' + w.map((x) => '-'.repeat(x)).join('  ') : '')).join('\n');
}

interface Summary extends Measures {
  runtime: Runtime;
  scenario: Scenario;
  server: Kind | ClusterKind;
  redisPerDelivery?: number;
  runs: number;
  failed: number;
  clientSaturated: boolean;
  errors: string[];
}

interface Target {
  runtime: Runtime;
  scenario: Scenario;
  metric: string;
  ratio: number;
  goal: string;
  /** Undefined for a figure reported without a target. */
  met: boolean | undefined;
}

function summarize(rows: Row[]): Summary[] {
  const out: Summary[] = [];
  const keys = new Set(rows.map((r) => `${r.runtime}|${r.scenario}|${r.server}`));
  for (const k of keys) {
    const [runtime, scenario, server] = k.split('|') as [Runtime, Scenario, Kind | ClusterKind];
    const rs = rows.filter((r) => r.runtime === runtime && r.scenario === scenario && r.server === server);
    const ok = rs.filter((r) => r.ok);
    const summary: Summary = {
      runtime,
      scenario,
      server,
      runs: rs.length,
      failed: rs.length - ok.length,
      clientSaturated: ok.some((r) => r.clientSaturated),
      errors: [...new Set(rs.filter((r) => r.error).map((r) => r.error!))].slice(0, 3),
    };
    for (const key of MEASURES) summary[key] = ok.length ? median(ok.map((r) => r[key] ?? NaN)) : undefined;
    if (ok.some((r) => r.redisPerDelivery !== undefined)) summary.redisPerDelivery = median(ok.map((r) => r.redisPerDelivery ?? NaN));
    out.push(summary);
  }
  return out;
}

function targets(sums: Summary[]): Target[] {
  const t: Target[] = [];
  const get = (rt: Runtime, sc: Scenario, k: Kind | ClusterKind) => sums.find((s) => s.runtime === rt && s.scenario === sc && s.server === k);
  for (const rt of ALL_RUNTIMES) {
    const pair = (sc: Scenario) => [get(rt, sc, 'baseline'), get(rt, sc, 'nerve')] as const;
    const add = (sc: Scenario, metric: string, f: (s: Summary) => number | undefined, goal: number, higherIsBetter: boolean) => {
      const [b, n] = pair(sc);
      if (!b || !n) return;
      const nb = f(b) ?? NaN;
      const nn = f(n) ?? NaN;
      // A memory delta at or below zero (tiny smoke counts, GC in between) has no meaningful ratio.
      if (!(nb > 0 && nn > 0)) return;
      const ratio = nn / nb;
      t.push({ runtime: rt, scenario: sc, metric, ratio, goal: `${higherIsBetter ? '≥' : '≤'} ${goal}`, met: higherIsBetter ? ratio >= goal : ratio <= goal });
    };
    add('pairs', 'msg/s', (s) => s.rate, 0.8, true);
    add('fanout', 'deliveries/s', (s) => s.rate, 0.8, true);
    add('latency', 'p50', (s) => s.p50Us, 1.25, false);
    add('connections', 'RSS/conn', (s) => s.bytesPerConn, 1.5, false);
    for (const sc of ['cluster-pairs', 'cluster-fanout'] as const) {
      const one = get(rt, sc, 'one-node');
      const two = get(rt, sc, 'cluster');
      if (!one || !two) continue;
      // Only pairs has throughput and CPU targets (docs/cluster.md); fan-out's ratios are reported as they are.
      const versus = (metric: string, a: number | undefined, b: number | undefined, goal: number | undefined, higherIsBetter: boolean) => {
        if (!(a! > 0 && b! > 0)) return;
        const ratio = b! / a!;
        if (goal === undefined) t.push({ runtime: rt, scenario: sc, metric, ratio, goal: '—', met: undefined });
        else t.push({ runtime: rt, scenario: sc, metric, ratio, goal: `${higherIsBetter ? '≥' : '≤'} ${goal}`, met: higherIsBetter ? ratio >= goal : ratio <= goal });
      };
      const pairs = sc === 'cluster-pairs';
      versus(`${pairs ? 'msg/s' : 'deliveries/s'} (cluster ÷ one node)`, one.rate, two.rate, pairs ? 0.4 : undefined, true);
      versus('CPU per message (cluster ÷ one node)', cpuPer(one), cpuPer(two), pairs ? 2.5 : undefined, false);
      const commands = two.redisPerDelivery;
      if (commands !== undefined && Number.isFinite(commands)) {
        t.push({ runtime: rt, scenario: sc, metric: 'Redis commands per delivery', ratio: commands, goal: '< 0.2', met: commands < 0.2 });
      }
    }
  }
  return t;
}

/** Server CPU seconds per message (all nodes and Redis for a cluster). */
function cpuPer(s: Summary): number | undefined {
  return s.serverCpu !== undefined && s.rate ? s.serverCpu / s.rate : undefined;
}

function report(rows: Row[], core: Record<string, any>, opts: Options): { text: string; summaries: Summary[]; targets: Target[] } {
  const sums = summarize(rows);
  const lines: string[] = [];
  const head = ['runtime', 'scenario', 'server', 'throughput', 'p50', 'p99', 'memory/conn', 'client cpu', 'server cpu', 'others cpu', 'runs', 'notes'];
  const body: string[][] = [head];
  for (const s of sums) {
    const unit = s.scenario.endsWith('pairs') || s.scenario === 'latency' ? ' msg/s' : s.scenario.endsWith('fanout') ? ' deliv/s' : ' conn/s';
    const notes = [
      s.clientSaturated ? 'CLIENT SATURATED' : '',
      s.failed ? `${s.failed} failed` : '',
      s.scenario === 'connections' && s.connectSeconds !== undefined ? `connect ${s.connectSeconds.toFixed(2)} s` : '',
      s.redisPerDelivery !== undefined ? `${s.redisPerDelivery.toFixed(3)} Redis commands/delivery` : '',
      ...s.errors.map((e) => e.split('\n')[0].slice(0, 120)),
    ].filter(Boolean);
    body.push([
      s.runtime,
      s.scenario,
      s.server,
      s.rate === undefined ? '—' : fmtRate(s.rate) + unit,
      fmtUs(s.p50Us),
      fmtUs(s.p99Us),
      s.scenario === 'connections' ? fmtBytes(s.bytesPerConn) : '',
      fmtPct(s.clientCpu),
      s.scenario === 'connections' ? '' : fmtPct(s.serverCpu),
      s.scenario === 'connections' ? '' : fmtPct(s.otherCpu),
      String(s.runs),
      notes.join('; '),
    ]);
  }
  lines.push(table(body));
  const t = targets(sums);
  if (t.length) {
    lines.push('');
    lines.push(table([['runtime', 'scenario', 'metric', 'Nerve ÷ baseline', 'target', 'met'], ...t.map((x) => [x.runtime, x.scenario, x.metric, fmtRatio(x.ratio), x.goal, x.met === undefined ? '—' : x.met ? 'yes' : 'NO'])]));
  }
  const coreRows: string[][] = [['runtime', 'core case', '', 'step inputs/s', 'deliveries/s', 'JSON floor/s', 'step ÷ JSON']];
  for (const [rt, c] of Object.entries(core)) {
    if (!c.ok) {
      coreRows.push([rt, 'core', '', '—', '—', '—', c.error.split('\n')[0].slice(0, 80)]);
      continue;
    }
    for (const k of c.cases) coreRows.push([rt, k.case, '', fmtRate(k.coreOpsPerSec), fmtRate(k.coreDeliveriesPerSec), fmtRate(k.jsonOpsPerSec), fmtRatio(k.ratio)]);
  }
  if (coreRows.length > 1) lines.push('', table(coreRows));
  lines.push(
    '',
    `medians of ${opts.runs} run(s) each; server on core 0, load client on core 1${hasTaskset ? '' : ' (taskset missing: NOT pinned)'}; ` +
      `"others cpu" is what the rest of the machine used during the window (in cores): above ~20% the figures are disturbed`,
  );
  return { text: lines.join('\n'), summaries: sums, targets: t };
}

// ---- main ----

async function main() {
  const opts = options();
  const started = Date.now();
  const versions: Record<string, string | null> = {};
  for (const rt of opts.runtimes) versions[rt] = runtimeAvailable(rt);
  const rows: Row[] = [];
  const core: Record<string, any> = {};
  const say = (s: string) => process.stderr.write(s + '\n');
  say(`bench: runtimes ${opts.runtimes.join(',')}; scenarios ${opts.scenarios.join(',')}; ${opts.runs} run(s)${opts.smoke ? ' (smoke)' : ''}`);
  // A missing entry is a renamed file, not a server to leave out: stop before measuring anything.
  const missing = opts.runtimes.flatMap((rt) => opts.servers.map((k) => ENTRIES[k][rt])).filter((entry) => !existsSync(join(ROOT, entry)));
  if (missing.length) throw new Error(`no such entry file: ${missing.join(', ')} (bench/entries.ts names them)`);

  for (const rt of opts.runtimes) {
    if (!versions[rt]) {
      say(`${rt}: runtime not available, skipped`);
      continue;
    }
    const kinds = opts.servers;
    for (const sc of opts.scenarios) {
      if (sc === 'core') {
        say(`${rt} core…`);
        if (opts.quietWaitMs) await waitForQuiet(opts.quietWaitMs);
        core[rt] = await coreRun(rt, opts);
        continue;
      }
      if (isClusterScenario(sc) && !redisServer()) {
        say(`${rt} ${sc}: redis-server is not installed, skipped`);
        continue;
      }
      for (let run = 0; run < opts.runs; run++) {
        // Alternate who goes first so drift (thermal, page cache, neighbours) hits both alike.
        const runKinds: (Kind | ClusterKind)[] = isClusterScenario(sc) ? CLUSTER_KINDS : kinds;
        const order = run % 2 === 0 ? runKinds : [...runKinds].reverse();
        for (const k of order) {
          if (opts.quietWaitMs) await waitForQuiet(opts.quietWaitMs);
          const row = isClusterScenario(sc) ? await clusterRun(rt, sc, k as ClusterKind, run, opts) : await socketRun(rt, sc, k as Kind, run, opts);
          rows.push(row);
          say(
            `${rt} ${sc} ${k} #${run + 1}: ` +
              (row.ok
                ? sc === 'connections'
                  ? `${fmtBytes(row.bytesPerConn)}/conn, connect ${row.connectSeconds?.toFixed(2)} s`
                  : `${fmtRate(row.rate)}/s p50 ${fmtUs(row.p50Us)} p99 ${fmtUs(row.p99Us)} client ${fmtPct(row.clientCpu)} server ${fmtPct(row.serverCpu)} others ${fmtPct(row.otherCpu)}`
                : `FAILED ${row.error?.split('\n')[0]}`),
          );
        }
      }
    }
  }

  const { text, summaries, targets: t } = report(rows, core, opts);
  console.log(text);
  const result = {
    when: new Date().toISOString(),
    seconds: (Date.now() - started) / 1000,
    machine: { cpu: cpus()[0]?.model, cores: cpus().length, memoryBytes: totalmem(), taskset: hasTaskset, versions },
    options: opts,
    summaries,
    targets: t,
    core,
    rows,
  };
  const out = opts.out ? resolve(opts.out) : join(ROOT, 'bench/results', `bench-${result.when.replace(/[:.]/g, '-')}.json`);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, JSON.stringify(result, null, 2));
  if (!opts.out) writeFileSync(join(ROOT, 'bench/results/latest.json'), JSON.stringify(result, null, 2));
  say(`results: ${out} (${result.seconds.toFixed(0)} s)`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
