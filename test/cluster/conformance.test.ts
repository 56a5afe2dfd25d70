// The protocol-level conformance suite (test/conformance) run against a
// cluster: each of its describes gets three Node nodes sharing one
// redis-server, and each test's connections go to the nodes in turn (the
// harness's spread mode, NERVE_CONFORMANCE_CLUSTER). What assumes one process
// is left out below, each with its reason.

import { readdirSync } from 'node:fs';
import { beforeEach, type TestContext } from 'vitest';
import { describeWithRedis } from '../support/redis.ts';

const NODES = '3';

/** Conformance files run here. */
const INCLUDED = ['routing', 'resume', 'lifecycle', 'http', 'robustness', 'transport', 'tokens'];

/** Conformance files not run here, and why. */
const EXCLUDED_FILES: Record<string, string> = {
  'slow-consumer': 'the outbound budget and its 4507 cut are per process, and it starts single servers of its own',
  memory: 'NERVE_MAX_MEMORY is a per-process budget: spreading the attack over nodes tests no one limit',
  hostile: "connection caps, unidentified caps and per-process limits, read from one process's log",
  shutdown: "it signals single servers of its own; a node's drain in a cluster is rolling-restart.test.ts",
  harness: 'it tests the harness, not a server',
};

/** [describe (without its runtime prefix), test (undefined: all of it), why] */
const EXCLUDED_TESTS: [string, string | undefined, string][] = [
  ['§3 lifecycle', 'the worker id of HELLO is in every log line, including the one an IDENTIFY writes', 'each node logs under its own worker id, and its connections are on several nodes'],
  ['§3 lifecycle', 'every connection to one server sees the same worker id', 'its two connections go to two nodes, each with its own worker id'],
  ['§9 HTTP', 'GET /health: status, worker, open sockets and identified sessions', "/health counts one node's sockets and, in a cluster, has a cluster field"],
  ['§9 HTTP', 'GET /metrics counts frames, dispatches, queued, undeliverable and errors by close code', 'counters are per node, and its before and after reads go to different nodes'],
  ['§6 DISPATCH', 's counts per session from 1 over every routed DISPATCH; NERVE_ events carry none', 'it expects order across two senders; a cluster orders per sender and recipient only'],
  ['failed authentications per address', undefined, "the failure budget is per process, and it reads one process's log"],
];

// A conformance file that is neither run nor excluded with a reason is a mistake here.
const files = readdirSync(new URL('../conformance/', import.meta.url)).filter((name) => name.endsWith('.test.ts'));
const unaccounted = files.map((name) => name.replace(/\.test\.ts$/, '')).filter((name) => !INCLUDED.includes(name) && !(name in EXCLUDED_FILES));
if (unaccounted.length > 0) throw new Error(`test/conformance files neither run nor excluded in ${import.meta.url}: ${unaccounted.join(', ')}`);

/** The names of a test's describes, innermost last. */
function describes(context: TestContext): string[] {
  const names: string[] = [];
  for (let suite = context.task.suite; suite; suite = suite.suite) names.unshift(suite.name);
  return names;
}

function whyExcluded(context: TestContext): string | undefined {
  const path = describes(context);
  for (const [describe, test, why] of EXCLUDED_TESTS) {
    const inDescribe = path.some((name) => name.replace(/^\w+: /, '').startsWith(describe));
    if (inDescribe && (test === undefined || test === context.task.name)) return why;
  }
  return undefined;
}

describeWithRedis(`conformance over ${NODES} clustered Node nodes`, async () => {
  beforeEach((context) => {
    const why = whyExcluded(context);
    if (why) context.skip(`one process only: ${why}`);
  });
  // The harness reads this once, when it is first imported, just below.
  const before = process.env.NERVE_CONFORMANCE_CLUSTER;
  process.env.NERVE_CONFORMANCE_CLUSTER = NODES;
  try {
    for (const name of INCLUDED) await import(`../conformance/${name}.test.ts`);
  } finally {
    if (before === undefined) delete process.env.NERVE_CONFORMANCE_CLUSTER;
    else process.env.NERVE_CONFORMANCE_CLUSTER = before;
  }
});
