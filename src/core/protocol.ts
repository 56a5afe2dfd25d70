// The wire vocabulary of Nerve: opcodes, close codes and the fixed payloads
// every runtime must send byte for byte. docs/protocol.md is the prose version.

export const Op = {
  HELLO: 0,
  IDENTIFY: 1,
  WELCOME: 2,
  HEARTBEAT: 3,
  HEARTBEAT_ACK: 4,
  GO_AWAY: 5,
  NO_U_TBH: 6,
  ABOUT_ME: 7,
  DISPATCH: 8,
} as const;
export type Op = (typeof Op)[keyof typeof Op];

/** Close codes mirror HTTP statuses (4400 = bad request, 4401 = unauthorized…). */
export const Close = {
  GOING_AWAY: 1001,
  /** A fault of the server's own while handling this connection's frame; the session stays resumable. */
  INTERNAL_ERROR: 1011,
  BAD_FRAME: 4400,
  BAD_PASSWORD: 4401,
  FORBIDDEN: 4403,
  TIMEOUT: 4408,
  CONFLICT: 4409,
  TOO_LARGE: 4413,
  RATE_LIMITED: 4429,
  /** Too many connections (or unidentified connections) on this hub. */
  AT_CAPACITY: 4503,
  /** The client stopped reading: its unsent frames passed the outbound limit. Resumable. */
  SLOW_CONSUMER: 4507,
} as const;
export type CloseCode = (typeof Close)[keyof typeof Close];

export const WELCOME_TEXT = "hi i'm dad";
export const GO_AWAY_TEXT = 'go away.';
export const TAKEN_OVER_TEXT = 'Session taken over by a new connection';

/** The canonical heartbeat pair; a Durable Object answers it without waking. */
export const HEARTBEAT_FRAME = '{"op":3}';
export const HEARTBEAT_ACK_FRAME = '{"op":4}';

/** Events the server itself originates; clients may not send names with this prefix. */
export const RESERVED_EVENT_PREFIX = 'NERVE_';
export const ACK_EVENT = 'NERVE_ACK';
export const UNDELIVERABLE_EVENT = 'NERVE_UNDELIVERABLE';
/** Right after WELCOME when IDENTIFY asked to resume: `{resumed, s, replayed, missed?}`. */
export const SESSION_EVENT = 'NERVE_SESSION';

/** Characters in an app_name, client_id, event name, nonce or `to.key`. */
export const MAX_NAME = 128;

/** The sender named in `from` for dispatches that arrive over HTTP. */
export const HTTP_SENDER_APP = 'http';

export type Format = 'json' | 'msgpack';
export type Compression = 'none' | 'zlib';
export interface Wire {
  format: Format;
  compression: Compression;
}

/** A routing target, as carried in a DISPATCH's `to`. */
export interface Target {
  app_name: string;
  client_id?: string;
  query?: Record<string, unknown>;
  mode?: 'one' | 'all';
  key?: string;
}

/** Who sent a dispatch, as recipients see it in `from`. */
export interface Sender {
  app_name: string;
  client_id?: string;
}

/** Close reasons are limited to 123 bytes of UTF-8 (RFC 6455). */
export function truncateReason(reason: string): string {
  if (reason.length <= 41) return reason; // 41 × 3 bytes ≤ 123 whatever the text
  return utf8Prefix(reason, 123);
}

const NON_ASCII = /[^\x00-\x7f]/;

/** Bytes of `text` in UTF-8 (a surrogate pair is one 4-byte character). */
export function utf8Length(text: string): number {
  // Most frames are ASCII, where the answer is the length; the regex engine finds out much faster than a loop.
  if (!NON_ASCII.test(text)) return text.length;
  return utf8Scan(text, Infinity).bytes;
}

/** The longest start of `text` that fits in `limit` bytes of UTF-8, never splitting a character. */
function utf8Prefix(text: string, limit: number): string {
  return text.slice(0, utf8Scan(text, limit).chars);
}

/** Walks `text` while its UTF-8 size stays within `limit`: the bytes and UTF-16 units it covered. */
function utf8Scan(text: string, limit: number): { bytes: number; chars: number } {
  let bytes = 0;
  let i = 0;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    const size = c < 0x80 ? 1 : c < 0x800 ? 2 : c >= 0xd800 && c <= 0xdbff ? 4 : 3;
    if (bytes + size > limit) break;
    bytes += size;
    i += size === 4 ? 2 : 1;
  }
  return { bytes, chars: i };
}
