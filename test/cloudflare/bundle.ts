// The Worker bundled the way wrangler bundles it (esbuild, workerd conditions),
// for tests that must not depend on wrangler dev rebuilding from the source tree.

import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));

let bundled: Promise<string> | undefined;

/** adapters/cloudflare.ts as one ES module; built once per test process. */
export function bundleWorker(): Promise<string> {
  bundled ??= build({
    entryPoints: [`${root}adapters/cloudflare.ts`],
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
  }).then((out) => out.outputFiles[0]!.text);
  return bundled;
}
