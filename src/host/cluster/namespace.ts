// How a node's state is laid out in its Redis namespace and read back: a
// Changeset as commands for one MULTI, a namespace loaded as a `Stored`, the
// stream entries nodes send each other, and the ownership scripts. Values are
// JSON; anything in Redis that does not parse is skipped, never thrown.

import type { NodeMessage } from '../../core/cluster-messages.ts';
import type { AppRecord, Changeset, HeldRecord, MetaRecord, ReplayRecord, RoutedRecord, SessionRecord, Stored } from '../../core/persist.ts';
import type { Sender, Target } from '../../core/protocol.ts';
import type { NodeKeys } from './keys.ts';
import type { RedisPort, RedisReply } from './redis.ts';

/**
 * The last stream entries whose messages were stepped, written with the state
 * they produced: this node's inbox, the bus, and the inboxes of nodes it
 * adopted that it still reads (by node id).
 */
export interface Cursors {
  inbox: string;
  bus: string;
  inherited?: Record<string, string>;
}

/** The meta hash field of the cursor of an adopted node's inbox. */
const INHERITED_PREFIX = 'inbox:';

/** Streams are trimmed to about this many entries (MAXLEN ~). */
export const STREAM_MAX_LENGTH = 100_000;
/** Field/value pairs per HSET and fields per HDEL: a full rewrite stays many modest commands, not one huge one. */
const FIELDS_PER_COMMAND = 1_000;
/** Entries per XRANGE page. */
const RANGE_PAGE = 1_000;

/** The meta hash's field holding the MetaRecord; `inbox` and `bus` hold the cursors. */
const META_RECORD = 'record';

export function replayField(ord: number, s: number): string {
  return `${ord}:${s}`;
}

function hdel(key: string, fields: string[], out: string[][]): void {
  for (let i = 0; i < fields.length; i += FIELDS_PER_COMMAND) out.push(['HDEL', key, ...fields.slice(i, i + FIELDS_PER_COMMAND)]);
}

function hset(key: string, pairs: string[], out: string[][]): void {
  const step = FIELDS_PER_COMMAND * 2;
  for (let i = 0; i < pairs.length; i += step) out.push(['HSET', key, ...pairs.slice(i, i + step)]);
}

function replayRange(ord: number, first: number, last: number): string[] {
  const fields: string[] = [];
  for (let s = first; s <= last; s++) fields.push(replayField(ord, s));
  return fields;
}

/** The commands that apply `changes` to a namespace, deletes before puts as Changeset requires. */
export function changesetCommands(keys: NodeKeys, changes: Changeset): string[][] {
  const out: string[][] = [];
  hdel(keys.sessions, changes.dropSessions.map(String), out);
  const dropped: string[] = [];
  for (const range of changes.droppedReplay) dropped.push(...replayRange(range.ord, range.first, range.last));
  for (const trim of changes.trimReplay) dropped.push(...replayRange(trim.ord, trim.from, trim.below - 1));
  hdel(keys.replay, dropped, out);
  hdel(keys.apps, changes.dropApps, out);
  hdel(keys.held, changes.dropHeld.map(String), out);
  hset(keys.sessions, changes.sessions.flatMap((record) => [String(record.ord), JSON.stringify(record)]), out);
  hset(keys.replay, changes.replay.flatMap((record) => [replayField(record.ord, record.s), replayValue(record)]), out);
  hset(keys.apps, changes.apps.flatMap((record) => [record.name, String(record.cursor)]), out);
  hset(keys.held, changes.held.flatMap((record) => [String(record.id), JSON.stringify(record)]), out);
  if (changes.meta) out.push(['HSET', keys.meta, META_RECORD, JSON.stringify(changes.meta)]);
  return out;
}

export function cursorsCommand(keys: NodeKeys, cursors: Cursors): string[] {
  const fields = ['inbox', cursors.inbox, 'bus', cursors.bus];
  for (const [node, cursor] of Object.entries(cursors.inherited ?? {})) fields.push(`${INHERITED_PREFIX}${node}`, cursor);
  return ['HSET', keys.meta, ...fields];
}

/** Removes the cursors of adopted inboxes no longer read. */
export function forgetCursorsCommand(keys: NodeKeys, nodes: string[]): string[] {
  return ['HDEL', keys.meta, ...nodes.map((node) => `${INHERITED_PREFIX}${node}`)];
}

/** Field/value pairs of an HGETALL reply. */
function pairs(reply: RedisReply): [string, string][] {
  if (!Array.isArray(reply)) return [];
  const out: [string, string][] = [];
  for (let i = 0; i + 1 < reply.length; i += 2) {
    const field = reply[i];
    const value = reply[i + 1];
    if (typeof field === 'string' && typeof value === 'string') out.push([field, value]);
  }
  return out;
}

function parseObject(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

const isNumber = (value: unknown): value is number => typeof value === 'number' && Number.isFinite(value);
const isString = (value: unknown): value is string => typeof value === 'string';

function sessionOf(value: Record<string, unknown>): SessionRecord | undefined {
  const ok = isNumber(value.ord) && isString(value.app) && isString(value.id) && isNumber(value.seq) && isNumber(value.exp) && typeof value.md === 'object' && value.md !== null;
  return ok ? (value as unknown as SessionRecord) : undefined;
}

/**
 * A buffered event as stored: its field names its session and `s`, so the
 * value is only the event — the very text written to the client, kept as it
 * is (`t` + text: one row per delivery, the hot path, no JSON escaping), or
 * the whole event still owed (`m` + JSON).
 */
function replayValue(record: ReplayRecord): string {
  return record.text !== undefined ? `t${record.text}` : `m${JSON.stringify(record.msg)}`;
}

function replayRow(field: string, value: string): ReplayRecord | undefined {
  const match = /^(\d+):(\d+)$/.exec(field);
  if (!match) return undefined;
  const ord = Number(match[1]);
  const s = Number(match[2]);
  if (value.startsWith('t')) return { ord, s, text: value.slice(1) };
  const msg = value.startsWith('m') ? parseObject(value.slice(1)) : undefined;
  return msg && isString(msg.e) && typeof msg.to === 'object' && msg.to !== null ? { ord, s, msg: msg as unknown as RoutedRecord } : undefined;
}

function heldOf(value: Record<string, unknown>): HeldRecord | undefined {
  const ok = isNumber(value.id) && isString(value.app) && isNumber(value.exp) && typeof value.msg === 'object' && value.msg !== null;
  return ok ? (value as unknown as HeldRecord) : undefined;
}

function metaOf(value: Record<string, unknown>): MetaRecord | undefined {
  const ok = isNumber(value.nextOrdinal) && isNumber(value.nextHeld) && typeof value.counters === 'object' && value.counters !== null;
  return ok ? (value as unknown as MetaRecord) : undefined;
}

/** A namespace as it was loaded: the state, the cursors stored with it, and how many rows did not parse. */
export interface LoadedNamespace {
  stored: Stored;
  cursors: Partial<Cursors>;
  skipped: number;
}

/** Reads a node's stored state; rows that do not parse are counted and left out. */
export async function loadNamespace(redis: RedisPort, keys: NodeKeys): Promise<LoadedNamespace> {
  const [sessions, replay, held, apps, meta] = await Promise.all([
    redis.command(['HGETALL', keys.sessions]),
    redis.command(['HGETALL', keys.replay]),
    redis.command(['HGETALL', keys.held]),
    redis.command(['HGETALL', keys.apps]),
    redis.command(['HGETALL', keys.meta]),
  ]);
  let skipped = 0;
  const parsed = <T>(reply: RedisReply, shape: (value: Record<string, unknown>) => T | undefined): T[] => {
    const rows: T[] = [];
    for (const [, text] of pairs(reply)) {
      const object = parseObject(text);
      const row = object && shape(object);
      if (row) rows.push(row);
      else skipped++;
    }
    return rows;
  };
  const stored: Stored = {
    sessions: parsed(sessions, sessionOf),
    replay: [],
    apps: [],
    held: parsed(held, heldOf),
  };
  for (const [field, value] of pairs(replay)) {
    const row = replayRow(field, value);
    if (row) stored.replay.push(row);
    else skipped++;
  }
  for (const [name, cursor] of pairs(apps)) {
    const value = Number(cursor);
    if (Number.isFinite(value)) stored.apps.push({ name, cursor: value } satisfies AppRecord);
    else skipped++;
  }
  const cursors: Partial<Cursors> = {};
  for (const [field, value] of pairs(meta)) {
    if (field === 'inbox' && isStreamId(value)) cursors.inbox = value;
    else if (field === 'bus' && isStreamId(value)) cursors.bus = value;
    else if (field.startsWith(INHERITED_PREFIX) && isStreamId(value)) (cursors.inherited ??= {})[field.slice(INHERITED_PREFIX.length)] = value;
    else if (field === META_RECORD) {
      const object = parseObject(value);
      const record = object && metaOf(object);
      if (record) stored.meta = record;
      else skipped++;
    }
  }
  return { stored, cursors, skipped };
}

// ── stream entries ─────────────────────────────────────────────────────────

/** One stream entry: the messages one node sent in one write. */
export interface NodeEntry {
  id: string;
  from: string;
  msgs: NodeMessage[];
}

export function isStreamId(value: string): boolean {
  return /^\d+-\d+$/.test(value);
}

/** Orders two stream ids (`ms-seq`). */
export function compareIds(a: string, b: string): number {
  const [aMs = 0, aSeq = 0] = a.split('-').map(Number);
  const [bMs = 0, bSeq = 0] = b.split('-').map(Number);
  return aMs !== bMs ? aMs - bMs : aSeq - bSeq;
}

/**
 * One node message as lines of an entry's `msgs` field. Events, the bulk of
 * the traffic, are two lines: `e` (directed) or `a` (mode all) and a JSON
 * array of what routing needs, then `h` and the frame head as is. The head is
 * JSON text already: inside the message's JSON it would be escaped here and
 * unescaped by every reader; an array parses faster than an object with its
 * keys. Any other message (and an event whose head has a line break, which
 * JSON.stringify never writes) is one line: `m` and its JSON.
 */
export function messageLines(msg: NodeMessage): string {
  if (msg.t !== 'event' && msg.t !== 'all') return `m${JSON.stringify(msg)}`;
  const r = msg.msg;
  if (r.h === undefined || r.h.includes('\n')) return `m${JSON.stringify(msg)}`;
  const routing = [r.e, r.from, r.to, r.sk ?? null, r.n ?? null];
  return msg.t === 'event' ? `e${JSON.stringify([msg.to, msg.hops, ...routing])}\nh${r.h}` : `a${JSON.stringify(routing)}\nh${r.h}`;
}

/** An `e` or `a` line's array back as the message (its head comes on the next line), or undefined if it is not one. */
function eventFromLine(kind: 'event' | 'all', text: string): NodeMessage | undefined {
  let fields: unknown;
  try {
    fields = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!Array.isArray(fields)) return undefined;
  const at = kind === 'event' ? 2 : 0;
  const [e, from, to, sk, n] = fields.slice(at) as unknown[];
  const isObject = (value: unknown) => typeof value === 'object' && value !== null && !Array.isArray(value);
  if (typeof e !== 'string' || !isObject(from) || !isObject(to) || (sk !== null && typeof sk !== 'string') || (n !== null && typeof n !== 'string')) return undefined;
  const record: RoutedRecord = { e, from: from as Sender, to: to as Target };
  if (sk !== null) record.sk = sk as string;
  if (n !== null) record.n = n as string;
  if (kind === 'all') return { t: 'all', msg: record };
  const [session, hops] = fields;
  if (typeof session !== 'string' || typeof hops !== 'number') return undefined;
  return { t: 'event', to: session, msg: record, hops };
}

/** One stream entry: the sending node, and its messages in order, each as messageLines made it, one field for all (one RESP string to write and read). */
export function xaddCommand(stream: string, from: string, lines: readonly string[]): string[] {
  return ['XADD', stream, 'MAXLEN', '~', String(STREAM_MAX_LENGTH), '*', 'from', from, 'msgs', lines.join('\n')];
}

/**
 * The entries of an XRANGE reply, or of one stream of an XREAD reply. An
 * entry that is not a node's message list keeps its id (so the cursor moves
 * past it) with no messages.
 */
export function parseEntries(reply: RedisReply): { entries: NodeEntry[]; bad: number } {
  const entries: NodeEntry[] = [];
  let bad = 0;
  if (!Array.isArray(reply)) return { entries, bad };
  for (const item of reply) {
    if (!Array.isArray(item) || typeof item[0] !== 'string') continue;
    const id = item[0];
    let from: string | undefined;
    let msgs: NodeMessage[] | undefined;
    for (const [field, value] of pairs(item[1] ?? null)) {
      if (field === 'from') from = value;
      else if (field === 'msgs') msgs = parseLines(value);
    }
    if (from === undefined || msgs === undefined || msgs.length === 0) {
      bad++;
      entries.push({ id, from: '', msgs: [] });
    } else entries.push({ id, from, msgs });
  }
  return { entries, bad };
}

/** The messages of an entry's `msgs` field (see messageLines); undefined if any line is not one. */
function parseLines(text: string): NodeMessage[] | undefined {
  const msgs: NodeMessage[] = [];
  /** The event of the line before, which waits for its head on this line. */
  let headless: RoutedRecord | undefined;
  let start = 0;
  while (start < text.length) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    const kind = text.charCodeAt(start);
    if (kind === 104 /* h */) {
      if (headless === undefined) return undefined;
      headless.h = text.slice(start + 1, end);
      headless = undefined;
    } else if (headless !== undefined) return undefined;
    else if (kind === 101 /* e */ || kind === 97 /* a */) {
      const msg = eventFromLine(kind === 101 ? 'event' : 'all', text.slice(start + 1, end));
      if (msg === undefined) return undefined;
      msgs.push(msg);
      headless = (msg as { msg: RoutedRecord }).msg;
    } else if (kind === 109 /* m */) {
      const msg = parseObject(text.slice(start + 1, end));
      if (msg === undefined || typeof msg.t !== 'string') return undefined;
      msgs.push(msg as NodeMessage);
    } else return undefined;
    start = end + 1;
  }
  return headless === undefined ? msgs : undefined;
}

/** An XREAD reply as entries per stream. */
export function parseXread(reply: RedisReply): Map<string, RedisReply> {
  const streams = new Map<string, RedisReply>();
  if (!Array.isArray(reply)) return streams;
  for (const item of reply) {
    if (Array.isArray(item) && typeof item[0] === 'string') streams.set(item[0], item[1] ?? null);
  }
  return streams;
}

/** Every entry of `stream` after `after` and up to `through` (inclusive; '+' for the end), page by page. */
export async function readRange(redis: RedisPort, stream: string, after: string, through = '+'): Promise<{ entries: NodeEntry[]; bad: number }> {
  const all: NodeEntry[] = [];
  let bad = 0;
  let from = after;
  for (;;) {
    const reply = await redis.command(['XRANGE', stream, `(${from}`, through, 'COUNT', String(RANGE_PAGE)]);
    const page = parseEntries(reply);
    all.push(...page.entries);
    bad += page.bad;
    const last = page.entries.at(-1);
    if (!last || page.entries.length < RANGE_PAGE) break;
    from = last.id;
  }
  return { entries: all, bad };
}

// ── ownership ──────────────────────────────────────────────────────────────

/**
 * Claim: KEYS[1] the app's owners hash; ARGV client, node, expected. When the
 * session has no owner, or its owner is `expected` or `node` already, it
 * becomes `node`'s (node '' gives it up: the field goes) and '' is returned;
 * else the owner.
 */
const CLAIM_SCRIPT = `local owner = redis.call('HGET', KEYS[1], ARGV[1])
if (not owner) or owner == '' or owner == ARGV[3] or owner == ARGV[2] then
  if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
  return ''
end
return owner`;

export function claimCommand(ownersKey: string, client: string, node: string, expected: string): string[] {
  return ['EVAL', CLAIM_SCRIPT, '1', ownersKey, client, node, expected];
}

/** The owner a claim reply names: undefined when the claim succeeded. */
export function claimOwner(reply: RedisReply): string | undefined {
  return typeof reply === 'string' && reply !== '' ? reply : undefined;
}
