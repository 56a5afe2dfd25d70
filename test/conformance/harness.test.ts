// The conformance harness's runtime list: it must come from
// test/support/server.ts, and anything that would silently shrink the suite
// (the list renamed away, a mistyped NERVE_RUNTIMES) stops the run instead.

import { afterEach, describe, expect, it, vi } from 'vitest';

async function loadHarness(exports: Record<string, unknown>, narrowed?: string) {
  vi.resetModules();
  vi.doMock('../support/server.ts', () => ({ startServer: () => Promise.reject(new Error('not in this test')), ...exports }));
  vi.stubEnv('NERVE_RUNTIMES', narrowed);
  return import('./harness.ts');
}

afterEach(() => {
  vi.doUnmock('../support/server.ts');
  vi.unstubAllEnvs();
});

describe('conformance harness: which runtimes', () => {
  it('runs every runtime test/support/server.ts lists', async () => {
    const harness = await loadHarness({ RUNTIMES: ['node', 'deno', 'bun', 'cloudflare'] });
    expect(harness.RUNTIMES).toEqual(['node', 'deno', 'bun', 'cloudflare']);
  });

  it('narrows to NERVE_RUNTIMES', async () => {
    const harness = await loadHarness({ RUNTIMES: ['node', 'deno', 'bun', 'cloudflare'] }, 'bun, node');
    expect(harness.RUNTIMES).toEqual(['node', 'bun']);
  });

  it('fails loudly when test/support/server.ts exports no list', async () => {
    // (vitest's mock would throw on a missing export itself; undefined stands for a renamed list.)
    await expect(loadHarness({ RUNTIMES: undefined })).rejects.toThrow(/exports no RUNTIMES/);
    await expect(loadHarness({ RUNTIMES: [] })).rejects.toThrow(/exports no RUNTIMES/);
  });

  it('fails loudly on a runtime name it cannot start', async () => {
    await expect(loadHarness({ RUNTIMES: ['node', 'bun'] }, 'node,nod')).rejects.toThrow(/"nod"/);
  });
});
