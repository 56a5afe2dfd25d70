// The in-process core scenario: `step` throughput on the hot inputs (heartbeat,
// dispatch to one client, fan-out to 200) against the floor of plain
// JSON.parse + JSON.stringify of the same frames. Runs unchanged on Node, Bun and Deno.

import { createState, step, DEFAULT_LIMITS, type Input, type Output } from '../src/core/index.ts';

interface CoreConfigArg {
  /** Time-bounded: each measurement runs this long. */
  ms: number;
  runs: number;
  consumers: number;
  payloadBytes: number;
}

const env: Record<string, string | undefined> = (globalThis as any).process?.env ?? (globalThis as any).Deno?.env.toObject() ?? {};
const arg: CoreConfigArg = { ms: 500, runs: 3, consumers: 200, payloadBytes: 100, ...JSON.parse(env.BENCH_CORE ?? '{}') };

const wire = { format: 'json', compression: 'none' } as const;
let now = 1_000;
let nextConn = 1;

function setup() {
  const [state] = [createState({ ...DEFAULT_LIMITS, worker: 'nerve-000000', password: 'pw' })];
  const join = (app: string, id: string): number => {
    const conn = nextConn++;
    step(state, { type: 'open', now, conn, wire });
    const [, out] = step(state, {
      type: 'message',
      now,
      conn,
      data: JSON.stringify({ op: 1, d: { app_name: app, client_id: id, password: 'pw' } }),
    });
    if (!out.some((o) => o.type === 'send' && typeof o.data === 'string' && o.data.includes('"op":2'))) {
      throw new Error(`IDENTIFY of ${app}/${id} got no WELCOME: ${JSON.stringify(out)}`);
    }
    return conn;
  };
  return { state, join };
}

interface Case {
  name: string;
  /** Deliveries each input causes (for the per-delivery figure). */
  fanout: number;
  input: Input & { type: 'message' };
  core: () => Output[];
  json: () => number;
}

function cases(): Case[] {
  const pad = 'x'.repeat(Math.max(0, arg.payloadBytes - 21));
  const d = `{"t":1234567890123,"p":"${pad}"}`;
  const { state, join } = setup();

  const hbConn = join('bench-hb', 'h0');
  const hb: Input & { type: 'message' } = { type: 'message', now, conn: hbConn, data: '{"op":3}' };

  const p = join('bench-p', 'p0');
  join('bench-c', 'c0');
  const oneFrame = `{"op":8,"e":"BENCH","d":${d},"to":{"app_name":"bench-c","client_id":"c0"}}`;
  const one: Input & { type: 'message' } = { type: 'message', now, conn: p, data: oneFrame };

  const fp = join('bench-fanp', 'p0');
  for (let i = 0; i < arg.consumers; i++) join('bench-fan', `f${i}`);
  const fanFrame = `{"op":8,"e":"BENCH","d":${d},"to":{"app_name":"bench-fan","mode":"all"}}`;
  const fan: Input & { type: 'message' } = { type: 'message', now, conn: fp, data: fanFrame };

  const run = (input: Input & { type: 'message' }) => () => {
    input.now = now += 0.001;
    return step(state, input)[1];
  };
  // The floor: decode the inbound frame, encode what goes out. A fan-out relay
  // encodes once and splices each recipient's `s`, as the socket baseline does.
  let seq = 0;
  const routed = (n: number, frame: string) => () => {
    const f = JSON.parse(frame);
    const head =
      '{"op":8,"e":' + JSON.stringify(f.e) + ',"d":' + JSON.stringify(f.d) +
      ',"from":' + JSON.stringify({ app_name: 'bench-p', client_id: 'p0' }) + ',"s":';
    let bytes = 0;
    for (let i = 0; i < n; i++) bytes += (head + ++seq + '}').length;
    return bytes;
  };
  return [
    { name: 'heartbeat', fanout: 1, input: hb, core: run(hb), json: () => (JSON.parse('{"op":3}').op + JSON.stringify({ op: 4 })).length },
    { name: 'dispatch-one', fanout: 1, input: one, core: run(one), json: routed(1, oneFrame) },
    { name: `fanout-${arg.consumers}`, fanout: arg.consumers, input: fan, core: run(fan), json: routed(arg.consumers, fanFrame) },
  ];
}

/** Inputs per second, running `f` in batches until `ms` have passed (and at most 50M times). */
function time(f: () => unknown, ms: number): number {
  let n = 0;
  let sink = 0;
  const t0 = performance.now();
  let t = t0;
  const batch = 256;
  while (t - t0 < ms && n < 50_000_000) {
    for (let i = 0; i < batch; i++) sink ^= (f() as any).length | 0;
    n += batch;
    t = performance.now();
  }
  if (sink === 0.5) console.log(sink);
  return n / ((t - t0) / 1000);
}

function median(xs: number[]): number {
  const a = [...xs].sort((x, y) => x - y);
  return a.length % 2 ? a[a.length >> 1] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2;
}

const results = [];
for (const c of cases()) {
  // Sanity: the core really routes (one send per recipient), so we time real work.
  const sends = c.core().filter((o) => o.type === 'send').length;
  if (sends !== c.fanout) throw new Error(`${c.name}: expected ${c.fanout} sends, got ${sends}`);
  time(c.core, Math.min(200, arg.ms));
  time(c.json, Math.min(200, arg.ms));
  const core: number[] = [];
  const json: number[] = [];
  for (let r = 0; r < arg.runs; r++) {
    core.push(time(c.core, arg.ms));
    json.push(time(c.json, arg.ms));
  }
  const coreMed = median(core);
  const jsonMed = median(json);
  results.push({
    case: c.name,
    fanout: c.fanout,
    coreOpsPerSec: coreMed,
    jsonOpsPerSec: jsonMed,
    coreDeliveriesPerSec: coreMed * c.fanout,
    ratio: coreMed / jsonMed,
    coreRuns: core,
    jsonRuns: json,
  });
}
console.log(JSON.stringify({ event: 'result', scenario: 'core', cases: results }));
