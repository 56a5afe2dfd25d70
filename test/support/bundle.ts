// Modules bundled the way wrangler bundles a Worker (esbuild, workerd
// conditions), for tests that run code in workerd through Miniflare.

import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));

/** `entry` (relative to `from`, the project root unless given) and its imports as one ES module. */
export async function bundleForWorkers(entry: string, from: string = root): Promise<string> {
  const out = await build({
    absWorkingDir: from,
    entryPoints: [entry],
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'neutral',
    target: 'es2022',
    // The conditions wrangler uses, so msgpackr and fflate resolve to their worker builds.
    conditions: ['workerd', 'worker', 'browser'],
    mainFields: ['module', 'main'],
    external: ['cloudflare:*', 'node:*'],
    logLevel: 'silent',
  });
  return out.outputFiles[0]!.text;
}

let worker: Promise<string> | undefined;

/** adapters/cloudflare.ts as one ES module; built once per test process. */
export function bundleWorker(): Promise<string> {
  worker ??= bundleForWorkers('adapters/cloudflare.ts');
  return worker;
}
