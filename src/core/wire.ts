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
  conn.closing = true;
  if (code !== Close.GOING_AWAY) state.counters.errors[code] = (state.counters.errors[code] ?? 0) + 1;
  out.push({ type: 'close', conn: conn.id, code, reason: truncateReason(reason) });
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
  const directed = target.client_id !== undefined || target.mode !== 'all';
  // 16 bytes cover `,"s":N}` for any s.
  return { e, d, from: sender.from, senderKey: sender.key, nonce, target, test, directed, jsonHead: head, bytes: head.length + 16 };
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
    const frame: Record<string, unknown> = { op: Op.DISPATCH, e: msg.e, d: msg.d ?? null, from: msg.from };
    if (msg.nonce !== undefined) frame.nonce = msg.nonce;
    msg.packHead = packMsgpack(frame);
  }
  return msg.packHead;
}

/** Bumps the entry count in a msgpack map header (msgpackr writes map16 even for small maps). */
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
  out.push({ type: 'send', conn: conn.id, data });
}
