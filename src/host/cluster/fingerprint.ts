// The configuration fingerprint every node of a cluster must share: a salted,
// slow hash of the password (Redis never sees the password, nor a hash that is
// quick to guess from) and every limit that clients or other nodes see. A node whose settings differ is told
// which one, by its NERVE_* name, and never what the password is.

import { DEFAULT_LIMITS, type Limits } from '../../core/io.ts';

export interface Fingerprint {
  v: 1;
  /** Hex salt of the password hash, chosen by the first node. */
  salt: string;
  /** PBKDF2-SHA256 of the password with `salt`, hex. */
  password: string;
  limits: Record<string, number>;
}

const ITERATIONS = 100_000;

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export function newSalt(): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return hex(bytes);
}

async function passwordHash(password: string, salt: string): Promise<string> {
  const key = await crypto.subtle.importKey('raw', new TextEncoder().encode(password), 'PBKDF2', false, ['deriveBits']);
  const bits = await crypto.subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt: new TextEncoder().encode(salt), iterations: ITERATIONS }, key, 256);
  return hex(new Uint8Array(bits));
}

/**
 * What one process can carry, not what a client or another node sees: these
 * may differ per node. NERVE_MAX_MEMORY's default comes from the machine and
 * the runtime (a quarter of the heap, an eighth of RAM on Bun), so sharing it
 * would forbid the mixed clusters the design allows.
 */
const CAPACITY: ReadonlySet<keyof Limits> = new Set(['maxMemory', 'maxConnections', 'maxUnidentified', 'maxOutbound']);

/** The limits every node must share, in the order a difference is reported. */
const SHARED: readonly (keyof Limits)[] = (Object.keys(DEFAULT_LIMITS) as (keyof Limits)[]).filter((name) => !CAPACITY.has(name));

export async function fingerprint(config: Limits & { password: string }, salt: string): Promise<Fingerprint> {
  const limits: Record<string, number> = {};
  for (const name of SHARED) limits[name] = config[name];
  return { v: 1, salt, password: await passwordHash(config.password, salt), limits };
}

/** maxPayload → NERVE_MAX_PAYLOAD, the variable that sets it. */
export function envName(field: string): string {
  return `NERVE_${field.replace(/[A-Z]/g, (letter) => `_${letter}`).toUpperCase()}`;
}

/** A stored fingerprint, or undefined when it is not one this version can compare against. */
export function parseFingerprint(text: string): Fingerprint | undefined {
  try {
    const value = JSON.parse(text) as Partial<Fingerprint>;
    if (value?.v !== 1 || typeof value.salt !== 'string' || typeof value.password !== 'string' || typeof value.limits !== 'object' || value.limits === null) return undefined;
    return value as Fingerprint;
  } catch {
    return undefined;
  }
}

/** One line naming the first setting in which `mine` differs from the cluster's, or undefined when none does. */
export function firstDifference(mine: Fingerprint, theirs: Fingerprint, cluster: string): string | undefined {
  const why = 'every node of a cluster must run with the same password and limits';
  if (mine.password !== theirs.password) return `NERVE_PASSWORD differs from the one cluster ${JSON.stringify(cluster)} runs with (${why})`;
  const names = new Set([...Object.keys(mine.limits), ...Object.keys(theirs.limits)]);
  for (const name of names) {
    const here = mine.limits[name];
    const there = theirs.limits[name];
    if (here !== there) {
      return `${envName(name)} is ${here ?? 'not set'} here but ${there ?? 'not set'} in cluster ${JSON.stringify(cluster)} (${why})`;
    }
  }
  return undefined;
}
