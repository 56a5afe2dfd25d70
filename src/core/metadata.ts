// Client metadata: shallow merge where `null` removes a key, with the JSON size
// tracked per entry so a small ABOUT_ME never re-serializes large metadata.

import { utf8Length } from './codec.ts';
import type { Session } from './state.ts';

export interface MetadataRecord {
  metadata: Record<string, unknown>;
  metadataSizes: Map<string, number>;
  metadataBytes: number;
}

/** `{}`: what a client with no metadata counts against the budget. */
export const EMPTY_METADATA_BYTES = 2;

export function emptyMetadata(): MetadataRecord {
  return { metadata: Object.create(null), metadataSizes: new Map(), metadataBytes: EMPTY_METADATA_BYTES };
}

function entrySize(key: string, value: unknown): number {
  return utf8Length(JSON.stringify(key)) + 1 + utf8Length(JSON.stringify(value) ?? 'null');
}

/** `{}` is 2 bytes; every entry adds its own size and, after the first, a comma. */
function totalBytes(sum: number, count: number): number {
  return 2 + sum + Math.max(0, count - 1);
}

function currentSum(record: MetadataRecord): number {
  return record.metadataBytes - 2 - Math.max(0, record.metadataSizes.size - 1);
}

/**
 * Merges `patch` into `record` if the result stays within `limit` bytes of JSON.
 * Returns the size the result would have had when it does not fit (nothing is changed then).
 */
export function mergeMetadata(record: MetadataRecord | Session, patch: Record<string, unknown>, limit: number): number | undefined {
  let sum = currentSum(record);
  let count = record.metadataSizes.size;
  const sizes = new Map<string, number>();
  for (const key of Object.keys(patch)) {
    const value = patch[key];
    const old = record.metadataSizes.get(key);
    if (old !== undefined) {
      sum -= old;
      count--;
    }
    if (value === null || value === undefined) {
      sizes.set(key, 0);
      continue;
    }
    const size = entrySize(key, value);
    sizes.set(key, size);
    sum += size;
    count++;
  }
  const bytes = totalBytes(sum, count);
  if (bytes > limit) return bytes;
  for (const [key, size] of sizes) {
    if (size === 0) {
      delete record.metadata[key];
      record.metadataSizes.delete(key);
    } else {
      record.metadata[key] = patch[key];
      record.metadataSizes.set(key, size);
    }
  }
  record.metadataBytes = bytes;
  return undefined;
}
