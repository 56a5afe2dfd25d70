// Frame codecs: JSON (text) or msgpack (binary), optionally zlib-deflated per
// frame (RFC 1950). Decoding enforces the size limit on the received bytes and
// again on the inflated bytes, without ever inflating more than the limit.

import { Packr } from 'msgpackr';
import { Unzlib, zlibSync, unzlibSync } from 'fflate';
import type { Wire } from './protocol.ts';

// useRecords would add a msgpackr-only extension; clients in other languages
// must be able to read every frame.
const packr = new Packr({ useRecords: false, mapsAsObjects: true });
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });
const utf8Encoder = new TextEncoder();

export class DecodeError extends Error {
  constructor(
    message: string,
    readonly tooLarge = false,
  ) {
    super(message);
  }
}

export function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes;
}

/** Size of a received frame in bytes, computed only when it could matter. */
export function frameSize(data: string | Uint8Array, limit: number): number {
  if (typeof data !== 'string') return data.byteLength;
  return data.length * 3 <= limit ? data.length : utf8Length(data);
}

/** The worst case of deflate is about 1032:1; below that the limit cannot be crossed. */
const MAX_DEFLATE_RATIO = 1032;
const INFLATE_SLICE = 1024;

function inflate(data: Uint8Array, limit: number): Uint8Array {
  if (data.byteLength * MAX_DEFLATE_RATIO <= limit) {
    try {
      return unzlibSync(data);
    } catch {
      throw new DecodeError('undecodable zlib frame');
    }
  }
  // Feed small slices so a zlib bomb is stopped after at most ~1 MiB of excess.
  const chunks: Uint8Array[] = [];
  let total = 0;
  const stream = new Unzlib((chunk) => {
    total += chunk.byteLength;
    if (total > limit) throw new DecodeError(`inflated frame exceeds ${limit} bytes`, true);
    chunks.push(chunk);
  });
  try {
    for (let offset = 0; offset < data.byteLength; offset += INFLATE_SLICE) {
      stream.push(data.subarray(offset, offset + INFLATE_SLICE), offset + INFLATE_SLICE >= data.byteLength);
    }
  } catch (error) {
    if (error instanceof DecodeError) throw error;
    throw new DecodeError('undecodable zlib frame');
  }
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

/** Turns one received frame into a value; throws DecodeError naming what was wrong. */
export function decodeFrame(data: string | Uint8Array, wire: Wire, limit: number): unknown {
  if (wire.compression === 'zlib' || wire.format === 'msgpack') {
    if (typeof data === 'string') {
      throw new DecodeError(`text frame on a ${wire.format === 'msgpack' ? 'msgpack' : 'zlib'} connection; send binary frames`);
    }
  }
  let bytes = data;
  if (wire.compression === 'zlib') bytes = inflate(data as Uint8Array, limit);
  if (wire.format === 'msgpack') {
    try {
      return packr.unpack(bytes as Uint8Array);
    } catch {
      throw new DecodeError('undecodable msgpack frame');
    }
  }
  let text: string;
  if (typeof bytes === 'string') text = bytes;
  else {
    try {
      text = utf8Decoder.decode(bytes);
    } catch {
      throw new DecodeError('frame is not valid UTF-8');
    }
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new DecodeError('undecodable JSON frame');
  }
}

/** Encodes a frame for one connection: text for plain JSON, bytes otherwise. */
export function encodeFrame(frame: object, wire: Wire): string | Uint8Array {
  if (wire.format === 'json') {
    const text = JSON.stringify(frame);
    return wire.compression === 'zlib' ? zlibSync(utf8Encoder.encode(text)) : text;
  }
  const packed = packr.pack(frame);
  return wire.compression === 'zlib' ? zlibSync(packed) : packed;
}

/** Already-encoded text or msgpack (before compression), to splice per recipient. */
export function compress(data: string | Uint8Array, wire: Wire): string | Uint8Array {
  if (wire.compression !== 'zlib') return data;
  return zlibSync(typeof data === 'string' ? utf8Encoder.encode(data) : data);
}

export function packMsgpack(value: unknown): Uint8Array {
  return packr.pack(value);
}
