// The Nerve client SDK (package export `nerve/client`): a runtime-neutral client
// for Node (with `ws`), Deno, Bun, browsers and Workers. See docs/client.md.

export { NerveClient } from './client.ts';
export { FATAL_CLOSE_CODES, NerveError, type NerveErrorCode } from './errors.ts';
// Every type the client speaks in: options, messages, states, typed event maps.
export type * from './types.ts';
