// `npm run start:deno` and `deno task start`: Nerve on Deno, configured by
// NERVE_* variables, until SIGTERM or SIGINT drains it. The server itself is
// serveDeno in ./deno-host.ts.

import { runUntilSignalled } from '../src/host/boot.ts';
import { serveDeno } from './deno-host.ts';

await runUntilSignalled(Deno.env.toObject(), (config) => serveDeno(config), {
  // Deno on Windows delivers only SIGINT and SIGBREAK; this is written for Linux and macOS.
  onSignal: (signal, handler) => Deno.addSignalListener(signal, handler),
  exit: (code) => Deno.exit(code),
  error: (line) => console.error(line),
});
