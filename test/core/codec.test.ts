// The frame codecs against what an attacker or another language's msgpack
// library really sends: every extension type, bin, 64-bit integers, floats,
// odd map keys, `__proto__`, absurd nesting, zlib bombs, and ordinary round trips.

import { Decoder } from '@msgpack/msgpack';
import fc from 'fast-check';
import { zlibSync } from 'fflate';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { checkDepth, DecodeError, decodeFrame, encodeFrame } from '../../src/core/codec.ts';
import { DEFAULT_LIMITS } from '../../src/core/io.ts';
import type { Wire } from '../../src/core/protocol.ts';

const JSON_WIRE: Wire = { format: 'json', compression: 'none' };
const JSON_ZLIB: Wire = { format: 'json', compression: 'zlib' };
const MSGPACK: Wire = { format: 'msgpack', compression: 'none' };
const MSGPACK_ZLIB: Wire = { format: 'msgpack', compression: 'zlib' };
const WIRES = [JSON_WIRE, JSON_ZLIB, MSGPACK, MSGPACK_ZLIB];
const LIMIT = 1_048_576;

/** The encoders an attacker (or a careless JavaScript client) would use. */
const moreTypes = new Packr({ moreTypes: true, useRecords: false });
const structuredClone = new Packr({ structuredClone: true, useRecords: false });
const records = new Packr({ useRecords: true });

function decodeMsgpack(bytes: Uint8Array, maxDepth?: number): unknown {
  return decodeFrame(bytes, MSGPACK, LIMIT, maxDepth);
}

/** The DecodeError decodeFrame throws (failing the test if it returns or throws anything else). */
function refusal(decode: () => unknown): DecodeError {
  let thrown: unknown;
  try {
    decode();
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toBeInstanceOf(DecodeError);
  return thrown as DecodeError;
}

const be = (value: bigint, bytes: number): number[] =>
  Array.from({ length: bytes }, (_, i) => Number((BigInt.asUintN(bytes * 8, value) >> BigInt(8 * (bytes - 1 - i))) & 0xffn));

/** `{"op":8,"d":{"q":<value>}}` with the value's bytes spliced in as they are. */
function inD(valueBytes: number[] | Uint8Array): Uint8Array {
  return Uint8Array.from([0x82, 0xa2, 0x6f, 0x70, 0x08, 0xa1, 0x64, 0x81, 0xa1, 0x71, ...valueBytes]);
}

function ext(type: number, data: number[]): number[] {
  const fixed: Record<number, number> = { 1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8 };
  const tag = fixed[data.length];
  if (tag !== undefined) return [tag, type & 0xff, ...data];
  if (data.length < 0x100) return [0xc7, data.length, type & 0xff, ...data];
  if (data.length < 0x10000) return [0xc8, ...be(BigInt(data.length), 2), type & 0xff, ...data];
  return [0xc9, ...be(BigInt(data.length), 4), type & 0xff, ...data];
}

describe('msgpack extensions are refused, naming the type and where it was', () => {
  const hostile: [string, unknown, string][] = [
    ['RegExp', /^(a+)+$/, 'type 0x78'],
    ['Set', new Set([1, 2]), 'type 0x73'],
    ['ArrayBuffer', new ArrayBuffer(16), 'type 0x74'],
    ['Uint8Array', new Uint8Array([1, 2, 3]), 'type 0x74'],
    ['Float32Array', new Float32Array([1.5]), 'type 0x74'],
    ['Error', new Error('boom'), 'type 0x65'],
    ['Date (timestamp -1)', new Date(1_700_000_000_000), 'type -1 (timestamp)'],
    ['undefined', undefined, 'type 0x00'],
    ['BigInt beyond 64 bits', 2n ** 70n, 'type 0x42'],
  ];
  for (const [name, value, type] of hostile) {
    it(`${name} from msgpackr (moreTypes and structuredClone)`, () => {
      for (const packr of [moreTypes, structuredClone]) {
        const error = refusal(() => decodeMsgpack(packr.pack({ op: 8, e: 'EV', d: { nested: [{ q: value }] }, to: { app_name: 'a' } })));
        expect(error.message).toBe(`msgpack extension ${type} at d.nested[0].q is not allowed: frames carry JSON values only`);
        expect(error.tooLarge).toBe(false);
      }
    });
  }

  it('a RegExp in a query is refused before anything could run it', () => {
    const frame = moreTypes.pack({ op: 8, e: 'EV', d: 1, to: { app_name: 'a', query: { name: /^(a+)+$/ } } });
    const started = performance.now();
    expect(refusal(() => decodeMsgpack(frame)).message).toBe('msgpack extension type 0x78 at to.query.name is not allowed: frames carry JSON values only');
    expect(performance.now() - started).toBeLessThan(1_000);
  });

  it('a Map with non-string keys from msgpackr is a map whose keys are refused', () => {
    const error = refusal(() => decodeMsgpack(moreTypes.pack({ op: 7, d: new Map<unknown, unknown>([[{ a: 1 }, 'x']]) })));
    expect(error.message).toBe('msgpack map key of type map at d is not allowed: keys must be strings or integers');
  });

  it('structured-clone references and records', () => {
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic.self = cyclic;
    expect(refusal(() => decodeMsgpack(structuredClone.pack({ op: 8, d: cyclic }))).message).toMatch(/^msgpack extension type 0x69 at d is not allowed/);
    for (const packr of [records, new Packr({ structuredClone: true })]) {
      expect(refusal(() => decodeMsgpack(packr.pack({ op: 8, d: { a: /x/ } }))).message).toBe(
        'msgpack extension type 0x72 at the top level is not allowed: frames carry JSON values only',
      );
    }
  });

  it('every extension type and every header form, by hand', () => {
    for (const type of [0, 1, 0x42, 0x65, 0x70, 0x72, 0x73, 0x74, 0x78, 0x7f, -1, -2, -128]) {
      for (const length of [1, 2, 4, 8, 16, 0, 3, 300, 70_000]) {
        const error = refusal(() => decodeMsgpack(inD(ext(type, new Array(length).fill(0)))));
        const name = type === -1 ? 'type -1 (timestamp)' : type < 0 ? `type ${type}` : `type 0x${type.toString(16).padStart(2, '0')}`;
        expect(error.message).toBe(`msgpack extension ${name} at d.q is not allowed: frames carry JSON values only`);
      }
    }
  });

  it('an extension as a map key, and a whole frame that is an extension', () => {
    expect(refusal(() => decodeMsgpack(inD([0x81, ...ext(0x78, [0]), 0x01]))).message).toBe(
      'msgpack map key of type extension type 0x78 at d.q is not allowed: keys must be strings or integers',
    );
    expect(refusal(() => decodeMsgpack(Uint8Array.from(ext(-1, [0, 0, 0, 1])))).message).toBe(
      'msgpack extension type -1 (timestamp) at the top level is not allowed: frames carry JSON values only',
    );
  });
});

describe('msgpack values JSON cannot carry', () => {
  it('bin is refused, naming where, in every length form', () => {
    for (const head of [[0xc4, 3], [0xc5, 0, 3], [0xc6, 0, 0, 0, 3]]) {
      const error = refusal(() => decodeMsgpack(inD([...head, 1, 2, 3])));
      expect(error.message).toBe('msgpack bin at d.q is not allowed: frames carry JSON values only; send text, or encode bytes as a base64 string yourself');
    }
    // What Python's msgpack.packb({"d": {"blob": b"..."}}) sends.
    expect(refusal(() => decodeMsgpack(moreTypes.pack({ op: 8, d: { blob: Buffer.from('hi') } }))).message).toMatch(/^msgpack bin at d\.blob /);
  });

  it('NaN and ±Infinity are refused: JSON has no such numbers', () => {
    for (const bytes of [[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0], [0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0], [0xca, 0xff, 0x80, 0, 0]]) {
      expect(refusal(() => decodeMsgpack(inD(bytes))).message).toMatch(/^msgpack float (NaN|Infinity|-Infinity) at d\.q is not allowed: frames carry JSON values only$/);
    }
  });

  it('float32 and float64 decode to the double they encode', () => {
    expect(decodeMsgpack(inD([0xca, 0x3d, 0xcc, 0xcc, 0xcd]))).toEqual({ op: 8, d: { q: Math.fround(0.1) } });
    expect(decodeMsgpack(inD([0xcb, 0x3f, 0xb9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a]))).toEqual({ op: 8, d: { q: 0.1 } });
    expect(decodeMsgpack(inD([0xca, 0x80, 0, 0, 0]))).toEqual({ op: 8, d: { q: -0 } });
  });
});

describe('64-bit integers become the nearest double, exactly as JSON.parse reads the same digits', () => {
  const unsigned = [2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 53n + 3n, 1_700_000_000_123_456_789n, 1_714_000_000_123_456_789n, 2n ** 63n, 2n ** 64n - 1n];
  const signed = [-(2n ** 53n) + 1n, -(2n ** 53n) - 1n, -(2n ** 53n) - 3n, -1_700_000_000_123_456_789n, -(2n ** 63n)];

  it('uint64 (Python time.time_ns(), Go uint64)', () => {
    for (const value of unsigned) {
      const decoded = decodeMsgpack(inD([0xcf, ...be(value, 8)])) as { d: { q: unknown } };
      expect(typeof decoded.d.q).toBe('number');
      expect(decoded.d.q).toBe(JSON.parse(value.toString()));
    }
  });

  it('int64, negative', () => {
    for (const value of signed) {
      const decoded = decodeMsgpack(inD([0xd3, ...be(value, 8)])) as { d: { q: unknown } };
      expect(typeof decoded.d.q).toBe('number');
      expect(decoded.d.q).toBe(JSON.parse(value.toString()));
    }
  });

  it('small integers in 64-bit form stay exact, and the same digits in JSON read the same', () => {
    expect(decodeMsgpack(inD([0xcf, ...be(42n, 8)]))).toEqual({ op: 8, d: { q: 42 } });
    expect(decodeMsgpack(inD([0xd3, ...be(-42n, 8)]))).toEqual({ op: 8, d: { q: -42 } });
    const time = 1_700_000_000_123_456_789n;
    expect(decodeFrame(`{"op":8,"d":{"q":${time}}}`, JSON_WIRE, LIMIT)).toEqual(decodeMsgpack(inD([0xcf, ...be(time, 8)])));
  });

  it('a frame carrying one is routed like any other: it encodes again on every wire', () => {
    const decoded = decodeMsgpack(inD([0xcf, ...be(1_700_000_000_123_456_789n, 8)])) as object;
    for (const wire of WIRES) expect(decodeFrame(encodeFrame(decoded, wire), wire, LIMIT)).toEqual(decoded);
  });
});

describe('map keys', () => {
  it('integer keys become their decimal string, as JavaScript and Python json.dumps write them', () => {
    const frame = Uint8Array.from([0x82, 0xa2, 0x6f, 0x70, 0x07, 0xa1, 0x64, 0x84, 0x05, 0x01, 0xff, 0x02, 0xcd, 0x01, 0x00, 0x03, 0xd3, ...be(-(2n ** 40n), 8), 0x04]);
    expect(decodeMsgpack(frame)).toEqual({ op: 7, d: { '5': 1, '-1': 2, '256': 3, [String(-(2 ** 40))]: 4 } });
  });

  it('other key types are refused, naming the map', () => {
    const keys: [string, number[]][] = [
      ['nil', [0xc0]],
      ['boolean', [0xc3]],
      ['float', [0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]],
      ['integer beyond ±(2^53 − 1)', [0xcf, ...be(2n ** 60n, 8)]],
      ['bin', [0xc4, 1, 0x61]],
      ['array', [0x91, 0x01]],
      ['map', [0x81, 0xa1, 0x61, 0x01]],
    ];
    for (const [type, key] of keys) {
      expect(refusal(() => decodeMsgpack(inD([0x81, ...key, 0x01]))).message).toBe(`msgpack map key of type ${type} at d.q is not allowed: keys must be strings or integers`);
    }
    expect(refusal(() => decodeMsgpack(Uint8Array.from([0x81, 0xc2, 0x01]))).message).toBe(
      'msgpack map key of type boolean at the top level is not allowed: keys must be strings or integers',
    );
  });

  it('__proto__ and constructor are ordinary own keys, as JSON.parse makes them; nothing is polluted', () => {
    const json = '{"op":7,"d":{"constructor":{"prototype":{"polluted":1}},"__proto__":{"polluted":1},"nested":[{"__proto__":[1]}]}}';
    for (const packr of [moreTypes, new Packr({ useRecords: false })]) {
      const bytes = packr.pack(JSON.parse(json));
      const decoded = decodeMsgpack(bytes) as { d: Record<string, unknown> & { nested: Record<string, unknown>[] } };
      expect(Object.getPrototypeOf(decoded.d)).toBe(Object.prototype);
      expect(Object.keys(decoded.d).sort()).toEqual(['__proto__', 'constructor', 'nested']);
      expect(Object.getOwnPropertyDescriptor(decoded.d, '__proto__')?.value).toEqual({ polluted: 1 });
      expect(Object.getOwnPropertyDescriptor(decoded.d.nested[0], '__proto__')?.value).toEqual([1]);
      expect(decoded.d.polluted).toBeUndefined();
      expect(({} as Record<string, unknown>).polluted).toBeUndefined();
      expect(JSON.parse(JSON.stringify(decoded))).toEqual(JSON.parse(json));
      // And it survives the trip out again on every wire.
      for (const wire of WIRES) expect(JSON.stringify(decodeFrame(encodeFrame(decoded, wire), wire, LIMIT))).toBe(JSON.stringify(decoded));
    }
  });

  it('a __proto__ key does not hide another refusal in the same frame', () => {
    const key = (text: string) => [0xa0 | text.length, ...Array.from(text, (c) => c.charCodeAt(0))];
    const withBin = Uint8Array.from([0x82, ...key('op'), 0x07, ...key('d'), 0x82, ...key('__proto__'), 0x01, ...key('x'), 0xc4, 0x01, 0x00]);
    expect(refusal(() => decodeMsgpack(withBin)).message).toMatch(/^msgpack bin at d\.x /);
  });
});

describe('nesting depth: refused by the limit, never by a stack overflow', () => {
  const limitText = `objects and arrays nest deeper than the limit of ${DEFAULT_LIMITS.maxDepth} levels`;

  it('JSON: 10k and 200k levels of [ and {, in d, metadata and queries', () => {
    for (const levels of [10_000, 200_000]) {
      const arrays = '['.repeat(levels) + ']'.repeat(levels);
      const objects = '{"a":'.repeat(levels) + '1' + '}'.repeat(levels);
      for (const frame of [
        `{"op":8,"e":"EV","d":${arrays},"to":{"app_name":"a"}}`,
        `{"op":7,"d":{"m":${objects}}}`,
        `{"op":8,"e":"EV","d":1,"to":{"app_name":"a","query":{"$and":${arrays}}}}`,
      ]) {
        for (const wire of [JSON_WIRE, JSON_ZLIB]) {
          const data = wire === JSON_WIRE ? frame : zlibSync(new TextEncoder().encode(frame));
          expect(refusal(() => decodeFrame(data, wire, 8 * LIMIT)).message).toBe(limitText);
        }
      }
    }
  });

  it('JSON too deep to be balanced or valid is refused all the same, with DecodeError', () => {
    expect(refusal(() => decodeFrame('['.repeat(500_000), JSON_WIRE, LIMIT)).message).toBe(limitText);
    // With no limit at all, the parser itself must not escape as a RangeError.
    refusal(() => decodeFrame('['.repeat(500_000), JSON_WIRE, LIMIT, Infinity));
  });

  it('msgpack: 10k levels of arrays and of maps', () => {
    const arrays = Uint8Array.from([...new Array(10_000).fill(0x91), 0xc0]);
    const maps: number[] = [];
    for (let i = 0; i < 10_000; i++) maps.push(0x81, 0xa1, 0x61);
    maps.push(0xc0);
    for (const value of [arrays, Uint8Array.from(maps)]) {
      expect(refusal(() => decodeMsgpack(inD(value))).message).toBe(limitText);
      expect(refusal(() => decodeFrame(zlibSync(inD(value)), MSGPACK_ZLIB, LIMIT)).message).toBe(limitText);
    }
  });

  it('the frame object is level 1: exactly the limit passes, one more is refused, on every wire', () => {
    const nest = (levels: number): unknown => {
      let value: unknown = 'leaf';
      for (let i = 1; i < levels; i++) value = i % 2 ? [value] : { k: value };
      return { op: 8, d: value };
    };
    for (const wire of WIRES) {
      expect(decodeFrame(encodeFrame(nest(32) as object, wire), wire, LIMIT)).toEqual(nest(32));
      expect(refusal(() => decodeFrame(encodeFrame(nest(33) as object, wire), wire, LIMIT)).message).toBe(limitText);
      expect(decodeFrame(encodeFrame(nest(5) as object, wire), wire, LIMIT, 5)).toEqual(nest(5));
      expect(refusal(() => decodeFrame(encodeFrame(nest(6) as object, wire), wire, LIMIT, 5)).message).toBe(
        'objects and arrays nest deeper than the limit of 5 levels',
      );
    }
  });

  it('empty arrays and objects are levels too', () => {
    expect(refusal(() => decodeFrame('{"a":[[{}]]}', JSON_WIRE, LIMIT, 3)).message).toMatch(/limit of 3 levels/);
    expect(refusal(() => decodeMsgpack(Uint8Array.from([0x81, 0xa1, 0x61, 0x91, 0x91, 0x80]), 3)).message).toMatch(/limit of 3 levels/);
    expect(decodeFrame('{"a":[[1]]}', JSON_WIRE, LIMIT, 3)).toEqual({ a: [[1]] });
  });

  it('brackets inside JSON strings do not count, whatever the escapes', () => {
    const strings = ['[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[', '\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[', '\\\\', '{{{\\\\\\"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{'];
    for (const text of strings) {
      const frame = `{"op":8,"d":["${text}",{"k":"${text}"}],"to":{"app_name":"${text}"}}`;
      expect(decodeFrame(frame, JSON_WIRE, LIMIT, 3)).toEqual(JSON.parse(frame));
    }
    // …while a string that ends just before real brackets leaves them counted.
    expect(refusal(() => decodeFrame('{"a":"\\\\","c":[[[[1]]]]}', JSON_WIRE, LIMIT, 4)).message).toMatch(/limit of 4 levels/);
  });

  it('agrees with a recursive measure on random JSON, for random limits', () => {
    const depthOf = (value: unknown): number =>
      typeof value === 'object' && value !== null ? 1 + Math.max(0, ...Object.values(value).map(depthOf)) : 0;
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 8 }), fc.integer({ min: 1, max: 10 }), (value, maxDepth) => {
        const text = JSON.stringify(value);
        const tooDeep = depthOf(value) > maxDepth;
        for (const wire of [JSON_WIRE, MSGPACK]) {
          const data = wire === JSON_WIRE ? text : (encodeFrame(value as object, wire) as Uint8Array);
          if (tooDeep) expect(refusal(() => decodeFrame(data, wire, LIMIT, maxDepth)).message).toMatch(/nest deeper/);
          else expect(JSON.stringify(decodeFrame(data, wire, LIMIT, maxDepth))).toBe(JSON.stringify(JSON.parse(text)));
        }
        expect(checkDepth(value, maxDepth) !== undefined).toBe(tooDeep);
      }),
      { numRuns: 500 },
    );
  });
});

describe('checkDepth, for values already parsed (HTTP bodies)', () => {
  it('names the limit, and passes scalars and shallow values', () => {
    expect(checkDepth({ e: 'X', d: { a: [1, 2, { b: null }] } }, 4)).toBeUndefined();
    expect(checkDepth({ e: 'X', d: { a: [1, 2, { b: null }] } }, 3)).toBe('objects and arrays nest deeper than the limit of 3 levels');
    for (const scalar of [null, 1, 'x', true, undefined]) expect(checkDepth(scalar, 1)).toBeUndefined();
  });

  it('200k levels without recursion, and a cycle ends too', () => {
    let deep: unknown = 1;
    for (let i = 0; i < 200_000; i++) deep = [deep];
    expect(checkDepth({ d: deep }, 32)).toBe('objects and arrays nest deeper than the limit of 32 levels');
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(checkDepth(cyclic, 32)).toMatch(/limit of 32 levels/);
  });
});

describe('zlib', () => {
  it('a bomb is refused as too large, after inflating little more than the limit', () => {
    const bomb = zlibSync(new Uint8Array(64 * LIMIT), { level: 9 });
    for (const wire of [JSON_ZLIB, MSGPACK_ZLIB]) {
      const error = refusal(() => decodeFrame(bomb, wire, LIMIT));
      expect(error.tooLarge).toBe(true);
      expect(error.message).toBe(`inflated frame exceeds ${LIMIT} bytes`);
    }
  });

  it('a small frame that inflates past a small limit is refused too', () => {
    const frame = zlibSync(new TextEncoder().encode(JSON.stringify({ op: 8, d: 'x'.repeat(5_000) })));
    expect(refusal(() => decodeFrame(frame, JSON_ZLIB, 1_000)).tooLarge).toBe(true);
  });

  it('garbage and text frames are undecodable, not crashes', () => {
    expect(refusal(() => decodeFrame(Uint8Array.of(1, 2, 3, 4), JSON_ZLIB, LIMIT)).message).toBe('undecodable zlib frame');
    expect(refusal(() => decodeFrame('{"op":3}', MSGPACK_ZLIB, LIMIT)).message).toBe('text frame on a msgpack connection; send binary frames');
    expect(refusal(() => decodeFrame('{"op":3}', JSON_ZLIB, LIMIT)).message).toBe('text frame on a zlib connection; send binary frames');
  });
});

describe('malformed input only ever becomes DecodeError', () => {
  it('length bombs, truncation, reserved bytes, trailing bytes, bad UTF-8', () => {
    const cases: [string | Uint8Array, Wire, string][] = [
      [Uint8Array.of(0xdd, 0xff, 0xff, 0xff, 0xff), MSGPACK, 'undecodable msgpack frame'],
      [Uint8Array.of(0xdf, 0xff, 0xff, 0xff, 0xff), MSGPACK, 'undecodable msgpack frame'],
      [Uint8Array.of(0xdb, 0xff, 0xff, 0xff, 0xff), MSGPACK, 'undecodable msgpack frame'],
      [Uint8Array.of(0xc9, 0x7f, 0xff, 0xff, 0xff, 0x78), MSGPACK, 'undecodable msgpack frame'],
      [Uint8Array.of(0x92, 0x01), MSGPACK, 'undecodable msgpack frame'],
      [new Uint8Array(0), MSGPACK, 'undecodable msgpack frame'],
      [Uint8Array.of(0xc1), MSGPACK, 'undecodable msgpack frame: Unrecognized type byte: 0xc1'],
      [Uint8Array.of(0x80, 0x01), MSGPACK, 'undecodable msgpack frame: bytes after the value'],
      [Uint8Array.of(0x7b, 0xff, 0x7d), JSON_WIRE, 'frame is not valid UTF-8'],
      ['{"op":', JSON_WIRE, 'undecodable JSON frame'],
    ];
    for (const [data, wire, message] of cases) expect(refusal(() => decodeFrame(data, wire, LIMIT)).message).toBe(message);
  });

  it('random and mutated bytes on every wire', () => {
    const seed = encodeFrame({ op: 8, e: 'EV', d: { a: [1, 'x', { b: null }], n: 1.5 }, to: { app_name: 'a' } }, MSGPACK) as Uint8Array;
    fc.assert(
      fc.property(
        fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.tuple(fc.nat(seed.length - 1), fc.integer({ min: 0, max: 255 })).map(([at, byte]) => Uint8Array.from(seed, (b, i) => (i === at ? byte : b)))),
        fc.constantFrom(...WIRES),
        (data, wire) => {
          try {
            decodeFrame(data, wire, LIMIT);
          } catch (error) {
            expect(error).toBeInstanceOf(DecodeError);
          }
        },
      ),
      { numRuns: 2_000 },
    );
  });
});

describe('ordinary frames round-trip, as plain msgpack any language reads', () => {
  const frames = [
    { op: 3 },
    { op: 1, d: { app_name: 'api', client_id: 'api-1', password: 'pw', metadata: { region: 'eu', load: 0.42, users: ['1', '2'], ok: true, none: null } } },
    { op: 8, e: 'USER_UPDATED', d: { id: '42', n: -17, big: 2 ** 40, float: 1.25, s: 'üñí©ødé 😀', list: [[], {}, [1, [2, [3]]]] }, to: { app_name: 'gw', query: { users: '42' } }, nonce: 'n1' },
    { op: 8, e: 'EV', d: 'x'.repeat(70_000), to: { app_name: 'gw' } },
  ];

  it('every wire', () => {
    for (const wire of WIRES) for (const frame of frames) expect(decodeFrame(encodeFrame(frame, wire), wire, LIMIT)).toEqual(frame);
  });

  it('a standard decoder reads what we write: no extension, maps as maps', () => {
    const standard = new Decoder({ extensionCodec: { tryToEncode: () => null, decode: (_, type) => { throw new Error(`extension ${type}`); } } });
    for (const frame of frames) expect(standard.decode(encodeFrame(frame, MSGPACK) as Uint8Array)).toEqual(frame);
    // undefined, which JSON.stringify drops from objects, is nil rather than msgpackr's fixext 0.
    expect(standard.decode(encodeFrame({ op: 8, nonce: undefined, d: [undefined] }, MSGPACK) as Uint8Array)).toEqual({ op: 8, nonce: null, d: [null] });
  });

  it('a small map has a fixmap header, and a map of 70 000 keys still encodes', () => {
    expect((encodeFrame({ op: 8, e: 'EV', d: 1, from: {} }, MSGPACK) as Uint8Array)[0]).toBe(0x84);
    const wide: Record<string, number> = {};
    for (let i = 0; i < 70_000; i++) wide[`k${i}`] = i;
    expect(decodeFrame(encodeFrame({ op: 8, d: wide }, MSGPACK), MSGPACK, 4 * LIMIT)).toEqual({ op: 8, d: wide });
  });
});
