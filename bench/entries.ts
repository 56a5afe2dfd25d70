// The file each benchmarked server starts from, per runtime: Nerve's hosts and
// the baseline relays. bench/run.ts and test/bench-smoke.test.ts both read
// them here, so moving an entry point is a one-line change.

export type Runtime = 'node' | 'bun' | 'deno';
export type Kind = 'baseline' | 'nerve';

export const ENTRIES: Record<Kind, Record<Runtime, string>> = {
  nerve: { node: 'adapters/node.ts', bun: 'adapters/bun.ts', deno: 'adapters/deno.ts' },
  baseline: { node: 'bench/baseline/node.ts', bun: 'bench/baseline/bun.ts', deno: 'bench/baseline/deno.ts' },
};
