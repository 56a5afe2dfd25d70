// Example "gateway" service: the edge that users connect to. Advertises which
// users it holds in its metadata, asks the api for user records (request/reply)
// and receives USER_UPDATED broadcasts for its users only.

import WebSocket from 'ws';
import { NerveClient, NerveError } from '../src/client/index.ts';
import type { Events, Replies } from './api.ts';

const clientId = process.env.NERVE_CLIENT_ID ?? `gateway-${process.pid}`;
const online = new Set(['42']);

const url = process.env.NERVE_URL ?? 'ws://127.0.0.1:6669';
const password = process.env.NERVE_PASSWORD;
if (!password) {
  console.error('gateway: set NERVE_PASSWORD to the hub\'s password (`npm start` prints the one it generates): NERVE_PASSWORD=… npm run example:gateway');
  process.exit(1);
}

const client = new NerveClient<Events, Replies>({
  url,
  password,
  appName: 'gateway',
  clientId,
  metadata: { users: [...online] },
  WebSocket,
});

// The fatal error itself is reported once, below, without its stack.
client.onState((state, { error: _fatal, ...info }) => console.log(`[${clientId}] ${state}`, info));

client.on('USER_UPDATED', (user, message) => {
  console.log(`[${clientId}] USER_UPDATED ${user.id} is now "${user.status}" (s=${message.s})`);
});

try {
  await client.connect();
} catch (error) {
  if (!(error instanceof NerveError)) throw error;
  // A wrong password or a client_id in use will not fix itself by retrying.
  console.error(`gateway: could not join the hub at ${url}: ${error.message}${error.code === 4401 ? ' (check NERVE_PASSWORD)' : ''}`);
  process.exit(1);
}

// Users come and go; the metadata tells the api's broadcasts where to go.
const timer = setInterval(async () => {
  const id = ['42', '7', '9'][Math.floor(Math.random() * 3)]!;
  if (online.has(id)) online.delete(id);
  else online.add(id);
  client.setMetadata({ users: [...online] });
  console.log(`[${clientId}] online users: ${[...online].join(', ') || 'none'}`);

  try {
    // `key` keeps asking the same api instance about the same user while the set of instances is stable.
    const user = await client.request('USER_GET', { id }, { app_name: 'api', key: id }, { timeout: 5_000 });
    console.log(`[${clientId}] USER_GET ${id} →`, user);
  } catch (error) {
    if (!(error instanceof NerveError)) throw error;
    console.log(`[${clientId}] USER_GET ${id} failed: ${error.code} ${error.message}`);
  }
}, 2_000);

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, async () => {
    clearInterval(timer);
    await client.close();
  });
}
console.log(`[${clientId}] holding users ${[...online].join(', ')}; Ctrl-C to leave`);
