// Writing frames to connections. A routed event is encoded once per wire
// format and only its per-recipient `s` is spliced in, so a fan-out to many
// sockets costs one JSON.stringify (and one msgpack pack if anyone uses it).

import { compress, encodeFrame, packMsgpack } from './codec.ts';
import type { Output } from './io.ts';
import { Close, HEARTBEAT_ACK_FRAME, Op, truncateReason, type CloseCode, type Target } from './protocol.ts';
import type { MetadataTest } from './query.ts';
import type { Conn, ReplayEntry, Routed, SenderInfo, State } from './state.ts';

export function send(state: State, out: Output[], conn: Conn, frame: object): void {
  state.counters.framesOut++;
  out.push({ type: 'send', conn: conn.id, data: encodeFrame(frame, conn.wire) });
}

export function sendHeartbeatAck(state: State, out: Output[], conn: Conn): void {
  state.counters.framesOut++;
  out.push({ type: 'send', conn: conn.id, data: conn.plain ? HEARTBEAT_ACK_FRAME : encodeFrame({ op: Op.HEARTBEAT_ACK }, conn.wire) });
}

/** NO_U_TBH with the reason, then the close: the only way the server ends a connection on error. */
export function fail(state: State, out: Output[], conn: Conn, code: CloseCode, reason: string): void {
  send(state, out, conn, { op: Op.NO_U_TBH, d: reason });
  closeConn(state, out, conn, code, reason);
}

export function closeConn(state: State, out: Output[], conn: Conn, code: CloseCode, reason: string): void {
  // A connection stops counting against the caps once its close is sent, not when the peer answers.
  if (!conn.closing) {
    state.liveConns--;
    if (!conn.session) state.unidentifiedConns--;
  }
  conn.closing = true;
  if (code !== Close.GOING_AWAY) {
    state.counters.errors[code] = (state.counters.errors[code] ?? 0) + 1;
    const kind = refusalKind(code, reason);
    state.counters.refused[kind] = (state.counters.refused[kind] ?? 0) + 1;
  }
  out.push({ type: 'close', conn: conn.id, code, reason: truncateReason(reason) });
}

/** The kind of a refusal, for the `nerve_refused_total{reason}` metric. */
export function refusalKind(code: CloseCode, reason: string): string {
  switch (code) {
    case Close.BAD_FRAME:
      if (reason.includes('extension')) return 'msgpack_extension';
      if (reason.includes('nests deeper')) return 'too_deep';
      if (reason.includes('to.query')) return 'bad_query';
      if (/undecodable|UTF-8|malformed|text frame on/.test(reason)) return 'undecodable';
      return 'invalid';
    case Close.TOO_LARGE:
      return 'too_large';
    case Close.BAD_PASSWORD:
      return 'bad_password';
    case Close.FORBIDDEN:
      return 'forbidden';
    case Close.TIMEOUT:
      return 'timeout';
    case Close.CONFLICT:
      return 'taken_over';
    case Close.RATE_LIMITED:
      return 'rate_limited';
    case Close.AT_CAPACITY:
      return 'at_capacity';
    case Close.SLOW_CONSUMER:
      return 'slow_consumer';
    default:
      return 'internal_error';
  }
}

export function createRouted(
  e: string,
  d: unknown,
  sender: SenderInfo,
  nonce: string | undefined,
  target: Target,
  test: MetadataTest | undefined,
): Routed {
  const head =
    `{"op":8,"e":${JSON.stringify(e)},"d":${JSON.stringify(d) ?? 'null'},"from":${sender.fromJson}` +
    (nonce === undefined ? '' : `,"nonce":${JSON.stringify(nonce)}`);
  const msg = routedFromHead(e, head, sender, nonce, target, test);
  msg.d = d;
  return msg;
}

/**
 * An event whose frame head is already encoded (relayed by another node of a
 * cluster): nothing is encoded again; `d` is read back from the head only if
 * a msgpack recipient needs it.
 */
export function routedFromHead(e: string, head: string, sender: Pick<SenderInfo, 'from' | 'key'>, nonce: string | undefined, target: Target, test: MetadataTest | undefined): Routed {
  const directed = target.client_id !== undefined || target.mode !== 'all';
  // 16 bytes cover `,"s":N}` for any s; a query is kept twice over, as the
  // decoded target and as the compiled test.
  const queryBytes = target.query === undefined ? 0 : 2 * JSON.stringify(target.query).length;
  return { e, d: undefined, from: sender.from, senderKey: sender.key, nonce, target, test, directed, jsonHead: head, bytes: head.length + 16 + queryBytes };
}

/** `s` as a msgpack uint, appended after the key "s". */
function packSeq(s: number): Uint8Array {
  if (s < 0x80) return Uint8Array.of(0xa1, 0x73, s);
  if (s < 0x10000) return Uint8Array.of(0xa1, 0x73, 0xcd, s >> 8, s & 0xff);
  if (s < 0x100000000) return Uint8Array.of(0xa1, 0x73, 0xce, s >>> 24, (s >> 16) & 0xff, (s >> 8) & 0xff, s & 0xff);
  const high = Math.floor(s / 0x100000000);
  return Uint8Array.of(0xa1, 0x73, 0xcf, 0, 0, (high >> 8) & 0xff, high & 0xff, s >>> 24, (s >> 16) & 0xff, (s >> 8) & 0xff, s & 0xff);
}

function packedHead(msg: Routed): Uint8Array {
  if (!msg.packHead) {
    // Once routed, an event keeps only its JSON text: the frame is read back from it.
    let frame: Record<string, unknown>;
    if (msg.d === undefined) frame = JSON.parse(`${msg.jsonHead}}`) as Record<string, unknown>;
    else {
      frame = { op: Op.DISPATCH, e: msg.e, d: msg.d, from: msg.from };
      if (msg.nonce !== undefined) frame.nonce = msg.nonce;
    }
    msg.packHead = packMsgpack(frame);
  }
  return msg.packHead;
}

/** The frame of a routed event without `s`, as plain data (for hosts that store it). */
export function routedFrame(msg: Routed): { e: string; d: unknown } {
  return msg.d === undefined ? (JSON.parse(`${msg.jsonHead}}`) as { e: string; d: unknown }) : { e: msg.e, d: msg.d };
}

/** Bumps the entry count in a msgpack map header: a fixmap for the few keys of a head, map16 once past 15. */
function addMapEntry(bytes: Uint8Array): void {
  const tag = bytes[0]!;
  if (tag >= 0x80 && tag < 0x8f) bytes[0] = tag + 1;
  else if (tag === 0xde) {
    const count = ((bytes[1]! << 8) | bytes[2]!) + 1;
    bytes[1] = count >> 8;
    bytes[2] = count & 0xff;
  } else throw new Error(`unexpected msgpack map header 0x${tag.toString(16)}`);
}

/** The JSON text of a routed event for one recipient: what a replay buffer keeps once it is written. */
export function routedText(msg: Routed, s: number): string {
  return `${msg.jsonHead},"s":${s}}`;
}

export function encodeRouted(msg: Routed, s: number, conn: Conn): string | Uint8Array {
  if (conn.wire.format === 'json') return compress(routedText(msg, s), conn.wire);
  const head = packedHead(msg);
  const tail = packSeq(s);
  const bytes = new Uint8Array(head.byteLength + tail.byteLength);
  bytes.set(head);
  addMapEntry(bytes);
  bytes.set(tail, head.byteLength);
  return compress(bytes, conn.wire);
}

/** Writes a routed event, or the kept text of one (replays are rare, so msgpack readers get it re-encoded). */
export function sendRouted(state: State, out: Output[], conn: Conn, entry: ReplayEntry, s: number): void {
  state.counters.framesOut++;
  let data: string | Uint8Array;
  if (typeof entry !== 'string') data = encodeRouted(entry, s, conn);
  else data = compress(conn.wire.format === 'json' ? entry : packMsgpack(JSON.parse(entry)), conn.wire);
  out.push({ type: 'send', conn: conn.id, data, s });
}
