// The load client: one process, pinned to its own core by bench/run.ts, that
// drives one scenario against one server and prints JSON lines on stdout
// (progress events, then one `result`). Every loop is bounded in count and time.

import { createInterface } from 'node:readline';
import { performance } from 'node:perf_hooks';
import { connect, readStamp, type WsConn } from './lib/wsclient.ts';
import { Samples } from './lib/stats.ts';

export interface LoadConfig {
  scenario: 'pairs' | 'latency' | 'fanout' | 'connections';
  port: number;
  /**
   * A second node of the same cluster: pairs put every consumer there (each
   * message crosses nodes), fan-out every other consumer.
   */
  consumerPort?: number;
  password: string;
  warmupMs: number;
  measureMs: number;
  /** After the window: how long to wait for in-flight messages before counting them lost. */
  drainMs: number;
  payloadBytes: number;
  pairs: number;
  window: number;
  consumers: number;
  /** Fan-out: dispatches in flight (each is `consumers` deliveries). */
  fanWindow: number;
  connections: number;
  concurrency: number;
  holdMs: number;
  /** The whole run is abandoned after this long, whatever happens. */
  deadlineMs: number;
}

const cfg: LoadConfig = JSON.parse(process.argv[2]);
const hardStop = setTimeout(() => {
  emit({ event: 'error', error: `load client passed its ${cfg.deadlineMs} ms deadline` });
  process.exit(3);
}, cfg.deadlineMs);
hardStop.unref();

function emit(o: object): void {
  process.stdout.write(JSON.stringify(o) + '\n');
}

const nowUs = () => Math.round(performance.now() * 1000);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
/** Wait for the orchestrator to read the server's memory, at most 5 s. */
async function handshake(event: string): Promise<void> {
  emit({ event });
  await Promise.race([stdinLines.next(), sleep(5_000)]);
}

// ---- connection bookkeeping shared by every scenario ----

const all: WsConn[] = [];
const nextBeat = new Map<WsConn, number>();
let beatEvery = 45_000;
let beatsSent = 0;
let beatsAcked = 0;
let droppedConns = 0;
const errors: string[] = [];

function control(c: WsConn, buf: Buffer, s: number, e: number): void {
  let f: any;
  try {
    f = JSON.parse(buf.toString('utf8', s, e));
  } catch {
    errors.push('undecodable frame from server');
    return;
  }
  if (f.op === 4) beatsAcked++;
  else if (f.op === 6) errors.push(`NO_U_TBH: ${f.d}`);
  else if (f.op === 8 && typeof f.e === 'string' && f.e.startsWith('NERVE_')) errors.push(`${f.e}: ${JSON.stringify(f.d)}`);
}

function identify(app: string, id: string, port = cfg.port): Promise<WsConn> {
  return connect(port).then(
    (conn) =>
      new Promise<WsConn>((resolve, reject) => {
        const timer = setTimeout(() => {
          conn.destroy();
          reject(new Error(`no WELCOME for ${app}/${id}`));
        }, 15_000);
        conn.onClose = () => reject(new Error(`closed before WELCOME (${app}/${id})`));
        conn.onFrame = (c, buf, s, e) => {
          const f = JSON.parse(buf.toString('utf8', s, e));
          if (f.op === 0) {
            beatEvery = f.d.heartbeat_interval;
            // First beat at a random point of the interval so 5000 sockets don't beat in step.
            nextBeat.set(c, performance.now() + beatEvery * (0.2 + 0.7 * Math.random()));
            c.send(JSON.stringify({ op: 1, d: { app_name: app, client_id: id, password: cfg.password } }));
          } else if (f.op === 2) {
            clearTimeout(timer);
            c.onFrame = control;
            c.onClose = () => {
              if (!stopping) droppedConns++;
            };
            all.push(c);
            resolve(c);
          } else if (f.op === 6) {
            clearTimeout(timer);
            reject(new Error(`NO_U_TBH during IDENTIFY: ${f.d}`));
          }
        };
      }),
  );
}

let stopping = false;
const beater = setInterval(() => {
  const t = performance.now();
  for (const [c, at] of nextBeat) {
    if (at > t || c.closed) continue;
    c.send('{"op":3}');
    beatsSent++;
    nextBeat.set(c, t + beatEvery * 0.9);
  }
}, 100);

async function closeAll(): Promise<void> {
  stopping = true;
  clearInterval(beater);
  for (const c of all) c.close();
  const until = Date.now() + 2_000;
  while (Date.now() < until && all.some((c) => !c.closed)) await sleep(20);
  for (const c of all) if (!c.closed) c.destroy();
}

/** The measured window: warm-up, then `measureMs` with CPU and delivery snapshots. */
async function measure(delivered: () => number) {
  await sleep(cfg.warmupMs);
  const d0 = delivered();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  emit({ event: 'window-start' });
  measuring = true;
  await sleep(cfg.measureMs);
  measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  emit({ event: 'window-end' });
  const count = delivered() - d0;
  return { seconds, count, rate: count / seconds, clientCpu: (cpu.user + cpu.system) / 1e6 / seconds };
}
let measuring = false;

function payload(t: number, pad: string): string {
  return '{"t":' + t + ',"p":"' + pad + '"}';
}
// `d` is about payloadBytes long: {"t":<13 digits>,"p":"…"} is 21 bytes plus the padding.
const pad = 'x'.repeat(Math.max(0, cfg.payloadBytes - 21));

async function drain(pending: () => number): Promise<number> {
  stopping = true;
  const until = performance.now() + cfg.drainMs;
  while (pending() > 0 && performance.now() < until) await sleep(10);
  return pending();
}

// ---- scenarios ----

async function pairs(n: number, window: number, batched: boolean) {
  const producers: WsConn[] = [];
  const consumers: WsConn[] = [];
  const sent = new Float64Array(n);
  const recv = new Float64Array(n);
  const to: string[] = [];
  for (let i = 0; i < n; i++) {
    consumers.push(await identify('bench-c', `c${i}`, cfg.consumerPort));
    producers.push(await identify('bench-p', `p${i}`));
    to.push(JSON.stringify({ app_name: 'bench-c', client_id: `c${i}` }));
  }
  const lat = new Samples();
  let total = 0;
  const dirty: number[] = [];
  const isDirty = new Uint8Array(n);

  const pump = (i: number) => {
    if (stopping) return;
    const k = window - (sent[i] - recv[i]);
    if (k <= 0) return;
    const p = producers[i];
    const d = payload(nowUs(), pad);
    const frame = '{"op":8,"e":"BENCH","d":' + d + ',"to":' + to[i] + '}';
    for (let j = 0; j < k; j++) p.queue(frame);
    p.flush();
    sent[i] += k;
  };
  const pumpDirty = () => {
    for (const i of dirty) {
      isDirty[i] = 0;
      pump(i);
    }
    dirty.length = 0;
  };

  consumers.forEach((c, i) => {
    c.onFrame = (conn, buf, s, e) => {
      const t = readStamp(buf, s, e);
      if (t < 0) return control(conn, buf, s, e);
      recv[i]++;
      total++;
      if (measuring) lat.add(nowUs() - t);
      if (!batched) return pump(i);
      if (!isDirty[i]) {
        isDirty[i] = 1;
        if (dirty.push(i) === 1) setImmediate(pumpDirty);
      }
    };
  });
  for (let i = 0; i < n; i++) pump(i);
  const m = await measure(() => total);
  const lost = await drain(() => {
    let s = 0;
    for (let i = 0; i < n; i++) s += sent[i] - recv[i];
    return s;
  });
  const [p50, p99] = lat.percentiles([50, 99]);
  return { ...m, p50Us: p50, p99Us: p99, lost };
}

async function fanout(nConsumers: number, window: number) {
  const consumers: WsConn[] = [];
  for (let i = 0; i < nConsumers; i++) consumers.push(await identify('bench-fan', `f${i}`, i % 2 === 1 ? cfg.consumerPort : cfg.port));
  const producer = await identify('bench-fanp', 'p0');
  const to = JSON.stringify({ app_name: 'bench-fan', mode: 'all' });
  let sent = 0;
  let recv = 0;
  const lat = new Samples();
  let scheduled = false;

  const pump = () => {
    scheduled = false;
    if (stopping) return;
    const k = Math.floor((window * nConsumers - (sent * nConsumers - recv)) / nConsumers);
    if (k <= 0) return;
    const frame = '{"op":8,"e":"BENCH","d":' + payload(nowUs(), pad) + ',"to":' + to + '}';
    for (let j = 0; j < k; j++) producer.queue(frame);
    producer.flush();
    sent += k;
  };
  for (const c of consumers) {
    c.onFrame = (conn, buf, s, e) => {
      const t = readStamp(buf, s, e);
      if (t < 0) return control(conn, buf, s, e);
      recv++;
      if (measuring) lat.add(nowUs() - t);
      if (!scheduled) {
        scheduled = true;
        setImmediate(pump);
      }
    };
  }
  pump();
  const m = await measure(() => recv);
  const lost = await drain(() => sent * nConsumers - recv);
  const [p50, p99] = lat.percentiles([50, 99]);
  return { ...m, p50Us: p50, p99Us: p99, lost };
}

async function connections(n: number, concurrency: number) {
  // A few connections first, so one-off costs (lazy code, first-use buffers)
  // land before the "before" memory reading rather than on the per-connection figure.
  for (let i = 0; i < 20; i++) await identify('bench-warm', `w${i}`);
  for (const c of all.splice(0)) {
    nextBeat.delete(c);
    c.onClose = () => {};
    c.close();
  }
  await sleep(300);
  await handshake('before');

  const times = new Samples();
  let next = 0;
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const worker = async () => {
    while (next < n) {
      const k = next++;
      const t = performance.now();
      await identify('bench-idle', `i${k}`);
      times.add((performance.now() - t) * 1000);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const beats0 = beatsSent;
  await sleep(cfg.holdMs);
  await handshake('sample');
  const open = all.filter((c) => !c.closed).length;
  const [p50, p99] = times.percentiles([50, 99]);
  return {
    seconds,
    count: n,
    rate: n / seconds,
    clientCpu: (cpu.user + cpu.system) / 1e6 / seconds,
    p50Us: p50,
    p99Us: p99,
    open,
    beatsDuringHold: beatsSent - beats0,
    lost: n - open,
  };
}

async function main() {
  let r: object;
  switch (cfg.scenario) {
    case 'pairs':
      r = await pairs(cfg.pairs, cfg.window, true);
      break;
    case 'latency':
      r = await pairs(1, 1, false);
      break;
    case 'fanout':
      r = await fanout(cfg.consumers, cfg.fanWindow);
      break;
    case 'connections':
      r = await connections(cfg.connections, cfg.concurrency);
      break;
  }
  await closeAll();
  emit({
    event: 'result',
    scenario: cfg.scenario,
    ...r,
    beatsSent,
    beatsAcked,
    droppedConns,
    errors: errors.slice(0, 5),
    errorCount: errors.length,
  });
  process.exit(0);
}

main().catch((err) => {
  emit({ event: 'error', error: String(err?.stack ?? err) });
  process.exit(2);
});
