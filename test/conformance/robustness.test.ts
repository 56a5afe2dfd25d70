// docs/protocol.md §4 (errors) under load: bad frames never crash the server,
// never affect another connection, and never lose or reorder a message
// accepted from someone else.

import { zlibSync } from 'fflate';
import { describe, expect, it } from 'vitest';
import { TestClient, type Wire } from './client.ts';
import { dispatchFrame, getClients, identified, MAX_PAYLOAD, RUNTIMES, uid, useServer, type RunningServer } from './harness.ts';

const GARBAGE_CONNECTIONS = 20;
const ROUNDS = 5;
const EXCHANGED = 500;

/** Frames that each must end the connection that sends them, whatever it did before. */
function garbage(i: number, password: string): { wire: Wire; frames: (string | Uint8Array)[] } {
  const kinds: { wire: Wire; frames: (string | Uint8Array)[] }[] = [
    { wire: {}, frames: ['{"op":', '{"op":3}'] },
    { wire: {}, frames: ['{"op":3}', '[[[[[[[[[[]]]]]]]]]]'] },
    { wire: {}, frames: ['{"op":1e400}'] },
    { wire: {}, frames: ['{"op":8,"e":"X","to":{"app_name":"x"}}'] },
    { wire: {}, frames: [`{"op":1,"d":{"app_name":"x","client_id":"y","password":"${password}wrong"}}`] },
    { wire: {}, frames: ['{"op":1,"d":{"app_name":"x","client_id":"y","password":"p","metadata":{"__proto__":{"a":1}}}}', '{"op":0}'] },
    { wire: {}, frames: [Uint8Array.of(0xff, 0xfe, 0xfd)] },
    { wire: { format: 'msgpack' }, frames: [Uint8Array.of(0xc1), '{"op":3}'] },
    { wire: { format: 'msgpack' }, frames: [Uint8Array.of(0xdf, 0xff, 0xff, 0xff, 0xff)] },
    { wire: { compression: 'zlib' }, frames: [Uint8Array.of(0x78, 0x9c, 1, 2, 3, 4)] },
    { wire: { compression: 'zlib' }, frames: [zlibSync(new Uint8Array(MAX_PAYLOAD * 8))] },
    { wire: {}, frames: [`{"op":3,"d":"${'x'.repeat(MAX_PAYLOAD + 1)}"}`] },
    { wire: {}, frames: ['{"op":7,"d":{"a":1}}'] },
    { wire: {}, frames: ['{"op":6,"d":"no u"}'] },
  ];
  return kinds[i % kinds.length]!;
}

/** The close code each garbage connection got, labelled with what it sent. */
async function misbehave(server: RunningServer, index: number): Promise<{ sent: string; code: number }[]> {
  const codes: { sent: string; code: number }[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const { wire, frames } = garbage(index + round, server.password);
    const client = new TestClient(server.url, wire);
    await client.opened;
    // Send without waiting for HELLO, several times over, as a broken client would.
    for (let i = 0; i < 3; i++) for (const frame of frames) if (client.ws.readyState === client.ws.OPEN) client.sendRaw(frame);
    const sent = frames.map((f) => (typeof f === 'string' ? f.slice(0, 60) : `<${f.byteLength} bytes>`)).join(' ');
    codes.push({ sent: `${JSON.stringify(wire)} ${sent}`, code: (await client.closed).code });
  }
  return codes;
}

for (const runtime of RUNTIMES) {
  describe(`${runtime}: robustness`, () => {
    const server = useServer(runtime);

    it(`${GARBAGE_CONNECTIONS} connections sending garbage while a pair exchanges ${EXCHANGED} dispatches each way: nothing lost or reordered`, async () => {
      const app = uid('pair');
      const a = await identified(server(), app, 'a');
      const b = await identified(server(), app, 'b', { format: 'msgpack' });
      const received = { a: [] as any[], b: [] as any[] };
      const collect = async (client: TestClient, into: any[], e: string) => {
        while (into.length < EXCHANGED) into.push(await client.event(e, 10_000));
      };
      const storm = Promise.all(Array.from({ length: GARBAGE_CONNECTIONS }, (_, i) => misbehave(server(), i)));
      const done = Promise.all([collect(a, received.a, 'B_TO_A'), collect(b, received.b, 'A_TO_B')]);
      for (let i = 0; i < EXCHANGED; i++) {
        a.send(dispatchFrame('A_TO_B', { app_name: app, client_id: 'b' }, { d: i }));
        // Alternate targeting styles so every routing path is under the same load.
        b.send(dispatchFrame('B_TO_A', i % 2 ? { app_name: app, client_id: 'a' } : { app_name: app }, { d: i }));
        if (i % 50 === 0) await new Promise((r) => setImmediate(r));
      }
      const codes = (await storm).flat();
      await done;

      for (const list of [received.a, received.b]) {
        expect(list.map((f) => f.d)).toEqual(Array.from({ length: EXCHANGED }, (_, i) => i));
        expect(list.map((f) => f.s)).toEqual(Array.from({ length: EXCHANGED }, (_, i) => i + 1));
      }
      // Every garbage connection was closed by the server with a protocol code, not left hanging or dropped.
      expect(codes).toHaveLength(GARBAGE_CONNECTIONS * ROUNDS);
      for (const { sent, code } of codes) expect([4400, 4401, 4403, 4413], sent).toContain(code);

      // Still healthy and still routing.
      const health = await (await fetch(`${server().http}/health`)).json();
      expect(health.status).toBe('ok');
      expect((await getClients(server(), app)).map((c) => c.client_id).sort()).toEqual(['a', 'b']);
      a.send(dispatchFrame('AFTER', { app_name: app, client_id: 'b' }));
      expect(await b.event('AFTER')).toMatchObject({ s: EXCHANGED + 1 });
    });
  });
}
