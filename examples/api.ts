// Example "api" service: owns the user records. Answers USER_GET requests and
// broadcasts USER_UPDATED to the gateways that have that user online.
// Run a server (`npm start`), then `NERVE_PASSWORD=… npm run example:api`.

import WebSocket from 'ws';
import { NerveClient } from '../src/client/index.ts';

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

const client = new NerveClient<Events, Replies>({
  url: process.env.NERVE_URL ?? 'ws://127.0.0.1:6669',
  password: process.env.NERVE_PASSWORD ?? '',
  appName: 'api',
  clientId: process.env.NERVE_CLIENT_ID ?? `api-${process.pid}`,
  // Node 20 has no global WebSocket; Deno, Bun, browsers and Workers can leave this out.
  WebSocket,
});

client.onState((state, info) => console.log(`[api] ${state}`, info));

client.on('USER_GET', ({ id }, message) => {
  console.log(`[api] USER_GET ${id} from ${message.from.client_id}`);
  client.reply(message, users.get(id) ?? null);
});

await client.connect();

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
