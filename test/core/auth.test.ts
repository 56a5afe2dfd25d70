// Tokens and the failed-authentication budget, through the pure core with a
// virtual clock: a token lets a client be exactly who its claims say and do
// exactly what they allow; guessing slows down per remote address.

import { describe, expect, it } from 'vitest';
import type { Claims } from '../../src/core/auth.ts';
import { failure, framesTo, Sim } from './harness.ts';

const WELCOME = { op: 2, d: "hi i'm dad" };

/** Opens `conn`, sends IDENTIFY with a token, and answers the verification with `claims`. */
function withToken(sim: Sim, conn: number, identify: Record<string, unknown>, claims: Claims | { error: string }, remote?: string) {
  sim.open(conn, undefined, remote);
  const asked = sim.send(conn, { op: 1, d: { token: 'header.payload.signature', ...identify } });
  expect(asked).toEqual([{ conn, verify: 'header.payload.signature' }]);
  return sim.verified(conn, 'error' in claims ? claims : { claims });
}

describe('IDENTIFY with a token', () => {
  it('needs exactly one of password and token', () => {
    const sim = new Sim();
    sim.open(1);
    expect(sim.send(1, { op: 1, d: { app_name: 'web', client_id: 'u1', password: 'pw', token: 't' } })).toEqual(
      failure(1, 4400, 'IDENTIFY: give exactly one of password and token'),
    );
    sim.open(2);
    expect(sim.send(2, { op: 1, d: { app_name: 'web', client_id: 'u1' } })).toEqual(failure(2, 4400, 'IDENTIFY: give exactly one of password and token'));
  });

  it('identifies as the app and client the claims name', () => {
    const sim = new Sim();
    expect(withToken(sim, 1, { app_name: 'web', client_id: 'u1' }, { app: 'web', sub: 'u1' })).toEqual([{ conn: 1, frame: WELCOME }]);
  });

  it('refuses another app or client_id with 4401 naming which', () => {
    const sim = new Sim();
    expect(withToken(sim, 1, { app_name: 'gateway', client_id: 'u1' }, { app: 'web', sub: 'u1' })).toEqual(
      failure(1, 4401, 'IDENTIFY: the token is for app web, not gateway'),
    );
    expect(withToken(sim, 2, { app_name: 'web', client_id: 'u2' }, { app: 'web', sub: 'u1' })).toEqual(
      failure(2, 4401, 'IDENTIFY: the token is for client_id u1, not u2'),
    );
  });

  it('refuses an invalid or expired token with the reason the host gave', () => {
    const sim = new Sim();
    expect(withToken(sim, 1, { app_name: 'web', client_id: 'u1' }, { error: 'the token signature does not verify' })).toEqual(
      failure(1, 4401, 'IDENTIFY: the token signature does not verify'),
    );
    expect(withToken(sim, 2, { app_name: 'web', client_id: 'u1' }, { app: 'web', exp: sim.now - 1 })).toEqual(
      failure(2, 4401, 'IDENTIFY: the token has expired'),
    );
  });

  it('cannot take over a session it did not create, even of its own app', () => {
    const sim = new Sim();
    sim.connect(1, 'svc', 'svc-1');
    expect(withToken(sim, 2, { app_name: 'svc', client_id: 'svc-1', reconnect: true }, { app: 'svc' })).toEqual(
      failure(2, 4403, 'IDENTIFY: this token may not take over svc/svc-1'),
    );
    expect(sim.state.sessions.get('svc\u0000svc-1')!.conn?.id).toBe(1);
  });

  it('takes over its own session (the same token identity), as a reconnect would', () => {
    const sim = new Sim();
    withToken(sim, 1, { app_name: 'web', client_id: 'u1' }, { app: 'web', sub: 'u1' });
    const events = withToken(sim, 2, { app_name: 'web', client_id: 'u1', reconnect: true }, { app: 'web', sub: 'u1' });
    expect(events.slice(0, 3)).toEqual([...failure(1, 4409, 'Session taken over by a new connection'), { conn: 2, frame: WELCOME }]);
  });

  it('dispatches only to the apps its claims list', () => {
    const sim = new Sim();
    withToken(sim, 1, { app_name: 'web', client_id: 'u1' }, { app: 'web', sub: 'u1', dispatch: ['api'] });
    expect(sim.dispatch(1, 'ASK', 1, { app_name: 'api' })).toEqual([]);
    expect(sim.dispatch(1, 'ASK', 1, { app_name: 'billing' })).toEqual(failure(1, 4403, 'DISPATCH: the token may not dispatch to app billing'));
  });

  it('an empty dispatch list allows no dispatch at all', () => {
    const sim = new Sim();
    withToken(sim, 1, { app_name: 'web', client_id: 'u1' }, { app: 'web', dispatch: [] });
    expect(sim.dispatch(1, 'ASK', 1, { app_name: 'web' })).toEqual(failure(1, 4403, 'DISPATCH: the token may not dispatch to app web'));
  });

  it('fixes the metadata keys its claims set: IDENTIFY and ABOUT_ME cannot change or remove them', () => {
    const sim = new Sim();
    withToken(sim, 1, { app_name: 'web', client_id: 'u1', metadata: { page: 'home' } }, { app: 'web', meta: { user: '42' } });
    expect(sim.state.sessions.get('web\u0000u1')!.metadata).toEqual({ page: 'home', user: '42' });
    expect(sim.send(1, { op: 7, d: { page: 'cart', user: '42' } })).toEqual([]);
    expect(sim.send(1, { op: 7, d: { user: null } })).toEqual(failure(1, 4403, 'ABOUT_ME: metadata key user is fixed by the token'));
    expect(withToken(sim, 2, { app_name: 'web', client_id: 'u2', metadata: { user: '7' } }, { app: 'web', meta: { user: '42' } })).toEqual(
      failure(2, 4403, 'IDENTIFY: metadata key user is fixed by the token'),
    );
  });

  it('closes a live connection when its token expires, keeping the session resumable', () => {
    const sim = new Sim({ heartbeatInterval: 60_000 });
    withToken(sim, 1, { app_name: 'web', client_id: 'u1' }, { app: 'web', sub: 'u1', exp: sim.now + 5_000 });
    expect(sim.advance(4_999)).toEqual([]);
    expect(sim.advance(1)).toEqual(failure(1, 4401, 'token expired'));
    expect(sim.state.sessions.get('web\u0000u1')!.conn).toBeNull();
  });

  it('frames other than HEARTBEAT while the token is checked are refused as before IDENTIFY', () => {
    const sim = new Sim();
    sim.open(1);
    sim.send(1, { op: 1, d: { app_name: 'web', client_id: 'u1', token: 't' } });
    expect(framesTo(sim.send(1, { op: 3 }), 1)).toEqual([{ op: 4 }]);
    expect(sim.send(1, { op: 1, d: { app_name: 'web', client_id: 'u1', token: 't' } })).toEqual(failure(1, 4403, 'IDENTIFY: already identified'));
  });
});

describe('failed authentications per remote address', () => {
  it('past the budget, the next IDENTIFYs get 4429 for a minute; other addresses are not affected', () => {
    const sim = new Sim({ authFailures: 2 });
    const guess = (conn: number, remote: string) => {
      sim.open(conn, undefined, remote);
      return sim.send(conn, { op: 1, d: { app_name: 'a', client_id: 'b', password: 'guess' } });
    };
    expect(guess(1, '10.0.0.1')).toEqual(failure(1, 4401, 'IDENTIFY: wrong password'));
    guess(2, '10.0.0.1');
    guess(3, '10.0.0.1');
    expect(guess(4, '10.0.0.1')).toEqual(failure(4, 4429, 'IDENTIFY: too many failed authentications from this address; retry in 60 s'));
    expect(guess(5, '10.0.0.2')).toEqual(failure(5, 4401, 'IDENTIFY: wrong password'));
    sim.now += 60_000;
    expect(guess(6, '10.0.0.1')).toEqual(failure(6, 4401, 'IDENTIFY: wrong password'));
  });

  it('counts refused tokens too, and logs the start of a cool-down once', () => {
    const sim = new Sim({ authFailures: 1 });
    withToken(sim, 1, { app_name: 'web', client_id: 'u1' }, { error: 'bad' }, '10.0.0.9');
    const logs: string[] = [];
    sim.open(2, undefined, '10.0.0.9');
    sim.send(2, { op: 1, d: { app_name: 'web', client_id: 'u1', token: 't' } });
    sim.verified(2, { error: 'bad' });
    for (const output of sim.raw) if (output.type === 'log') logs.push(output.msg);
    expect(logs).toEqual(['too many failed authentications: cooling down']);
  });

  it('without a known address (an embedder that passes none) there is no budget', () => {
    const sim = new Sim({ authFailures: 1 });
    for (let conn = 1; conn <= 5; conn++) {
      sim.open(conn);
      expect(sim.send(conn, { op: 1, d: { app_name: 'a', client_id: 'b', password: 'x' } })[1]).toMatchObject({ close: 4401 });
    }
  });
});
