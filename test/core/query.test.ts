// Metadata queries (src/core/query.ts): what is refused and with which message, every
// limit at and past its boundary, hostile depth, and matching that agrees with sift
// (the library the hub evaluates with) and never throws.

import fc from 'fast-check';
import * as siftModule from 'sift';
import { describe, expect, it } from 'vitest';
import { compileQuery, DEFAULT_MAX_QUERY_CONDITIONS, QueryError, type QueryLimits } from '../../src/core/query.ts';

const LIMITS: QueryLimits = { maxDepth: 32, maxQueryOperands: 256, maxQueryTerms: 512 };

// sift with its default operations, on the query as the client sent it: the reference.
const siftDefault = (siftModule as unknown as { default: unknown }).default;
const sift = (typeof siftDefault === 'function' ? siftDefault : (siftDefault as { default: unknown }).default) as (
  query: unknown,
) => (item: unknown) => boolean;

/** Metadata as the hub holds it: a prototype-less top-level object. */
const md = (fields: Record<string, unknown>) => Object.assign(Object.create(null) as Record<string, unknown>, fields);

function refusal(query: unknown, limits: QueryLimits = LIMITS): string {
  try {
    compileQuery(query as Record<string, unknown>, limits);
  } catch (error) {
    if (error instanceof QueryError) return error.message;
    throw error;
  }
  throw new Error(`accepted: ${JSON.stringify(query)}`);
}

const matches = (query: Record<string, unknown>, metadata: Record<string, unknown>) => compileQuery(query, LIMITS)(md(metadata));

/** `{ key: { key: … value } }` nested `levels` deep, built without recursion. */
function nest(levels: number, wrap: (inner: unknown) => unknown, inner: unknown): unknown {
  let value = inner;
  for (let i = 0; i < levels; i++) value = wrap(value);
  return value;
}

describe('refused queries name the operator and where it is', () => {
  const cases: [string, unknown, string][] = [
    ['a top-level operator that would test the whole metadata', { $gt: {} }, '$gt at the top level needs a field, as in {"load":{"$gt":…}}'],
    ['$gt with an object', { a: { $gt: {} } }, '$gt at a needs a number or a string'],
    ['$lte with null', { load: { $lte: null } }, '$lte at load needs a number or a string'],
    ['$lt with an array', { load: { $lt: [1] } }, '$lt at load needs a number or a string'],
    ['$gte with NaN', { load: { $gte: Number.NaN } }, '$gte at load needs a number or a string'],
    ['$gt on a dotted path inside $or', { $or: [{ 'limits.cpu': { $gt: true } }] }, '$gt at $or[0].limits.cpu needs a number or a string'],
    ['$in with a string', { region: { $in: 'eu' } }, '$in at region needs an array'],
    ['$nin with an object', { region: { $nin: { 0: 'eu' } } }, '$nin at region needs an array'],
    ['$all with nothing in it', { tags: { $all: [] } }, '$all at tags needs at least one value'],
    ['$all with an object', { tags: { $all: [{ a: 1 }] } }, '$all at tags takes strings, numbers, booleans or null'],
    ['$all with an array', { tags: { $all: [['a']] } }, '$all at tags takes strings, numbers, booleans or null'],
    ['$exists with a number', { shard: { $exists: 1 } }, '$exists at shard needs true or false'],
    ['$size negative', { users: { $size: -1 } }, '$size at users needs a non-negative integer'],
    ['$size fractional', { users: { $size: 1.5 } }, '$size at users needs a non-negative integer'],
    ['$size as a string', { users: { $size: '1' } }, '$size at users needs a non-negative integer'],
    ['$not with a value', { region: { $not: 'eu' } }, '$not at region needs an operator object, as in {"$gt":1}'],
    ['$not with fields', { region: { $not: { a: 1 } } }, '$not at region needs an operator object, as in {"$gt":1}'],
    ['$not with an empty object', { region: { $not: {} } }, '$not at region needs an operator object, as in {"$gt":1}'],
    ['a bad operand inside $not', { load: { $not: { $gt: 'a', $lt: {} } } }, '$lt inside $not at load needs a number or a string'],
    ['$and with an object', { $and: { a: 1 } }, '$and needs a non-empty array of queries'],
    ['$or empty', { $or: [] }, '$or needs a non-empty array of queries'],
    ['$nor nested empty', { $and: [{ $nor: [] }] }, '$nor at $and[0] needs a non-empty array of queries'],
    ['$or holding a value', { $or: ['eu'] }, '$or[0] needs a query object'],
    ['$or under a field', { region: { $or: [{ $eq: 'eu' }] } }, '$or at region: $or combines whole queries, so it goes at the top level or inside another $and/$or/$nor'],
    ['operators mixed with plain keys', { region: { $ne: 'us', eu: 1 } }, 'the condition at region mixes operators with the plain key eu; use one or the other'],
    ['an operator inside a value', { limits: { cpu: { $gt: 2 } } }, 'limits holds the key $gt inside a value; operators go right under a field, as in {"a.b":{"$gt":…}}'],
    ['an operator inside an $in value', { a: { $in: [{ $gt: 1 }] } }, '$in at a holds the key $gt inside a value; operators go right under a field, as in {"a.b":{"$gt":…}}'],
    ['__proto__ as a field', JSON.parse('{"__proto__":{"x":1}}'), 'the key __proto__ is not allowed in a query'],
    ['__proto__ inside a value', { a: JSON.parse('{"__proto__":1}') }, 'the key __proto__ is not allowed in a query'],
    ['a query that is not an object', ['a'], 'the top level needs a query object'],
  ];
  it.each(cases)('%s', (_name, query, message) => {
    expect(refusal(query)).toBe(message);
  });
});

describe('the operator allowlist', () => {
  const refused = ['$where', '$function', '$regex', '$options', '$elemMatch', '$expr', '$mod', '$type', '$text', '$jsonSchema', '$comment', '$unknown'];
  it.each(refused)('%s at the top level', (operator) => {
    expect(refusal({ [operator]: 'x' })).toBe(`unsupported query operator ${operator}`);
  });
  it.each(refused)('%s under a field', (operator) => {
    expect(refusal({ name: { [operator]: 'x' } })).toBe(`unsupported query operator ${operator} at name`);
  });
  it('$where inside $or and inside $not', () => {
    expect(refusal({ $or: [{ $where: 'true' }] })).toBe('unsupported query operator $where at $or[0]');
    expect(refusal({ a: { $not: { $regex: 'x' } } })).toBe('unsupported query operator $regex at a');
  });
});

describe('operands must be JSON', () => {
  class Point {
    x = 1;
  }
  const values: [string, unknown, string][] = [
    ['RegExp', /eu/, 'a RegExp'],
    ['Date', new Date(0), 'a Date'],
    ['Uint8Array', new Uint8Array([1]), 'a Uint8Array'],
    ['Map', new Map(), 'a Map'],
    ['Set', new Set(), 'a Set'],
    ['function', () => true, 'a function'],
    ['class instance', new Point(), 'an object with a class'],
    ['Array subclass', new (class extends Array {})(), 'an array with a class'],
    ['undefined', undefined, 'undefined'],
    ['NaN', Number.NaN, 'NaN'],
    ['Infinity', Number.POSITIVE_INFINITY, 'Infinity'],
    ['bigint', 1n, 'a bigint'],
    ['symbol', Symbol('s'), 'a symbol'],
  ];
  it.each(values)('%s as an implicit equality, $eq, $ne, $in and $nin value', (_name, value, description) => {
    expect(refusal({ a: value })).toBe(`a holds ${description}, which is not a JSON value`);
    expect(refusal({ a: { $eq: value } })).toBe(`$eq at a holds ${description}, which is not a JSON value`);
    expect(refusal({ a: { $ne: [value] } })).toBe(`$ne at a holds ${description}, which is not a JSON value`);
    expect(refusal({ a: { $in: ['x', value] } })).toBe(`$in at a holds ${description}, which is not a JSON value`);
    expect(refusal({ a: { $nin: [{ b: value }] } })).toBe(`$nin at a holds ${description}, which is not a JSON value`);
  });
  it.each(values)('%s in $gt and $all', (_name, value) => {
    expect(refusal({ a: { $gt: value } })).toBe('$gt at a needs a number or a string');
    expect(refusal({ a: { $all: [value] } })).toBe('$all at a takes strings, numbers, booleans or null');
  });
  it('accepts prototype-less objects, which some decoders produce', () => {
    const value = Object.assign(Object.create(null) as object, { cpu: 4 });
    expect(compileQuery({ limits: value } as Record<string, unknown>, LIMITS)(md({ limits: { cpu: 4 } }))).toBe(true);
  });
});

describe('limits, at and past each boundary', () => {
  it(`$in, $nin and $all take up to maxQueryOperands values`, () => {
    const values = (n: number) => Array.from({ length: n }, (_, i) => `v${i}`);
    for (const op of ['$in', '$nin', '$all']) {
      expect(() => compileQuery({ region: { [op]: values(256) } }, LIMITS)).not.toThrow();
      expect(refusal({ region: { [op]: values(257) } })).toBe(`${op} at region has 257 values, over the limit of 256`);
    }
    expect(refusal({ region: { $in: values(300) } }, { ...LIMITS, maxQueryOperands: 300, maxQueryTerms: 301 })).toBe('query has more than 301 terms');
  });

  it('a query holds up to maxQueryTerms keys and array elements', () => {
    // region + $eq + n elements
    const query = (n: number) => ({ region: { $eq: Array.from({ length: n }, () => 0) } });
    expect(() => compileQuery(query(510), LIMITS)).not.toThrow();
    expect(refusal(query(511))).toBe('query has more than 512 terms');
    expect(refusal({ a: 1, b: 2, c: 3 }, { ...LIMITS, maxQueryTerms: 2 })).toBe('query has more than 2 terms');
  });

  it('a query nests up to maxDepth levels of objects and arrays', () => {
    // The query is level 1, the outermost array level 2.
    const query = (arrays: number) => ({ a: nest(arrays, (inner) => [inner], 1) });
    expect(() => compileQuery(query(31), LIMITS)).not.toThrow();
    expect(refusal(query(32))).toBe('query nests deeper than 32 levels');
    const small = { ...LIMITS, maxDepth: 3 };
    expect(() => compileQuery({ a: { $in: [1] } }, small)).not.toThrow();
    expect(refusal({ a: { $in: [[1]] } }, small)).toBe('query nests deeper than 3 levels');
    expect(() => compileQuery({ $or: [{ a: 1 }] }, small)).not.toThrow();
    expect(refusal({ $or: [{ a: { $eq: {} } }] }, small)).toBe('query nests deeper than 3 levels');
  });

  it('each segment of a dotted field counts as a level', () => {
    const small = { ...LIMITS, maxDepth: 3 };
    expect(() => compileQuery({ 'a.b.c': 1 }, small)).not.toThrow();
    expect(refusal({ 'a.b.c.d': 1 }, small)).toBe('query nests deeper than 3 levels');
    expect(refusal({ 'a.b.c': { $in: [] } }, small)).toBe('query nests deeper than 3 levels');
  });

  it(`a query applies up to ${DEFAULT_MAX_QUERY_CONDITIONS} conditions (or maxQueryConditions)`, () => {
    const query = (n: number) => ({ $or: Array.from({ length: n }, (_, i) => ({ users: `u${i}` })) });
    const max = DEFAULT_MAX_QUERY_CONDITIONS;
    expect(() => compileQuery(query(max), LIMITS)).not.toThrow();
    expect(refusal(query(max + 1))).toBe(`query has more than ${max} conditions`);
    expect(refusal({ a: { $gt: 1, $lt: 5, $ne: 3 } }, { ...LIMITS, maxQueryConditions: 2 })).toBe('query has more than 2 conditions');
    // $not counts, and so does each operator inside it.
    expect(refusal({ a: { $not: { $gt: 1 } } }, { ...LIMITS, maxQueryConditions: 1 })).toBe('query has more than 1 conditions');
    // An object or array in $in is compared by walking it, so it counts too; primitives do not.
    expect(() => compileQuery({ a: { $in: Array.from({ length: 256 }, (_, i) => i) } }, { ...LIMITS, maxQueryConditions: 1 })).not.toThrow();
    expect(refusal({ a: { $in: [1, [2]] } }, { ...LIMITS, maxQueryConditions: 1 })).toBe('query has more than 1 conditions');
  });
});

describe('hostile depth is a QueryError, never a stack overflow', () => {
  const shapes: [string, (levels: number) => unknown][] = [
    ['$and', (levels) => nest(levels, (inner) => ({ $and: [inner] }), { a: 1 })],
    ['$or', (levels) => nest(levels, (inner) => ({ $or: [inner, { b: 2 }] }), { a: 1 })],
    ['$nor', (levels) => nest(levels, (inner) => ({ $nor: [inner] }), { a: 1 })],
    ['$not', (levels) => ({ a: nest(levels, (inner) => ({ $not: inner }), { $eq: 1 }) })],
    ['a literal array', (levels) => ({ a: nest(levels, (inner) => [inner], 1) })],
    ['a literal object', (levels) => ({ a: nest(levels, (inner) => ({ b: inner }), 1) })],
    ['an $in value', (levels) => ({ a: { $in: [nest(levels, (inner) => [inner], 1)] } })],
    ['a dotted field', (levels) => ({ [Array.from({ length: levels }, () => 'a').join('.')]: 1 })],
  ];
  // Room for conditions, so that a $not chain meets the depth limit first.
  const limits = { ...LIMITS, maxQueryConditions: 1_000_000 };
  for (const levels of [10_000, 100_000]) {
    it.each(shapes)(`%s nested ${levels} deep`, (_name, build) => {
      expect(refusal(build(levels), limits)).toBe('query nests deeper than 32 levels');
    });
  }

  it('terms are counted before a wide array is walked', () => {
    expect(refusal({ a: new Array(1_000_000).fill(0) })).toBe('query has more than 512 terms');
    expect(refusal({ $or: new Array(1_000_000).fill({}) })).toBe('query has more than 512 terms');
  });
});

describe('matching users rely on', () => {
  const gateway = { region: 'eu', load: 0.2, users: ['1', '42'], shard: 0, limits: { cpu: 4 }, zones: [{ name: 'a' }, { name: 'b' }], empty: [] };
  const cases: [string, Record<string, unknown>, boolean][] = [
    ['equality', { region: 'eu' }, true],
    ['equality, no match', { region: 'us' }, false],
    ['a value held in an array (MongoDB array rule)', { users: '42' }, true],
    ['a value not in the array', { users: '7' }, false],
    ['the whole array', { users: ['1', '42'] }, true],
    ['the array in another order', { users: ['42', '1'] }, false],
    ['$in, one of them held', { users: { $in: ['7', '42'] } }, true],
    ['$in, none held', { users: { $in: ['7', '8'] } }, false],
    ['$nin', { region: { $nin: ['us', 'ap'] } }, true],
    ['$nin over an array', { users: { $nin: ['42'] } }, false],
    ['$all', { users: { $all: ['42', '1'] } }, true],
    ['$all, one missing', { users: { $all: ['42', '7'] } }, false],
    ['$exists true', { shard: { $exists: true } }, true],
    ['$exists false', { missing: { $exists: false } }, true],
    ['$exists on a dotted path', { 'limits.cpu': { $exists: true } }, true],
    ['$size', { users: { $size: 2 } }, true],
    ['$size, other length', { users: { $size: 0 } }, false],
    ['$not', { load: { $not: { $gt: 0.5 } } }, true],
    ['$not over an array', { users: { $not: { $in: ['42'] } } }, false],
    ['$not $not', { users: { $not: { $not: { $eq: '42' } } } }, true],
    ['$ne with a missing field', { missing: { $ne: 'x' } }, true],
    ['$eq null on a missing field', { missing: null }, true],
    ['dotted path', { 'limits.cpu': { $gte: 4 } }, true],
    ['dotted path through an array of objects', { 'zones.name': 'b' }, true],
    ['dotted path with an index', { 'users.1': '42' }, true],
    ['$gt does not compare a string with a number', { region: { $gt: 0 } }, false],
    ['$lt on strings', { region: { $lt: 'fr' } }, true],
    ['$and', { $and: [{ region: 'eu' }, { load: { $lt: 0.5 } }] }, true],
    ['$or', { $or: [{ region: 'us' }, { users: '42' }] }, true],
    ['$nor', { $nor: [{ region: 'us' }, { users: '7' }] }, true],
    ['an empty query', {}, true],
    // A path that goes on through an array has no value there, not a null one.
    ['null through an empty array', { 'empty.x': null }, false],
    ['$in [null] through an empty array', { 'empty.x': { $in: [null] } }, false],
    ['$nin [null] through an empty array', { 'empty.x': { $nin: [null] } }, true],
    ['$ne null through an empty array', { 'empty.x': { $ne: null } }, true],
    ['$exists through an empty array', { 'empty.x': { $exists: false } }, true],
    ['$in [null] through objects without the key', { 'zones.x': { $in: [null] } }, true],
    ['users.length is the array length', { 'users.length': 2 }, true],
  ];
  it.each(cases)('%s', (_name, query, expected) => {
    expect(matches(query, gateway)).toBe(expected);
    expect(sift(query)(md(gateway))).toBe(expected);
  });

  it('keeps its own copy of the query', () => {
    const query = { region: { $in: ['eu'] } };
    const test = compileQuery(query, LIMITS);
    query.region.$in[0] = 'us';
    expect(test(md({ region: 'eu' }))).toBe(true);
  });
});

// ── the compiled test never throws, and agrees with sift ───────────────────

// `length` and `` take the walk's less common turns: a property of an array, an empty index.
const keys = ['a', 'b', 'users', '0', '1', 'length', ''];
const primitive = fc.constantFrom<unknown>('x', 'y', '42', '', 0, 1, 2, -1, 0.5, true, false, null);
const comparable = fc.constantFrom<unknown>('x', 'y', '', '42', 0, 1, 2, -1, 0.5);

const { json } = fc.letrec<{ json: unknown }>((tie) => ({
  json: fc.oneof(
    { maxDepth: 3, depthIdentifier: 'json' },
    primitive,
    fc.array(tie('json'), { maxLength: 4 }),
    fc.dictionary(fc.constantFrom(...keys), tie('json'), { maxKeys: 3 }),
  ),
}));

/** Metadata as the hub holds it, sometimes with prototype-less objects inside. */
const metadata = fc.dictionary(fc.constantFrom(...keys), json, { maxKeys: 4 }).map(md);

const path = fc.oneof(
  fc.constantFrom(...keys),
  fc.tuple(fc.constantFrom(...keys), fc.constantFrom(...keys)).map(([a, b]) => `${a}.${b}`),
  fc.tuple(fc.constantFrom(...keys), fc.constantFrom(...keys), fc.constantFrom(...keys)).map((parts) => parts.join('.')),
);

const { query } = fc.letrec<{ query: Record<string, unknown>; ops: Record<string, unknown>; op: Record<string, unknown> }>((tie) => ({
  op: fc.oneof(
    { maxDepth: 2, depthIdentifier: 'ops' },
    json.map(($eq) => ({ $eq })),
    json.map(($ne) => ({ $ne })),
    fc.constantFrom('$gt', '$gte', '$lt', '$lte').chain((op) => comparable.map((value) => ({ [op]: value }))),
    fc.array(json, { maxLength: 4 }).map(($in) => ({ $in })),
    fc.array(json, { maxLength: 4 }).map(($nin) => ({ $nin })),
    fc.array(primitive, { minLength: 1, maxLength: 3 }).map(($all) => ({ $all })),
    fc.boolean().map(($exists) => ({ $exists })),
    fc.nat(3).map(($size) => ({ $size })),
    tie('ops').map(($not) => ({ $not })),
  ),
  ops: fc.array(tie('op'), { minLength: 1, maxLength: 3 }).map((list) => Object.assign({}, ...list) as Record<string, unknown>),
  query: fc.oneof(
    { maxDepth: 2, depthIdentifier: 'query' },
    fc.dictionary(path, fc.oneof(json, tie('ops')), { maxKeys: 3, noNullPrototype: true }),
    fc
      .tuple(fc.constantFrom('$and', '$or', '$nor'), fc.array(tie('query'), { minLength: 1, maxLength: 3 }), fc.dictionary(path, json, { maxKeys: 1, noNullPrototype: true }))
      .map(([op, list, fields]) => ({ ...fields, [op]: list })),
  ),
}));

const ROOMY: QueryLimits = { maxDepth: 64, maxQueryOperands: 256, maxQueryTerms: 100_000, maxQueryConditions: 100_000 };

describe('the compiled test', () => {
  it('agrees with sift on random queries and metadata, and never throws', () => {
    fc.assert(
      fc.property(query, fc.array(metadata, { minLength: 1, maxLength: 8 }), (q, list) => {
        const test = compileQuery(q, ROOMY);
        let reference: (item: unknown) => boolean;
        try {
          reference = sift(q);
        } catch {
          return;
        }
        for (const m of list) {
          const ours = test(m);
          expect(typeof ours).toBe('boolean');
          let theirs: boolean;
          try {
            theirs = reference(m);
          } catch {
            continue;
          }
          expect(ours, JSON.stringify({ q, m })).toBe(theirs);
        }
      }),
      { numRuns: 3_000 },
    );
  });

  const strange = fc.constantFrom<unknown>(
    new Date(0),
    new Uint8Array([1, 2]),
    new Map([[1, 2]]),
    Object.create(null),
    Number.NaN,
    Number.POSITIVE_INFINITY,
    10n,
    undefined,
    Symbol('s'),
    () => 1,
    [[[[]]]],
    Object.defineProperty({}, 'x', {
      get() {
        throw new Error('getter');
      },
      enumerable: true,
    }),
    new Proxy({}, {
      get() {
        throw new Error('proxy');
      },
    }),
  );
  const anything = fc.dictionary(fc.constantFrom(...keys), fc.oneof(json, strange, fc.array(fc.oneof(strange, json), { maxLength: 3 })), { maxKeys: 4 }).map(md);

  it('never throws on metadata that is not JSON, with getters that throw', () => {
    fc.assert(
      fc.property(query, anything, (q, m) => {
        expect(typeof compileQuery(q, ROOMY)(m)).toBe('boolean');
      }),
      { numRuns: 3_000 },
    );
  });

  it('is "no match" when reading the metadata throws', () => {
    const metadata = md({});
    Object.defineProperty(metadata, 'region', {
      get() {
        throw new Error('boom');
      },
    });
    expect(compileQuery({ region: 'eu' }, LIMITS)(metadata)).toBe(false);
    expect(compileQuery({ region: { $ne: 'eu' } }, LIMITS)(metadata)).toBe(false);
  });

  it('never throws on metadata nested deeper than the stack', () => {
    const deep = md({ a: nest(200_000, (inner) => [inner], 1) });
    expect(typeof compileQuery({ a: 1 }, LIMITS)(deep)).toBe('boolean');
    expect(typeof compileQuery({ a: { $all: [1] } }, LIMITS)(deep)).toBe('boolean');
  });
});
