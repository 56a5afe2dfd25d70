// The slowest metadata queries the default limits allow, against the largest metadata
// a session may publish (NERVE_MAX_METADATA) and against realistic metadata: the time
// one compiled test takes per session and for 1,000 sessions (a mode-all fan-out).
// Run: node --import tsx bench/query-worst.ts   (QUERY_WORST_REPS=n for more repetitions)

import { DEFAULT_LIMITS } from '../src/core/io.ts';
import { compileQuery, DEFAULT_MAX_QUERY_CONDITIONS } from '../src/core/query.ts';

const env: Record<string, string | undefined> = (globalThis as { process?: { env: Record<string, string> } }).process?.env ?? {};
const REPS = Number(env.QUERY_WORST_REPS ?? 5);
const SESSIONS = 1_000;
const limits = DEFAULT_LIMITS;
const K = DEFAULT_MAX_QUERY_CONDITIONS;

/** The hub keeps a session's metadata in a prototype-less object. */
const md = (fields: Record<string, unknown>) => Object.assign(Object.create(null) as Record<string, unknown>, fields);
const bytes = (value: unknown) => new TextEncoder().encode(JSON.stringify(value)).length;

/** `{"users":[…]}` filled with `make(i)` up to the metadata limit. */
function largest(make: (i: number) => unknown): Record<string, unknown> {
  const users: unknown[] = [];
  let size = bytes({ users: [] });
  for (let i = 0; ; i++) {
    const value = make(i);
    const add = bytes(value) + (users.length > 0 ? 1 : 0);
    if (size + add > limits.maxMetadata) break;
    users.push(value);
    size += add;
  }
  return { users };
}

const realistic = (users: number) => ({
  region: 'eu',
  zone: 'eu-west-1a',
  load: 0.42,
  ready: true,
  version: '1.4.2',
  users: Array.from({ length: users }, (_, i) => String(100_000 + i)),
  tags: ['gpu', 'ssd', 'edge'],
  limits: { cpu: 4, mem: 8192 },
});

const shapes: Record<string, Record<string, unknown>> = {
  'largest: short strings': largest((i) => String(i)),
  'largest: one-digit numbers': largest(() => 1),
  'largest: one-element arrays': largest(() => [1]),
  'largest: small objects': largest((i) => ({ a: i % 10 })),
  'realistic: 10 users': realistic(10),
  'realistic: 50 users': realistic(50),
};

const strings = (n: number, prefix = 'x') => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

/** K conditions that never settle early, so every value at `users` is visited K times. */
const queries: Record<string, Record<string, unknown>> = {
  'one $eq (baseline)': { users: 'absent' },
  [`$or of ${K} equalities`]: { $or: strings(K).map((v) => ({ users: v })) },
  [`$or of ${K} $gt`]: { $or: strings(K).map((_, i) => ({ users: { $gt: i % 2 ? '~' : 10 } })) },
  [`$or of ${K} array equalities`]: { $or: strings(K).map((v) => ({ users: [v] })) },
  [`$or of ${K} on users.a`]: { $or: strings(K).map((_, i) => ({ 'users.a': { $gte: 10 + i } })) },
  // Terms: $or, K elements, K fields, K operators, then the operand values that fit.
  [`$in of ${limits.maxQueryOperands} and $all, ${K} conditions`]: {
    $or: [
      { users: { $in: [...strings(limits.maxQueryOperands - 1, 'i'), 2] } },
      { users: { $in: [...strings(limits.maxQueryTerms - (1 + 3 * K) - limits.maxQueryOperands - 2 * (K - 2) - 1, 'n'), 2] } },
      ...strings(K - 2).map((v) => ({ users: { $all: [v, 2] } })),
    ].slice(0, K),
  },
  [`$not nested ${K - 1} deep`]: { users: strings(K - 1).reduce<Record<string, unknown>>((inner) => ({ $not: inner }), { $eq: 'absent' }) },
};

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[sorted.length >> 1]!;
}

/** Median over `reps` of one call of `fn`, after one warm-up call. */
function time(fn: () => void, reps = REPS): number {
  fn();
  const runs: number[] = [];
  for (let r = 0; r < reps; r++) {
    const start = performance.now();
    fn();
    runs.push(performance.now() - start);
  }
  return median(runs);
}

// As the hub has it after decoding a JSON frame.
const decoded = (value: Record<string, unknown>) => md(JSON.parse(JSON.stringify(value)) as Record<string, unknown>);
let slowest = { ms: 0, shape: '', query: '' };

console.log(`limits: depth ${limits.maxDepth}, operands ${limits.maxQueryOperands}, terms ${limits.maxQueryTerms}, conditions ${K}, metadata ${limits.maxMetadata} B; median of ${REPS}`);
console.log('metadata'.padEnd(36), 'query'.padEnd(36), 'per session'.padStart(12), `${SESSIONS} sessions`.padStart(15));
for (const [shapeName, shape] of Object.entries(shapes)) {
  // Every session has its own copy. 1,000 copies of the largest shapes would take up to a
  // minute per row, so those run over 10 copies and the 1,000 column is 1,000 × that
  // (marked ≈): sessions are tested one after another, so the cost adds up. The last line
  // measures the slowest of them on 1,000 sessions directly.
  const big = shapeName.startsWith('largest');
  const copies = Array.from({ length: big ? 10 : SESSIONS }, () => decoded(shape));
  const label = `${shapeName} (${bytes(shape)} B)`;
  for (const [queryName, query] of Object.entries(queries)) {
    const test = compileQuery(query, limits);
    const ms = time(() => {
      for (const copy of copies) test(copy);
    });
    const one = ms / copies.length;
    const all = big ? `≈ ${(one * SESSIONS).toFixed(0)} ms` : `${ms.toFixed(1)} ms`;
    if (big && one > slowest.ms) slowest = { ms: one, shape: shapeName, query: queryName };
    console.log(label.padEnd(36), queryName.padEnd(36), `${one.toFixed(3)} ms`.padStart(12), all.padStart(15));
  }
}

const test = compileQuery(queries[slowest.query]!, limits);
const sessions = Array.from({ length: SESSIONS }, () => decoded(shapes[slowest.shape]!));
const direct = time(() => {
  for (const session of sessions) test(session);
}, 3);
console.log(`slowest, measured on ${SESSIONS} sessions (median of 3): ${slowest.shape} × ${slowest.query}: ${direct.toFixed(0)} ms`);
