// Run by runtimes.test.ts under Deno and Bun: uses their global WebSocket (no
// `ws`), msgpack + zlib on one side, and prints the reply as one JSON line.

import { NerveClient } from '../../src/client/index.ts';

const url = process.env.NERVE_URL!;
const password = process.env.NERVE_PASSWORD!;
const suffix = process.env.SUFFIX!;
const api = new NerveClient({ url, password, appName: 'api', clientId: `api-${suffix}`, format: 'msgpack', compression: 'zlib' });
const gateway = new NerveClient({ url, password, appName: 'gateway', clientId: `gw-${suffix}` });
api.on('PING', (data, message) => {
  api.reply(message, { pong: data, worker: api.worker });
});
await api.connect();
await gateway.connect();
console.log(JSON.stringify(await gateway.request('PING', suffix, { app_name: 'api', client_id: `api-${suffix}` })));
await Promise.all([api.close(), gateway.close()]);
