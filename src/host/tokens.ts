// Signed tokens beside the password: verifies an IDENTIFY or HTTP token with
// jose (HS256 with NERVE_JWT_SECRET, or RS256/ES256/EdDSA keys from the JWKS in
// NERVE_JWT_PUBLIC_KEYS), checks issuer and audience when set, and turns its
// claims into what the core enforces. Errors say what was wrong, never echo the token.

import { createLocalJWKSet, decodeProtectedHeader, errors, jwtVerify, type JSONWebKeySet, type JWTPayload } from 'jose';
import type { Claims } from '../core/auth.ts';
import { isPlainObject, MAX_NAME } from '../core/schemas.ts';

export interface TokenSettings {
  /** HS256 shared secret. */
  secret?: string;
  /** Public keys for RS256, ES256 and EdDSA tokens. */
  jwks?: JSONWebKeySet;
  issuer?: string;
  audience?: string;
}

export type VerifyToken = (token: string) => Promise<Claims>;

/** A token refused, with a reason fit to send to the client. */
export class TokenError extends Error {}

const ASYMMETRIC = ['RS256', 'RS384', 'RS512', 'PS256', 'ES256', 'ES384', 'EdDSA'];

/** Reads a JWKS document given as JSON; throws naming what is wrong with it. */
export function parseJwks(json: string): JSONWebKeySet {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    throw new Error('is not JSON');
  }
  if (!isPlainObject(value) || !Array.isArray(value.keys) || value.keys.length === 0) throw new Error('must be a JWKS: {"keys":[…]}');
  return value as unknown as JSONWebKeySet;
}

/** The verifier for these settings, or one that refuses every token when none are set. */
export function createTokenVerifier(settings: TokenSettings | undefined): VerifyToken {
  const secret = settings?.secret === undefined ? undefined : new TextEncoder().encode(settings.secret);
  const jwks = settings?.jwks === undefined ? undefined : createLocalJWKSet(settings.jwks);
  if (!secret && !jwks) {
    return () => Promise.reject(new TokenError('tokens are not accepted by this hub (it has no NERVE_JWT_SECRET or NERVE_JWT_PUBLIC_KEYS)'));
  }
  const options = {
    ...(settings?.issuer === undefined ? {} : { issuer: settings.issuer }),
    ...(settings?.audience === undefined ? {} : { audience: settings.audience }),
  };
  return async (token) => {
    let alg: string | undefined;
    try {
      alg = decodeProtectedHeader(token).alg;
    } catch {
      throw new TokenError('the token is not a well-formed JWT');
    }
    let payload: JWTPayload;
    try {
      if (alg === 'HS256') {
        if (!secret) throw new TokenError('HS256 tokens are not accepted by this hub (no NERVE_JWT_SECRET)');
        payload = (await jwtVerify(token, secret, { ...options, algorithms: ['HS256'] })).payload;
      } else {
        if (!jwks) throw new TokenError(`${alg ?? 'unsigned'} tokens are not accepted by this hub (no NERVE_JWT_PUBLIC_KEYS)`);
        payload = (await jwtVerify(token, jwks, { ...options, algorithms: ASYMMETRIC })).payload;
      }
    } catch (error) {
      throw new TokenError(describe(error));
    }
    return claimsOf(payload);
  };
}

function describe(error: unknown): string {
  if (error instanceof TokenError) return error.message;
  if (error instanceof errors.JWTExpired) return 'the token has expired';
  if (error instanceof errors.JWTClaimValidationFailed) {
    if (error.claim === 'nbf') return 'the token is not valid yet';
    if (error.claim === 'iss') return 'the token has the wrong issuer';
    if (error.claim === 'aud') return 'the token has the wrong audience';
    return `the token's ${error.claim} claim is invalid`;
  }
  if (error instanceof errors.JWSSignatureVerificationFailed) return 'the token signature does not verify';
  if (error instanceof errors.JWKSNoMatchingKey) return 'no key of this hub matches the token';
  if (error instanceof errors.JOSEAlgNotAllowed) return 'the token algorithm is not accepted';
  return 'the token is invalid';
}

const isName = (value: unknown): value is string => typeof value === 'string' && value.length > 0 && value.length <= MAX_NAME;

/** Nerve's claims from a verified payload; a token that grants nothing sensible is refused. */
export function claimsOf(payload: JWTPayload): Claims {
  const { app, sub, dispatch, meta, admin, exp } = payload as JWTPayload & Record<string, unknown>;
  if (!isName(app)) throw new TokenError('the token has no valid app claim');
  const claims: Claims = { app };
  if (sub !== undefined) {
    if (!isName(sub)) throw new TokenError('the token sub claim must be a client_id');
    claims.sub = sub;
  }
  if (dispatch !== undefined) {
    if (!Array.isArray(dispatch) || !dispatch.every(isName)) throw new TokenError('the token dispatch claim must be a list of app names');
    claims.dispatch = dispatch;
  }
  if (meta !== undefined) {
    if (!isPlainObject(meta)) throw new TokenError('the token meta claim must be an object');
    claims.meta = meta;
  }
  if (admin !== undefined) {
    if (typeof admin !== 'boolean') throw new TokenError('the token admin claim must be true or false');
    claims.admin = admin;
  }
  if (typeof exp === 'number') claims.exp = exp * 1000;
  return claims;
}
