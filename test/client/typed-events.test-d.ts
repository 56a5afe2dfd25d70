// Type-level tests of the typed event map, checked by `npm run typecheck`
// (tsc -p tsconfig.json covers test/): each @ts-expect-error must stay an error.

import { expectTypeOf } from 'vitest';
import WebSocket from 'ws';
import { NerveClient, type NerveMessage, type Reply } from '../../src/client/index.ts';

interface Events {
  USER_GET: { id: string };
  USER_UPDATED: { id: string; name: string };
  PING: void;
}
interface Replies {
  USER_GET: { id: string; name: string } | null;
}

declare const client: NerveClient<Events, Replies>;
const api = { app_name: 'api' } as const;

export function typedEvents(): void {
  client.on('USER_UPDATED', (data, message) => {
    expectTypeOf(data).toEqualTypeOf<{ id: string; name: string }>();
    expectTypeOf(message.from.app_name).toEqualTypeOf<string>();
    expectTypeOf(message.s).toEqualTypeOf<number>();
  });
  client.on('USER_GET', (data, message) => {
    expectTypeOf(data).toEqualTypeOf<{ id: string }>();
    client.reply(message, { id: data.id, name: 'Ada' });
    client.reply(message, null);
    // @ts-expect-error the reply must match Replies['USER_GET']
    client.reply(message, { id: 1 });
  });
  // Server events are typed without being declared.
  client.on('NERVE_UNDELIVERABLE', (data, message) => {
    expectTypeOf(data).toEqualTypeOf<{ reason: string; e: string }>();
    // @ts-expect-error server events have no sender
    void message.from;
  });

  client.dispatch('USER_UPDATED', { id: '42', name: 'Ada' }, { ...api, mode: 'all', query: { users: '42' } });
  client.dispatch('PING', undefined, api);
  // @ts-expect-error unknown event name
  client.dispatch('USER_DELETED', { id: '42' }, api);
  // @ts-expect-error wrong payload shape
  client.dispatch('USER_UPDATED', { id: 42 }, api);
  // @ts-expect-error unknown event name
  client.on('USER_DELETED', () => {});
  // @ts-expect-error mode is 'one' | 'all'
  client.dispatch('PING', undefined, { app_name: 'api', mode: 'some' });

  expectTypeOf(client.request('USER_GET', { id: '42' }, api)).resolves.toEqualTypeOf<{
    id: string;
    name: string;
  } | null>();
  // Events without a declared reply resolve to unknown.
  expectTypeOf(client.request('USER_UPDATED', { id: '42', name: 'Ada' }, api)).resolves.toBeUnknown();
  // @ts-expect-error wrong request payload
  void client.request('USER_GET', { user: '42' }, api);

  // requestAll() gathers one typed reply per recipient, and always reaches every match.
  expectTypeOf(client.requestAll('USER_GET', { id: '42' }, api)).resolves.toEqualTypeOf<
    Reply<{ id: string; name: string } | null>[]
  >();
  // @ts-expect-error requestAll() is mode all by definition
  void client.requestAll('USER_GET', { id: '42' }, { ...api, mode: 'one' });

  client.on('NERVE_SESSION', (data) => {
    expectTypeOf(data.resumed).toEqualTypeOf<boolean>();
    expectTypeOf(data.missed).toEqualTypeOf<number | undefined>();
  });
}

export function credentials(): void {
  new NerveClient({ url: 'ws://127.0.0.1:6669', appName: 'web', clientId: 'u-1', token: async () => 'jwt', WebSocket });
  new NerveClient({ url: 'ws://127.0.0.1:6669', appName: 'web', clientId: 'u-1', token: 'jwt', WebSocket });
}

export function untypedEvents(): void {
  // Without a map any name goes and payloads are unknown.
  const plain = new NerveClient({ url: 'ws://127.0.0.1:6669', appName: 'a', clientId: 'a-1', password: 'p', WebSocket });
  plain.on('anything', (data, message) => {
    expectTypeOf(data).toBeUnknown();
    expectTypeOf(message).toEqualTypeOf<NerveMessage<'anything', unknown>>();
  });
  plain.dispatch('anything', { free: 'form' }, { app_name: 'b' });
  expectTypeOf(plain.request('anything', 1, { app_name: 'b' })).resolves.toBeUnknown();
}
