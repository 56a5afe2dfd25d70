// Frame encoding for the client side of each wire format: JSON text, msgpack,
// and either one deflated per frame with zlib. Plain JSON needs no library; the
// hub's own msgpack and zlib codecs load with import() only for a connection that uses them.

import { HEARTBEAT_FRAME, type Compression, type Format } from '../core/protocol.ts';

export interface Frame {
  op: number;
  d?: unknown;
  e?: string;
  to?: unknown;
  from?: unknown;
  nonce?: string;
  s?: number;
}

/** Frames never live in shared memory, and DOM's WebSocket.send only takes ArrayBuffer-backed views. */
export type Encoded = string | Uint8Array<ArrayBuffer>;

export interface Codec {
  encode(frame: Frame): Encoded;
  /** Throws on anything that is not an object with an integer `op`. */
  decode(data: unknown): Frame;
  /** Sent on every heartbeat; on plain JSON it is the exact constant a Durable Object auto-answers. */
  readonly heartbeat: Encoded;
}

/** One layer of the wire: values to bytes (msgpack) or bytes to bytes (zlib). */
interface ByteCodec {
  encode(value: Uint8Array): Uint8Array;
  decode(bytes: Uint8Array): Uint8Array;
}
interface ValueCodec {
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array): unknown;
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder();

function toBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new Error('unsupported frame data type');
}

function checkFrame(value: unknown): Frame {
  if (typeof value !== 'object' || value === null || !Number.isInteger((value as Frame).op)) {
    throw new Error('frame is not an object with an integer op');
  }
  return value as Frame;
}

/** JSON in text frames: what every connection speaks unless it asks for more. */
export const jsonCodec: Codec = {
  encode: (frame) => JSON.stringify(frame),
  // A JSON connection may also receive JSON in binary frames (protocol.md §1).
  decode: (data) => checkFrame(JSON.parse(typeof data === 'string' ? data : utf8Decoder.decode(toBytes(data)))),
  heartbeat: HEARTBEAT_FRAME,
};

const jsonBytes: ValueCodec = {
  encode: (value) => utf8Encoder.encode(JSON.stringify(value)),
  decode: (bytes) => JSON.parse(utf8Decoder.decode(bytes)),
};

// The server bounds the size and depth of what it sends, so the client sets no limits of its own.

async function loadMsgpack(): Promise<ValueCodec> {
  const { decodeMsgpack, packMsgpack } = await import('../core/msgpack.ts');
  return { encode: packMsgpack, decode: (bytes) => decodeMsgpack(bytes, Infinity) };
}

async function loadZlib(): Promise<ByteCodec> {
  const { deflate, inflate } = await import('../core/zlib.ts');
  return { encode: deflate, decode: (bytes) => inflate(bytes, Infinity) };
}

/**
 * The codec for one wire format. Plain JSON is ready at once; anything else
 * loads its libraries first, so a JSON-only bundle never contains them.
 */
export async function loadCodec(format: Format, compression: Compression): Promise<Codec> {
  if (format === 'json' && compression === 'none') return jsonCodec;
  const [values, deflate] = await Promise.all([
    format === 'msgpack' ? loadMsgpack() : jsonBytes,
    compression === 'zlib' ? loadZlib() : undefined,
  ]);
  const encode = (frame: Frame): Encoded => {
    const bytes = values.encode(frame);
    return (deflate ? deflate.encode(bytes) : bytes) as Uint8Array<ArrayBuffer>;
  };
  const decode = (data: unknown): Frame => {
    // Binary-only wire formats: a text frame here is a server bug, not something to guess at.
    if (typeof data === 'string') throw new Error('text frame on a binary connection');
    const bytes = toBytes(data);
    return checkFrame(values.decode(deflate ? deflate.decode(bytes) : bytes));
  };
  return { encode, decode, heartbeat: encode({ op: 3 }) };
}
