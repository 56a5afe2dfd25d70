// Token verification and the HTTP routes' use of it, in process: HS256 with a
// secret, RS256 and ES256 from a JWKS, issuer and audience, expiry, and what
// admin and non-admin tokens may do over HTTP.

import { exportJWK, generateKeyPair, SignJWT, type JWTPayload } from 'jose';
import { describe, expect, it } from 'vitest';
import { DEFAULT_LIMITS } from '../../src/core/io.ts';
import { ConfigError, loadConfig } from '../../src/host/config.ts';
import { createHttpApp } from '../../src/host/http.ts';
import { Hub } from '../../src/host/hub.ts';
import { createTokenVerifier } from '../../src/host/tokens.ts';

const SECRET = 'a-secret-of-at-least-thirty-two-characters';
const secretKey = new TextEncoder().encode(SECRET);

function hs256(payload: JWTPayload, expiresIn: string | number = '5m'): Promise<string> {
  return new SignJWT(payload).setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setExpirationTime(expiresIn).sign(secretKey);
}

describe('createTokenVerifier', () => {
  it('turns a valid HS256 token into claims, exp in ms', async () => {
    const verify = createTokenVerifier({ secret: SECRET });
    const claims = await verify(await hs256({ app: 'web', sub: 'u1', dispatch: ['api'], meta: { user: '1' }, admin: false }));
    expect(claims).toMatchObject({ app: 'web', sub: 'u1', dispatch: ['api'], meta: { user: '1' }, admin: false });
    expect(claims.exp! - Date.now()).toBeGreaterThan(4 * 60_000);
  });

  it('says why a token is refused, never echoing it', async () => {
    const verify = createTokenVerifier({ secret: SECRET, issuer: 'https://auth', audience: 'nerve' });
    const good = { app: 'web' };
    const reason = (token: string) => verify(token).then(() => 'accepted', (error: Error) => error.message);
    expect(await reason('nope')).toBe('the token is not a well-formed JWT');
    expect(await reason(await new SignJWT(good).setProtectedHeader({ alg: 'HS256' }).setIssuer('https://auth').setAudience('nerve').setExpirationTime(Math.floor(Date.now() / 1000) - 10).sign(secretKey))).toBe('the token has expired');
    expect(await reason(await new SignJWT(good).setProtectedHeader({ alg: 'HS256' }).setIssuer('https://auth').setAudience('nerve').setNotBefore('1h').sign(secretKey))).toBe('the token is not valid yet');
    expect(await reason(await new SignJWT(good).setProtectedHeader({ alg: 'HS256' }).setIssuer('https://evil').setAudience('nerve').sign(secretKey))).toBe('the token has the wrong issuer');
    expect(await reason(await new SignJWT(good).setProtectedHeader({ alg: 'HS256' }).setIssuer('https://auth').setAudience('other').sign(secretKey))).toBe('the token has the wrong audience');
    const forged = await new SignJWT(good).setProtectedHeader({ alg: 'HS256' }).setIssuer('https://auth').setAudience('nerve').sign(new TextEncoder().encode('x'.repeat(40)));
    expect(await reason(forged)).toBe('the token signature does not verify');
    expect(await reason(await new SignJWT({ sub: 'u1' }).setProtectedHeader({ alg: 'HS256' }).setIssuer('https://auth').setAudience('nerve').sign(secretKey))).toBe('the token has no valid app claim');
    expect(await reason(await new SignJWT({ app: 'web', dispatch: 'api' }).setProtectedHeader({ alg: 'HS256' }).setIssuer('https://auth').setAudience('nerve').sign(secretKey))).toBe('the token dispatch claim must be a list of app names');
  });

  it('verifies RS256 and ES256 tokens against a JWKS, and refuses HS256 when no secret is set', async () => {
    const rsa = await generateKeyPair('RS256');
    const ec = await generateKeyPair('ES256');
    const keys = [
      { ...(await exportJWK(rsa.publicKey)), kid: 'rsa', alg: 'RS256' },
      { ...(await exportJWK(ec.publicKey)), kid: 'ec', alg: 'ES256' },
    ];
    const verify = createTokenVerifier({ jwks: { keys } });
    const rs = await new SignJWT({ app: 'svc' }).setProtectedHeader({ alg: 'RS256', kid: 'rsa' }).sign(rsa.privateKey);
    const es = await new SignJWT({ app: 'svc', sub: 's1' }).setProtectedHeader({ alg: 'ES256', kid: 'ec' }).sign(ec.privateKey);
    expect(await verify(rs)).toEqual({ app: 'svc' });
    expect(await verify(es)).toEqual({ app: 'svc', sub: 's1' });
    await expect(verify(await hs256({ app: 'svc' }))).rejects.toThrow('HS256 tokens are not accepted by this hub (no NERVE_JWT_SECRET)');
    const stranger = await generateKeyPair('ES256');
    await expect(verify(await new SignJWT({ app: 'svc' }).setProtectedHeader({ alg: 'ES256', kid: 'ec' }).sign(stranger.privateKey))).rejects.toThrow(
      'the token signature does not verify',
    );
  });

  it('refuses every token when the hub has no keys', async () => {
    await expect(createTokenVerifier(undefined)(await hs256({ app: 'web' }))).rejects.toThrow('tokens are not accepted by this hub');
  });
});

describe('configuration', () => {
  it('reads the token settings and origins, refusing what cannot work', () => {
    const config = loadConfig({ NERVE_JWT_SECRET: SECRET, NERVE_JWT_ISSUER: 'https://auth', NERVE_ALLOWED_ORIGINS: 'https://app.example.com, https://b.example.com' });
    expect(config.tokens).toEqual({ secret: SECRET, issuer: 'https://auth' });
    expect(config.allowedOrigins).toEqual(['https://app.example.com', 'https://b.example.com']);
    expect(loadConfig({ NERVE_ALLOWED_ORIGINS: '*' }).allowedOrigins).toBe('*');
    expect(() => loadConfig({ NERVE_JWT_SECRET: 'short' })).toThrow(new ConfigError('NERVE_JWT_SECRET must be at least 32 characters'));
    expect(() => loadConfig({ NERVE_JWT_PUBLIC_KEYS: '{}' })).toThrow('NERVE_JWT_PUBLIC_KEYS must be a JWKS');
    expect(() => loadConfig({ NERVE_ALLOWED_ORIGINS: 'app.example.com' })).toThrow('NERVE_ALLOWED_ORIGINS must list origins');
    expect(() => loadConfig({ NERVE_JWT_AUDIENCE: 'x' })).toThrow('NERVE_JWT_ISSUER and NERVE_JWT_AUDIENCE need');
  });
});

describe('HTTP routes with tokens', () => {
  const hub = new Hub({ config: { ...DEFAULT_LIMITS, worker: 'nerve-test00', password: 'pw', tokens: { secret: SECRET } }, log: () => {} });
  const app = createHttpApp(hub);
  const get = (authorization?: string) => app.request('/clients', authorization ? { headers: { authorization } } : {});

  it('the password and admin tokens may; other tokens get 403; bad ones 401', async () => {
    expect((await get('Bearer pw')).status).toBe(200);
    expect((await get(`Bearer ${await hs256({ app: 'ops', admin: true })}`)).status).toBe(200);
    const user = await get(`Bearer ${await hs256({ app: 'web', sub: 'u1' })}`);
    expect(user.status).toBe(403);
    expect(await user.json()).toEqual({ error: 'this token may not use the HTTP routes: it is not an admin token' });
    const expired = await get(`Bearer ${await hs256({ app: 'ops', admin: true }, Math.floor(Date.now() / 1000) - 5)}`);
    expect([expired.status, await expired.json()]).toEqual([401, { error: 'the token has expired' }]);
    expect((await get('Bearer wrong')).status).toBe(401);
    expect((await get()).status).toBe(401);
  });

  it('an admin token may dispatch over HTTP', async () => {
    const response = await app.request('/dispatch', {
      method: 'POST',
      headers: { authorization: `Bearer ${await hs256({ app: 'ops', admin: true })}` },
      body: JSON.stringify({ e: 'X', to: { app_name: 'nobody', mode: 'all' } }),
    });
    expect(await response.json()).toEqual({ delivered: 0, queued: 0 });
  });
});
