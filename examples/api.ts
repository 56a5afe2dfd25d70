// Example "api" service: owns the user records. Answers USER_GET requests and
// broadcasts USER_UPDATED to the gateways that have that user online.
// Run a server (`npm start`), then `NERVE_PASSWORD=… npm run example:api`.

import WebSocket from 'ws';
import { NerveClient, NerveError } from '../src/client/index.ts';

/** The events these two services exchange; gateway.ts imports the same map. */
export interface Events {
  USER_GET: { id: string };
  USER_UPDATED: User;
}
export interface Replies {
  USER_GET: User | null;
}
export interface User {
  id: string;
  name: string;
  status: string;
}

const users = new Map<string, User>([
  ['42', { id: '42', name: 'Ada', status: 'online' }],
  ['7', { id: '7', name: 'Grace', status: 'away' }],
  ['9', { id: '9', name: 'Linus', status: 'busy' }],
]);
const statuses = ['online', 'away', 'busy', 'in a meeting'];

const url = process.env.NERVE_URL ?? 'ws://127.0.0.1:6669';
const password = process.env.NERVE_PASSWORD;
if (!password) {
  console.error('api: set NERVE_PASSWORD to the hub\'s password (`npm start` prints the one it generates): NERVE_PASSWORD=… npm run example:api');
  process.exit(1);
}

const client = new NerveClient<Events, Replies>({
  url,
  password,
  appName: 'api',
  clientId: process.env.NERVE_CLIENT_ID ?? `api-${process.pid}`,
  // Node 20 has no global WebSocket; Deno, Bun, browsers and Workers can leave this out.
  WebSocket,
});

// The fatal error itself is reported once, below, without its stack.
client.onState((state, { error: _fatal, ...info }) => console.log(`[api] ${state}`, info));

client.on('USER_GET', ({ id }, message) => {
  console.log(`[api] USER_GET ${id} from ${message.from.client_id}`);
  client.reply(message, users.get(id) ?? null);
});

try {
  await client.connect();
} catch (error) {
  if (!(error instanceof NerveError)) throw error;
  // A wrong password or a client_id in use will not fix itself by retrying.
  console.error(`api: could not join the hub at ${url}: ${error.message}${error.code === 4401 ? ' (check NERVE_PASSWORD)' : ''}`);
  process.exit(1);
}

const timer = setInterval(() => {
  const ids = [...users.keys()];
  const user = users.get(ids[Math.floor(Math.random() * ids.length)]!)!;
  user.status = statuses[Math.floor(Math.random() * statuses.length)]!;
  // Only gateways whose metadata lists this user get it: {"users":"42"} matches an array containing "42".
  client.dispatch('USER_UPDATED', user, { app_name: 'gateway', query: { users: user.id }, mode: 'all' });
  console.log(`[api] broadcast USER_UPDATED ${user.id} → ${user.status}`);
}, 3_000);

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, async () => {
    clearInterval(timer);
    await client.close();
  });
}
console.log('[api] serving user records; Ctrl-C to leave');
