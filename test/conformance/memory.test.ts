// The global memory budget under attack, on every runtime: held queues filled across 100 apps with large events
// and large queries stop at NERVE_MAX_MEMORY (the excess gets NERVE_UNDELIVERABLE "hub is full"), further
// attacks do not grow the hub's resident memory with what they send, and it keeps serving.

import { describe, expect, it } from 'vitest';
import type { TestClient } from './client.ts';
import { dispatchFrame, identified, RUNTIMES, uid, useServer, type RunningServer } from './harness.ts';
import { expectHealthy, HEALTH_MS, mib, MiB, serverRss, timedHealth, watchRss } from './hostile-helpers.ts';

const BUDGET = 32 * MiB;
const ATTACKERS = 4;
const APPS_EACH = 25;
const PER_APP = 4;
/** Half of each event is its `d`, half its `to.query`: the query must be counted too. */
const DATA_BYTES = 256_000;
const QUERY_BYTES = 192_000;
/**
 * Resident memory is noisy: a V8 runtime (Node, Deno) keeps a heap it grew
 * and collects late, so its peak after ~170 MiB of frames lies 40 to 190 MiB
 * above its start whatever Nerve keeps, and may rise a little more with the
 * next attack. The first attack is bounded loosely by SLACK; the next ones,
 * once the budget is full, together raise the peak by less than one attack's
 * bytes — a hub that kept what it refused would grow by all of them.
 */
const SLACK = 192 * MiB;
const PHASES = 3;

const MEMORY_ENV = {
  NERVE_MAX_MEMORY: String(BUDGET),
  NERVE_MAX_PAYLOAD: String(1 * MiB),
  // Held events outlive the attack, so the budget stays full while the bystanders are checked.
  NERVE_QUEUE_TTL: '30000',
};

interface Attack {
  attacker: TestClient;
  sent: { nonce: string; bytes: number }[];
}

/** One attacker: PER_APP large held events for each of its apps, nobody ever there to take them. */
async function attack(server: RunningServer): Promise<Attack> {
  const attacker = await identified(server, uid('attacker'), 'a');
  const sent: { nonce: string; bytes: number }[] = [];
  const data = 'd'.repeat(DATA_BYTES);
  const apps = Array.from({ length: APPS_EACH }, () => uid('empty'));
  for (let round = 0; round < PER_APP; round++) {
    for (const app of apps) {
      const nonce = `${app}-${round}`;
      const frame = dispatchFrame('BIG', { app_name: app, query: { shard: `${'q'.repeat(QUERY_BYTES)}${round}` } }, { d: data, nonce });
      attacker.send(frame);
      sent.push({ nonce, bytes: JSON.stringify(frame).length });
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
  return { attacker, sent };
}

async function outcomes({ attacker, sent }: Attack): Promise<{ queued: number; heldBytes: number; refused: string[]; reasons: string[] }> {
  const byNonce = new Map(sent.map((s) => [s.nonce, s.bytes]));
  const acks = new Map<string, { delivered: number; queued: number }>();
  while (acks.size < sent.length) {
    const ack = await attacker.waitFor((f) => f?.op === 8 && f.e === 'NERVE_ACK', 20_000, `NERVE_ACK ${acks.size + 1} of ${sent.length}`);
    acks.set(ack.nonce, ack.d);
  }
  const undeliverable = new Map<string, string>();
  for (const frame of [...attacker.pending(), ...(await attacker.sync())]) {
    if (frame?.op === 8 && frame.e === 'NERVE_UNDELIVERABLE') undeliverable.set(frame.nonce, frame.d.reason);
  }
  let queued = 0;
  let heldBytes = 0;
  const refused: string[] = [];
  for (const [nonce, ack] of acks) {
    if (ack.queued === 1) {
      queued++;
      heldBytes += byNonce.get(nonce)!;
    } else refused.push(nonce);
  }
  const reasons = refused.map((nonce) => undeliverable.get(nonce) ?? `(no NERVE_UNDELIVERABLE for ${nonce})`);
  return { queued, heldBytes, refused, reasons };
}

for (const runtime of RUNTIMES) {
  describe(`${runtime}: the memory budget (NERVE_MAX_MEMORY ${mib(BUDGET)}) under attack`, () => {
    const server = useServer(runtime, MEMORY_ENV);

    it(`${ATTACKERS} clients × ${APPS_EACH} apps × ${PER_APP} held events of ~${Math.round((DATA_BYTES + QUERY_BYTES) / 1000)} KB (query included), ${PHASES} times: held bytes stop at the budget, the excess is refused "hub is full", memory stops growing, the hub keeps serving`, async () => {
      const baseline = serverRss(server());
      const phases: { peak: number; heldBytes: number; attempted: number; refused: string[] }[] = [];
      for (let phase = 0; phase < PHASES; phase++) {
        const rss = watchRss(server());
        const attacks = await Promise.all(Array.from({ length: ATTACKERS }, () => attack(server())));
        // While the attack is routed, the hub still answers.
        const during = await timedHealth(server());
        expect(during.status).toBe(200);
        expect(during.ms, '/health during the attack').toBeLessThan(HEALTH_MS);
        const results = await Promise.all(attacks.map(outcomes));
        phases.push({
          peak: rss.stop(),
          heldBytes: results.reduce((sum, r) => sum + r.heldBytes, 0),
          attempted: attacks.reduce((sum, a) => sum + a.sent.reduce((s, e) => s + e.bytes, 0), 0),
          refused: results.flatMap((r) => r.reasons),
        });
      }
      const first = phases[0]!;
      const last = phases.at(-1)!;
      const later = phases.slice(1);
      const report = `RSS ${mib(baseline)} → peaks ${phases.map((p) => mib(p.peak)).join(', ')} after ${mib(first.attempted)} attempted per attack`;

      expect(first.heldBytes, `${mib(first.heldBytes)} held of ${mib(first.attempted)} attempted`).toBeLessThanOrEqual(BUDGET);
      expect(first.refused.length, 'the attempt was far over budget').toBeGreaterThan(0);
      // The budget is full: nothing more is held.
      expect(later.map((p) => p.heldBytes), 'held by the later attacks').toEqual(later.map(() => 0));
      for (const reason of new Set(phases.flatMap((p) => p.refused))) expect(reason).toContain('hub is full');

      expect(first.peak - baseline, report).toBeLessThan(BUDGET + SLACK);
      expect(last.peak - first.peak, report).toBeLessThan(first.attempted);
      expect(server().child.exitCode, 'the hub is still running').toBeNull();
      // The budget is still full of held events: direct traffic must flow regardless.
      await expectHealthy(server());
    });
  });
}
