// src/core/persist.ts and src/host/storage.ts without workerd: a hub rebuilt
// from what the Durable Object would have stored (changesets and socket
// attachments, through JSON) must answer every later input exactly as the hub
// that never slept, also when a storage write failed on the way.

import { pack } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { DEFAULT_LIMITS, listClients, stats, step, type CoreConfig, type Input, type Output, type State } from '../../src/core/index.ts';
import { connRecord, Persister, type Changeset, type ConnRecord, type Stored } from '../../src/core/persist.ts';
import { createState } from '../../src/core/state.ts';
import { MemoryStorage, StorageWriter, type HubStorage } from '../../src/host/storage.ts';

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
class FakeStorage extends MemoryStorage {
  attachments = new Map<number, string>();
  /** Makes a write throw, as SQLite does for a row over its size limit, having applied nothing. */
  refuse: ((changes: Changeset) => boolean) | undefined;
  /** Every changeset a write was asked to apply, refused or not. */
  readonly writes: Changeset[] = [];

  override write(changes: Changeset): void {
    this.writes.push(changes);
    if (this.refuse?.(changes)) throw new Error('row too big');
    super.write(changes);
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

  conns(): ConnRecord[] {
    return [...this.attachments.values()].map((v) => JSON.parse(v) as ConnRecord);
  }
}

/** The host's order: write the changeset, then commit it. */
function save(persister: Persister, storage: HubStorage, state: State): void {
  const changes = persister.flush(state);
  storage.write(changes);
  persister.commit(changes);
}

function persisted(inputs: Input[]): { state: State; storage: FakeStorage; outputs: Output[][] } {
  const state = createState(config);
  const persister = new Persister();
  persister.track(state);
  const storage = new FakeStorage();
  const outputs: Output[][] = [];
  for (const input of inputs) {
    const [, out] = step(state, input);
    save(persister, storage, state);
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
      const { state: restored, persister } = Persister.restore(config, before.storage.load(), before.storage.conns(), inputs[cut - 1]!.now);
      expect(view(restored)).toEqual(view(before.state));
      const storage = before.storage;
      for (let i = cut; i < inputs.length; i++) {
        const [, out] = step(restored, inputs[i]!);
        save(persister, storage, restored);
        storage.attach(restored, inputs[i]!, out);
        expect(out, `input ${i} (${inputs[i]!.type})`).toEqual(reference.outputs[i]);
      }
      expect(view(restored)).toEqual(view(reference.state));
      // What the restored hub wrote is what the uninterrupted one wrote.
      expect(storage.load()).toEqual(reference.storage.load());
    });
  }

  it('a session whose socket vanished while nothing ran becomes resumable from the wake-up time', () => {
    const before = persisted(inputs.slice(0, 6));
    const wake = 50_000;
    const { state } = Persister.restore(config, before.storage.load(), [], wake);
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

/** Storage rows in key order, since a row written late sits elsewhere in a map than one written on time. */
function rows(stored: Stored): Stored {
  const by = <T>(list: T[], key: (row: T) => string | number) =>
    [...list].sort((a, b) => {
      const x = key(a);
      const y = key(b);
      return x < y ? -1 : x > y ? 1 : 0;
    });
  return {
    meta: stored.meta,
    sessions: by(stored.sessions, (r) => r.ord),
    replay: by(stored.replay, (r) => r.ord * 1e6 + r.s),
    apps: by(stored.apps, (r) => r.name),
    held: by(stored.held, (r) => r.id),
  };
}

interface Logged {
  level: string;
  msg: string;
  fields?: Record<string, unknown> | undefined;
}

/** The host's loop with StorageWriter: step, save, attach. `refuse` is consulted on every write. */
function hosted(inputs: Input[], storage = new FakeStorage()) {
  const state = createState(config);
  const persister = new Persister();
  persister.track(state);
  const logs: Logged[] = [];
  const writer = new StorageWriter(storage, persister, (level, msg, fields) => logs.push({ level, msg, fields }));
  const outputs: Output[][] = [];
  const snapshots: Stored[] = [];
  /** Whether the step's changeset had anything to write. */
  const wrote: boolean[] = [];
  const run = (input: Input) => {
    const [, out] = step(state, input);
    const writes = storage.writes.length;
    writer.save(state);
    wrote.push(storage.writes.length > writes);
    storage.attach(state, input, out);
    outputs.push(out);
    snapshots.push(rows(storage.load()));
  };
  for (const input of inputs) run(input);
  return { state, storage, writer, logs, outputs, snapshots, wrote, run };
}

/** The rest of the script on a hub restored from `storage`, checked against the hub that never failed or slept. */
function continuesIdentically(storage: FakeStorage, inputs: Input[], from: number, reference: ReturnType<typeof hosted>): void {
  const { state, persister } = Persister.restore(config, storage.load(), storage.conns(), inputs[from - 1]!.now);
  for (let i = from; i < inputs.length; i++) {
    const [, out] = step(state, inputs[i]!);
    save(persister, storage, state);
    storage.attach(state, inputs[i]!, out);
    expect(out, `input ${i} (${inputs[i]!.type})`).toEqual(reference.outputs[i]);
  }
  expect(view(state)).toEqual(view(reference.state));
  expect(rows(storage.load())).toEqual(rows(reference.storage.load()));
}

/** The keys a changeset puts, to compare what one write carried with the next. */
function puts(changes: Changeset): string[] {
  return [
    ...changes.sessions.map((r) => `session ${r.ord}`),
    ...changes.replay.map((r) => `replay ${r.ord}:${r.s}`),
    ...changes.apps.map((r) => `app ${r.name}`),
    ...changes.held.map((r) => `held ${r.id}`),
    ...(changes.meta ? ['meta'] : []),
  ];
}

describe('persist: a failed storage write', () => {
  const inputs = script();
  const reference = hosted(inputs);

  for (let failAt = 0; failAt < inputs.length - 1; failAt++) {
    if (!reference.wrote[failAt]) continue;
    it(`refused once at input ${failAt} (${inputs[failAt]!.type}) is written with the next step, and a restore continues identically`, () => {
      const storage = new FakeStorage();
      const host = hosted([], storage);
      for (let i = 0; i < failAt; i++) host.run(inputs[i]!);
      const before = rows(storage.load());
      const writes = storage.writes.length;
      storage.refuse = () => storage.writes.length === writes + 1;
      host.run(inputs[failAt]!);

      // Nothing was recorded as stored: storage is where it was, and the hub carried on.
      expect(host.outputs[failAt]).toEqual(reference.outputs[failAt]);
      expect(rows(storage.load())).toEqual(before);
      expect(host.writer.behind).toBe(true);
      expect(host.writer.retrying).toBe(true);
      expect(host.logs).toEqual([{ level: 'warn', msg: 'storage write failed; retrying with the next step', fields: { error: 'row too big' } }]);

      host.run(inputs[failAt + 1]!);
      const failed = storage.writes[writes]!;
      const next = storage.writes[writes + 1]!;
      const dropped = new Set(next.dropSessions);
      // What failed is sent again, unless the next step dropped it anyway.
      for (const key of puts(failed)) {
        const ord = /^(?:session|replay) (\d+)/.exec(key)?.[1];
        if (ord === undefined || !dropped.has(Number(ord))) expect(puts(next)).toContain(key);
      }
      expect(host.snapshots[failAt + 1]).toEqual(reference.snapshots[failAt + 1]);
      expect(host.writer.behind).toBe(false);
      expect(host.logs.at(-1)).toEqual({ level: 'info', msg: 'storage write recovered', fields: { failedWrites: 1 } });

      continuesIdentically(storage, inputs, failAt + 2, reference);
    });
  }

  it('refused for one record: the rest is written at the second attempt, the record is logged as lost, later writes go through', () => {
    let now = 1_000;
    const at = () => (now += 10);
    const send = (e: string, d: unknown): Input => ({ type: 'message', now: at(), conn: 1, data: json({ op: 8, e, d, to: { app_name: 'gw', client_id: 'g1' } }) });
    const inputs: Input[] = [
      { type: 'open', now: at(), conn: 1, wire: { format: 'json', compression: 'none' } },
      { type: 'message', now: at(), conn: 1, data: identify('api', 'a1') },
      { type: 'open', now: at(), conn: 2, wire: { format: 'json', compression: 'none' } },
      { type: 'message', now: at(), conn: 2, data: identify('gw', 'g1') },
      { type: 'close', now: at(), conn: 2, code: 4000 },
      send('ONE', 1),
      send('BIG', 'x'.repeat(4_000)),
      send('TWO', 2),
      send('THREE', 3),
    ];
    const storage = new FakeStorage();
    // Any row over 2,000 bytes is refused, every time, as SQLite refuses one over its limit.
    storage.refuse = (changes) => [...changes.replay, ...changes.held].some((row) => JSON.stringify(row).length > 2_000);
    const host = hosted(inputs.slice(0, 7), storage);
    const g1 = [...host.state.sessions.values()].find((session) => session.clientId === 'g1')!;
    expect(host.logs.map((l) => l.msg)).toEqual(['storage write failed; retrying with the next step']);
    expect(storage.load().replay.filter((r) => r.ord === g1.ordinal).map((r) => r.s)).toEqual([1]);

    host.run(inputs[7]!);
    expect(host.logs.slice(1)).toEqual([{ level: 'error', msg: 'storage write lost records', fields: { count: 1, records: [`replay ${g1.ordinal}:2`], error: 'row too big' } }]);
    expect(host.writer.behind).toBe(false);
    expect(storage.load().replay.filter((r) => r.ord === g1.ordinal).map((r) => r.s)).toEqual([1, 3]);
    // The session header written with the rest carries the step that failed twice.
    expect(storage.load().sessions.find((r) => r.ord === g1.ordinal)?.seq).toBe(3);

    const resume: Input[] = [
      { type: 'open', now: at(), conn: 3, wire: { format: 'json', compression: 'none' } },
      { type: 'message', now: at(), conn: 3, data: identify('gw', 'g1', { reconnect: true, seq: 0 }) },
    ];
    const events = (out: Output[]) =>
      out.flatMap((o) => (o.type === 'send' && typeof o.data === 'string' ? [JSON.parse(o.data) as { e?: string; s?: number; d?: unknown }] : []));
    // After a wake now, the buffer starts past the lost entry (ONE, stored, goes with it), and the client is told what it missed.
    const { state: woken } = Persister.restore(config, storage.load(), storage.conns(), now);
    const out = step(woken, resume[0]!)[1].concat(step(woken, resume[1]!)[1]);
    const frames = events(out).filter((f) => f.e !== undefined);
    expect(frames.map((f) => [f.e, f.s])).toEqual([
      ['NERVE_SESSION', undefined],
      ['TWO', 3],
    ]);
    expect(frames[0]!.d).toMatchObject({ resumed: true, s: 3, replayed: 1, missed: 2 });

    const writes = storage.writes.length;
    host.run(inputs[8]!);
    expect(storage.writes.length).toBe(writes + 1);
    expect(storage.writes.at(-1)!.replay.map((r) => r.s)).toEqual([4]);
    expect(host.logs).toHaveLength(2);

    // Memory lost nothing: without a wake, g1 resuming gets its whole buffer (three entries), BIG included.
    const live = step(host.state, resume[0]!)[1].concat(step(host.state, resume[1]!)[1]);
    expect(events(live).filter((f) => f.e !== undefined).map((f) => [f.e, f.s])).toEqual([
      ['NERVE_SESSION', undefined],
      ['BIG', 2],
      ['TWO', 3],
      ['THREE', 4],
    ]);
  });

  it('refused for every record: nothing is dropped, and everything is written once storage accepts writes', () => {
    const inputs = script();
    const storage = new FakeStorage();
    const host = hosted(inputs.slice(0, 8), storage);
    storage.refuse = () => true;
    for (let i = 8; i < 12; i++) host.run(inputs[i]!);
    expect(host.writer.behind).toBe(true);
    // A failing store gets no retry timer of its own: an idle hub may still hibernate.
    expect(host.writer.retrying).toBe(false);
    expect(host.logs.map((l) => l.msg)).toEqual([
      'storage write failed; retrying with the next step',
      'storage refuses every record; storage stays behind until it accepts writes',
    ]);
    storage.refuse = undefined;
    host.run(inputs[12]!);
    expect(host.writer.behind).toBe(false);
    expect(host.snapshots[12]).toEqual(reference.snapshots[12]);
    continuesIdentically(storage, inputs, 13, reference);
  });
});
