// docs/browsers.md over real sockets: who a token lets a client be, what its
// claims allow, expiry, JWKS keys, HTTP with tokens, the Origin check and the
// per-address budget of failed authentications, on every runtime.

import { describe, expect, it } from 'vitest';
import { connect, dispatchFrame, expectError, getClients, identified, RUNTIMES, uid, useServer } from './harness.ts';
import {
  ALLOWED_ORIGIN,
  es256,
  expIn,
  forgedEs256,
  forgedHs256,
  hs256,
  http,
  identifiedWithToken,
  identifyWithToken,
  OTHER_ALLOWED_ORIGIN,
  rs256,
  tokenEnv,
  upgrade,
} from './token-helpers.ts';

const AUTH_FAILURES = 3;

for (const runtime of RUNTIMES) {
  describe(`${runtime}: tokens (docs/browsers.md)`, () => {
    const server = useServer(runtime, tokenEnv());

    describe('who a token may be', () => {
      it('a token for web/u1 identifies as web/u1', async () => {
        const web = uid('web');
        const client = await identifiedWithToken(server(), web, 'u1', await hs256({ app: web, sub: 'u1' }));
        const listed = await getClients(server(), web);
        expect(listed.map((c) => [c.client_id, c.connected])).toEqual([['u1', true]]);
        await client.sync();
      });

      it('cannot identify as another client_id of its app, nor as another app: 4401 naming which', async () => {
        const web = uid('web');
        const token = await hs256({ app: web, sub: 'u1' });
        await expectError(await identifyWithToken(server(), web, 'u2', token), 4401, `IDENTIFY: the token is for client_id u1, not u2`);
        const gateway = uid('gateway');
        await expectError(await identifyWithToken(server(), gateway, 'u1', token), 4401, `IDENTIFY: the token is for app ${web}, not ${gateway}`);
        expect(await getClients(server(), web)).toEqual([]);
      });

      it('IDENTIFY with both password and token, or with neither, is 4400', async () => {
        const web = uid('web');
        const token = await hs256({ app: web, sub: 'u1' });
        const both = (await connect(server())).client;
        both.identify({ app_name: web, client_id: 'u1', password: server().password, token });
        await expectError(both, 4400, 'IDENTIFY: give exactly one of password and token');
        const neither = (await connect(server())).client;
        neither.identify({ app_name: web, client_id: 'u1' });
        await expectError(neither, 4400, 'IDENTIFY: give exactly one of password and token');
      });

      it('cannot take over a session created with the password; the service stays connected', async () => {
        const svc = uid('svc');
        const service = await identified(server(), svc, 'svc-1');
        const token = await hs256({ app: svc });
        await expectError(await identifyWithToken(server(), svc, 'svc-1', token, { reconnect: true }), 4403, `IDENTIFY: this token may not take over ${svc}/svc-1`);
        await expectError(await identifyWithToken(server(), svc, 'svc-1', token), 4403, `IDENTIFY: this token may not take over ${svc}/svc-1`);
        // The service noticed nothing: it still answers and still receives.
        expect(await service.sync()).toEqual([]);
        const listed = await getClients(server(), svc);
        expect(listed.map((c) => [c.client_id, c.connected])).toEqual([['svc-1', true]]);
        const sender = await identified(server(), uid('src'), 's');
        sender.send(dispatchFrame('PING', { app_name: svc, client_id: 'svc-1' }, { d: 1 }));
        expect(await service.event('PING')).toMatchObject({ d: 1, from: { client_id: 's' } });
      });

      it('takes over its own session when it reconnects', async () => {
        const web = uid('web');
        const first = await identifiedWithToken(server(), web, 'u1', await hs256({ app: web, sub: 'u1' }));
        const second = await identifiedWithToken(server(), web, 'u1', await hs256({ app: web, sub: 'u1' }), { reconnect: true });
        await expectError(first, 4409, 'Session taken over by a new connection');
        expect(await second.event('NERVE_SESSION')).toMatchObject({ d: { resumed: true } });
      });
    });

    describe('what its claims allow', () => {
      it('dispatch: sends to an app it lists; another app is 4403 naming it', async () => {
        const web = uid('web');
        const api = uid('api');
        const billing = uid('billing');
        const service = await identified(server(), api, 'api-1');
        const browser = await identifiedWithToken(server(), web, 'u1', await hs256({ app: web, sub: 'u1', dispatch: [api] }));
        browser.send(dispatchFrame('GET_PROFILE', { app_name: api }, { d: { id: 1 }, nonce: 'n1' }));
        expect(await browser.waitFor((f) => f.e === 'NERVE_ACK' && f.nonce === 'n1', 3000, 'NERVE_ACK')).toMatchObject({ d: { delivered: 1 } });
        // The service can trust who sent it: only this token could have.
        expect(await service.event('GET_PROFILE')).toMatchObject({ d: { id: 1 }, from: { app_name: web, client_id: 'u1' } });
        browser.send(dispatchFrame('CHARGE', { app_name: billing }, { d: {} }));
        await expectError(browser, 4403, `DISPATCH: the token may not dispatch to app ${billing}`);
      });

      it('dispatch: [] allows no dispatch at all', async () => {
        const web = uid('web');
        const browser = await identifiedWithToken(server(), web, 'u1', await hs256({ app: web, sub: 'u1', dispatch: [] }));
        browser.send(dispatchFrame('HELLO', { app_name: web }, { d: {} }));
        await expectError(browser, 4403, `DISPATCH: the token may not dispatch to app ${web}`);
      });

      it('meta: the fixed key is in /clients; ABOUT_ME may change other keys but not change or remove it', async () => {
        const web = uid('web');
        const token = await hs256({ app: web, sub: 'u1', meta: { user: '42' } });
        const browser = await identifiedWithToken(server(), web, 'u1', token, { metadata: { page: 'home' } });
        expect((await getClients(server(), web))[0].metadata).toEqual({ page: 'home', user: '42' });
        // Restating the fixed value is no change.
        browser.send({ op: 7, d: { page: 'cart', user: '42' } });
        expect(await browser.sync()).toEqual([]);
        expect((await getClients(server(), web))[0].metadata).toEqual({ page: 'cart', user: '42' });
        browser.send({ op: 7, d: { user: '7' } });
        await expectError(browser, 4403, 'ABOUT_ME: metadata key user is fixed by the token');

        // A 4403 ends the session; the next one starts with the fixed key again.
        const again = await identifiedWithToken(server(), web, 'u1', token);
        expect((await getClients(server(), web))[0].metadata).toEqual({ user: '42' });
        again.send({ op: 7, d: { user: null } });
        await expectError(again, 4403, 'ABOUT_ME: metadata key user is fixed by the token');
      });

      it('meta: an IDENTIFY whose metadata changes a fixed key is 4403', async () => {
        const web = uid('web');
        const token = await hs256({ app: web, sub: 'u1', meta: { user: '42' } });
        await expectError(await identifyWithToken(server(), web, 'u1', token, { metadata: { user: '7' } }), 4403, 'IDENTIFY: metadata key user is fixed by the token');
        expect(await getClients(server(), web)).toEqual([]);
      });
    });

    describe('expiry', () => {
      it('an expired token is 4401 `the token has expired`', async () => {
        const web = uid('web');
        const token = await hs256({ app: web, sub: 'u1' }, expIn(-10));
        await expectError(await identifyWithToken(server(), web, 'u1', token), 4401, 'IDENTIFY: the token has expired');
      });

      it('a token not valid yet, or from another issuer or for another audience, is 4401 saying which', async () => {
        const web = uid('web');
        const refused = async (claims: Record<string, unknown>, reason: string) =>
          expectError(await identifyWithToken(server(), web, 'u1', await hs256({ app: web, sub: 'u1', ...claims })), 4401, `IDENTIFY: ${reason}`);
        await refused({ nbf: expIn(3600) }, 'the token is not valid yet');
        await refused({ iss: 'https://evil.example.com' }, 'the token has the wrong issuer');
        await refused({ aud: 'someone-else' }, 'the token has the wrong audience');
        expect(await getClients(server(), web)).toEqual([]);
      });

      it('a live connection is closed at exp with 4401 `token expired`; a fresh token resumes its session', async () => {
        const web = uid('web');
        const exp = expIn(2);
        const browser = await identifiedWithToken(server(), web, 'u1', await hs256({ app: web, sub: 'u1' }, exp));
        // Heartbeats keep it alive until then: only the expiry closes it.
        const { reason } = await expectError(browser, 4401, 'token expired', 4000);
        expect(reason).toBe('token expired');
        expect(Date.now()).toBeGreaterThanOrEqual(exp * 1000 - 50);

        // Sent while it is away: kept for the session, and replayed on resume.
        const sender = await identified(server(), uid('api'), 'api-1');
        sender.send(dispatchFrame('UPDATE', { app_name: web, client_id: 'u1' }, { d: 'while away', nonce: 'n1' }));
        expect(await sender.waitFor((f) => f.e === 'NERVE_ACK', 3000, 'NERVE_ACK')).toMatchObject({ d: { delivered: 1 } });
        const back = await identifiedWithToken(server(), web, 'u1', await hs256({ app: web, sub: 'u1' }), { reconnect: true });
        expect(await back.event('NERVE_SESSION')).toMatchObject({ d: { resumed: true } });
        expect(await back.event('UPDATE')).toMatchObject({ d: 'while away' });
      });
    });

    describe('keys', () => {
      it('RS256 and ES256 tokens signed with keys of the JWKS are accepted', async () => {
        const svc = uid('svc');
        await identifiedWithToken(server(), svc, 'rs', await rs256({ app: svc, sub: 'rs' }));
        await identifiedWithToken(server(), svc, 'es', await es256({ app: svc }));
        const listed = await getClients(server(), svc);
        expect(listed.map((c) => c.client_id).sort()).toEqual(['es', 'rs']);
      });

      it('a token signed by a key the hub does not know is 4401', async () => {
        const svc = uid('svc');
        await expectError(await identifyWithToken(server(), svc, 'a', await forgedEs256({ app: svc }, 'ec-1')), 4401, 'IDENTIFY: the token signature does not verify');
        await expectError(await identifyWithToken(server(), svc, 'a', await forgedEs256({ app: svc }, 'unknown')), 4401, 'IDENTIFY: no key of this hub matches the token');
        expect(await getClients(server(), svc)).toEqual([]);
      });

      it('an HS256 token signed with another secret, or no JWT at all, is 4401 and not echoed', async () => {
        const svc = uid('svc');
        const forged = await forgedHs256({ app: svc });
        const { reason } = await expectError(await identifyWithToken(server(), svc, 'a', forged), 4401, 'IDENTIFY: the token signature does not verify');
        expect(reason).not.toContain(forged.split('.')[2]);
        await expectError(await identifyWithToken(server(), svc, 'a', 'not-a-jwt'), 4401, 'IDENTIFY: the token is not a well-formed JWT');
      });
    });

    describe('HTTP with tokens', () => {
      const dispatchBody = () => ({ e: 'X', d: 1, to: { app_name: uid('nobody'), mode: 'all' } });

      it('an admin token may GET /clients and POST /dispatch', async () => {
        const admin = await hs256({ app: 'ops', admin: true });
        const clients = await http(server(), 'GET', '/clients', admin);
        expect(clients.status).toBe(200);
        expect(Array.isArray(clients.body)).toBe(true);
        expect(await http(server(), 'POST', '/dispatch', admin, dispatchBody())).toEqual({ status: 200, body: { delivered: 0, queued: 0 } });
      });

      it('a token that is not admin gets 403 with a JSON error', async () => {
        const user = await hs256({ app: 'web', sub: 'u1' });
        const refused = { status: 403, body: { error: expect.stringContaining('not an admin token') } };
        expect(await http(server(), 'GET', '/clients', user)).toEqual(refused);
        expect(await http(server(), 'POST', '/dispatch', user, dispatchBody())).toEqual(refused);
      });

      it('without credentials, or with an expired admin token, 401', async () => {
        const unauthorized = { status: 401, body: { error: expect.any(String) } };
        expect(await http(server(), 'GET', '/clients')).toEqual(unauthorized);
        expect(await http(server(), 'POST', '/dispatch', undefined, dispatchBody())).toEqual(unauthorized);
        const expired = await hs256({ app: 'ops', admin: true }, expIn(-10));
        expect(await http(server(), 'GET', '/clients', expired)).toEqual({ status: 401, body: { error: 'the token has expired' } });
      });
    });

    describe('Origin', () => {
      it('an upgrade from a listed origin is accepted', async () => {
        for (const origin of [ALLOWED_ORIGIN, OTHER_ALLOWED_ORIGIN]) {
          expect(await upgrade(server(), origin)).toMatchObject({ status: 101, hello: { op: 0 } });
        }
      });

      it('an upgrade from an origin not listed is refused with HTTP 403 before any frame', async () => {
        const refused = await upgrade(server(), 'https://evil.example.com');
        expect(refused.status).toBe(403);
        expect(JSON.parse((refused as { body: string }).body)).toEqual({ error: expect.stringContaining('https://evil.example.com') });
        // Close relatives of a listed origin are other origins.
        expect((await upgrade(server(), 'http://app.example.com')).status).toBe(403);
        expect((await upgrade(server(), `${ALLOWED_ORIGIN}:8443`)).status).toBe(403);
      });

      it('an upgrade without Origin (a service) is accepted', async () => {
        expect(await upgrade(server())).toMatchObject({ status: 101, hello: { op: 0 } });
      });
    });
  });

  describe(`${runtime}: failed authentications per address (NERVE_AUTH_FAILURES=${AUTH_FAILURES})`, () => {
    // Its own server: the budget it spends is 127.0.0.1's, shared by every test connection.
    // No skip on cloudflare: local wrangler dev sets cf-connecting-ip (127.0.0.1), so the address is known there too.
    const server = useServer(runtime, tokenEnv({ NERVE_AUTH_FAILURES: String(AUTH_FAILURES) }));

    it('past the budget, the next IDENTIFY gets 4429 with `retry in`, even with the right password; the hub logs it once', async () => {
      const web = uid('web');
      const wrongApp = await hs256({ app: uid('other'), sub: 'u1' });
      const guess = async (attempt: number) => {
        const client = attempt % 2 === 0 ? await identifyWithToken(server(), web, 'u1', wrongApp) : (await connect(server())).client;
        if (attempt % 2 === 1) client.identify({ app_name: web, client_id: 'u1', password: 'guess' });
        return client;
      };
      // Password guesses and refused tokens both count.
      for (let attempt = 0; attempt <= AUTH_FAILURES; attempt++) {
        await expectError(await guess(attempt), 4401, /^IDENTIFY: (wrong password|the token is for app)/);
      }
      const cooling = await identifyWithToken(server(), web, 'u1', await hs256({ app: web, sub: 'u1' }));
      const { reason } = await expectError(cooling, 4429, 'IDENTIFY: too many failed authentications from this address');
      expect(reason).toMatch(/retry in \d+ s/);
      const withPassword = (await connect(server())).client;
      withPassword.identify({ app_name: web, client_id: 'u1', password: server().password });
      await expectError(withPassword, 4429, /retry in \d+ s/);
      expect(server().lines.filter((line) => line.includes('too many failed authentications: cooling down'))).toHaveLength(1);
    });
  });
}
