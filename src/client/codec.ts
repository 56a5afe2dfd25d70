// Frame encoding for the client side of each wire format: JSON text, msgpack,
// and either one deflated per frame with zlib. Mirrors what the server accepts.

import { decodeFrame, encodeFrame } from '../core/codec.ts';
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

function toBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new Error('unsupported frame data type');
}

/** The server's own codecs: both sides of the wire encode alike by construction. */
export function createCodec(format: Format, compression: Compression): Codec {
  const wire = { format, compression };
  const encode = (frame: Frame): Encoded => encodeFrame(frame, wire) as Encoded;

  const decode = (data: unknown): Frame => {
    // Frames from the server are trusted in size; the server bounds what it sends.
    const value = decodeFrame(typeof data === 'string' ? data : toBytes(data), wire, Infinity);
    if (typeof value !== 'object' || value === null || !Number.isInteger((value as Frame).op)) {
      throw new Error('frame is not an object with an integer op');
    }
    return value as Frame;
  };

  const heartbeat = format === 'json' && compression === 'none' ? HEARTBEAT_FRAME : encode({ op: 3 });
  return { encode, decode, heartbeat };
}
