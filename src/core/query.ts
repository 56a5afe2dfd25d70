// Metadata queries (`to.query`): a MongoDB-style filter, checked without recursion against an
// operator allowlist, operand types and the query limits, then evaluated with sift's semantics
// by an iterative matcher whose cost is bounded. A test never throws: a failure is "no match".

import { DEFAULT_LIMITS } from './io.ts';

/**
 * Values one dispatch's query may still look at, across every client it is
 * tested on (NERVE_MAX_QUERY_WORK): what bounds a dispatch's time whatever the
 * metadata holds. A test that spends the rest sets `left` below 0 and answers false.
 */
export interface QueryWork {
  left: number;
}

export type MetadataTest = (metadata: Record<string, unknown>, work?: QueryWork) => boolean;

/** For a test run outside any dispatch's budget. */
const UNLIMITED: QueryWork = { left: Infinity };
/** Thrown out of a walk when the budget is spent; never escapes the compiled test. */
const OUT_OF_WORK = new Error('query work budget spent');

export interface QueryLimits {
  /** nesting levels of objects and arrays; a dotted field `a.b.c` counts as three. */
  maxDepth: number;
  /** elements of one `$in`, `$nin` or `$all` operand. */
  maxQueryOperands: number;
  /** object keys plus array elements, anywhere in the query. */
  maxQueryTerms: number;
  /** operators applied to a field (a bare value is one `$eq`), each run on every value at its path. */
  maxQueryConditions?: number | undefined;
}

/**
 * Matching costs conditions × values at their paths (each condition sees every value its
 * path reaches), so this, not the term count, bounds the time a query takes.
 */
export const DEFAULT_MAX_QUERY_CONDITIONS = DEFAULT_LIMITS.maxQueryConditions;

export class QueryError extends Error {}

const LOGICAL = new Set(['$and', '$or', '$nor']);
const COMPARISONS = new Set(['$gt', '$gte', '$lt', '$lte']);
const LISTS = new Set(['$in', '$nin', '$all']);
const FIELD_OPERATORS = new Set(['$eq', '$ne', ...COMPARISONS, ...LISTS, '$exists', '$size', '$not']);

// ── checking ───────────────────────────────────────────────────────────────
// One explicit stack walks the query and builds the copy that is compiled, so the caller's
// object is never shared with a held event and hostile depth costs no stack.

type JsonObject = Record<string, unknown>;

interface Budget {
  terms: number;
  conditions: number;
  maxConditions: number;
  limits: QueryLimits;
}

interface Work {
  /** `query`: an object of fields and $and/$or/$nor; `ops`: the operators of one field; `literal`: a value compared as is. */
  kind: 'query' | 'ops' | 'literal';
  value: unknown;
  /** nesting level of `value` if it is an object or array (the whole query is level 1). */
  level: number;
  /** where `value` is, for messages: a field path, `$or[1]`, or `` for the top level. */
  at: string;
  /** for `ops`: whether they sit inside `$not` (only for messages). */
  negated?: boolean;
  /** for `literal`: the operator or field it belongs to, for messages. */
  owner?: string;
  into: JsonObject | unknown[];
  key: string | number;
}

function isPlainObject(value: unknown): value is JsonObject {
  if (typeof value !== 'object' || value === null) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function isPlainArray(value: unknown): value is unknown[] {
  return Array.isArray(value) && Object.getPrototypeOf(value) === Array.prototype;
}

function isJsonPrimitive(value: unknown): value is string | number | boolean | null {
  return value === null || typeof value === 'string' || typeof value === 'boolean' || (typeof value === 'number' && Number.isFinite(value));
}

/** Names what a non-JSON value is, for the error message. */
function describe(value: unknown): string {
  if (typeof value === 'number' || value === undefined) return String(value);
  if (typeof value !== 'object' || value === null) return `a ${typeof value}`;
  const tag = Object.prototype.toString.call(value).slice(8, -1);
  if (tag === 'Object' || tag === 'Array') return `an ${tag.toLowerCase()} with a class`;
  return `a ${tag}`;
}

function at(where: string): string {
  return where === '' ? 'the top level' : where;
}

function tooDeep(budget: Budget): never {
  throw new QueryError(`query nests deeper than ${budget.limits.maxDepth} levels`);
}

/** Counts `n` terms (object keys or array elements) and refuses the query past the limit. */
function count(budget: Budget, n: number): void {
  budget.terms += n;
  if (budget.terms > budget.limits.maxQueryTerms) throw new QueryError(`query has more than ${budget.limits.maxQueryTerms} terms`);
}

function condition(budget: Budget, n = 1): void {
  budget.conditions += n;
  if (budget.conditions > budget.maxConditions) throw new QueryError(`query has more than ${budget.maxConditions} conditions`);
}

/** Own enumerable keys, stopping as soon as the term budget is spent. */
function keysOf(object: JsonObject, budget: Budget): string[] {
  const keys: string[] = [];
  for (const key in object) {
    if (!Object.prototype.hasOwnProperty.call(object, key)) continue;
    count(budget, 1);
    if (key === '__proto__') throw new QueryError('the key __proto__ is not allowed in a query');
    keys.push(key);
  }
  return keys;
}

/** Checks and copies the whole query; throws QueryError naming the first thing it refuses. */
function checkQuery(query: unknown, limits: QueryLimits): JsonObject {
  const budget: Budget = { terms: 0, conditions: 0, maxConditions: limits.maxQueryConditions ?? DEFAULT_MAX_QUERY_CONDITIONS, limits };
  const root: { query?: unknown } = {};
  const stack: Work[] = [{ kind: 'query', value: query, level: 1, at: '', into: root as JsonObject, key: 'query' }];
  if (limits.maxDepth < 1) tooDeep(budget);
  for (let work = stack.pop(); work !== undefined; work = stack.pop()) {
    if (work.kind === 'query') checkQueryObject(work, stack, budget);
    else if (work.kind === 'ops') checkOperators(work, stack, budget);
    else checkLiteral(work, stack, budget);
  }
  return root.query as JsonObject;
}

function checkQueryObject(work: Work, stack: Work[], budget: Budget): void {
  if (!isPlainObject(work.value)) throw new QueryError(`${at(work.at)} needs a query object`);
  const query = work.value;
  const copy: JsonObject = {};
  (work.into as JsonObject)[work.key] = copy;
  for (const key of keysOf(query, budget)) {
    const value = query[key];
    if (key.startsWith('$')) {
      const suffix = work.at === '' ? '' : ` at ${work.at}`;
      if (FIELD_OPERATORS.has(key)) {
        throw new QueryError(`${key} at ${at(work.at)} needs a field, as in {"load":{"${key}":…}}`);
      }
      if (!LOGICAL.has(key)) throw new QueryError(`unsupported query operator ${key}${suffix}`);
      if (!isPlainArray(value) || value.length === 0) throw new QueryError(`${key}${suffix} needs a non-empty array of queries`);
      // The array is one level, each query in it another.
      if (work.level + 2 > budget.limits.maxDepth) tooDeep(budget);
      count(budget, value.length);
      const list: unknown[] = new Array(value.length);
      copy[key] = list;
      const prefix = work.at === '' ? '' : `${work.at}.`;
      for (let i = value.length - 1; i >= 0; i--) {
        stack.push({ kind: 'query', value: value[i], level: work.level + 2, at: `${prefix}${key}[${i}]`, into: list, key: i });
      }
      continue;
    }
    // `a.b.c` walks three levels into the metadata, just as {"a":{"b":{"c":…}}} would nest.
    const segments = key.split('.').length;
    if (work.level + segments - 1 > budget.limits.maxDepth) tooDeep(budget);
    const path = work.at === '' ? key : `${work.at}.${key}`;
    if (isPlainObject(value) && hasOperatorKey(value)) {
      stack.push({ kind: 'ops', value, level: work.level + segments, at: path, into: copy, key });
    } else {
      // A bare value is an $eq: one operation to evaluate.
      condition(budget);
      const eq: JsonObject = {};
      copy[key] = eq;
      stack.push({ kind: 'literal', value, level: work.level + segments, at: path, owner: path, into: eq, key: '$eq' });
    }
  }
}

function hasOperatorKey(object: JsonObject): boolean {
  for (const key in object) {
    if (Object.prototype.hasOwnProperty.call(object, key) && key.startsWith('$')) return true;
  }
  return false;
}

function checkOperators(work: Work, stack: Work[], budget: Budget): void {
  const ops = work.value as JsonObject;
  if (work.level > budget.limits.maxDepth) tooDeep(budget);
  const copy: JsonObject = {};
  (work.into as JsonObject)[work.key] = copy;
  const keys = keysOf(ops, budget);
  const plain = keys.find((key) => !key.startsWith('$'));
  if (plain !== undefined) {
    throw new QueryError(`the condition at ${work.at} mixes operators with the plain key ${plain}; use one or the other`);
  }
  for (const op of keys) {
    const value = ops[op];
    const name = work.negated ? `${op} inside $not` : op;
    const where = `${name} at ${work.at}`;
    if (LOGICAL.has(op)) throw new QueryError(`${where}: ${op} combines whole queries, so it goes at the top level or inside another $and/$or/$nor`);
    if (!FIELD_OPERATORS.has(op)) throw new QueryError(`unsupported query operator ${op} at ${work.at}`);
    condition(budget);
    switch (op) {
      case '$eq':
      case '$ne':
        stack.push({ kind: 'literal', value, level: work.level + 1, at: work.at, owner: where, into: copy, key: op });
        break;
      case '$gt':
      case '$gte':
      case '$lt':
      case '$lte':
        if (!(typeof value === 'string' || (typeof value === 'number' && Number.isFinite(value)))) {
          throw new QueryError(`${where} needs a number or a string`);
        }
        copy[op] = value;
        break;
      case '$exists':
        if (typeof value !== 'boolean') throw new QueryError(`${where} needs true or false`);
        copy[op] = value;
        break;
      case '$size':
        if (!(Number.isSafeInteger(value) && (value as number) >= 0)) throw new QueryError(`${where} needs a non-negative integer`);
        copy[op] = value;
        break;
      case '$not':
        if (!isPlainObject(value) || !hasOperatorKey(value)) throw new QueryError(`${where} needs an operator object, as in {"$gt":1}`);
        stack.push({ kind: 'ops', value, level: work.level + 1, at: work.at, negated: true, into: copy, key: op });
        break;
      default:
        checkList(op, where, value, work, copy, stack, budget);
    }
  }
}

/** `$in`, `$nin`, `$all`: an array of at most maxQueryOperands values. */
function checkList(op: string, where: string, value: unknown, work: Work, copy: JsonObject, stack: Work[], budget: Budget): void {
  if (!isPlainArray(value)) throw new QueryError(`${where} needs an array`);
  const max = budget.limits.maxQueryOperands;
  if (value.length > max) throw new QueryError(`${where} has ${value.length} values, over the limit of ${max}`);
  if (work.level + 1 > budget.limits.maxDepth) tooDeep(budget);
  count(budget, value.length);
  if (op === '$all') {
    // sift reads an object or array inside $all as a sub-query (MongoDB does not), and
    // `$all: []` matches everything in sift but nothing in MongoDB: neither is allowed.
    if (value.length === 0) throw new QueryError(`${where} needs at least one value`);
    for (const element of value) {
      if (!isJsonPrimitive(element)) throw new QueryError(`${where} takes strings, numbers, booleans or null`);
    }
    copy[op] = value.slice();
    return;
  }
  // Primitives are looked up in a Set; an object or array is compared on its own, like a condition.
  condition(budget, value.filter((element) => typeof element === 'object' && element !== null).length);
  const list: unknown[] = new Array(value.length);
  copy[op] = list;
  for (let i = value.length - 1; i >= 0; i--) {
    stack.push({ kind: 'literal', value: value[i], level: work.level + 2, at: work.at, owner: where, into: list, key: i });
  }
}

/** A value compared as is: JSON only, and no `$` keys, which would read as misplaced operators. */
function checkLiteral(work: Work, stack: Work[], budget: Budget): void {
  const value = work.value;
  const into = work.into as Record<string | number, unknown>;
  if (isJsonPrimitive(value)) {
    into[work.key] = value;
    return;
  }
  const isArray = isPlainArray(value);
  if (!isArray && !isPlainObject(value)) throw new QueryError(`${work.owner} holds ${describe(value)}, which is not a JSON value`);
  if (work.level > budget.limits.maxDepth) tooDeep(budget);
  if (isArray) {
    count(budget, value.length);
    const list: unknown[] = new Array(value.length);
    into[work.key] = list;
    for (let i = value.length - 1; i >= 0; i--) {
      stack.push({ ...work, value: value[i], level: work.level + 1, into: list, key: i });
    }
    return;
  }
  const object = value as JsonObject;
  const copy: JsonObject = {};
  into[work.key] = copy;
  for (const key of keysOf(object, budget)) {
    if (key.startsWith('$')) {
      throw new QueryError(`${work.owner} holds the key ${key} inside a value; operators go right under a field, as in {"a.b":{"${key}":…}}`);
    }
    stack.push({ ...work, value: object[key], level: work.level + 1, into: copy, key });
  }
}

// ── evaluation ─────────────────────────────────────────────────────────────
// The semantics are sift's (github.com/crcn/sift.js, src/core.ts and src/operations.ts), and
// the property test checks random queries against sift itself. sift is not run here because
// it spent 25–100 ns per value per condition on the metadata of bench/query-worst.ts (this
// spends 10–30): a recursive walk with closures, `comparable()` (which copies arrays) on
// every value, and a second walk inside $all and $not. Kept exactly: which values a path reaches, with which key and owner, in
// which order, and each operation's keep/done state. The walk visits an array's elements
// before the array itself, so an operation given an array has already seen what it holds,
// which is why $all and $not need no walk of their own.

type Key = string | number | undefined;

const hasOwn = (object: unknown, key: PropertyKey) => Object.prototype.hasOwnProperty.call(object, key);
const objectTag = (value: unknown) => Object.prototype.toString.call(value);

/** sift's `comparable()` for a value that is not an array. */
function scalar(value: unknown): unknown {
  if (value instanceof Date) return value.getTime();
  if (value && typeof (value as { toJSON?: unknown }).toJSON === 'function') return (value as { toJSON(): unknown }).toJSON();
  return value;
}

/** What sift's walk hands an operation for `a.b` when `a` is an array: not a value. */
function isMissingArrayProperty(key: Key, owner: unknown): boolean {
  return typeof key !== 'number' && Array.isArray(owner) && !((key as PropertyKey) in owner) && Number.isNaN(Number(key));
}

/**
 * sift's `!Array.isArray(owner) || owner.hasOwnProperty(key)` for `item = owner[key]`. Path
 * segments are strings, so a number key is an element the walk just read, which is there
 * unless it is a hole; skipping hasOwnProperty (12 ns) there halves the cost of a value.
 */
function isOwnValue(item: unknown, key: Key, owner: unknown): boolean {
  if (!Array.isArray(owner)) return true;
  return (typeof key === 'number' && item !== undefined) || hasOwn(owner, key as PropertyKey);
}

/**
 * sift's `equals(a, comparable(b))` for a JSON object or array `a`, with an explicit stack.
 * `comparable` turns Dates into numbers through arrays but not inside objects, hence `mapped`.
 */
function deepEquals(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) ? !Array.isArray(b) || a.length !== b.length : typeof b !== 'object' || b === null || Array.isArray(b)) {
    // Only a Date or toJSON object could still become equal once made comparable.
    if (typeof b !== 'object' || b === null || Array.isArray(b) || b instanceof Date) return false;
  }
  const stack: [unknown, unknown, boolean][] = [[a, b, true]];
  for (let pair = stack.pop(); pair !== undefined; pair = stack.pop()) {
    const [x, mapped] = [pair[0], pair[2]];
    let y = pair[1];
    if (mapped && !Array.isArray(y)) y = scalar(y);
    if ((x == null && x == y) || x === y) continue;
    if (objectTag(x) !== objectTag(y)) return false;
    if (Array.isArray(x)) {
      const ys = y as unknown[];
      if (x.length !== ys.length) return false;
      for (let i = 0; i < x.length; i++) stack.push([x[i], ys[i], mapped]);
    } else if (objectTag(x) === '[object Object]') {
      const xo = x as JsonObject;
      const yo = y as JsonObject;
      if (Object.keys(xo).length !== Object.keys(yo).length) return false;
      for (const key of Object.keys(xo)) stack.push([xo[key], yo[key], false]);
    } else {
      return false;
    }
  }
  return true;
}

type Primitive = string | number | boolean | null;

const isPrimitive = (value: unknown) => typeof value !== 'object' || value === null;

/** sift's equality of a primitive `x` with a value already made comparable. */
const primitiveEquals = (x: unknown, y: unknown) => (x == null && x == y) || x === y;

/** A JSON value that is not a Date or toJSON object, which comparable() would change. */
function isPlainValue(value: object): boolean {
  return !(value instanceof Date) && typeof (value as { toJSON?: unknown }).toJSON !== 'function';
}

/** sift's equality with one operand: no copies, and no stack for a flat array or object. */
function equalsTest(operand: unknown): (value: unknown) => boolean {
  if (Array.isArray(operand) && operand.every(isPrimitive)) {
    return (value) => {
      if (!Array.isArray(value)) return typeof value === 'object' && value !== null && !isPlainValue(value) && deepEquals(operand, value);
      if (value.length !== operand.length) return false;
      for (let i = 0; i < operand.length; i++) {
        const y = value[i];
        // comparable() reaches into arrays, so an element may be a Date.
        if (!primitiveEquals(operand[i], typeof y === 'object' && y !== null && !Array.isArray(y) ? scalar(y) : y)) return false;
      }
      return true;
    };
  }
  if (typeof operand === 'object' && operand !== null && !Array.isArray(operand) && Object.values(operand).every(isPrimitive)) {
    const keys = Object.keys(operand);
    const fields = operand as JsonObject;
    return (value) => {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
      if (!isPlainValue(value) || objectTag(value) !== '[object Object]') return deepEquals(operand, value);
      if (Object.keys(value).length !== keys.length) return false;
      // comparable() does not reach into objects: values compare as they are.
      for (const key of keys) if (!primitiveEquals(fields[key], (value as JsonObject)[key])) return false;
      return true;
    };
  }
  if (typeof operand === 'object' && operand !== null) return (value) => deepEquals(operand, value);
  return (value) => primitiveMatches(operand as Primitive, value);
}

/** sift's equality of a primitive operand with any value. */
function primitiveMatches(p: Primitive, value: unknown): boolean {
  if (value === p) return true;
  if (typeof value !== 'object' || value === null) return p === null && value == null;
  if (Array.isArray(value)) return false;
  const c = scalar(value);
  return c === p || (p === null && c == null);
}

/** sift's $in test: primitives in a Set, anything else compared one by one. */
function membershipTest(operands: unknown[]): (value: unknown) => boolean {
  const set = new Set<unknown>();
  const others: ((value: unknown) => boolean)[] = [];
  let hasNull = false;
  for (const operand of operands) {
    if (operand === null) hasNull = true;
    else if (typeof operand === 'object') others.push(equalsTest(operand));
    else set.add(operand);
  }
  return (value) => {
    let c = value;
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) c = scalar(value);
    if (c == null ? hasNull : typeof c !== 'object' && set.has(c)) return true;
    if (typeof value !== 'object' || value === null) return false;
    for (const test of others) if (test(value)) return true;
    return false;
  };
}

// Every operation is one class with a kind, evaluated by one switch: with a class per
// operation, the call and the keep/done reads in the walk's loop turn megamorphic once the
// hub has seen a few kinds of query, which measured 7 → 31 ns per value.
const EQ = 0; // $eq or a bare value, primitive operand
const EQ_VALUE = 1; // $eq with an object or array operand
const NE = 2;
const NE_VALUE = 3;
const IN = 4;
const NIN = 5;
const GT = 6;
const GTE = 7;
const LT = 8;
const LTE = 9;
const ALL = 10;
const EXISTS = 11;
const SIZE = 12;
const NOT = 13;

/** One operation's state, as sift's operation objects keep it between values. */
class Operation {
  keep = false;
  done = false;
  /** $all: operands seen in this evaluation are stamped with the current generation. */
  generation = 1;
  found = 0;
  constructor(
    readonly kind: number,
    readonly operand: unknown,
    readonly test: ((value: unknown) => boolean) | null = null,
    /** $not: the operations it negates. */
    readonly children: Operation[] | null = null,
    /** $all: each distinct operand's slot in `seen`. */
    readonly index: Map<unknown, number> | null = null,
    readonly seen: Uint32Array | null = null,
  ) {}
}

function createOperation(name: string, operand: unknown): Operation {
  const literal = typeof operand === 'object' && operand !== null;
  switch (name) {
    case '$eq':
      return literal ? new Operation(EQ_VALUE, operand, equalsTest(operand)) : new Operation(EQ, operand);
    case '$ne':
      return literal ? new Operation(NE_VALUE, operand, equalsTest(operand)) : new Operation(NE, operand);
    case '$in':
      return new Operation(IN, operand, membershipTest(operand as unknown[]));
    case '$nin':
      return new Operation(NIN, operand, membershipTest(operand as unknown[]));
    case '$gt':
      return new Operation(GT, operand);
    case '$gte':
      return new Operation(GTE, operand);
    case '$lt':
      return new Operation(LT, operand);
    case '$lte':
      return new Operation(LTE, operand);
    case '$all': {
      const index = new Map<unknown, number>();
      for (const value of operand as Primitive[]) if (!index.has(value)) index.set(value, index.size);
      return new Operation(ALL, operand, null, null, index, new Uint32Array(index.size));
    }
    case '$exists':
      return new Operation(EXISTS, operand);
    case '$size':
      return new Operation(SIZE, operand);
    case '$not':
      return new Operation(NOT, operand, null, []);
  }
  throw new Error(`query operator ${name} passed the check but has no implementation`);
}

function reset(op: Operation): void {
  op.done = false;
  // $ne and $nin hold until a value matches; {$exists: false} until a value turns up.
  op.keep = op.kind === NE || op.kind === NE_VALUE || op.kind === NIN || (op.kind === EXISTS && op.operand === false);
  if (op.kind === ALL) {
    op.found = 0;
    if (++op.generation === 0xffffffff) {
      op.seen!.fill(0);
      op.generation = 1;
    }
  } else if (op.kind === NOT) {
    for (const child of op.children!) reset(child);
  }
}

function settle(op: Operation, keep: boolean): void {
  op.done = true;
  op.keep = keep;
}

/** One value for one operation: sift's `next` of the operation of that kind. */
function next(op: Operation, item: unknown, key: Key, owner: unknown, leaf: boolean): void {
  switch (op.kind) {
    case EQ:
      if (isOwnValue(item, key, owner) && primitiveMatches(op.operand as Primitive, item)) settle(op, true);
      return;
    case EQ_VALUE:
      if (isOwnValue(item, key, owner) && op.test!(item)) settle(op, true);
      return;
    case NE:
      if (!isMissingArrayProperty(key, owner) && primitiveMatches(op.operand as Primitive, item)) settle(op, false);
      return;
    case NE_VALUE:
      if (!isMissingArrayProperty(key, owner) && op.test!(item)) settle(op, false);
      return;
    case IN:
      if (isMissingArrayProperty(key, owner)) return;
      op.keep = op.test!(item);
      op.done = op.keep;
      return;
    case NIN:
      if (!isMissingArrayProperty(key, owner) && op.test!(item)) settle(op, false);
      return;
    case GT:
    case GTE:
    case LT:
    case LTE:
      if (compares(op, item) && isOwnValue(item, key, owner)) settle(op, true);
      return;
    case ALL:
      nextAll(op, item, key, owner);
      return;
    case EXISTS:
      if (leaf && (owner == null ? item !== undefined : hasOwn(owner, key as PropertyKey))) settle(op, op.operand as boolean);
      return;
    case SIZE:
      if (Array.isArray(item) && item.length === op.operand) settle(op, true);
      return;
    case NOT: {
      // Negates its operations on the value in hand; see above on why it need not walk.
      const state = groupNext(op.children!, item, key, owner, leaf);
      op.done = (state & DONE) !== 0;
      op.keep = (state & KEEP) === 0;
    }
  }
}

/** sift's $gt/$gte/$lt/$lte: only a value of the operand's type compares, arrays never. */
function compares(op: Operation, item: unknown): boolean {
  if (item == null || Array.isArray(item)) return false;
  if (typeof (typeof item === 'object' ? scalar(item) : item) !== typeof op.operand) return false;
  // A Date compares through valueOf, as in sift.
  const value = item as number;
  const operand = op.operand as number;
  return op.kind === GT ? value > operand : op.kind === GTE ? value >= operand : op.kind === LT ? value < operand : value <= operand;
}

/** sift's $all holds once every operand has been seen. */
function nextAll(op: Operation, item: unknown, key: Key, owner: unknown): void {
  if (!isOwnValue(item, key, owner)) return;
  let c = item;
  if (typeof item === 'object' && item !== null) {
    if (Array.isArray(item)) return;
    c = scalar(item);
  }
  const slot = op.index!.get(c ?? null);
  if (slot !== undefined && (c == null || typeof c !== 'object') && op.seen![slot] !== op.generation) {
    op.seen![slot] = op.generation;
    op.found++;
  }
  op.keep = op.done = op.found === op.index!.size;
}

const KEEP = 1;
const DONE = 2;

/**
 * sift's GroupOperation.childrenNext: every operation that is not settled sees the value;
 * the group holds while all hold, and is settled once all are or one fails for good.
 */
function groupNext(children: Operation[], item: unknown, key: Key, owner: unknown, leaf: boolean): number {
  let done = true;
  let keep = true;
  for (const child of children) {
    if (!child.done) next(child, item, key, owner, leaf);
    if (!child.keep) keep = false;
    if (child.done) {
      if (!child.keep) break;
    } else {
      done = false;
    }
  }
  return (keep ? KEEP : 0) | (done ? DONE : 0);
}

/** The operations of one checked field condition, $not children included, built without recursion. */
function operationsOf(ops: JsonObject): Operation[] {
  const top: Operation[] = [];
  const stack: [JsonObject, Operation[]][] = [[ops, top]];
  for (let entry = stack.pop(); entry !== undefined; entry = stack.pop()) {
    const [object, into] = entry;
    for (const name of Object.keys(object)) {
      const op = createOperation(name, object[name]);
      into.push(op);
      if (op.kind === NOT) stack.push([object[name] as JsonObject, op.children!]);
    }
  }
  return top;
}

/** One field condition: sift's NestedOperation over a dotted path. */
class Field {
  keep = false;
  done = false;
  private readonly path: string[];
  private readonly numeric: boolean[];
  // The walk's stack, one slot per frame, kept between calls so a walk allocates nothing.
  // `nexts`: the next element of an array being walked, -1 before the first look, -2 once
  // it is not (or no longer) walked element by element.
  private readonly items: unknown[] = [];
  private readonly depths: number[] = [];
  private readonly keys: Key[] = [];
  private readonly owners: unknown[] = [];
  private readonly nexts: number[] = [];
  constructor(
    key: string,
    private readonly ops: Operation[],
  ) {
    this.path = key.split('.');
    this.numeric = this.path.map((segment) => !Number.isNaN(Number(segment)));
  }

  test(metadata: unknown, work: QueryWork): boolean {
    for (const op of this.ops) reset(op);
    this.keep = false;
    this.done = false;
    this.work = work;
    try {
      this.walk(metadata);
    } finally {
      // A compiled query lives as long as a held event: keep no session's metadata alive.
      this.items.fill(undefined);
      this.owners.fill(undefined);
      this.work = UNLIMITED;
    }
    return this.keep;
  }

  private work: QueryWork = UNLIMITED;

  /** Gives one value to the operations; false once they are settled, which ends the walk. */
  private visit(item: unknown, key: Key, owner: unknown, leaf: boolean): boolean {
    if (--this.work.left < 0) throw OUT_OF_WORK;
    const ops = this.ops;
    if (ops.length === 1) {
      // groupNext with one operation, which is most fields.
      const op = ops[0]!;
      next(op, item, key, owner, leaf);
      this.keep = op.keep;
      this.done = op.done;
    } else {
      const state = groupNext(ops, item, key, owner, leaf);
      this.keep = (state & KEEP) !== 0;
      this.done = (state & DONE) !== 0;
    }
    return !this.done;
  }

  private push(at: number, item: unknown, depth: number, key: Key, owner: unknown): void {
    this.items[at] = item;
    this.depths[at] = depth;
    this.keys[at] = key;
    this.owners[at] = owner;
    this.nexts[at] = -1;
  }

  /**
   * sift's walkKeyPathValues without recursion. An array is walked element by element when
   * the path ends there or its next segment is neither an index nor a property of the array
   * (`users.length`); after its elements, the array itself is a value too. The common cases
   * (an element that is a value, or an object one step before the end) take no frame.
   */
  private walk(metadata: unknown): void {
    const { path, numeric, items, depths, keys, owners, nexts } = this;
    const last = path.length;
    this.push(0, metadata, 0, undefined, undefined);
    let size = 1;
    while (size > 0) {
      const top = size - 1;
      const item = items[top];
      const depth = depths[top]!;
      let next = nexts[top]!;
      if (next === -1) {
        next = Array.isArray(item) && (depth === last || (!numeric[depth] && !isProperty(item, path[depth]!))) ? 0 : -2;
      }
      if (next >= 0) {
        const list = item as unknown[];
        let pushed = false;
        while (next < list.length && !pushed) {
          const i = next++;
          const element = list[i];
          if (depth === last && !Array.isArray(element)) {
            if (!this.visit(element, i, list, true)) return;
          } else if (element == null) {
            if (!this.visit(element, i, list, false)) return;
          } else if (depth + 1 === last && !Array.isArray(element)) {
            const segment = path[depth]!;
            const value = (element as JsonObject)[segment];
            if (Array.isArray(value)) {
              this.push(size++, value, last, segment, element);
              pushed = true;
            } else if (!this.visit(value, segment, element, true)) {
              return;
            }
          } else {
            this.push(size++, element, depth, i, list);
            pushed = true;
          }
        }
        nexts[top] = pushed ? next : -2;
        if (pushed) continue;
      }
      size--;
      if (depth === last || item == null) {
        if (!this.visit(item, keys[top], owners[top], depth === last)) return;
      } else {
        const segment = path[depth]!;
        this.push(size++, (item as JsonObject)[segment], depth + 1, segment, item);
      }
    }
  }
}

function isProperty(list: unknown[], segment: string): boolean {
  return hasOwn(list, segment) && typeof (list as unknown as JsonObject)[segment] !== 'function';
}

/** `and` of a query's fields and groups, or the list of an $and, $or or $nor. */
interface Group {
  kind: 'and' | 'or' | 'nor';
  children: (Group | Field)[];
}

/** Builds the matcher for a checked query, without recursion. */
function build(query: JsonObject): Group {
  const root: Group = { kind: 'and', children: [] };
  const stack: [JsonObject, Group][] = [[query, root]];
  for (let entry = stack.pop(); entry !== undefined; entry = stack.pop()) {
    const [object, group] = entry;
    for (const key of Object.keys(object)) {
      const value = object[key];
      if (!LOGICAL.has(key)) {
        group.children.push(new Field(key, operationsOf(value as JsonObject)));
        continue;
      }
      const list: Group = { kind: key === '$and' ? 'and' : key === '$or' ? 'or' : 'nor', children: [] };
      group.children.push(list);
      for (const element of value as JsonObject[]) {
        const member: Group = { kind: 'and', children: [] };
        list.children.push(member);
        stack.push([element, member]);
      }
    }
  }
  return root;
}

/** Evaluates the groups with an explicit stack: `and` stops at a false, `or` and `nor` at a true. */
function evaluate(root: Group, metadata: unknown, work: QueryWork): boolean {
  const stack: { group: Group; next: number }[] = [{ group: root, next: 0 }];
  let result = false;
  let returned = false;
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    const { kind, children } = top.group;
    if (returned && result === (kind !== 'and')) {
      stack.pop();
      result = kind === 'or';
      continue;
    }
    returned = false;
    if (top.next === children.length) {
      stack.pop();
      result = kind !== 'or';
      returned = true;
      continue;
    }
    const child = children[top.next++]!;
    if (child instanceof Field) {
      result = child.test(metadata, work);
      returned = true;
    } else {
      stack.push({ group: child, next: 0 });
    }
  }
  return result;
}

/**
 * Checks a query and compiles it to a predicate over metadata, or throws QueryError
 * naming the operator and where it is. The predicate never throws.
 */
export function compileQuery(query: Record<string, unknown>, limits: QueryLimits): MetadataTest {
  const root = build(checkQuery(query, limits));
  return (metadata, work = UNLIMITED) => {
    try {
      return evaluate(root, metadata, work);
    } catch (error) {
      // Nothing checked above should throw here; if it ever does, no session matches
      // rather than some of a fan-out going out and the rest not.
      if (error === OUT_OF_WORK) work.left = -1;
      return false;
    }
  };
}
