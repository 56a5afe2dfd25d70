// `npm start`: Nerve on Node, configured by NERVE_* variables, until SIGTERM or
// SIGINT drains it. The server itself is createNodeServer in ./node-host.ts.

import { runUntilSignalled } from '../src/host/boot.ts';
import { createNodeServer } from './node-host.ts';

await runUntilSignalled(process.env, (config) => createNodeServer(config), {
  onSignal: (signal, handler) => process.on(signal, handler),
  exit: (code) => process.exit(code),
  error: (line) => console.error(line),
});
