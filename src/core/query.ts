// Metadata queries: a MongoDB-style filter, checked against an allowlist of
// operators and compiled once by sift. Nothing that evaluates code gets in.

import * as siftModule from 'sift';

// sift ships CommonJS for Node and ESM for bundlers; find the namespace either way.
const siftNs = ('createQueryTester' in siftModule ? siftModule : (siftModule as { default: unknown }).default) as typeof siftModule;

const operations = {
  $eq: siftNs.$eq,
  $ne: siftNs.$ne,
  $gt: siftNs.$gt,
  $gte: siftNs.$gte,
  $lt: siftNs.$lt,
  $lte: siftNs.$lte,
  $in: siftNs.$in,
  $nin: siftNs.$nin,
  $exists: siftNs.$exists,
  $all: siftNs.$all,
  $size: siftNs.$size,
  $and: siftNs.$and,
  $or: siftNs.$or,
  $nor: siftNs.$nor,
  $not: siftNs.$not,
};

export type MetadataTest = (metadata: Record<string, unknown>) => boolean;

export class QueryError extends Error {}

const ARRAY_OPERATORS = new Set(['$in', '$nin', '$all']);
const LOGICAL_OPERATORS = new Set(['$and', '$or', '$nor']);

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Walks the whole query; throws QueryError naming the first thing it refuses. */
function check(query: unknown): void {
  if (!isObject(query)) return;
  for (const key of Object.keys(query)) {
    const value = query[key];
    if (key.startsWith('$')) {
      if (!Object.hasOwn(operations, key)) throw new QueryError(`unsupported query operator ${key}`);
      if (LOGICAL_OPERATORS.has(key)) {
        if (!Array.isArray(value) || value.length === 0 || !value.every(isObject)) {
          throw new QueryError(`${key} needs a non-empty array of queries`);
        }
        value.forEach(check);
        continue;
      }
      if (ARRAY_OPERATORS.has(key) && !Array.isArray(value)) throw new QueryError(`${key} needs an array`);
      if (key === '$exists' && typeof value !== 'boolean') throw new QueryError('$exists needs true or false');
      if (key === '$size' && !(Number.isInteger(value) && (value as number) >= 0)) {
        throw new QueryError('$size needs a non-negative integer');
      }
      if (key === '$not' && !isObject(value)) throw new QueryError('$not needs an operator object');
    }
    if (Array.isArray(value)) value.forEach(check);
    else check(value);
  }
}

/** Compiles a query to a predicate over metadata, or throws QueryError. */
export function compileQuery(query: Record<string, unknown>): MetadataTest {
  check(query);
  try {
    return siftNs.createQueryTester(query, { operations }) as MetadataTest;
  } catch (error) {
    throw new QueryError(`invalid query: ${(error as Error).message}`);
  }
}
