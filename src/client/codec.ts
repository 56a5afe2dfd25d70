// Frame encoding for the client side of each wire format: JSON text, msgpack,
// and either one deflated per frame with zlib. Mirrors what the server accepts.

import { unzlibSync, zlibSync } from 'fflate';
import { Packr } from 'msgpackr';
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

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder();

function toBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new Error('unsupported frame data type');
}

export function createCodec(format: Format, compression: Compression): Codec {
  // Plain msgpack maps, no msgpackr record extension: the same settings as the server.
  const packr = format === 'msgpack' ? new Packr({ useRecords: false, mapsAsObjects: true }) : undefined;
  const zlib = compression === 'zlib';

  const serialize = (frame: Frame): string | Uint8Array => {
    if (packr) return packr.pack(frame);
    const text = JSON.stringify(frame);
    return zlib ? utf8Encoder.encode(text) : text;
  };

  const encode = (frame: Frame): Encoded => {
    const body = serialize(frame);
    return (zlib ? zlibSync(body as Uint8Array) : body) as Encoded;
  };

  const decode = (data: unknown): Frame => {
    let value: unknown;
    if (typeof data === 'string') {
      value = JSON.parse(data);
    } else {
      let bytes = toBytes(data);
      if (zlib) bytes = unzlibSync(bytes);
      value = packr ? packr.unpack(bytes) : JSON.parse(utf8Decoder.decode(bytes));
    }
    if (typeof value !== 'object' || value === null || !Number.isInteger((value as Frame).op)) {
      throw new Error('frame is not an object with an integer op');
    }
    return value as Frame;
  };

  const heartbeat = !packr && !zlib ? HEARTBEAT_FRAME : encode({ op: 3 });
  return { encode, decode, heartbeat };
}
