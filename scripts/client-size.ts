// Measures what `nerve/client` costs a browser page: src/client/index.ts bundled
// for the browser, minified, split at its dynamic imports, each part gzipped.
// Run: node --import tsx scripts/client-size.ts [--json]. test/client/size.test.ts holds the budget.

import { build, type Metafile } from 'esbuild';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const root = fileURLToPath(new URL('..', import.meta.url));

/** The JSON-only bundle must stay under this many gzipped bytes (12 KB, the budget for a browser page's client). */
export const JSON_BUDGET_GZIP = 12_000;

export interface ChunkSize {
  /** What the chunk is for: the code every page loads, or the codec a connection loads on demand. */
  name: 'json' | 'msgpack' | 'zlib' | 'msgpack+zlib';
  minified: number;
  gzipped: number;
  /** Source files in the chunk, relative to the repository (node_modules kept as the package path). */
  inputs: string[];
}

/** A library's files as `node_modules/<package>/…`, even when node_modules is a link to elsewhere. */
function fromPackage(input: string): string {
  const at = input.lastIndexOf('node_modules/');
  return at > 0 ? input.slice(at) : input;
}

function gzipped(bytes: Uint8Array): number {
  return gzipSync(bytes, { level: 9 }).byteLength;
}

/** Bundles the client and sizes the part every page loads and each codec chunk loaded with import(). */
export async function measureClientBundle(): Promise<ChunkSize[]> {
  const result = await build({
    absWorkingDir: root,
    entryPoints: ['src/client/index.ts'],
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    minify: true,
    write: false,
    outdir: 'out',
    metafile: true,
    logLevel: 'silent',
  });
  const metafile: Metafile = result.metafile;
  const bytesOf = new Map(result.outputFiles.map((file) => [file.path.slice(root.length), file.contents]));
  const entry = Object.keys(metafile.outputs).find((path) => metafile.outputs[path]!.entryPoint !== undefined)!;

  // What loads before any import() runs: the entry and every chunk it imports statically.
  const staticClosure = (start: string): string[] => {
    const seen = new Set([start]);
    for (const path of seen) {
      for (const imported of metafile.outputs[path]!.imports) {
        if (imported.kind === 'import-statement') seen.add(imported.path);
      }
    }
    return [...seen];
  };
  const sizeOf = (name: ChunkSize['name'], paths: string[]): ChunkSize => {
    const inputs = paths.flatMap((path) => Object.keys(metafile.outputs[path]!.inputs).map(fromPackage)).sort();
    const bytes = paths.map((path) => bytesOf.get(path)!);
    const joined = new Uint8Array(bytes.reduce((total, part) => total + part.byteLength, 0));
    bytes.reduce((offset, part) => (joined.set(part, offset), offset + part.byteLength), 0);
    return { name, minified: joined.byteLength, gzipped: gzipped(joined), inputs };
  };

  const loaded = staticClosure(entry);
  const sizes = [sizeOf('json', loaded)];
  const lazy = Object.keys(metafile.outputs).filter((path) => !loaded.includes(path) && !path.endsWith('.map'));
  for (const path of lazy) {
    const inputs = Object.keys(metafile.outputs[path]!.inputs).join(' ');
    const msgpack = /msgpack/.test(inputs);
    const zlib = /fflate|core\/zlib/.test(inputs);
    const name = msgpack && zlib ? 'msgpack+zlib' : msgpack ? 'msgpack' : zlib ? 'zlib' : undefined;
    if (name) sizes.push(sizeOf(name, staticClosure(path).filter((chunk) => !loaded.includes(chunk))));
  }
  return sizes;
}

const kb = (bytes: number) => `${(bytes / 1000).toFixed(1)} KB`;

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const sizes = await measureClientBundle();
  if (process.argv.includes('--json')) {
    console.log(JSON.stringify(sizes, null, 2));
  } else {
    console.log('nerve/client in a browser bundle (esbuild, minified; gzip -9)');
    for (const size of sizes) {
      const when = size.name === 'json' ? 'every page' : 'loaded by import() when a connection asks for it';
      console.log(`  ${size.name.padEnd(13)} ${kb(size.minified).padStart(9)} min  ${kb(size.gzipped).padStart(8)} gz  (${when})`);
    }
    const json = sizes[0]!;
    console.log(`JSON-only budget: ${kb(json.gzipped)} of ${kb(JSON_BUDGET_GZIP)} gzipped`);
    if (json.gzipped > JSON_BUDGET_GZIP) process.exitCode = 1;
  }
}
