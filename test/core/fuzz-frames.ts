// The fuzz of `step`, shared by test/core/fuzz.test.ts (a few seconds in CI)
// and scripts/fuzz.ts (a million frames): hostile values and frames, histories
// of connections on all four wire formats, and the driver that checks every step.

import fc from 'fast-check';
import { unzlibSync, zlibSync } from 'fflate';
import { Packr } from 'msgpackr';
import { createState, DEFAULT_LIMITS, nextDeadline, step, type CoreConfig, type Input, type Output, type State } from '../../src/core/index.ts';
import type { Wire } from '../../src/core/protocol.ts';

// ── a msgpack writer that writes what well-behaved encoders never would ─────

/** A value with a hand-made encoding on each wire: extension bytes, huge integers, nesting no encoder would recurse into. */
export class Raw {
  constructor(
    readonly json: string,
    readonly msgpack: Uint8Array,
    readonly label: string,
  ) {}
}

const utf8 = new TextEncoder();

function concat(parts: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const part of parts) length += part.byteLength;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}

function be(value: number, bytes: number): number[] {
  const out: number[] = [];
  for (let i = bytes - 1; i >= 0; i--) out.push(Math.floor(value / 2 ** (8 * i)) & 0xff);
  return out;
}

function be64(value: bigint): number[] {
  const v = BigInt.asUintN(64, value);
  return Array.from({ length: 8 }, (_, i) => Number((v >> BigInt(8 * (7 - i))) & 0xffn));
}

function header(length: number, fix: number | undefined, fixMax: number, tags: [number, number, number] | [undefined, number, number]): number[] {
  if (fix !== undefined && length <= fixMax) return [fix | length];
  if (tags[0] !== undefined && length < 0x100) return [tags[0], length];
  if (length < 0x10000) return [tags[1], ...be(length, 2)];
  return [tags[2], ...be(length, 4)];
}

function packInto(value: unknown, parts: Uint8Array[]): void {
  if (value instanceof Raw) {
    parts.push(value.msgpack);
  } else if (value === null || value === undefined) {
    parts.push(Uint8Array.of(0xc0));
  } else if (typeof value === 'boolean') {
    parts.push(Uint8Array.of(value ? 0xc3 : 0xc2));
  } else if (typeof value === 'number') {
    if (Number.isSafeInteger(value) && !Object.is(value, -0)) {
      if (value >= 0) {
        if (value < 0x80) parts.push(Uint8Array.of(value));
        else if (value < 0x100) parts.push(Uint8Array.of(0xcc, value));
        else if (value < 0x10000) parts.push(Uint8Array.of(0xcd, ...be(value, 2)));
        else if (value < 0x100000000) parts.push(Uint8Array.of(0xce, ...be(value, 4)));
        else parts.push(Uint8Array.of(0xcf, ...be64(BigInt(value))));
      } else if (value >= -32) parts.push(Uint8Array.of(value & 0xff));
      else if (value >= -0x80) parts.push(Uint8Array.of(0xd0, value & 0xff));
      else if (value >= -0x8000) parts.push(Uint8Array.of(0xd1, ...be(value & 0xffff, 2)));
      else if (value >= -0x80000000) parts.push(Uint8Array.of(0xd2, ...be(value >>> 0, 4)));
      else parts.push(Uint8Array.of(0xd3, ...be64(BigInt(value))));
    } else {
      const bytes = new Uint8Array(9);
      bytes[0] = 0xcb;
      new DataView(bytes.buffer).setFloat64(1, value);
      parts.push(bytes);
    }
  } else if (typeof value === 'string') {
    const bytes = utf8.encode(value);
    parts.push(Uint8Array.from(header(bytes.byteLength, 0xa0, 31, [0xd9, 0xda, 0xdb])), bytes);
  } else if (value instanceof Uint8Array) {
    parts.push(Uint8Array.from(header(value.byteLength, undefined, -1, [0xc4, 0xc5, 0xc6])), value);
  } else if (Array.isArray(value)) {
    parts.push(Uint8Array.from(header(value.length, 0x90, 15, [undefined, 0xdc, 0xdd])));
    for (const item of value) packInto(item, parts);
  } else if (value instanceof Map) {
    // Keys of any type: the one way to put a number or a map where a key goes.
    parts.push(Uint8Array.from(header(value.size, 0x80, 15, [undefined, 0xde, 0xdf])));
    for (const [key, item] of value) {
      packInto(key, parts);
      packInto(item, parts);
    }
  } else if (typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, item]) => item !== undefined);
    parts.push(Uint8Array.from(header(entries.length, 0x80, 15, [undefined, 0xde, 0xdf])));
    for (const [key, item] of entries) {
      packInto(key, parts);
      packInto(item, parts);
    }
  } else {
    throw new Error(`cannot write ${typeof value} as msgpack`);
  }
}

/** Standard msgpack for plain values, with every Raw spliced in as its bytes. */
export function toMsgpack(value: unknown): Uint8Array {
  const parts: Uint8Array[] = [];
  packInto(value, parts);
  return concat(parts);
}

/** JSON for plain values, with every Raw spliced in as its JSON stand-in. */
export function toJson(value: unknown): string {
  if (value instanceof Raw) return value.json;
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : 'null';
  if (typeof value === 'string' || typeof value === 'boolean') return JSON.stringify(value);
  if (value instanceof Uint8Array) return JSON.stringify(Buffer.from(value).toString('base64'));
  if (Array.isArray(value)) return `[${value.map(toJson).join(',')}]`;
  const entries = value instanceof Map ? [...value].map(([k, v]) => [String(k), v] as const) : Object.entries(value as Record<string, unknown>);
  return `{${entries
    .filter(([, item]) => item !== undefined)
    .map(([key, item]) => `${JSON.stringify(key)}:${toJson(item)}`)
    .join(',')}}`;
}

/** An extension value: fixext where the length allows, ext8/16/32 otherwise. */
export function extBytes(type: number, data: Uint8Array, after: Uint8Array = new Uint8Array(0)): Uint8Array {
  const fixed: Record<number, number> = { 1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8 };
  const tag = fixed[data.byteLength];
  const head = tag !== undefined ? [tag, type & 0xff] : [...header(data.byteLength, undefined, -1, [0xc7, 0xc8, 0xc9]), type & 0xff];
  return concat([Uint8Array.from(head), data, after]);
}

/**
 * The extension types a JavaScript msgpack library may turn into live objects.
 * `type` is what a refusal has to name.
 */
export const EXTENSIONS = {
  // msgpackr: fixext1 0x78, then [source, flags]; builds a RegExp that a query would run.
  regexp: (source = '^(a+)+$', flags = '') =>
    new Raw(JSON.stringify({ $regex: source }), extBytes(0x78, Uint8Array.of(0), toMsgpack([source, flags])), `RegExp ext 0x78 /${source}/`),
  // msgpackr: 0x74 with sub-type 16 is an ArrayBuffer, sized by nobody.
  arrayBuffer: (length = 64) =>
    new Raw(JSON.stringify('x'.repeat(length)), extBytes(0x74, concat([Uint8Array.of(16), new Uint8Array(length)])), `ArrayBuffer ext 0x74 of ${length}`),
  typedArray: (code = 4, length = 8) =>
    new Raw(`[${new Array(length).fill(0).join(',')}]`, extBytes(0x74, concat([Uint8Array.of(code), new Uint8Array(length * 2)])), `typed array ext 0x74/${code}`),
  set: (items: unknown[] = [1, 2, 3]) => new Raw(toJson(items), extBytes(0x73, Uint8Array.of(0), toMsgpack(items)), 'Set ext 0x73'),
  error: (message = 'boom') =>
    new Raw(JSON.stringify({ message }), extBytes(0x65, Uint8Array.of(0), toMsgpack(['Error', message, null])), 'Error ext 0x65'),
  undefined: () => new Raw('null', extBytes(0x00, Uint8Array.of(0)), 'undefined ext 0x00'),
  timestamp: (seconds = 1) => new Raw(String(seconds), extBytes(0xff, Uint8Array.from(be(seconds, 4))), 'timestamp ext -1'),
  bigint: () => new Raw('123456789012345678901234567890', extBytes(0x42, Uint8Array.from([0x01, ...new Array(15).fill(0xff)])), 'BigInt ext 0x42'),
  // Structured clone: a pointer to an id that was never defined.
  pointer: () => new Raw('{}', extBytes(0x70, Uint8Array.of(0, 0, 0, 7)), 'pointer ext 0x70'),
  record: () => new Raw('{}', concat([Uint8Array.of(0xd4, 0x72, 0x40), toMsgpack(['a'])]), 'record ext 0x72'),
  unknown: (type = 0x11, length = 3) => new Raw('null', extBytes(type, new Uint8Array(length)), `ext ${type}`),
} as const;

/** An unsigned 64-bit integer on the wire; JSON carries the same digits. */
export function uint64(value: bigint): Raw {
  return new Raw(value.toString(), Uint8Array.of(0xcf, ...be64(value)), `uint64 ${value}`);
}

export function int64(value: bigint): Raw {
  return new Raw(value.toString(), Uint8Array.of(0xd3, ...be64(value)), `int64 ${value}`);
}

/** [[[…]]] `depth` levels deep, counting the outermost. */
export function deepArray(depth: number): Raw {
  const msgpack = new Uint8Array(depth).fill(0x91);
  msgpack[depth - 1] = 0x90;
  return new Raw('['.repeat(depth) + ']'.repeat(depth), msgpack, `array nested ${depth}`);
}

/** {"a":{"a":…null}} with `depth` objects. */
export function deepObject(depth: number): Raw {
  const level = Uint8Array.of(0x81, 0xa1, 0x61);
  const msgpack = new Uint8Array(depth * 3 + 1);
  for (let i = 0; i < depth; i++) msgpack.set(level, i * 3);
  msgpack[depth * 3] = 0xc0;
  return new Raw('{"a":'.repeat(depth) + 'null' + '}'.repeat(depth), msgpack, `object nested ${depth}`);
}

/** A query nested `depth` times through a logical operator, or through $not on one field. */
export function deepQuery(depth: number, op: '$and' | '$or' | '$nor' | '$not'): Raw {
  const leaf = op === '$not' ? { $eq: 1 } : { region: 'eu' };
  const opBytes = toMsgpack(op);
  const level = op === '$not' ? concat([Uint8Array.of(0x81), opBytes]) : concat([Uint8Array.of(0x81), opBytes, Uint8Array.of(0x91)]);
  const open = op === '$not' ? `{"${op}":` : `{"${op}":[`;
  const close = op === '$not' ? '}' : ']}';
  const parts: Uint8Array[] = [];
  for (let i = 0; i < depth; i++) parts.push(level);
  parts.push(toMsgpack(leaf));
  const body = new Raw(open.repeat(depth) + JSON.stringify(leaf) + close.repeat(depth), concat(parts), `query ${op} nested ${depth}`);
  // $not applies to a field; the logical operators stand at the top.
  if (op !== '$not') return body;
  return new Raw(`{"load":${body.json}}`, concat([Uint8Array.of(0x81), toMsgpack('load'), body.msgpack]), body.label);
}

/** Deflates `length` zero bytes: tiny on the wire, far over any frame limit once inflated. */
export function zlibBomb(length: number): Uint8Array {
  return zlibSync(new Uint8Array(length), { level: 9 });
}

/** Queries that compile into something that throws, or runs long, if nothing checks the operands first. */
export const THROWING_QUERIES: Record<string, unknown>[] = [
  { load: { $gt: {} } },
  { load: { $lt: [] } },
  { load: { $gte: { a: 1 } } },
  { users: { $size: 'x' } },
  { users: { $size: -1 } },
  { shard: { $exists: {} } },
  { region: { $in: 5 } },
  { tags: { $all: 'x' } },
  { load: { $not: 5 } },
  { $and: {} },
  { $or: [] },
  { $nor: [1] },
  { region: { $eq: { $gt: 1 } } },
  { region: { $in: [{ $gt: {} }] } },
  { region: { $ne: { $in: [] } } },
  { 'limits.cpu': { $gt: {} } },
  { region: { $elemMatch: {} } },
  { region: { $regex: '^(a+)+$' } },
  { $where: 'while(true){}' },
  { constructor: { $gt: 1 } },
  { ['__proto__']: { $gt: {} } },
  { $and: [{ load: { $gt: {} } }] },
  { $or: [{ region: 'eu' }, { load: { $lte: { $gt: 1 } } }] },
];

// A string the classic catastrophic regex needs seconds to reject: if a RegExp
// ever reaches a query, matching it against this metadata stalls the step.
export const REDOS_VICTIM = `${'a'.repeat(27)}!`;

// ── fast-check generators ───────────────────────────────────────────────────

export const APPS = ['gw', 'api'] as const;
export const CLIENTS = ['c0', 'c1', 'c2'] as const;
export const PASSWORD = 'pw';
const KEYS = ['region', 'load', 'users', 'tags', 'limits', 'shard', 'name', '__proto__', 'constructor', 'limits.cpu', '$gt'] as const;

export const WIRES: readonly Wire[] = [
  { format: 'json', compression: 'none' },
  { format: 'json', compression: 'zlib' },
  { format: 'msgpack', compression: 'none' },
  { format: 'msgpack', compression: 'zlib' },
];

export function wireName(wire: Wire): string {
  return `${wire.format}${wire.compression === 'zlib' ? '+zlib' : ''}`;
}

const bigInteger = fc.oneof(
  fc.bigInt({ min: 2n ** 53n, max: 2n ** 64n - 1n }).map(uint64),
  fc.bigInt({ min: -(2n ** 63n), max: -(2n ** 53n) }).map(int64),
  fc.constantFrom(uint64(2n ** 64n - 1n), uint64(2n ** 53n + 1n), uint64(1_700_000_000_123_456_789n)),
  fc.constantFrom(new Raw('1e400', Uint8Array.of(0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0), 'Infinity'), new Raw('-0', Uint8Array.of(0xcb, 0x80, 0, 0, 0, 0, 0, 0, 0), '-0')),
  fc.constantFrom(new Raw('0', Uint8Array.of(0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0), 'NaN'), new Raw('3.4e38', Uint8Array.of(0xca, 0x7f, 0x7f, 0xff, 0xff), 'float32')),
);

const extension: fc.Arbitrary<Raw> = fc.oneof(
  fc.constantFrom('^(a+)+$', '(x+x+)+y', 'a').map((source) => EXTENSIONS.regexp(source)),
  fc.integer({ min: 0, max: 2_000 }).map((n) => EXTENSIONS.arrayBuffer(n)),
  fc.integer({ min: 0, max: 12 }).map((code) => EXTENSIONS.typedArray(code)),
  fc.array(fc.integer(), { maxLength: 4 }).map((items) => EXTENSIONS.set(items)),
  fc.constant(EXTENSIONS.error()),
  fc.constant(EXTENSIONS.undefined()),
  fc.integer({ min: 0, max: 2 ** 32 - 1 }).map((s) => EXTENSIONS.timestamp(s)),
  fc.constant(EXTENSIONS.bigint()),
  fc.constant(EXTENSIONS.pointer()),
  fc.constant(EXTENSIONS.record()),
  fc.record({ type: fc.integer({ min: 0, max: 255 }), length: fc.integer({ min: 0, max: 40 }) }).map(({ type, length }) => EXTENSIONS.unknown(type, length)),
);

/** Just past the depth limit usually; now and then deep enough to overflow any recursive walk. */
const depth = fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 2, max: 100 }) }, { weight: 1, arbitrary: fc.integer({ min: 5_000, max: 20_000 }) });

const deep: fc.Arbitrary<Raw> = fc.oneof(depth.map(deepArray), depth.map(deepObject));

/** Anything a hostile client could put where a value goes. */
export const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
  { weight: 2, arbitrary: extension },
  { weight: 2, arbitrary: bigInteger },
  { weight: 1, arbitrary: deep },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }) },
  { weight: 1, arbitrary: fc.constantFrom(REDOS_VICTIM, 'eu', 'us', 42, 0.5, ['42', '7'], { cpu: 4 }) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom(...KEYS), fc.oneof(extension, bigInteger)).map(([key, value]) => ({ [key]: value })) },
);

const metadataValue = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(REDOS_VICTIM, 'eu', 'us', 0.1, 0.9, 3, ['42', '7'], ['gpu', 'ssd'], [], { cpu: 4 }, null) },
  { weight: 1, arbitrary: hostileValue },
);

export const metadata: fc.Arbitrary<Record<string, unknown>> = fc.dictionary(fc.constantFrom(...KEYS), metadataValue, { maxKeys: 4 });

const operand = fc.oneof(fc.constantFrom('eu', 'us', 0.5, 3, '42', REDOS_VICTIM, null, true), hostileValue);

/** Queries: mostly valid ones over the metadata above, then every way to make one throw, stall or nest. */
export const query: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ region: fc.constantFrom('eu', 'us') }) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom(...KEYS), fc.constantFrom('$gt', '$gte', '$lt', '$lte', '$eq', '$ne', '$exists', '$size', '$not'), operand).map(([key, op, value]) => ({ [key]: { [op]: value } })) },
  { weight: 3, arbitrary: fc.constantFrom(...THROWING_QUERIES) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(
        fc.constantFrom('$in', '$nin', '$all'),
        fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 1, max: 300 }) }, { weight: 1, arbitrary: fc.integer({ min: 1_000, max: 6_000 }) }),
        fc.constantFrom('region', 'users', 'tags'),
      )
      .map(([op, length, key]) => ({ [key]: { [op]: Array.from({ length }, (_, i) => (i % 2 ? String(i) : i)) } })),
  },
  { weight: 2, arbitrary: fc.tuple(depth, fc.constantFrom('$and' as const, '$or' as const, '$nor' as const, '$not' as const)).map(([levels, op]) => deepQuery(levels, op)) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom(...KEYS), extension).map(([key, ext]) => ({ [key]: ext })) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom(...KEYS), fc.constantFrom('$in', '$all', '$eq'), extension).map(([key, op, ext]) => ({ [key]: { [op]: op === '$eq' ? ext : [ext] } })) },
  { weight: 1, arbitrary: fc.integer({ min: 100, max: 2_000 }).map((n) => ({ $or: Array.from({ length: n }, (_, i) => ({ region: `r${i}` })) })) },
  { weight: 1, arbitrary: hostileValue },
);

const target = fc.record(
  {
    app_name: fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...APPS) }, { weight: 1, arbitrary: hostileValue }),
    client_id: fc.oneof(fc.constantFrom(...CLIENTS), hostileValue),
    query,
    mode: fc.oneof({ weight: 4, arbitrary: fc.constantFrom('one', 'all') }, { weight: 1, arbitrary: hostileValue }),
    key: fc.oneof(fc.constantFrom('k1', 'k2'), hostileValue),
  },
  { requiredKeys: ['app_name'] },
);

export const dispatchFrame = fc.record(
  {
    op: fc.constant(8),
    e: fc.oneof({ weight: 6, arbitrary: fc.constantFrom('EV', 'USER_UPDATED') }, { weight: 1, arbitrary: fc.constantFrom('NERVE_ACK', '', 'x'.repeat(200)) }, { weight: 1, arbitrary: hostileValue }),
    d: hostileValue,
    to: fc.oneof({ weight: 8, arbitrary: target }, { weight: 1, arbitrary: hostileValue }),
    nonce: fc.oneof(fc.string({ maxLength: 8 }), hostileValue),
  },
  { requiredKeys: ['op', 'e', 'to'] },
);

const identifyPayload = fc.record(
  {
    app_name: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...APPS) }, { weight: 1, arbitrary: hostileValue }),
    client_id: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...CLIENTS) }, { weight: 1, arbitrary: hostileValue }),
    password: fc.oneof({ weight: 6, arbitrary: fc.constant(PASSWORD) }, { weight: 1, arbitrary: hostileValue }),
    reconnect: fc.oneof(fc.boolean(), hostileValue),
    seq: fc.oneof(fc.nat({ max: 20 }), hostileValue),
    metadata: fc.oneof({ weight: 4, arbitrary: metadata }, { weight: 1, arbitrary: hostileValue }),
  },
  { requiredKeys: ['app_name', 'client_id', 'password'] },
);

const wellFormed: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ op: fc.constant(3), d: fc.option(hostileValue, { nil: undefined }) }, { requiredKeys: ['op'] }) },
  { weight: 2, arbitrary: identifyPayload.map((d) => ({ op: 1, d })) },
  { weight: 2, arbitrary: fc.oneof(metadata, hostileValue).map((d) => ({ op: 7, d })) },
  { weight: 6, arbitrary: dispatchFrame },
  { weight: 1, arbitrary: fc.record({ op: fc.constantFrom(0, 2, 4, 5, 6, 9, -1, 2 ** 53), d: hostileValue }) },
);

/** Changes one thing about a frame: its op, a field's value, or a field's presence. */
const mutated: fc.Arbitrary<unknown> = fc
  .tuple(wellFormed, fc.nat(), fc.constantFrom('op', 'set', 'delete', 'nest', 'wrap'), hostileValue)
  .map(([frame, pick, how, value]) => {
    const copy: Record<string, unknown> = { ...frame };
    const keys = Object.keys(copy);
    const key = keys[pick % keys.length]!;
    switch (how) {
      case 'op':
        copy.op = value;
        break;
      case 'set':
        copy[key] = value;
        break;
      case 'delete':
        delete copy[key];
        break;
      case 'nest': {
        const inner = copy[key];
        if (inner && typeof inner === 'object' && !(inner instanceof Raw) && !Array.isArray(inner)) {
          const innerKeys = Object.keys(inner);
          copy[key] = { ...inner, [innerKeys[pick % Math.max(1, innerKeys.length)] ?? 'x']: value };
        } else copy[key] = value;
        break;
      }
      case 'wrap':
        return [copy];
    }
    return copy;
  });

export type Frame = unknown;

export const frame: fc.Arbitrary<Frame> = fc.oneof({ weight: 5, arbitrary: wellFormed }, { weight: 4, arbitrary: mutated }, { weight: 1, arbitrary: hostileValue });

const BOMB = zlibBomb(8 * 1_048_576);

/** Bytes sent as they are, whatever the connection's wire. */
const raw: fc.Arbitrary<string | Uint8Array> = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc.string({ maxLength: 64 }),
  fc.constant(BOMB),
  fc.constant(zlibSync(utf8.encode(`{"op":3,"d":"${'x'.repeat(200_000)}"}`))),
  fc.constantFrom(
    Uint8Array.of(0xdd, 0xff, 0xff, 0xff, 0xff),
    Uint8Array.of(0xdf, 0xff, 0xff, 0xff, 0xff),
    Uint8Array.of(0xdb, 0xff, 0xff, 0xff, 0xff, 0x61),
    Uint8Array.of(0xc6, 0x7f, 0xff, 0xff, 0xff),
    Uint8Array.of(0xc9, 0x7f, 0xff, 0xff, 0xff, 0x78),
    Uint8Array.of(0xc1),
    Uint8Array.of(0x82, 0xa2, 0x6f, 0x70, 0x03),
    Uint8Array.of(0xff, 0xfe, 0xfd),
    Uint8Array.of(0x78, 0x9c, 1, 2, 3, 4),
    '{"op":3',
    '\uD800',
    `{"op":3,"d":"${'\uD800'}"}`,
  ),
  deep.map((value) => value.json),
  deep.map((value) => value.msgpack),
);

/** One event in a history: `slot` names one of a few client positions, each reopened with a fresh id after a close. */
export type Command =
  | { t: 'frame'; slot: number; wire: number; frame: Frame; asBytes: boolean }
  | { t: 'identify'; slot: number; wire: number; app: string; client: string; meta: Record<string, unknown>; reconnect: boolean; seq: number | undefined }
  | { t: 'raw'; slot: number; wire: number; data: string | Uint8Array }
  | { t: 'drop'; slot: number; code: number | undefined }
  | { t: 'refused'; slot: number; wire: number; tooLarge: boolean }
  | { t: 'backlog'; slot: number; bytes: number; unflushedFrom: number }
  | { t: 'http'; body: Frame }
  | { t: 'wait'; ms: number }
  | { t: 'shutdown' };

const SLOTS = 5;
const slot = fc.nat({ max: SLOTS - 1 });
const wire = fc.nat({ max: WIRES.length - 1 });

export const command: fc.Arbitrary<Command> = fc.oneof(
  { weight: 12, arbitrary: fc.record({ t: fc.constant('frame' as const), slot, wire, frame, asBytes: fc.boolean() }) },
  {
    weight: 4,
    arbitrary: fc.record({
      t: fc.constant('identify' as const),
      slot,
      wire,
      app: fc.constantFrom(...APPS),
      client: fc.constantFrom(...CLIENTS),
      meta: metadata,
      reconnect: fc.boolean(),
      seq: fc.option(fc.nat({ max: 10 }), { nil: undefined }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('raw' as const), slot, wire, data: raw }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('drop' as const), slot, code: fc.constantFrom(undefined, 1000, 1001, 1006, 4000) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('refused' as const), slot, wire, tooLarge: fc.boolean() }) },
  {
    weight: 1,
    arbitrary: fc.record({
      t: fc.constant('backlog' as const),
      slot,
      bytes: fc.constantFrom(0, 0, 1_000, 70_000, 300_000, Infinity),
      unflushedFrom: fc.oneof(fc.nat({ max: 12 }), fc.constant(Infinity)),
    }),
  },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('http' as const), body: fc.oneof({ weight: 3, arbitrary: dispatchFrame }, { weight: 1, arbitrary: mutated }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('wait' as const), ms: fc.integer({ min: 0, max: 2_000 }) }) },
  { weight: 1, arbitrary: fc.constant({ t: 'shutdown' as const }) },
);

/** Limits small enough that random histories reach every bound: queues, replay, budget, caps, rate. */
export const FUZZ_LIMITS: Partial<CoreConfig> = {
  heartbeatInterval: 1_000,
  maxPayload: 65_536,
  maxMetadata: 4_096,
  queueTtl: 500,
  queueMaxCount: 6,
  queueMaxBytes: 128 * 1024,
  resumeWindow: 1_500,
  replayMaxCount: 5,
  replayMaxBytes: 64 * 1024,
  maxOutbound: 65_536,
  maxMemory: 512 * 1024,
  maxConnections: 5,
  maxUnidentified: 3,
};

export interface History {
  rateLimit: number;
  commands: Command[];
}

export const history: fc.Arbitrary<History> = fc.record({
  rateLimit: fc.constantFrom(0, 0, 20),
  commands: fc.array(command, { minLength: 1, maxLength: 40 }),
});

// ── the driver ──────────────────────────────────────────────────────────────

/** A step slower than this stalls every other client of the hub. */
export const SLOW_STEP_MS = 1_000;

export interface Findings {
  /** Frames fed (message and refused inputs). */
  frames: number;
  steps: number;
  throws: string[];
  /** `level: 'error'` logs and 1011 closes: the core reporting a bug of its own. */
  internalErrors: string[];
  /** Broken contracts: an error close without NO_U_TBH, output for a connection the host no longer has… */
  violations: string[];
  slowest: { ms: number; input: string };
}

export function emptyFindings(): Findings {
  return { frames: 0, steps: 0, throws: [], internalErrors: [], violations: [], slowest: { ms: 0, input: '' } };
}

const unpackr = new Packr({ useRecords: false, mapsAsObjects: true });
const utf8Decoder = new TextDecoder();

function decodeOutput(data: string | Uint8Array, wire: Wire): unknown {
  let bytes: string | Uint8Array = data;
  if (wire.compression === 'zlib') bytes = unzlibSync(bytes as Uint8Array);
  if (wire.format === 'msgpack') return unpackr.unpack(bytes as Uint8Array);
  return JSON.parse(typeof bytes === 'string' ? bytes : utf8Decoder.decode(bytes));
}

function truncate(reason: string): string {
  const bytes = utf8.encode(reason);
  if (bytes.length <= 123) return reason;
  let end = 123;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return utf8Decoder.decode(bytes.subarray(0, end));
}

function describeData(data: string | Uint8Array): string {
  if (typeof data === 'string') return data.length > 160 ? `${JSON.stringify(data.slice(0, 160))}… (${data.length} chars)` : JSON.stringify(data);
  const hex = Buffer.from(data.subarray(0, 48)).toString('hex');
  return `<${data.byteLength} bytes ${hex}${data.byteLength > 48 ? '…' : ''}>`;
}

export function describeInput(input: Input): string {
  if (input.type === 'message') return `message conn ${input.conn}: ${describeData(input.data)}`;
  if (input.type === 'dispatch') {
    let body: string;
    try {
      body = JSON.stringify(input.body) ?? 'undefined';
    } catch (error) {
      body = `<body JSON.stringify refuses: ${(error as Error).message}>`;
    }
    return `dispatch ${describeData(body)}`;
  }
  return JSON.stringify(input);
}

interface Slot {
  conn: number | undefined;
}

/**
 * Plays histories against one fresh state each, as a host would: fresh
 * connection ids only (an id is never reused), a `close` fed for every
 * connection the core closed before that slot is used again, the one timer
 * driven by nextDeadline. Every step's outputs are checked.
 */
export class FuzzDriver {
  readonly findings = emptyFindings();
  private state!: State;
  private now = 0;
  private nextConn = 1;
  private nextRequest = 1;
  private slots: Slot[] = [];
  /** Connections the host has open (fed `open`, not yet fed `close`), with their wire. */
  private readonly live = new Map<number, Wire>();
  /** Connections the core has sent a close for. */
  private readonly closing = new Set<number>();
  private failed = false;

  run(h: History, limits: Partial<CoreConfig> = FUZZ_LIMITS): void {
    this.state = createState({ ...DEFAULT_LIMITS, ...limits, rateLimit: h.rateLimit, worker: 'nerve-f00f00', password: PASSWORD });
    this.now = 1_000_000;
    this.slots = Array.from({ length: SLOTS }, () => ({ conn: undefined }));
    this.live.clear();
    this.closing.clear();
    this.failed = false;
    for (const cmd of h.commands) {
      if (this.failed) return;
      this.play(cmd);
    }
    if (this.failed) return;
    // Let everyone go and every window and TTL run out: what was held for clients must be released.
    for (const conn of [...this.live.keys()]) this.feed({ type: 'close', now: this.now, conn, code: 1006 });
    this.advance(60_000);
    if (this.failed) return;
    const leftovers = this.leftovers();
    if (leftovers) this.findings.violations.push(`after every connection closed and every window ran out: ${leftovers}`);
  }

  /** What the state still holds once nothing should be left: sessions, held events, budgeted bytes. */
  private leftovers(): string | undefined {
    const state = this.state;
    const found: string[] = [];
    if (state.conns.size > 0) found.push(`${state.conns.size} connections`);
    if (state.sessions.size > 0) found.push(`${state.sessions.size} sessions`);
    let held = 0;
    for (const app of state.apps.values()) held += app.held.length;
    if (held > 0) found.push(`${held} held events`);
    const memory = (state as unknown as { memory?: Record<string, number> }).memory;
    if (memory) for (const [kind, bytes] of Object.entries(memory)) if (bytes !== 0) found.push(`${bytes} bytes of ${kind} budget`);
    return found.length > 0 ? found.join(', ') : undefined;
  }

  private connFor(index: number, wireIndex: number): number {
    const slot = this.slots[index]!;
    if (slot.conn !== undefined && this.closing.has(slot.conn)) {
      // The transport finishes the close the core asked for.
      this.feed({ type: 'close', now: this.now, conn: slot.conn, code: 1006 });
      slot.conn = undefined;
    }
    if (slot.conn === undefined || !this.live.has(slot.conn)) {
      const conn = this.nextConn++;
      slot.conn = conn;
      this.feed({ type: 'open', now: this.now, conn, wire: WIRES[wireIndex]! });
    }
    return slot.conn;
  }

  private encode(conn: number, value: Frame, asBytes: boolean): string | Uint8Array {
    const wire = this.live.get(conn)!;
    if (wire.format === 'msgpack') {
      const bytes = toMsgpack(value);
      return wire.compression === 'zlib' ? zlibSync(bytes, { level: 1 }) : bytes;
    }
    const text = toJson(value);
    if (wire.compression === 'zlib') return zlibSync(utf8.encode(text), { level: 1 });
    return asBytes ? utf8.encode(text) : text;
  }

  private play(cmd: Command): void {
    switch (cmd.t) {
      case 'frame': {
        const conn = this.connFor(cmd.slot, cmd.wire);
        if (this.live.has(conn)) this.feed({ type: 'message', now: this.now, conn, data: this.encode(conn, cmd.frame, cmd.asBytes) });
        break;
      }
      case 'identify': {
        const conn = this.connFor(cmd.slot, cmd.wire);
        const d: Record<string, unknown> = { app_name: cmd.app, client_id: cmd.client, password: PASSWORD, metadata: cmd.meta };
        if (cmd.reconnect) d.reconnect = true;
        if (cmd.seq !== undefined) d.seq = cmd.seq;
        if (this.live.has(conn)) this.feed({ type: 'message', now: this.now, conn, data: this.encode(conn, { op: 1, d }, false) });
        break;
      }
      case 'raw': {
        const conn = this.connFor(cmd.slot, cmd.wire);
        if (this.live.has(conn)) this.feed({ type: 'message', now: this.now, conn, data: cmd.data });
        break;
      }
      case 'refused': {
        const conn = this.connFor(cmd.slot, cmd.wire);
        if (this.live.has(conn)) this.feed({ type: 'refused', now: this.now, conn, tooLarge: cmd.tooLarge, detail: 'fuzz' });
        break;
      }
      case 'drop': {
        const conn = this.slots[cmd.slot]!.conn;
        if (conn !== undefined && this.live.has(conn)) this.feed({ type: 'close', now: this.now, conn, code: cmd.code });
        this.slots[cmd.slot]!.conn = undefined;
        break;
      }
      case 'backlog': {
        const conn = this.slots[cmd.slot]!.conn;
        if (conn !== undefined && this.live.has(conn)) this.feed({ type: 'backlog', now: this.now, conn, bytes: cmd.bytes, unflushedFrom: cmd.unflushedFrom });
        break;
      }
      case 'http': {
        // The host parses the body as JSON before the core sees it.
        let body: unknown;
        try {
          body = JSON.parse(toJson(cmd.body));
        } catch {
          break;
        }
        this.feed({ type: 'dispatch', now: this.now, request: this.nextRequest++, body });
        break;
      }
      case 'wait':
        this.advance(cmd.ms);
        break;
      case 'shutdown':
        this.feed({ type: 'shutdown', now: this.now });
        break;
    }
  }

  private advance(ms: number): void {
    const until = this.now + ms;
    for (let deadline = nextDeadline(this.state); deadline !== undefined && deadline <= until; deadline = nextDeadline(this.state)) {
      this.now = Math.max(this.now, deadline);
      this.feed({ type: 'tick', now: this.now });
      if (this.failed) return;
    }
    this.now = until;
  }

  private feed(input: Input): void {
    const findings = this.findings;
    if (input.type === 'open') this.live.set(input.conn, input.wire);
    if (input.type === 'message' || input.type === 'refused') findings.frames++;
    findings.steps++;
    let outputs: Output[];
    const started = performance.now();
    try {
      outputs = step(this.state, input)[1];
    } catch (error) {
      findings.throws.push(`${describeInput(input)} threw ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
      // The state may be half-updated: this history ends here.
      this.failed = true;
      return;
    }
    const ms = performance.now() - started;
    if (ms > findings.slowest.ms) findings.slowest = { ms, input: describeInput(input) };
    if (ms > SLOW_STEP_MS) findings.violations.push(`step took ${Math.round(ms)} ms: ${describeInput(input)}`);
    this.check(input, outputs);
    if (input.type === 'close') {
      this.live.delete(input.conn);
      this.closing.delete(input.conn);
    }
  }

  private check(input: Input, outputs: Output[]): void {
    const { violations, internalErrors } = this.findings;
    const where = () => describeInput(input);
    const lastSent = new Map<number, string | Uint8Array>();
    let answers = 0;
    for (const output of outputs) {
      switch (output.type) {
        case 'send':
          if (!this.live.has(output.conn)) violations.push(`send to connection ${output.conn}, which the host does not have, after ${where()}`);
          else if (this.closing.has(output.conn)) violations.push(`send to connection ${output.conn} after its close, after ${where()}`);
          lastSent.set(output.conn, output.data);
          break;
        case 'close': {
          if (!this.live.has(output.conn)) violations.push(`close of connection ${output.conn}, which the host does not have, after ${where()}`);
          else if (this.closing.has(output.conn)) violations.push(`second close of connection ${output.conn} after ${where()}`);
          this.closing.add(output.conn);
          if (output.code === 1011) internalErrors.push(`1011 ${output.reason} after ${where()}`);
          const wire = this.live.get(output.conn);
          const before = lastSent.get(output.conn);
          const expected = output.code === 1001 ? 5 : 6;
          let frame: { op?: unknown; d?: unknown } | undefined;
          try {
            frame = before === undefined || wire === undefined ? undefined : (decodeOutput(before, wire) as typeof frame);
          } catch {
            frame = undefined;
          }
          if (frame?.op !== expected) {
            violations.push(`close ${output.code} "${output.reason}" of connection ${output.conn} not preceded by ${expected === 6 ? 'NO_U_TBH' : 'GO_AWAY'}, after ${where()}`);
          } else if (expected === 6 && (typeof frame.d !== 'string' || truncate(frame.d) !== output.reason)) {
            violations.push(`close reason "${output.reason}" differs from NO_U_TBH ${JSON.stringify(frame.d)}, after ${where()}`);
          }
          break;
        }
        case 'terminate':
          if (!this.live.has(output.conn) || !this.closing.has(output.conn)) {
            violations.push(`terminate of connection ${output.conn} without a close before it, after ${where()}`);
          }
          break;
        case 'log':
          if (output.level === 'error') internalErrors.push(`${output.msg} ${JSON.stringify(output.fields)?.slice(0, 400)} after ${where()}`);
          break;
        case 'dispatched':
        case 'rejected':
          answers++;
          if (input.type !== 'dispatch' || output.request !== input.request) violations.push(`answer to request ${output.request} after ${where()}`);
          break;
      }
    }
    if (input.type === 'dispatch' && answers !== 1) violations.push(`${answers} answers to ${where()}`);
  }
}

/** Every finding as one line each, for assertion messages and the script's report. */
export function summary(findings: Findings, limit = 5): string[] {
  const lines: string[] = [];
  for (const [name, list] of [
    ['throw', findings.throws],
    ['internal error', findings.internalErrors],
    ['violation', findings.violations],
  ] as const) {
    for (const item of list.slice(0, limit)) lines.push(`${name}: ${item.slice(0, 1_200)}`);
    if (list.length > limit) lines.push(`… and ${list.length - limit} more ${name}s`);
  }
  return lines;
}
