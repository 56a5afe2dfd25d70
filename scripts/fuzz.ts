// The long fuzz of `step`: `node --import tsx scripts/fuzz.ts [frames] [seed]`
// plays random histories from test/core/fuzz-frames.ts until that many frames
// (default 1,000,000) were fed, prints what it found, and exits 1 on any finding.

import fc from 'fast-check';
import { FuzzDriver, history, SLOW_STEP_MS, summary } from '../test/core/fuzz-frames.ts';

const target = Number(process.argv[2] ?? 1_000_000);
const seed = Number(process.argv[3] ?? Date.now() % 2 ** 31);
if (!Number.isSafeInteger(target) || target <= 0 || !Number.isSafeInteger(seed)) {
  console.error('usage: node --import tsx scripts/fuzz.ts [frames] [seed]');
  process.exit(2);
}

// One driver for the whole run: its findings accumulate, each history on a fresh state.
const driver = new FuzzDriver();
const findings = driver.findings;
const BATCH = 200;
const started = performance.now();
let histories = 0;
let lastReport = started;
let batch = 0;

while (findings.frames < target) {
  // Each batch has its own seed, so a finding can be replayed from the seed printed with it.
  const batchSeed = (seed + batch++) | 0;
  const errorsBefore = findings.throws.length + findings.internalErrors.length + findings.violations.length;
  for (const h of fc.sample(history, { seed: batchSeed, numRuns: BATCH })) {
    driver.run(h);
    histories++;
  }
  if (findings.throws.length + findings.internalErrors.length + findings.violations.length > errorsBefore) {
    console.log(`findings in the batch with seed ${batchSeed}`);
  }
  const now = performance.now();
  if (now - lastReport > 10_000) {
    lastReport = now;
    const rate = Math.round(findings.frames / ((now - started) / 1000));
    console.log(`${findings.frames} frames, ${histories} histories, ${rate} frames/s, ${findings.throws.length} throws, ${findings.internalErrors.length} internal errors, ${findings.violations.length} violations`);
  }
}

const seconds = (performance.now() - started) / 1000;
console.log(
  JSON.stringify({
    frames: findings.frames,
    steps: findings.steps,
    histories,
    seed,
    seconds: Math.round(seconds * 10) / 10,
    framesPerSecond: Math.round(findings.frames / seconds),
    throws: findings.throws.length,
    internalErrors: findings.internalErrors.length,
    violations: findings.violations.length,
    slowestStepMs: Math.round(findings.slowest.ms),
    slowStepLimitMs: SLOW_STEP_MS,
  }),
);
if (findings.slowest.ms > 50) console.log(`slowest step: ${findings.slowest.input.slice(0, 300)}`);
for (const line of summary(findings, 10)) console.log(line);
process.exit(findings.throws.length + findings.internalErrors.length + findings.violations.length > 0 ? 1 : 0);
