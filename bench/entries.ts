// The file each benchmarked server starts from, per runtime (Nerve's hosts and
// the baseline relays), and the command that runs a file on each runtime.
// bench/run.ts and the tests read them here: moving an entry is a one-line change.

import { join } from 'node:path';

export type Runtime = 'node' | 'bun' | 'deno';
export type Kind = 'baseline' | 'nerve';

export const ENTRIES: Record<Kind, Record<Runtime, string>> = {
  nerve: { node: 'adapters/node.ts', bun: 'adapters/bun.ts', deno: 'adapters/deno.ts' },
  baseline: { node: 'bench/baseline/node.ts', bun: 'bench/baseline/bun.ts', deno: 'bench/baseline/deno.ts' },
};

/** The command that runs `entry` on `runtime`; `profileDir` adds the runtime's CPU profiler where it has one. */
export function runCommand(root: string, runtime: Runtime, entry: string, profileDir?: string): string[] {
  const bin = (name: string) => join(root, 'node_modules/.bin', name);
  if (runtime === 'node') return [process.execPath, ...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : []), '--import', 'tsx', entry];
  if (runtime === 'bun') return [bin('bun'), ...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : []), 'run', entry];
  return [bin('deno'), 'run', '-A', entry];
}
