// src/core/persist.ts without workerd: a hub rebuilt from what the Durable
// Object would have stored (changesets and socket attachments, through JSON)
// must answer every later input exactly as the hub that never slept.

import { pack } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { DEFAULT_LIMITS, listClients, stats, step, type CoreConfig, type Input, type Output, type State } from '../../src/core/index.ts';
import { connRecord, Persister, type Changeset, type ConnRecord, type Stored } from '../../src/core/persist.ts';
import { createState } from '../../src/core/state.ts';

const config: CoreConfig = {
  ...DEFAULT_LIMITS,
  worker: 'nerve-c0ffee',
  password: 'pw',
  heartbeatInterval: 1_000,
  queueTtl: 3_000,
  resumeWindow: 5_000,
  replayMaxCount: 3,
  rateLimit: 50,
};

const json = (frame: object) => JSON.stringify(frame);
const identify = (app_name: string, client_id: string, extra: object = {}) =>
  json({ op: 1, d: { app_name, client_id, password: 'pw', ...extra } });
const dispatch = (e: string, to: object, extra: object = {}) => json({ op: 8, e, d: { e }, to, ...extra });

/** A conversation touching every persisted piece: metadata, cursors, held queues, replay, resume, expiry. */
function script(): Input[] {
  let now = 10_000;
  const at = (ms = 10) => (now += ms);
  const msg = (conn: number, data: string | Uint8Array): Input => ({ type: 'message', now: at(), conn, data });
  return [
    { type: 'open', now: at(), conn: 1, wire: { format: 'json', compression: 'none' } },
    { type: 'open', now: at(), conn: 2, wire: { format: 'json', compression: 'none' } },
    { type: 'open', now: at(), conn: 3, wire: { format: 'msgpack', compression: 'none' } },
    msg(1, identify('api', 'a1', { metadata: { region: 'eu' } })),
    msg(2, identify('gw', 'g1', { metadata: { users: ['7'] } })),
    msg(3, pack({ op: 1, d: { app_name: 'gw', client_id: 'g2', password: 'pw', metadata: { users: ['8'] } } })),
    msg(1, dispatch('RR', { app_name: 'gw' })),
    msg(1, dispatch('RR', { app_name: 'gw' })),
    msg(1, dispatch('RR', { app_name: 'gw' })),
    msg(1, dispatch('Q', { app_name: 'gw', query: { users: '8' }, mode: 'all' })),
    msg(1, dispatch('HELD', { app_name: 'late', client_id: 'l1' }, { nonce: 'n-held' })),
    msg(1, dispatch('KEY', { app_name: 'gw', key: 'user-42' })),
    { type: 'close', now: at(), conn: 2, code: 4000 },
    msg(1, dispatch('AWAY', { app_name: 'gw', client_id: 'g1' }, { nonce: 'n-1' })),
    msg(1, dispatch('AWAY', { app_name: 'gw', client_id: 'g1' })),
    msg(1, dispatch('AWAY', { app_name: 'gw', client_id: 'g1' })),
    msg(1, dispatch('AWAY', { app_name: 'gw', client_id: 'g1' }, { nonce: 'n-4' })),
    { type: 'heartbeat', now: at(), conn: 1, at: now - 5 },
    msg(3, pack({ op: 7, d: { users: ['7', '8'], region: null } })),
    msg(1, dispatch('Q7', { app_name: 'gw', query: { users: '7' }, mode: 'all' })),
    msg(1, '{"op":3}'),
    { type: 'tick', now: at(1_200) },
    { type: 'open', now: at(), conn: 4, wire: { format: 'json', compression: 'zlib' } },
    { type: 'tick', now: at(400) },
    { type: 'open', now: at(), conn: 5, wire: { format: 'json', compression: 'none' } },
    msg(5, identify('gw', 'g1', { reconnect: true, seq: 2 })),
    { type: 'open', now: at(), conn: 6, wire: { format: 'json', compression: 'none' } },
    msg(6, identify('late', 'l1')),
    { type: 'dispatch', now: at(), request: 1, body: { e: 'HTTP', d: 1, to: { app_name: 'gw', mode: 'all' } } },
    msg(6, identify('late', 'l1')),
    { type: 'tick', now: at(3_500) },
    { type: 'tick', now: at(6_000) },
    { type: 'close', now: at(), conn: 1, code: 1000 },
  ];
}

/** What the Durable Object keeps: SQL rows and attachments, each through JSON as storage would. */
class FakeStorage {
  meta: Stored['meta'];
  sessions = new Map<number, string>();
  replay = new Map<string, string>();
  apps = new Map<string, string>();
  held = new Map<number, string>();
  attachments = new Map<number, string>();

  apply(changes: Changeset): void {
    for (const ord of changes.dropSessions) {
      this.sessions.delete(ord);
      for (const key of [...this.replay.keys()]) if (key.startsWith(`${ord}:`)) this.replay.delete(key);
    }
    for (const { ord, below } of changes.trimReplay) {
      for (const key of [...this.replay.keys()]) {
        const [o, s] = key.split(':').map(Number);
        if (o === ord && s! < below) this.replay.delete(key);
      }
    }
    for (const name of changes.dropApps) this.apps.delete(name);
    for (const id of changes.dropHeld) this.held.delete(id);
    for (const record of changes.sessions) this.sessions.set(record.ord, JSON.stringify(record));
    for (const record of changes.replay) this.replay.set(`${record.ord}:${record.s}`, JSON.stringify(record));
    for (const record of changes.apps) this.apps.set(record.name, JSON.stringify(record));
    for (const record of changes.held) this.held.set(record.id, JSON.stringify(record));
    if (changes.meta) this.meta = JSON.parse(JSON.stringify(changes.meta));
  }

  /** The adapter's rule: the input's connection and every connection a close went to. */
  attach(state: State, input: Input, outputs: Output[]): void {
    const ids = new Set<number>();
    if ('conn' in input) ids.add(input.conn);
    for (const output of outputs) if (output.type === 'close') ids.add(output.conn);
    for (const id of ids) {
      const conn = state.conns.get(id);
      if (conn) this.attachments.set(id, JSON.stringify(connRecord(conn, state.config.rateLimit > 0)));
      else this.attachments.delete(id);
    }
  }

  stored(): Stored {
    const parse = <T>(map: Map<unknown, string>) => [...map.values()].map((v) => JSON.parse(v) as T);
    return { meta: this.meta, sessions: parse(this.sessions), replay: parse(this.replay), apps: parse(this.apps), held: parse(this.held) };
  }

  conns(): ConnRecord[] {
    return [...this.attachments.values()].map((v) => JSON.parse(v) as ConnRecord);
  }
}

function persisted(inputs: Input[]): { state: State; storage: FakeStorage; outputs: Output[][] } {
  const state = createState(config);
  const persister = new Persister();
  persister.track(state);
  const storage = new FakeStorage();
  const outputs: Output[][] = [];
  for (const input of inputs) {
    const [, out] = step(state, input);
    storage.apply(persister.flush(state));
    storage.attach(state, input, out);
    outputs.push(out);
  }
  return { state, storage, outputs };
}

function view(state: State) {
  return { clients: listClients(state), stats: stats(state) };
}

describe('persist: restore is indistinguishable from never sleeping', () => {
  const inputs = script();
  const reference = persisted(inputs);

  it('the script exercises what it claims to', () => {
    const all = reference.outputs.flat();
    const sent = all.filter((o) => o.type === 'send').map((o) => (typeof o.data === 'string' ? o.data : ''));
    expect(sent.some((d) => d.includes('NERVE_UNDELIVERABLE'))).toBe(true); // replay overflow of an unwritten directed event
    expect(sent.some((d) => d.includes('"e":"HELD"'))).toBe(true); // held event delivered on identify
    expect(all.some((o) => o.type === 'close' && o.code === 4408)).toBe(true);
    expect(all.some((o) => o.type === 'log' && o.msg === 'resumed')).toBe(true);
    expect(all.some((o) => o.type === 'close' && o.code === 4403)).toBe(true);
    expect(reference.storage.sessions.size).toBe(0);
  });

  for (let cut = 1; cut < inputs.length; cut++) {
    it(`restored after input ${cut} (${inputs[cut - 1]!.type}) continues identically`, () => {
      const before = persisted(inputs.slice(0, cut));
      const { state: restored, persister } = Persister.restore(config, before.storage.stored(), before.storage.conns(), inputs[cut - 1]!.now);
      expect(view(restored)).toEqual(view(before.state));
      const storage = before.storage;
      for (let i = cut; i < inputs.length; i++) {
        const [, out] = step(restored, inputs[i]!);
        storage.apply(persister.flush(restored));
        storage.attach(restored, inputs[i]!, out);
        expect(out, `input ${i} (${inputs[i]!.type})`).toEqual(reference.outputs[i]);
      }
      expect(view(restored)).toEqual(view(reference.state));
      // What the restored hub wrote is what the uninterrupted one wrote.
      expect(storage.stored()).toEqual(reference.storage.stored());
    });
  }

  it('a session whose socket vanished while nothing ran becomes resumable from the wake-up time', () => {
    const before = persisted(inputs.slice(0, 6));
    const wake = 50_000;
    const { state } = Persister.restore(config, before.storage.stored(), [], wake);
    expect(state.conns.size).toBe(0);
    expect(listClients(state).map((c) => [c.client_id, c.connected])).toEqual([
      ['a1', false],
      ['g1', false],
      ['g2', false],
    ]);
    expect([...state.sessions.values()].every((s) => s.expiresAt === wake + config.resumeWindow)).toBe(true);
    const [, out] = step(state, { type: 'tick', now: wake + config.resumeWindow });
    expect(out).toEqual([]);
    expect(state.sessions.size).toBe(0);
  });

  it('keeps a connection record well under the 2 KiB attachment limit', () => {
    const state = createState(config);
    step(state, { type: 'open', now: 1, conn: 1, wire: { format: 'msgpack', compression: 'none' } });
    const long = 'x'.repeat(128);
    const [, out] = step(state, { type: 'message', now: 2, conn: 1, data: pack({ op: 1, d: { app_name: long, client_id: long, password: 'pw' } }) });
    expect(out.some((o) => o.type === 'close')).toBe(false);
    const size = new TextEncoder().encode(JSON.stringify(connRecord(state.conns.get(1)!, true))).byteLength;
    expect(size).toBeLessThan(512);
  });
});
