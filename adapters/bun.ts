// `npm run start:bun`: Nerve on Bun, configured by NERVE_* variables, until
// SIGTERM or SIGINT drains it. The server itself is serveBun in ./bun-host.ts.

import { runUntilSignalled } from '../src/host/boot.ts';
import { serveBun } from './bun-host.ts';

await runUntilSignalled(process.env, (config) => serveBun(config), {
  onSignal: (signal, handler) => process.on(signal, handler),
  exit: (code) => process.exit(code),
  error: (line) => console.error(line),
});
