// Frame codecs: JSON (text) or msgpack (binary), optionally zlib-deflated per
// frame (RFC 1950), composed from msgpack.ts and zlib.ts. Decoding enforces the
// size limit (received and inflated), JSON's data model and the depth limit.

import { DEFAULT_LIMITS } from './io.ts';
import { DecodeError } from './decode-error.ts';
import { checkDepth, depthExceeded, jsonNestsDeeperThan } from './depth.ts';
import { decodeMsgpack, packMsgpack } from './msgpack.ts';
import { utf8Length, type Wire } from './protocol.ts';
import { deflate, inflate } from './zlib.ts';

export { checkDepth, DecodeError, packMsgpack };

const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });
const utf8Encoder = new TextEncoder();

export { utf8Length };

/** Size of a received frame in bytes, computed only when it could matter. */
export function frameSize(data: string | Uint8Array, limit: number): number {
  if (typeof data !== 'string') return data.byteLength;
  return data.length * 3 <= limit ? data.length : utf8Length(data);
}

/**
 * Turns one received frame into a JSON value nesting at most `maxDepth` levels;
 * throws DecodeError naming what was wrong, and nothing else.
 */
export function decodeFrame(data: string | Uint8Array, wire: Wire, limit: number, maxDepth: number = DEFAULT_LIMITS.maxDepth): unknown {
  if (wire.compression === 'zlib' || wire.format === 'msgpack') {
    if (typeof data === 'string') {
      throw new DecodeError(`text frame on a ${wire.format === 'msgpack' ? 'msgpack' : 'zlib'} connection; send binary frames`);
    }
  }
  let bytes = data;
  if (wire.compression === 'zlib') bytes = inflate(data as Uint8Array, limit);
  if (wire.format === 'msgpack') return decodeMsgpack(bytes as Uint8Array, maxDepth);
  let text: string;
  if (typeof bytes === 'string') text = bytes;
  else {
    try {
      text = utf8Decoder.decode(bytes);
    } catch {
      throw new DecodeError('frame is not valid UTF-8');
    }
  }
  if (jsonNestsDeeperThan(text, maxDepth)) throw new DecodeError(depthExceeded(maxDepth));
  try {
    return JSON.parse(text);
  } catch {
    // A SyntaxError, or a RangeError from a runtime whose parser recurses.
    throw new DecodeError('undecodable JSON frame');
  }
}

/** Encodes a frame for one connection: text for plain JSON, bytes otherwise. */
export function encodeFrame(frame: object, wire: Wire): string | Uint8Array {
  if (wire.format === 'json') {
    const text = JSON.stringify(frame);
    return wire.compression === 'zlib' ? deflate(utf8Encoder.encode(text)) : text;
  }
  const packed = packMsgpack(frame);
  return wire.compression === 'zlib' ? deflate(packed) : packed;
}

/** Already-encoded text or msgpack (before compression), to splice per recipient. */
export function compress(data: string | Uint8Array, wire: Wire): string | Uint8Array {
  if (wire.compression !== 'zlib') return data;
  return deflate(typeof data === 'string' ? utf8Encoder.encode(data) : data);
}
