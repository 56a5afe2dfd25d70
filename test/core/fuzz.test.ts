// A bounded in-process fuzz of `step` (scripts/fuzz.ts runs the same generators for a million frames): hostile
// frames on every wire format never make step throw, log an internal error or stall, and keep the embedding
// contract (NO_U_TBH before every error close, no output for an id the host closed).

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { CoreConfig } from '../../src/core/index.ts';
import {
  deepArray,
  deepObject,
  deepQuery,
  EXTENSIONS,
  FuzzDriver,
  history,
  int64,
  Raw,
  REDOS_VICTIM,
  summary,
  THROWING_QUERIES,
  toJson,
  toMsgpack,
  uint64,
  WIRES,
  wireName,
  zlibBomb,
  type Command,
  type Frame,
} from './fuzz-frames.ts';

const FUZZ_MS = Number(process.env.NERVE_FUZZ_MS ?? 3_000);

/** Every kind of hostile value the hub must survive, placed where it hurts most. */
const HOSTILE_VALUES: [string, unknown][] = [
  ...Object.entries(EXTENSIONS).map(([name, make]) => [`${name} extension`, (make as () => unknown)()] as [string, unknown]),
  ['uint64 2^64-1', uint64(2n ** 64n - 1n)],
  ['uint64 time_ns', uint64(1_700_000_000_123_456_789n)],
  ['int64 -2^63', int64(-(2n ** 63n))],
  ['array nested 10k', deepArray(10_000)],
  ['object nested 10k', deepObject(10_000)],
];

function encoded(value: unknown): Raw {
  return new Raw(toJson(value), toMsgpack(value), 'pre-encoded');
}

const HOSTILE_QUERIES: [string, unknown][] = [
  ...THROWING_QUERIES.map((query) => [`throwing ${JSON.stringify(query)}`, query] as [string, unknown]),
  // Far over any operand limit; encoded once, as every wire carries them several times.
  ['$all of 20k', { tags: { $all: encoded(Array.from({ length: 20_000 }, (_, i) => `t${i}`)) } }],
  ['$in of 20k', { users: { $in: encoded(Array.from({ length: 20_000 }, (_, i) => String(i))) } }],
  ['$and nested 10k', deepQuery(10_000, '$and')],
  ['$or nested 10k', deepQuery(10_000, '$or')],
  ['$not nested 10k', deepQuery(10_000, '$not')],
  ['RegExp value', { name: EXTENSIONS.regexp() }],
  ['RegExp in $in', { name: { $in: [EXTENSIONS.regexp()] } }],
  ['Set operand', { tags: { $all: EXTENSIONS.set(['gpu']) } }],
];

/** A hub with many matching sessions (so a query runs against all of them) and one sender per wire. */
function crowd(senderWire: number): Command[] {
  const commands: Command[] = [];
  for (let slot = 0; slot < 4; slot++) {
    commands.push({ t: 'identify', slot, wire: slot % WIRES.length, app: 'gw', client: `c${slot}`, meta: METADATA, reconnect: false, seq: undefined });
  }
  commands.push({ t: 'identify', slot: 4, wire: senderWire, app: 'api', client: 'c0', meta: {}, reconnect: false, seq: undefined });
  return commands;
}

const METADATA = { name: REDOS_VICTIM, region: 'eu', load: 0.5, users: ['42'], tags: ['gpu', 'ssd'], limits: { cpu: 4 } };

/** A frame from the sender on a fresh, identified connection (the previous frame may have cost it its connection). */
function fromSender(wire: number, frame: Frame): Command[] {
  return [
    { t: 'drop', slot: 4, code: 1000 },
    { t: 'identify', slot: 4, wire, app: 'api', client: 'c0', meta: {}, reconnect: false, seq: undefined },
    { t: 'frame', slot: 4, wire, frame, asBytes: false },
  ];
}

/** A client of `app` arriving on slot 3: held events meet its metadata. */
function arrival(wire: number, app: string, meta: Record<string, unknown> = METADATA): Command[] {
  return [
    { t: 'drop', slot: 3, code: 1000 },
    { t: 'identify', slot: 3, wire, app, client: 'c3', meta, reconnect: false, seq: undefined },
  ];
}

/** Plays each case in a history of its own, so one failure does not hide the next; returns every finding, labelled. */
function play(cases: [string, Command[]][], limits: Partial<CoreConfig>): string[] {
  const found: string[] = [];
  for (const [label, commands] of cases) {
    const driver = new FuzzDriver();
    driver.run({ rateLimit: 0, commands }, { ...limits, maxConnections: 20_000, maxUnidentified: 1_000 });
    for (const line of summary(driver.findings, 1)) found.push(`${label}: ${line.slice(0, 500)}`);
  }
  // Enough to read what broke without burying it.
  return found.length > 30 ? [...found.slice(0, 30), `… and ${found.length - 30} more`] : found;
}

describe('fuzz: every hostile value of the table, on every wire format', () => {
  for (const [index, wire] of WIRES.entries()) {
    it(`${wireName(wire)}: extensions, huge integers and deep nesting in d, metadata, IDENTIFY and queries`, () => {
      const cases: [string, Command[]][] = [];
      for (const [label, value] of HOSTILE_VALUES) {
        const at = (where: string, commands: Command[]): [string, Command[]] => [`${label} in ${where}`, [...crowd(index), ...commands]];
        cases.push(at('d', fromSender(index, { op: 8, e: 'EV', d: value, to: { app_name: 'gw' }, nonce: 'n' })));
        cases.push(at('d of a fan-out', fromSender(index, { op: 8, e: 'EV', d: { nested: [value] }, to: { app_name: 'gw', mode: 'all' } })));
        cases.push(at('a query', fromSender(index, { op: 8, e: 'EV', d: 1, to: { app_name: 'gw', query: { region: value } } })));
        cases.push(at('ABOUT_ME', fromSender(index, { op: 7, d: { region: value } })));
        cases.push(at('IDENTIFY metadata', [{ t: 'drop', slot: 3, code: 1000 }, { t: 'frame', slot: 3, wire: index, frame: { op: 1, d: { app_name: 'gw', client_id: 'c3', password: 'pw', metadata: { v: value } } }, asBytes: false }]));
        cases.push(at('an HTTP dispatch', [{ t: 'http', body: { e: 'EV', d: value, to: { app_name: 'gw', query: { region: value } } } }]));
      }
      expect(play(cases, { maxPayload: 1_048_576 })).toEqual([]);
    });

    it(`${wireName(wire)}: throwing, huge and nested queries over a crowd of matching clients, held or not`, () => {
      const cases: [string, Command[]][] = [];
      for (const [label, query] of HOSTILE_QUERIES) {
        cases.push([`${label}, mode one`, [...crowd(index), ...fromSender(index, { op: 8, e: 'EV', d: 1, to: { app_name: 'gw', query }, nonce: 'one' })]]);
        cases.push([`${label}, mode all`, [...crowd(index), ...fromSender(index, { op: 8, e: 'EV', d: 1, to: { app_name: 'gw', query, mode: 'all' }, nonce: 'all' })]]);
        // Held for an app nobody serves yet, then a client arrives that the query must be run against.
        cases.push([`${label}, held`, [...crowd(index), ...fromSender(index, { op: 8, e: 'EV', d: 1, to: { app_name: 'later', query }, nonce: 'held' }), ...arrival(index, 'later')]]);
        cases.push([`${label}, over HTTP`, [...crowd(index), { t: 'http', body: { e: 'EV', d: 1, to: { app_name: 'gw', query } } }]]);
      }
      expect(play(cases, { maxPayload: 2 * 1_048_576 })).toEqual([]);
    });
  }

  it('zlib bombs and msgpack length bombs on every wire', () => {
    const commands: Command[] = [];
    const bombs = [zlibBomb(64 * 1_048_576), Uint8Array.of(0xdd, 0xff, 0xff, 0xff, 0xff), Uint8Array.of(0xdf, 0xff, 0xff, 0xff, 0xff), Uint8Array.of(0xc9, 0x7f, 0xff, 0xff, 0xff, 0x78)];
    for (const [index] of WIRES.entries()) for (const data of bombs) commands.push({ t: 'raw', slot: index, wire: index, data });
    const driver = new FuzzDriver();
    driver.run({ rateLimit: 0, commands });
    expect(summary(driver.findings)).toEqual([]);
    expect(driver.findings.frames).toBe(WIRES.length * bombs.length);
  });
});

describe('fuzz: random histories of hostile and mutated frames', () => {
  it(`for ${FUZZ_MS} ms: step never throws, never logs an internal error, never stalls, and keeps the embedding contract`, () => {
    let frames = 0;
    let runs = 0;
    fc.assert(
      fc.property(history, (h) => {
        const driver = new FuzzDriver();
        driver.run(h);
        frames += driver.findings.frames;
        runs++;
        expect(summary(driver.findings)).toEqual([]);
      }),
      // Shrinking a history of 64 KiB frames takes longer than it teaches: report the first failure as found.
      { numRuns: 1_000_000, interruptAfterTimeLimit: FUZZ_MS, markInterruptAsFailure: false, endOnFailure: true },
    );
    // The time limit, not a lack of generated cases, ended the run.
    expect(runs).toBeGreaterThan(20);
    expect(frames).toBeGreaterThan(200);
  });
});
