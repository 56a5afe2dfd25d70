// The one error type the client SDK throws or rejects with. `code` is either a
// WebSocket close code from the server (4401, 4409, …) or a client-side reason.

export type NerveErrorCode =
  /** A close code sent by the server after NO_U_TBH (4400, 4401, 4403, 4408, 4409, 4413, 4429). */
  | number
  /** close() was called, or the client closed on a fatal error, before this could complete. */
  | 'CLOSED'
  /** The outbound buffer that holds messages while disconnected is full. */
  | 'BUFFER_FULL'
  /** A request got no reply within its timeout. */
  | 'TIMEOUT'
  /** The server gave up on delivering a request (NERVE_UNDELIVERABLE), or nobody matched it. */
  | 'UNDELIVERABLE'
  /** connect() did not reach WELCOME within `connectTimeout`. */
  | 'CONNECT_TIMEOUT'
  /** The arguments can never be sent (bad event name, target or metadata). */
  | 'INVALID';

export class NerveError extends Error {
  override readonly name = 'NerveError';
  constructor(
    readonly code: NerveErrorCode,
    message: string,
    /** Extra detail: the NERVE_UNDELIVERABLE payload, or the close reason. */
    readonly data?: unknown,
  ) {
    super(message);
  }
}

/**
 * Close codes after which reconnecting cannot help: the same IDENTIFY would be
 * refused again (wrong password, a bug in what we send, or another connection
 * owning this client_id). Everything else is retried with backoff.
 */
export const FATAL_CLOSE_CODES: ReadonlySet<number> = new Set([4400, 4401, 4403, 4409]);
