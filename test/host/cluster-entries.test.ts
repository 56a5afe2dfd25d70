// How node messages become one stream entry and are read back: an event's
// frame head travels as its own line, byte for byte, and an entry that is not
// a node's message list is counted and skipped, never half-read.

import { describe, expect, it } from 'vitest';
import type { NodeMessage } from '../../src/core/cluster-messages.ts';
import { relayedRecord, replayRecords, routedFrom, sessionFromRecord, type Changeset } from '../../src/core/persist.ts';
import { createState, DEFAULT_LIMITS } from '../../src/core/index.ts';
import fc from 'fast-check';
import { Client, Cluster } from '../core/cluster-harness.ts';
import { EntryLines, LineStarts, messageLines, parseEntries, ReplayChunks, xaddCommand } from '../../src/host/cluster/namespace.ts';

const head = '{"op":8,"e":"HELLO \\"you\\"","d":{"text":"naïve — ✓ \\u0000 \\n","n":[1,2]},"from":{"app_name":"web","client_id":"w1"}';
const event: NodeMessage = {
  t: 'event',
  to: 'api\u0000a1',
  hops: 0,
  msg: { e: 'HELLO "you"', h: head, from: { app_name: 'web', client_id: 'w1' }, to: { app_name: 'api', client_id: 'a1' }, n: 'r-1' },
};
const all: NodeMessage = { t: 'all', msg: { e: 'TICK', h: '{"op":8,"e":"TICK","d":null,"from":{"app_name":"web","client_id":"w1"}', from: { app_name: 'web', client_id: 'w1' }, to: { app_name: 'api', mode: 'all' } } };
const down: NodeMessage = { t: 'down', app: 'api', id: 'a2', node: 'nerve-a' };
/** From a session to a session by client_id: sender and target are made again from the two session keys. */
const between: NodeMessage = { t: 'event', to: 'api\u0000a1', hops: 0, msg: { e: 'E', h: '{"op":8,"e":"E","d":2,"from":{"app_name":"web","client_id":"w1"}', from: { app_name: 'web', client_id: 'w1' }, sk: 'web\u0000w1', to: { app_name: 'api', client_id: 'a1' } } };
/** A target naming more than the session (a key), and a mode-all event from a session. */
const keyed: NodeMessage = { ...between, msg: { ...between.msg, to: { app_name: 'api', client_id: 'a1', key: 'k' } } } as NodeMessage;
const allFromSession: NodeMessage = { t: 'all', msg: { ...all.msg, sk: 'web\u0000w1' } };
/** From an HTTP dispatch: no sender session, no nonce. */
const fromHttp: NodeMessage = { t: 'event', to: 'api\u0000a3', hops: 1, msg: { e: 'PING', h: '{"op":8,"e":"PING","d":1,"from":{"app_name":"http"}', from: { app_name: 'http' }, to: { app_name: 'api', mode: 'one', query: { region: { $in: ['eu', 'us'] } } } } };

/** The field-value list XADD stores for these messages, as XREAD returns it. */
function entryFields(msgs: NodeMessage[]): string[] {
  return xaddCommand('stream', 'nerve-b', msgs.map(messageLines).join('\n')).slice(6);
}

describe('cluster stream entries', () => {
  it("carry an event's frame head as its own line, unescaped, and read every message back as it was", () => {
    const fields = entryFields([event, down, all, fromHttp]);
    expect(fields[3]!.split('\n')).toContain(`h${head}`);
    expect(fields[3]!.split('naïve').length, 'the head is not escaped into the message JSON as well').toBe(2);
    const { entries, bad } = parseEntries([['1-0', fields]]);
    expect(bad).toBe(0);
    expect(entries).toEqual([{ id: '1-0', from: 'nerve-b', msgs: [event, down, all, fromHttp] }]);
  });

  it('write a sender or target that is a session key as 0, and make it again exactly', () => {
    const fields = entryFields([between, keyed, allFromSession]);
    const lines = fields[3]!.split('\n');
    expect(lines[0]).toBe('eapi\u0000a1\t0\tE\t0\t0\t+web\u0000w1\t-');
    expect(lines[2]).toContain('{"app_name":"api","client_id":"a1","key":"k"}');
    expect(lines[4]).toBe('aTICK\t0\t{"app_name":"api","mode":"all"}\t+web\u0000w1\t-');
    expect(parseEntries([['1-0', fields]]).entries[0]!.msgs).toEqual([between, keyed, allFromSession]);
  });

  it('store a replay text read back with a raw line break (JSON whitespace) as one line of its chunk', () => {
    const state = createState({ ...DEFAULT_LIMITS, worker: 'nerve-a', password: 'pw', cluster: true });
    const record = { ord: 1, app: 'api', id: 'a1', md: {}, conn: null, at: 0, seq: 2, exp: 60_000, wr: 2 };
    const texts = ['{"op":8,\n"e":"X","d":1,"from":{"app_name":"web"},"s":1}', '{"op":8,"e":"Y","d":2,"from":{"app_name":"web"},"s":2}'];
    const session = sessionFromRecord(state, record, texts.map((text, i) => ({ ord: 1, s: i + 1, text })), 1);
    const empty: Changeset = { dropSessions: [], droppedReplay: [], sessions: [], trimReplay: [], replay: [], dropApps: [], apps: [], dropHeld: [], held: [] };
    const puts: string[] = [];
    new ReplayChunks().plan({ ...empty, replay: replayRecords(session) }, [], puts);
    expect(puts).toEqual(['1:1-2', `1 t${texts[0]!.replace('\n', ' ')}\n2 t${texts[1]}`]);
  });

  it("store a fan-out event's rows in every buffer from one record, written the same in each", () => {
    const cluster = new Cluster(['A', 'B']);
    cluster.settle();
    const readers = ['r1', 'r2', 'r3'].map((id) => new Client(cluster, 'fan', id));
    for (const reader of readers) reader.connect('B');
    const sender = new Client(cluster, 'src', 's1');
    sender.connect('A');
    cluster.settle();
    sender.dispatch('TICK', { n: 1 }, { app_name: 'fan', mode: 'all' });
    cluster.settle();
    const sessions = [...cluster.nodes.get('B')!.state.sessions.values()].filter((session) => session.app.name === 'fan');
    const rows = sessions.flatMap((session) => replayRecords(session));
    expect(rows).toHaveLength(3);
    expect(new Set(rows.map((row) => row.msg)).size, 'one record for the three buffers').toBe(1);
    const empty: Changeset = { dropSessions: [], droppedReplay: [], sessions: [], trimReplay: [], replay: [], dropApps: [], apps: [], dropHeld: [], held: [] };
    const puts: string[] = [];
    new ReplayChunks().plan({ ...empty, replay: rows }, [], puts);
    const values = puts.filter((_, i) => i % 2 === 1);
    expect(values).toEqual(rows.map((row) => `${row.s} m${JSON.stringify(row.msg)}`));
  });

  it('write a validated target, whose query, mode and key are undefined, as 0 too', () => {
    const validated = { ...between, msg: { ...between.msg, to: { app_name: 'api', client_id: 'a1', query: undefined, mode: undefined, key: undefined } } } as NodeMessage;
    expect(messageLines(validated).split('\n')[0]).toBe('eapi\u0000a1\t0\tE\t0\t0\t+web\u0000w1\t-');
  });

  it('build the same field message by message, reusing line starts, as messageLines does line by line', () => {
    const withNonce = { ...between, msg: { ...between.msg, n: 'r-2' } } as NodeMessage;
    const otherName = { ...between, msg: { ...between.msg, e: 'F', h: '{"op":8,"e":"F","d":3,"from":{"app_name":"web","client_id":"w1"}' } } as NodeMessage;
    const otherSender = { ...between, msg: { ...between.msg, from: { app_name: 'web', client_id: 'w2' }, sk: 'web\u0000w2' } } as NodeMessage;
    const liar = { ...between, msg: { ...between.msg, from: { app_name: 'web', client_id: 'w9' } } } as NodeMessage;
    const hopped = { ...between, hops: 2 } as NodeMessage;
    const tabbedNonce = { ...between, msg: { ...between.msg, n: 'a\tb' } } as NodeMessage;
    const validated = { ...between, msg: { ...between.msg, to: { app_name: 'api', client_id: 'a1', query: undefined, mode: undefined, key: undefined } } } as NodeMessage;
    const pool = [event, all, down, between, keyed, allFromSession, fromHttp, withNonce, otherName, otherSender, liar, hopped, tabbedNonce, validated];
    const starts = new LineStarts();
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...pool), { minLength: 1, maxLength: 30 }), (msgs) => {
        const lines = new EntryLines(starts);
        for (const msg of msgs) lines.add(msg);
        expect(lines.count).toBe(msgs.length);
        expect(lines.text()).toBe(msgs.map(messageLines).join('\n'));
      }),
    );
  });

  it('put a field a failed write held back ahead of what came since', () => {
    const lines = new EntryLines(new LineStarts());
    lines.add(down);
    lines.prepend([between, all].map(messageLines).join('\n'), 2);
    expect(lines.count).toBe(3);
    expect(parseEntries([['1-0', xaddCommand('s', 'nerve-b', lines.text()).slice(6)]]).entries[0]!.msgs).toEqual([between, all, down]);
  });

  it('sends an event with a tab or line break in a name as JSON, and reads it back as it was', () => {
    const odd: NodeMessage = { t: 'event', to: 'api\u0000a\tb', hops: 0, msg: { e: 'E\nF', h: '{"op":8,"e":"E\\nF","d":1,"from":{"app_name":"web"}', from: { app_name: 'web' }, n: 'n\t1', to: { app_name: 'api', client_id: 'a\tb' } } };
    expect(messageLines(odd).startsWith('m{')).toBe(true);
    expect(parseEntries([['1-0', entryFields([odd, between])]]).entries[0]!.msgs).toEqual([odd, between]);
  });

  it('carries a head read back with a raw line break (JSON whitespace) as a line, the break made a space', () => {
    const stored = { ...event.msg, h: '{"op":8,\n"e":"HELLO",\n"d":{"a":"b"}' };
    const routed = routedFrom(stored, { ...DEFAULT_LIMITS, worker: 'nerve-a', password: 'pw' });
    const relayed: NodeMessage = { ...event, msg: relayedRecord(routed) } as NodeMessage;
    const { entries, bad } = parseEntries([['1-0', entryFields([relayed, down])]]);
    expect(bad).toBe(0);
    expect(entries[0]!.msgs).toEqual([relayed, down]);
    const head = (entries[0]!.msgs[0] as { msg: { h: string } }).msg.h;
    expect(head).toBe('{"op":8, "e":"HELLO", "d":{"a":"b"}');
    expect(JSON.parse(`${head}}`)).toEqual({ op: 8, e: 'HELLO', d: { a: 'b' } });
  });

  it('skips an entry with no sender, no messages, a line that is not a message, a head with no event before it, or an event without its head', () => {
    const reply = [
      ['1-0', ['msgs', messageLines(down)]],
      ['2-0', ['from', 'nerve-b']],
      ['3-0', ['from', 'nerve-b', 'msgs', 'm{not json']],
      ['4-0', ['from', 'nerve-b', 'msgs', `h${head}\n${messageLines(down)}`]],
      ['5-0', ['from', 'nerve-b', 'msgs', `${messageLines(down)}\nx`]],
      ['6-0', ['from', 'nerve-b', 'msgs', `eapi\u0000a1\t0\tE\t{"app_name":"web"}\t{"app_name":"api"}\t7\t-\nh${head}`]],
      ['7-0', ['from', 'nerve-b', 'msgs', `aE\t0\t{"app_name":"api"}\t-\nh${head}`]],
      ['8-0', ['from', 'nerve-b', 'msgs', messageLines(event).split('\n')[0]!]],
      ['9-0', entryFields([down])],
    ];
    const { entries, bad } = parseEntries(reply);
    expect(bad).toBe(8);
    // The cursor still moves past each of them: their ids are kept, with nothing to deliver.
    expect(entries.map((entry) => [entry.id, entry.msgs.length])).toEqual([
      ['1-0', 0],
      ['2-0', 0],
      ['3-0', 0],
      ['4-0', 0],
      ['5-0', 0],
      ['6-0', 0],
      ['7-0', 0],
      ['8-0', 0],
      ['9-0', 1],
    ]);
  });
});
