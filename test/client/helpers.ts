// Shared helpers for the client SDK tests: clients that are closed after each
// test, promises for state changes and received events, and a WebSocket
// constructor that lets a test hold a client offline or cut its socket.

import WebSocket from 'ws';
import { NerveClient, type ConnectionState, type NerveClientOptions, type StateInfo } from '../../src/client/index.ts';
import type { WebSocketConstructor } from '../../src/client/index.ts';

const open = new Set<NerveClient<any, any>>();

export function makeClient<Events extends object = Record<string, unknown>, Replies extends object = Record<never, never>>(
  options: Omit<NerveClientOptions, 'WebSocket'> & { WebSocket?: WebSocketConstructor },
): NerveClient<Events, Replies> {
  const client = new NerveClient<Events, Replies>({
    WebSocket,
    reconnectDelay: 20,
    maxReconnectDelay: 200,
    ...options,
  });
  open.add(client);
  return client;
}

export async function closeAll(): Promise<void> {
  const clients = [...open];
  open.clear();
  await Promise.all(clients.map((client) => client.close()));
}

/** Resolves with the info of the next time `client` enters `state`. */
export function nextState(client: NerveClient<any, any>, state: ConnectionState): Promise<StateInfo> {
  return new Promise((resolve) => {
    const off = client.onState((entered, info) => {
      if (entered !== state) return;
      off();
      resolve(info);
    });
  });
}

/** Records every `event` the client receives; `until(n)` resolves once n have arrived. */
export function collect<T = unknown>(client: NerveClient<any, any>, event: string) {
  const received: T[] = [];
  const waiters: { count: number; resolve(): void }[] = [];
  client.on(event, (data: unknown) => {
    received.push(data as T);
    for (const waiter of [...waiters]) {
      if (received.length >= waiter.count) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    }
  });
  return {
    received,
    until(count: number): Promise<T[]> {
      if (received.length >= count) return Promise.resolve(received);
      return new Promise((resolve) => waiters.push({ count, resolve: () => resolve(received) }));
    },
  };
}

/**
 * A WebSocket constructor a test controls: `sockets` holds every socket made,
 * and while `offline` is true new connections go to a port nobody listens on,
 * so the client keeps retrying until the test lets it back.
 */
export function controlledSocket() {
  const control = {
    offline: false,
    sockets: [] as WebSocket[],
    /** Cuts the current connection without a close frame, like a network failure. */
    cut(): void {
      control.sockets.at(-1)!.terminate();
    },
    WebSocket: function (url: string) {
      const socket = new WebSocket(control.offline ? 'ws://127.0.0.1:9' : url);
      control.sockets.push(socket);
      return socket;
    } as unknown as WebSocketConstructor,
  };
  return control;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
