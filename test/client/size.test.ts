// The client stays small for a browser page: the JSON-only bundle is held under
// its gzipped budget, the codecs stay behind import(), and nothing of the
// server (schemas, queries, routing, hosts) is reachable from `nerve/client`.

import { beforeAll, describe, expect, it } from 'vitest';
import { JSON_BUDGET_GZIP, measureClientBundle, type ChunkSize } from '../../scripts/client-size.ts';

/** The only files outside src/client/ the client may reach: wire constants and the codecs with their error and depth check. */
const CORE_FILES_ALLOWED = ['src/core/decode-error.ts', 'src/core/depth.ts', 'src/core/msgpack.ts', 'src/core/protocol.ts', 'src/core/zlib.ts'];
const LIBRARIES_ALLOWED = ['@msgpack/msgpack', 'fflate', 'msgpackr'];

function packageOf(input: string): string {
  const parts = input.split('/');
  return parts[1]!.startsWith('@') ? `${parts[1]}/${parts[2]}` : parts[1]!;
}

describe('nerve/client browser bundle', () => {
  let sizes: ChunkSize[];
  const chunk = (name: ChunkSize['name']) => sizes.find((size) => size.name === name);
  beforeAll(async () => {
    sizes = await measureClientBundle();
  });

  it(`loads at most ${JSON_BUDGET_GZIP / 1000} KB gzipped on a JSON-only page`, () => {
    expect(chunk('json')!.gzipped).toBeLessThanOrEqual(JSON_BUDGET_GZIP);
  });

  it('keeps every library out of what every page loads', () => {
    expect(chunk('json')!.inputs.filter((input) => !input.startsWith('src/client/'))).toEqual(['src/core/protocol.ts']);
  });

  it('loads msgpack and zlib only in chunks of their own', () => {
    expect(chunk('msgpack') ?? chunk('msgpack+zlib')).toBeDefined();
    expect(chunk('zlib') ?? chunk('msgpack+zlib')).toBeDefined();
  });

  it('reaches no server code and no other library, even through the codec chunks', () => {
    const reached = [...new Set(sizes.flatMap((size) => size.inputs))];
    const core = reached.filter((input) => !input.startsWith('src/client/') && !input.startsWith('node_modules/'));
    expect(core.filter((input) => !CORE_FILES_ALLOWED.includes(input))).toEqual([]);
    const libraries = new Set(reached.filter((input) => input.startsWith('node_modules/')).map(packageOf));
    expect([...libraries].filter((library) => !LIBRARIES_ALLOWED.includes(library))).toEqual([]);
  });
});
