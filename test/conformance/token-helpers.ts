// Keys, server settings and small clients for the token conformance suite: an
// HS256 secret and an RS256/ES256 JWKS made once per test run, minting with
// jose as a user's backend would, and raw upgrades and HTTP calls with a bearer.

import { exportJWK, generateKeyPair, SignJWT, type JWTPayload } from 'jose';
import WebSocket from 'ws';
import { expect } from 'vitest';
import type { TestClient } from './client.ts';
import { sendIdentify, type IdentifyOptions, type RunningServer } from './harness.ts';

export const SECRET = 'conformance-secret-of-more-than-32-characters';
const secretKey = new TextEncoder().encode(SECRET);

export const ALLOWED_ORIGIN = 'https://app.example.com';
export const OTHER_ALLOWED_ORIGIN = 'https://admin.example.com';

// Real keys, as an identity provider would hold them: the hub only ever sees the public halves.
const rsa = await generateKeyPair('RS256');
const ec = await generateKeyPair('ES256');
/** Never in the JWKS: what a forger or a misconfigured provider would sign with. */
const stranger = await generateKeyPair('ES256');

const JWKS = {
  keys: [
    { ...(await exportJWK(rsa.publicKey)), kid: 'rsa-1', alg: 'RS256', use: 'sig' },
    { ...(await exportJWK(ec.publicKey)), kid: 'ec-1', alg: 'ES256', use: 'sig' },
  ],
};

/**
 * Tokens on (with an issuer and audience), browsers held to two origins. The per-address failure budget is
 * set high here: every test connects from 127.0.0.1, so a small one would let
 * the refusal cases lock out the rest; the budget has a server of its own.
 */
export function tokenEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    NERVE_JWT_SECRET: SECRET,
    NERVE_JWT_PUBLIC_KEYS: JSON.stringify(JWKS),
    NERVE_JWT_ISSUER: ISSUER,
    NERVE_JWT_AUDIENCE: AUDIENCE,
    NERVE_ALLOWED_ORIGINS: `${ALLOWED_ORIGIN},${OTHER_ALLOWED_ORIGIN}`,
    NERVE_AUTH_FAILURES: '1000',
    ...extra,
  };
}

/** `exp` in seconds since the epoch, `seconds` from now (negative: already expired). */
export function expIn(seconds: number): number {
  return Math.floor(Date.now() / 1000) + seconds;
}

/** What the hub requires of every token's `iss` and `aud`. */
export const ISSUER = 'https://auth.example.com';
export const AUDIENCE = 'nerve';

/** Claims as given, with the hub's issuer and audience unless the claims name others. */
function signer(claims: JWTPayload, exp: number): SignJWT {
  return new SignJWT({ iss: ISSUER, aud: AUDIENCE, ...claims }).setIssuedAt().setExpirationTime(exp);
}

/** An HS256 token with NERVE_JWT_SECRET, valid five minutes unless `exp` says otherwise. */
export function hs256(claims: JWTPayload, exp = expIn(300)): Promise<string> {
  return signer(claims, exp).setProtectedHeader({ alg: 'HS256' }).sign(secretKey);
}

export function rs256(claims: JWTPayload): Promise<string> {
  return signer(claims, expIn(300)).setProtectedHeader({ alg: 'RS256', kid: 'rsa-1' }).sign(rsa.privateKey);
}

export function es256(claims: JWTPayload): Promise<string> {
  return signer(claims, expIn(300)).setProtectedHeader({ alg: 'ES256', kid: 'ec-1' }).sign(ec.privateKey);
}

/** ES256 with a key outside the JWKS, under a kid the JWKS has (`ec-1`) or one it lacks. */
export function forgedEs256(claims: JWTPayload, kid: 'ec-1' | 'unknown'): Promise<string> {
  return signer(claims, expIn(300)).setProtectedHeader({ alg: 'ES256', kid }).sign(stranger.privateKey);
}

/** HS256 with a secret other than NERVE_JWT_SECRET. */
export function forgedHs256(claims: JWTPayload): Promise<string> {
  return signer(claims, expIn(300)).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode('x'.repeat(40)));
}

/** Connects and sends IDENTIFY with `token` in place of the password; the answer is left to the test. */
export async function identifyWithToken(
  server: RunningServer,
  app: string,
  clientId: string,
  token: string,
  options: IdentifyOptions = {},
): Promise<TestClient> {
  return sendIdentify(server, app, clientId, options, { token });
}

/** As identifyWithToken, and waits for WELCOME. */
export async function identifiedWithToken(
  server: RunningServer,
  app: string,
  clientId: string,
  token: string,
  options: IdentifyOptions = {},
): Promise<TestClient> {
  const client = await identifyWithToken(server, app, clientId, token, options);
  const welcome = await client.next();
  expect(welcome, `WELCOME for ${app}/${clientId} with a token`).toEqual({ op: 2, d: "hi i'm dad" });
  return client;
}

export type Upgraded = { status: 101; hello: any } | { status: number; body: string };

/**
 * A WebSocket upgrade as a browser on `origin` would make it (no Origin
 * header when undefined): the HELLO it got, or the HTTP status and body of
 * the refusal. The socket is closed before this resolves.
 */
export function upgrade(server: RunningServer, origin?: string): Promise<Upgraded> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${server.url}/`, origin === undefined ? {} : { origin });
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`no answer to an upgrade with Origin ${origin ?? '(none)'} within 5 s`));
    }, 5000);
    ws.once('unexpected-response', (_request, response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => {
        clearTimeout(timer);
        ws.terminate();
        resolve({ status: response.statusCode ?? 0, body });
      });
    });
    ws.once('message', (data: Buffer) => {
      clearTimeout(timer);
      ws.once('close', () => resolve({ status: 101, hello: JSON.parse(data.toString('utf8')) }));
      ws.close(1000);
    });
    ws.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/** An HTTP call with `Authorization: Bearer <bearer>` (none when undefined): status and parsed JSON body. */
export async function http(
  server: RunningServer,
  method: 'GET' | 'POST',
  path: string,
  bearer?: string,
  body?: unknown,
): Promise<{ status: number; body: any }> {
  const headers: Record<string, string> = {};
  if (bearer !== undefined) headers.authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${server.http}${path}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  const text = await response.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: the test sees the text
  }
  return { status: response.status, body: parsed };
}
