// Summarises a V8 .cpuprofile (from `npm run bench -- --profile`): the top
// functions by self time, so a regression report can name where time goes.
// Usage: node --import tsx bench/profile.ts FILE.cpuprofile [TOP]

import { readFileSync } from 'node:fs';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

export function topSelf(file: string, top = 25): { name: string; where: string; ms: number; pct: number }[] {
  const p: { nodes: Node[]; samples: number[]; timeDeltas: number[] } = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const n = byId.get(p.samples[i])!;
    const dt = p.timeDeltas[i] ?? 0;
    total += dt;
    const url = n.callFrame.url.replace(/^file:\/\/.*?\/(node_modules|src|adapters|bench)\//, '$1/');
    const key = `${n.callFrame.functionName || '(anonymous)'}\t${url}:${n.callFrame.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + dt);
  }
  return [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([k, us]) => {
      const [name, where] = k.split('\t');
      return { name, where, ms: us / 1000, pct: (100 * us) / total };
    });
}

if (process.argv[1]?.endsWith('profile.ts')) {
  const [file, top] = process.argv.slice(2);
  if (!file) {
    console.error('usage: node --import tsx bench/profile.ts FILE.cpuprofile [TOP]');
    process.exit(2);
  }
  for (const r of topSelf(file, Number(top ?? 25))) console.log(`${r.pct.toFixed(1).padStart(5)}%  ${r.ms.toFixed(0).padStart(6)} ms  ${r.name}  ${r.where}`);
}
