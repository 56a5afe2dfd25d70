// Choosing recipients among an app's sessions: round robin in identify order,
// rendezvous hashing for a sticky `key`, or every match. Only the target app's
// sessions are ever scanned.

import type { AppState, Session } from './state.ts';

export type Eligible = (session: Session) => boolean;

/** First index whose ordinal is greater than `ordinal` (sessions are in identify order). */
function indexAfter(sessions: Session[], ordinal: number): number {
  let low = 0;
  let high = sessions.length;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (sessions[mid]!.ordinal <= ordinal) low = mid + 1;
    else high = mid;
  }
  return low;
}

/**
 * Round robin: the first eligible session after the app's cursor, wrapping.
 * Stops at the first match, so a dispatch usually evaluates one or two queries.
 */
export function pickRoundRobin(app: AppState, eligible: Eligible): Session | undefined {
  const sessions = app.sessions;
  const count = sessions.length;
  if (count === 0) return undefined;
  const start = indexAfter(sessions, app.cursor);
  for (let i = 0; i < count; i++) {
    const session = sessions[(start + i) % count]!;
    if (eligible(session)) {
      app.cursor = session.ordinal;
      return session;
    }
  }
  return undefined;
}

/** 32-bit FNV-1a followed by murmur3's finalizer, for well-spread weights. */
function hash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Rendezvous (highest random weight): each match scores hash(key, client_id);
 * the highest wins, so a membership change only moves the keys of the client
 * that came or went.
 */
export function pickRendezvous(app: AppState, key: string, eligible: Eligible): Session | undefined {
  let best: Session | undefined;
  let bestWeight = -1;
  for (const session of app.sessions) {
    if (!eligible(session)) continue;
    const weight = hash(`${key}\u0000${session.clientId}`);
    if (weight > bestWeight) {
      best = session;
      bestWeight = weight;
    }
  }
  return best;
}
