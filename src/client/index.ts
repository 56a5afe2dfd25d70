// The Nerve client SDK (package export `nerve/client`): a runtime-neutral client
// for Node (with `ws`), Deno, Bun, browsers and Workers. See docs/client.md.

export { NerveClient } from './client.ts';
export { FATAL_CLOSE_CODES, NerveError, type NerveErrorCode } from './errors.ts';
export type {
  ConnectionState,
  EventData,
  EventHandler,
  EventName,
  Metadata,
  MessageFor,
  NerveClientOptions,
  NerveMessage,
  ReplyData,
  RequestOptions,
  Sender,
  ServerEvents,
  ServerMessage,
  StateHandler,
  StateInfo,
  Target,
  WebSocketConstructor,
  WebSocketLike,
} from './types.ts';
