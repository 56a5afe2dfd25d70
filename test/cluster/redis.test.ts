// The redis-server the cluster suites start for themselves (test/support/redis.ts):
// it answers on its own port, forgets everything on a restart without
// persistence, keeps it with AOF, and comes back on the same port after a kill.

import { afterEach, expect, it } from 'vitest';
import { describeWithRedis, startRedis, type RedisServer } from '../support/redis.ts';

describeWithRedis('test redis-server', () => {
  const started: RedisServer[] = [];
  afterEach(async () => {
    await Promise.all(started.splice(0).map((redis) => redis.dispose()));
  });

  async function redis(options: { appendonly?: boolean } = {}): Promise<RedisServer> {
    const server = await startRedis(options);
    started.push(server);
    return server;
  }

  it('answers PING on a free port of its own, with no persistence by default', async () => {
    const [a, b] = await Promise.all([redis(), redis()]);
    expect(a.port).not.toBe(b.port);
    expect(a.url).toBe(`redis://127.0.0.1:${a.port}`);
    expect(await a.command(['PING'])).toBe('PONG');
    expect(await a.command(['CONFIG', 'GET', 'appendonly'])).toEqual(['appendonly', 'no']);
    expect(await a.command(['CONFIG', 'GET', 'save'])).toEqual(['save', '']);
  });

  it('stop, then start again on the same port: without persistence the data is gone', async () => {
    const server = await redis();
    expect(await server.command(['SET', 'k', 'v'])).toBe('OK');
    await server.stop();
    expect(server.running).toBe(false);
    expect(await server.ping()).toBe(false);
    await server.start();
    expect(await server.ping()).toBe(true);
    expect(await server.command(['GET', 'k'])).toBeNull();
  });

  it('with AOF, the data survives a graceful stop and a SIGKILL', async () => {
    const server = await redis({ appendonly: true });
    expect(await server.command(['CONFIG', 'GET', 'appendonly'])).toEqual(['appendonly', 'yes']);
    await server.command(['SET', 'kept', '1']);
    await server.stop();
    await server.start();
    expect(await server.command(['GET', 'kept'])).toBe('1');
    await server.command(['SET', 'kept', '2']);
    await server.kill();
    expect(await server.ping()).toBe(false);
    await server.start();
    expect(await server.command(['GET', 'kept'])).toBe('2');
  });

  it('an error reply is thrown with the server\'s message', async () => {
    const server = await redis();
    await expect(server.command(['NOSUCHCOMMAND'])).rejects.toThrow(/unknown command/i);
  });
});
