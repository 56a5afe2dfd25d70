// CI's only look at the benchmark: a seconds-long `bench --smoke` on Node that
// must produce a result row, with non-zero throughput, for every scenario.
// Deliberately no timing assertions: CI machines are too noisy for them.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ENTRIES } from '../bench/entries.ts';

const root = resolve(import.meta.dirname, '..');
const dir = mkdtempSync(join(tmpdir(), 'nerve-bench-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function hasRedisServer(): boolean {
  return spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' }).status === 0;
}

describe('bench --smoke (node)', () => {
  it('every server it benchmarks has its entry file', () => {
    for (const [kind, byRuntime] of Object.entries(ENTRIES)) {
      for (const [runtime, entry] of Object.entries(byRuntime)) expect(existsSync(join(root, entry)), `${kind} on ${runtime}: ${entry}`).toBe(true);
    }
  });

  it('produces a non-zero result row for every scenario, baseline and Nerve', () => {
    const out = join(dir, 'smoke.json');
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/run.ts', '--smoke', '--runtimes', 'node', '--out', out], {
      cwd: root,
      encoding: 'utf8',
      timeout: 240_000,
    });
    expect(r.status, r.stderr + r.stdout).toBe(0);
    const res = JSON.parse(readFileSync(out, 'utf8'));

    for (const scenario of ['pairs', 'latency', 'fanout', 'connections']) {
      for (const server of Object.keys(ENTRIES)) {
        const s = res.summaries.find((x: any) => x.runtime === 'node' && x.scenario === scenario && x.server === server);
        expect(s, `${server} ${scenario}: no row`).toBeDefined();
        expect(s.failed, `${server} ${scenario}: ${s.errors.join('; ')}`).toBe(0);
        expect(s.rate, `${server} ${scenario}`).toBeGreaterThan(0);
      }
    }
    // Two nodes and Redis against one node; without redis-server (not in CI) the bench says so and skips them.
    if (hasRedisServer() || process.env.CI === 'true') {
      for (const scenario of ['cluster-pairs', 'cluster-fanout']) {
        for (const server of ['one-node', 'cluster']) {
          const s = res.summaries.find((x: any) => x.runtime === 'node' && x.scenario === scenario && x.server === server);
          expect(s, `${server} ${scenario}: no row`).toBeDefined();
          expect(s.failed, `${server} ${scenario}: ${s.errors.join('; ')}`).toBe(0);
          expect(s.rate, `${server} ${scenario}`).toBeGreaterThan(0);
          if (server === 'cluster') expect(s.redisPerDelivery, `${scenario}: Redis commands per delivery`).toBeGreaterThan(0);
        }
      }
    }
    const core = res.core.node;
    expect(core.ok, core.error).toBe(true);
    expect(core.cases.length).toBeGreaterThanOrEqual(3);
    for (const c of core.cases) {
      expect(c.coreOpsPerSec, c.case).toBeGreaterThan(0);
      expect(c.jsonOpsPerSec, c.case).toBeGreaterThan(0);
    }
  }, 300_000);
});
