// Per-frame zlib (RFC 1950): deflate for what we send, and an inflate that
// never produces more than the size limit, so a zlib bomb costs at most about
// one slice of excess. Imports only fflate and DecodeError, to load lazily.

import { Unzlib, unzlibSync, zlibSync } from 'fflate';
import { DecodeError } from './decode-error.ts';

/** The worst case of deflate is about 1032:1; below that the limit cannot be crossed. */
const MAX_DEFLATE_RATIO = 1032;
const INFLATE_SLICE = 1024;

export function deflate(data: Uint8Array): Uint8Array {
  return zlibSync(data);
}

/** Inflates one frame; throws DecodeError (tooLarge) as soon as the output passes `limit` bytes. */
export function inflate(data: Uint8Array, limit: number): Uint8Array {
  if (data.byteLength * MAX_DEFLATE_RATIO <= limit) {
    try {
      return unzlibSync(data);
    } catch {
      throw new DecodeError('undecodable zlib frame');
    }
  }
  // Small slices, so a bomb is stopped after at most ~1 MiB of excess.
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
