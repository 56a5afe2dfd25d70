// Bundled by runtimes.test.ts and run in workerd (Miniflare): the SDK inside a
// Worker, with the Workers global WebSocket, doing one request/reply.

import { NerveClient } from '../../src/client/index.ts';

export default {
  async fetch(request: Request): Promise<Response> {
    const params = new URL(request.url).searchParams;
    const url = params.get('url')!;
    const password = params.get('password')!;
    const api = new NerveClient({ url, password, appName: 'api', clientId: 'api-workerd', format: 'msgpack', compression: 'zlib' });
    const gateway = new NerveClient({ url, password, appName: 'gateway', clientId: 'gw-workerd' });
    api.on('PING', (data, message) => {
      api.reply(message, { pong: data, worker: api.worker });
    });
    await api.connect();
    await gateway.connect();
    const reply = await gateway.request('PING', 'workerd', { app_name: 'api', client_id: 'api-workerd' });
    await Promise.all([api.close(), gateway.close()]);
    return Response.json(reply);
  },
};
