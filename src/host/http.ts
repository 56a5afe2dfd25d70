// The one Hono app every runtime serves on the WebSocket port: /health,
// /metrics, /clients, POST /dispatch, and the upgrade on `/` where the runtime
// upgrades inside fetch (Deno, Bun, Cloudflare).

import { Hono, type Context, type MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { passwordMatches } from '../core/password.ts';
import type { Wire } from '../core/protocol.ts';
import { parseWire } from './config.ts';
import type { Hub } from './hub.ts';

/** Performs the runtime's WebSocket upgrade for an already-validated request. */
export type Upgrade = (c: Context, wire: Wire) => Response | Promise<Response>;

function bearerMatches(header: string | undefined, password: string): boolean {
  const match = /^Bearer (.+)$/.exec(header ?? '');
  return match !== null && passwordMatches(match[1]!, password);
}

/** Answers a WebSocket request whose query is bad, or that arrives while draining. */
export function refuseUpgrade(url: URL, hub: Hub): Response | Wire {
  const wire = parseWire(url);
  if ('error' in wire) return new Response(`${wire.error}\n`, { status: 400, headers: { 'content-type': 'text/plain' } });
  if (hub.draining) return new Response('server is shutting down\n', { status: 503, headers: { 'content-type': 'text/plain' } });
  return wire;
}

export function createHttpApp(hub: Hub, upgrade?: Upgrade): Hono {
  const app = new Hono();

  app.get('/health', (c) => c.json(hub.health(), hub.draining ? 503 : 200));

  app.get('/metrics', (c) => c.text(hub.metrics(), 200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }));

  const requirePassword: MiddlewareHandler = async (c, next) => {
    if (!bearerMatches(c.req.header('authorization'), hub.config.password)) {
      return c.json({ error: 'missing or wrong bearer token in Authorization' }, 401);
    }
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
    return c.json({ delivered: result.delivered, queued: result.queued });
  });

  app.get('/', (c) => {
    if (c.req.header('upgrade')?.toLowerCase() !== 'websocket') {
      return c.text('Nerve speaks WebSocket on this path; see /health for status.\n', 426);
    }
    const wire = refuseUpgrade(new URL(c.req.url), hub);
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
