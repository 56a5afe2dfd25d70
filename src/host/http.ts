// The one Hono app every runtime serves on the WebSocket port: /health,
// /metrics, /clients, POST /dispatch, and the upgrade on `/` where the runtime
// upgrades inside fetch (Deno, Bun, Cloudflare).

import { Hono, type Context, type MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { passwordMatches } from '../core/password.ts';
import type { Wire } from '../core/protocol.ts';
import { parseWire, type HostConfig } from './config.ts';
import type { Hub } from './hub.ts';

/** Performs the runtime's WebSocket upgrade for an already-validated request. */
export type Upgrade = (c: Context, wire: Wire) => Response | Promise<Response>;

/** The password, or a token whose claims say `admin`; answers 401 or 403 otherwise. */
async function authorize(header: string | undefined, hub: Hub): Promise<{ status: 401 | 403; error: string } | undefined> {
  const match = /^Bearer (.+)$/.exec(header ?? '');
  if (!match) return { status: 401, error: 'missing bearer token in Authorization' };
  const credential = match[1]!;
  if (passwordMatches(credential, hub.config.password)) return undefined;
  // Anything shaped like a JWT is checked as one; anything else was a wrong password.
  if (credential.split('.').length !== 3) return { status: 401, error: 'wrong bearer token in Authorization' };
  try {
    const claims = await hub.verifyToken(credential);
    if (claims.exp !== undefined && claims.exp <= Date.now()) return { status: 401, error: 'the token has expired' };
    return claims.admin === true ? undefined : { status: 403, error: 'this token may not use the HTTP routes: it is not an admin token' };
  } catch (error) {
    return { status: 401, error: error instanceof Error ? error.message : 'invalid token' };
  }
}

function originAllowed(origin: string | undefined, allowed: readonly string[] | '*' | undefined): boolean {
  // Services send no Origin; only browsers do, and only they are held to the list.
  return origin === undefined || allowed === undefined || allowed === '*' || allowed.includes(origin);
}

/** Answers a WebSocket request whose query is bad, whose Origin is not allowed, or that arrives while draining. */
export function refuseUpgrade(url: URL, hub: Hub, origin?: string): Response | Wire {
  const wire = parseWire(url);
  if ('error' in wire) return new Response(`${wire.error}\n`, { status: 400, headers: { 'content-type': 'text/plain' } });
  if (!originAllowed(origin, (hub.config as HostConfig).allowedOrigins)) {
    return Response.json({ error: `origin ${origin} is not allowed: see NERVE_ALLOWED_ORIGINS` }, { status: 403 });
  }
  if (hub.draining) return new Response('server is shutting down\n', { status: 503, headers: { 'content-type': 'text/plain' } });
  return wire;
}

export function createHttpApp(hub: Hub, upgrade?: Upgrade): Hono {
  const app = new Hono();

  // A node cut off from its cluster answers 503 so the load balancer can tell, though it still serves its own clients.
  app.get('/health', (c) => {
    const health = hub.health();
    return c.json(health, hub.draining || health.cluster === 'down' ? 503 : 200);
  });

  app.get('/metrics', (c) => c.text(hub.metrics(), 200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }));

  const requirePassword: MiddlewareHandler = async (c, next) => {
    const refused = await authorize(c.req.header('authorization'), hub);
    if (refused) return c.json({ error: refused.error }, refused.status);
    await next();
  };
  app.use('/clients', requirePassword);
  app.use('/dispatch', requirePassword);

  app.get('/clients', (c) => c.json(hub.clients(c.req.query('app_name'))));

  // The frame limit holds for HTTP bodies too, checked on Content-Length and
  // while reading, so an oversized body is refused before it is buffered.
  app.post(
    '/dispatch',
    bodyLimit({
      maxSize: hub.config.maxPayload,
      onError: (c) => c.json({ error: `body exceeds the limit of ${hub.config.maxPayload} bytes` }, 413),
    }),
  );
  app.post('/dispatch', async (c) => {
    let body: unknown;
    try {
      body = JSON.parse(await c.req.text());
    } catch {
      return c.json({ error: 'body must be a JSON object' }, 400);
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      return c.json({ error: 'body must be a JSON object' }, 400);
    }
    const result = hub.dispatch(body);
    if (!result.ok) return c.json({ error: result.error }, result.status);
    // In a cluster the answer is an acknowledgement like NERVE_ACK: sent once the event is stored.
    await hub.whenStored();
    return c.json({ delivered: result.delivered, queued: result.queued });
  });

  app.get('/', (c) => {
    if (c.req.header('upgrade')?.toLowerCase() !== 'websocket') {
      return c.text('Nerve speaks WebSocket on this path; see /health for status.\n', 426);
    }
    const wire = refuseUpgrade(new URL(c.req.url), hub, c.req.header('origin'));
    if (wire instanceof Response) return wire;
    if (!upgrade) return c.text('WebSocket upgrade is handled by the server, not this app\n', 500);
    return upgrade(c, wire);
  });

  app.notFound((c) => c.json({ error: `no route ${c.req.method} ${new URL(c.req.url).pathname}` }, 404));
  app.onError((error, c) => {
    hub.log('error', 'http handler failed', { path: c.req.path, error: error.stack ?? String(error) });
    return c.json({ error: 'internal error' }, 500);
  });
  return app;
}
