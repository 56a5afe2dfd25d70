// Who may be whom. The claims a verified token grants and the checks IDENTIFY,
// ABOUT_ME and DISPATCH make against them; the budget of failed
// authentications per remote address. Checking a token's signature is the
// host's part (it is asynchronous): the core only ever sees its claims.

import type { State } from './state.ts';

/** What a verified token allows, as the host hands it over. */
export interface Claims {
  /** The only app_name it may identify as. */
  app: string;
  /** The only client_id it may use. */
  sub?: string;
  /** Apps it may dispatch to; absent: any. */
  dispatch?: readonly string[];
  /** Metadata keys it fixes: set at IDENTIFY, never changed or removed. */
  meta?: Record<string, unknown>;
  /** May use GET /clients and POST /dispatch. */
  admin?: boolean;
  /** When it stops being valid, in ms since the epoch. */
  exp?: number;
}

/** The password, or a token for one app (and, with `sub`, one client). */
export function authorityOf(claims: Claims | undefined): string {
  return claims === undefined ? 'password' : `token:${claims.app}/${claims.sub ?? '*'}`;
}

/** The password may take over any session; a token only one created with the same authority. */
export function mayTakeOver(sessionAuthority: string, authority: string): boolean {
  return authority === 'password' || authority === sessionAuthority;
}

/** The first key of `patch` that would change or remove a key the token fixes, if any. */
export function touchesFixedKey(fixed: Record<string, unknown> | undefined, patch: Record<string, unknown>): string | undefined {
  if (fixed === undefined) return undefined;
  for (const key of Object.keys(patch)) {
    if (!Object.hasOwn(fixed, key)) continue;
    if (JSON.stringify(patch[key]) !== JSON.stringify(fixed[key])) return key;
  }
  return undefined;
}

/** Failed authentications of one remote address in the current minute. */
export interface AuthFailures {
  count: number;
  since: number;
  /** Until when its IDENTIFYs are refused with 4429 (0: not cooling down). */
  coolUntil: number;
}

const WINDOW_MS = 60_000;
/** Addresses remembered at once; the oldest is forgotten first, so the table cannot grow without bound. */
const MAX_ADDRESSES = 10_000;

/** ms left of the address's cool-down, or 0. */
export function coolingDown(state: State, remote: string, now: number): number {
  if (remote === '' || state.config.authFailures <= 0) return 0;
  const entry = state.authFailures.get(remote);
  return entry && entry.coolUntil > now ? entry.coolUntil - now : 0;
}

/** Counts a failed authentication; returns true when it starts a cool-down (log it once). */
export function noteAuthFailure(state: State, remote: string, now: number): boolean {
  const budget = state.config.authFailures;
  if (remote === '' || budget <= 0) return false;
  let entry = state.authFailures.get(remote);
  if (!entry || now - entry.since >= WINDOW_MS) {
    state.authFailures.delete(remote);
    if (state.authFailures.size >= MAX_ADDRESSES) state.authFailures.delete(state.authFailures.keys().next().value!);
    entry = { count: 0, since: now, coolUntil: 0 };
    state.authFailures.set(remote, entry);
  }
  entry.count++;
  if (entry.count <= budget || entry.coolUntil > now) return false;
  entry.coolUntil = now + WINDOW_MS;
  return true;
}
