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

/**
 * Where a namespace's replay rows are. Each write stores the new rows of a
 * session as one field of the replay hash, `ord:first-last`, one line per
 * row: `s`, a space, then the event — the very text written to the client
 * (`t` + text, no JSON escaping) or, while it is still owed, the whole event
 * (`m` + JSON). A delivery is a line, not a field and a value of its own to
 * send, store and delete. A trim deletes the chunks wholly
 * below it and sets `ord:below`, which hides the rows of the chunk it falls
 * inside until that chunk goes too; dropping a session's buffer deletes all
 * its chunks. What this index knows is only what to delete: load reads rows
 * from the hash alone. It starts empty with the hash (a write that deletes
 * the namespace first resets it).
 */
export class ReplayChunks {
  private readonly byOrd = new Map<number, { last: number; field: string }[]>();

  reset(): void {
    this.byOrd.clear();
  }

  /** The deletes (into `drops`) and puts (into `puts`) of `changes`' replay rows. */
  plan(changes: Changeset, drops: string[], puts: string[]): void {
    for (const range of changes.droppedReplay) {
      for (const chunk of this.byOrd.get(range.ord) ?? []) drops.push(chunk.field);
      drops.push(belowField(range.ord));
      this.byOrd.delete(range.ord);
    }
    for (const trim of changes.trimReplay) {
      const chunks = this.byOrd.get(trim.ord);
      if (chunks) {
        let gone = 0;
        while (gone < chunks.length && chunks[gone]!.last < trim.below) drops.push(chunks[gone++]!.field);
        if (gone > 0) chunks.splice(0, gone);
      }
      puts.push(belowField(trim.ord), String(trim.below));
    }
    const rows = changes.replay;
    // A fan-out's rows share one record: it is encoded once per write, not once per buffer.
    const encoded = new Map<RoutedRecord, string>();
    for (let i = 0; i < rows.length; ) {
      const ord = rows[i]!.ord;
      let end = i;
      // One join per chunk; no row needs looking at, as none has a raw line
      // break: JSON.stringify writes none, nor do the core's texts (routedFrom).
      const parts: string[] = [];
      for (; end < rows.length && rows[end]!.ord === ord; end++) {
        const row = rows[end]!;
        if (end > i) parts.push('\n');
        if (row.text !== undefined) parts.push(String(row.s), ' t', row.text);
        else {
          let json = encoded.get(row.msg!);
          if (json === undefined) encoded.set(row.msg!, (json = JSON.stringify(row.msg)));
          parts.push(String(row.s), ' m', json);
        }
      }
      const field = `${ord}:${rows[i]!.s}-${rows[end - 1]!.s}`;
      puts.push(field, parts.join(''));
      let chunks = this.byOrd.get(ord);
      if (!chunks) this.byOrd.set(ord, (chunks = []));
      chunks.push({ last: rows[end - 1]!.s, field });
      i = end;
    }
  }
}

function belowField(ord: number): string {
  return `${ord}:below`;
}

function hdel(key: string, fields: string[], out: string[][]): void {
  for (let i = 0; i < fields.length; i += FIELDS_PER_COMMAND) out.push(['HDEL', key, ...fields.slice(i, i + FIELDS_PER_COMMAND)]);
}

function hset(key: string, pairs: string[], out: string[][]): void {
  const step = FIELDS_PER_COMMAND * 2;
  for (let i = 0; i < pairs.length; i += step) out.push(['HSET', key, ...pairs.slice(i, i + step)]);
}

/** The commands that apply `changes` to a namespace, deletes before puts as Changeset requires. */
export function changesetCommands(keys: NodeKeys, changes: Changeset, chunks = new ReplayChunks()): string[][] {
  const out: string[][] = [];
  hdel(keys.sessions, changes.dropSessions.map(String), out);
  const dropped: string[] = [];
  const replay: string[] = [];
  chunks.plan(changes, dropped, replay);
  hdel(keys.replay, dropped, out);
  hdel(keys.apps, changes.dropApps, out);
  hdel(keys.held, changes.dropHeld.map(String), out);
  hset(keys.sessions, changes.sessions.flatMap((record) => [String(record.ord), JSON.stringify(record)]), out);
  hset(keys.replay, replay, out);
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

/** The rows of one chunk (see ReplayChunks); undefined if any line is not one. */
function chunkRows(ord: number, value: string): ReplayRecord[] | undefined {
  const rows: ReplayRecord[] = [];
  for (const line of value.split('\n')) {
    const space = line.indexOf(' ');
    const s = Number(line.slice(0, space));
    const row = space > 0 && Number.isSafeInteger(s) ? replayRow(ord, s, line.slice(space + 1)) : undefined;
    if (!row) return undefined;
    rows.push(row);
  }
  return rows;
}

function replayRow(ord: number, s: number, value: string): ReplayRecord | undefined {
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
  const below = new Map<number, number>();
  const rows: ReplayRecord[] = [];
  for (const [field, value] of pairs(replay)) {
    const match = /^(\d+):(?:(\d+)-(\d+)|(below))$/.exec(field);
    const ord = Number(match?.[1]);
    if (match?.[4] !== undefined && /^\d+$/.test(value)) below.set(ord, Number(value));
    else {
      const chunk = match?.[2] !== undefined ? chunkRows(ord, value) : undefined;
      if (chunk) rows.push(...chunk);
      else skipped++;
    }
  }
  // Rows a trim hid, in the chunk it fell inside: gone, not skipped.
  for (const row of rows) if (row.s >= (below.get(row.ord) ?? 0)) stored.replay.push(row);
  stored.replay.sort((a, b) => a.ord - b.ord || a.s - b.s);
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
  /**
   * On an inbox entry: the sending node's last bus entry when it wrote this
   * one. A client that saw the ACK of a mode-all event and then sent a
   * directed one gets them in that order only if this entry waits for that
   * bus entry.
   */
  after?: string;
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
 * the traffic, are two lines: `e` (directed) or `a` (mode all) and what
 * routing needs as tab-separated fields, then `h` and the frame head as is.
 * The head is JSON text already: inside the message's JSON it would be
 * escaped here and unescaped by every reader; names travel raw for the same
 * reason (a session key's NUL would be `\u0000` in JSON, which every reader
 * decodes the slow way). Fields: for `e`, the session, hops; then the event
 * name, sender, target, sender key and nonce (`-` absent, `+` and the value
 * present). A sender that is the sender session's key, and a target that is
 * the receiving session's key, are `0`, made again from the key; any other is
 * JSON. Any other message — and an event with a tab or line break in a name
 * — is one line: `m` and its JSON. The head must have no raw line break,
 * which every head the core makes holds to (routedFrom).
 */
export function messageLines(msg: NodeMessage): string {
  if (msg.t !== 'event' && msg.t !== 'all') return `m${JSON.stringify(msg)}`;
  const r = msg.msg;
  // A head has no raw line break (see routedFrom): looking would cost a copy of every head.
  if (r.h === undefined || hasBreak(r.e) || (r.sk !== undefined && hasBreak(r.sk)) || (r.n !== undefined && hasBreak(r.n))) return `m${JSON.stringify(msg)}`;
  const from = r.sk !== undefined && isKeyOf(r.from, r.sk) ? '0' : JSON.stringify(r.from);
  const tail = `${r.sk === undefined ? '-' : `+${r.sk}`}\t${r.n === undefined ? '-' : `+${r.n}`}\nh${r.h}`;
  if (msg.t === 'all') return `a${r.e}\t${from}\t${JSON.stringify(r.to)}\t${tail}`;
  if (hasBreak(msg.to)) return `m${JSON.stringify(msg)}`;
  const to = isKeyOf(r.to, msg.to) ? '0' : JSON.stringify(r.to);
  return `e${msg.to}\t${msg.hops}\t${r.e}\t${from}\t${to}\t${tail}`;
}

/**
 * An entry's `msgs` field built message by message: parts whose join is the
 * lines messageLines makes, one message after another. The start of an event
 * line (up to its nonce) depends only on the target session, the sender
 * session and the event name, which the same few pairs repeat, so it is made
 * and checked once and then reused: an event costs a few lookups and its
 * head, not a line built and scanned anew.
 */
export class EntryLines {
  /** The parts of the field so far: `join('')` is its text. */
  parts: string[] = [];
  count = 0;

  constructor(private readonly starts: LineStarts) {}

  /** Appends `msg`; throws, adding nothing, if it cannot be encoded (see messageLines). */
  add(msg: NodeMessage): void {
    const parts = this.parts;
    if (msg.t === 'event' && msg.hops === 0) {
      const r = msg.msg;
      const start = r.h !== undefined && (r.n === undefined || !hasBreak(r.n)) ? this.starts.of(msg.to, r) : undefined;
      if (start !== undefined) {
        if (this.count++ > 0) parts.push('\n');
        if (r.n === undefined) parts.push(start, '-\nh', r.h!);
        else parts.push(start, '+', r.n, '\nh', r.h!);
        return;
      }
    }
    const line = messageLines(msg);
    if (this.count++ > 0) parts.push('\n');
    parts.push(line);
  }

  /** Puts `text`, a field made earlier (a write that failed), ahead of what this one holds. */
  prepend(text: string, count: number): void {
    this.parts.unshift(text, ...(this.count > 0 ? ['\n'] : []));
    this.count += count;
  }

  text(): string {
    return this.parts.join('');
  }
}

/** The start of an event line, and what it was made for. */
interface LineStart {
  e: string;
  from: Sender;
  app: string;
  client: string;
  text: string;
}

/**
 * The line starts EntryLines reuses, by target session and sender session,
 * for events of one node to sessions by client_id, with no hops yet: only an
 * event messageLines writes with sender and target as `0`. The cache starts
 * over when it grows large.
 */
export class LineStarts {
  private readonly byTarget = new Map<string, Map<string, LineStart>>();
  private size = 0;

  /** The start of `to`'s line for `r` (up to its nonce), or undefined when it is not one that can be reused. */
  of(to: string, r: RoutedRecord): string | undefined {
    const sk = r.sk;
    if (sk === undefined) return undefined;
    let bySender = this.byTarget.get(to);
    let start = bySender?.get(sk);
    if (start === undefined || start.e !== r.e || start.from !== r.from) {
      start = lineStart(to, sk, r);
      if (start === undefined) return undefined;
      if (this.size >= LINE_STARTS_SIZE) {
        this.byTarget.clear();
        this.size = 0;
        bySender = undefined;
      }
      if (bySender === undefined) this.byTarget.set(to, (bySender = new Map()));
      if (!bySender.has(sk)) this.size++;
      bySender.set(sk, start);
    }
    // The target is the one object per event that is new each time: it must still be exactly the session.
    const target = r.to;
    return target.app_name === start.app && target.client_id === start.client && definedKeys(target) === 2 ? start.text : undefined;
  }
}

const LINE_STARTS_SIZE = 4_096;

function lineStart(to: string, sk: string, r: RoutedRecord): LineStart | undefined {
  if (hasBreak(r.e) || hasBreak(sk) || hasBreak(to) || !isKeyOf(r.from, sk)) return undefined;
  const split = to.indexOf('\u0000');
  if (split < 0) return undefined;
  return { e: r.e, from: r.from, app: to.slice(0, split), client: to.slice(split + 1), text: `e${to}\t0\t${r.e}\t0\t0\t+${sk}\t` };
}

function definedKeys(named: object): number {
  let keys = 0;
  for (const name in named) if ((named as Record<string, unknown>)[name] !== undefined) keys++;
  return keys;
}

function hasBreak(text: string): boolean {
  return text.includes('\t') || text.includes('\n');
}

/**
 * Whether `named` is, as JSON, exactly `{app_name, client_id}` of session
 * `key`, so that it can be made again from the key. Keys whose value is
 * undefined do not count: JSON leaves them out (a validated target has
 * `query`, `mode` and `key` as undefined).
 */
function isKeyOf(named: { app_name: string; client_id?: string | undefined }, key: string): boolean {
  const app = named.app_name;
  if (
    named.client_id === undefined ||
    key.length !== app.length + 1 + named.client_id.length ||
    !key.startsWith(app) ||
    key.charCodeAt(app.length) !== 0 ||
    !key.endsWith(named.client_id) ||
    app.includes('\u0000')
  ) {
    return false;
  }
  return definedKeys(named) === 2;
}

/**
 * `{app_name, client_id}` of session `key`. The same few sessions send and
 * receive most events, so the objects are kept and shared (nothing changes
 * a sender or target once made); the cache starts over when it grows large.
 */
function namedBy(key: string): { app_name: string; client_id: string } {
  let named = namedByKey.get(key);
  if (named === undefined) {
    if (namedByKey.size >= NAMED_CACHE_SIZE) namedByKey.clear();
    const split = key.indexOf('\u0000');
    named = { app_name: key.slice(0, split), client_id: key.slice(split + 1) };
    namedByKey.set(key, named);
  }
  return named;
}
const NAMED_CACHE_SIZE = 4_096;
const namedByKey = new Map<string, { app_name: string; client_id: string }>();

const DIGIT_0 = 48;
const PLUS = 43;
const MINUS = 45;

/** A `0` field (from `at` to `end`) made again from `key`, or a JSON object; undefined if it is neither. */
function namedField(text: string, at: number, end: number, key: string | undefined): object | undefined {
  if (end === at + 1 && text.charCodeAt(at) === DIGIT_0) return key !== undefined && key.includes('\u0000') ? namedBy(key) : undefined;
  return parseObject(text.slice(at, end));
}

/** `-` absent, `+value` present; null if the field (from `at` to `end`) is neither. */
function optionalField(text: string, at: number, end: number): string | undefined | null {
  const sign = text.charCodeAt(at);
  if (sign === MINUS && end === at + 1) return undefined;
  return sign === PLUS ? text.slice(at + 1, end) : null;
}

/** The end of the tab-separated field starting at `at`, which must end before `end` with a tab (or at `end` when `last`); -1 if it does not. */
function fieldEnd(text: string, at: number, end: number, last: boolean): number {
  const tab = text.indexOf('\t', at);
  if (last) return tab < 0 || tab >= end ? end : -1;
  return tab < 0 || tab >= end ? -1 : tab;
}

/**
 * The `e` or `a` line of `text` from `start` (after its kind) to `end` back
 * as the message (its head comes on the next line), or undefined if it is
 * not one. Fields are read in place: a line makes only the strings its
 * message keeps.
 */
function eventFromLine(kind: 'event' | 'all', text: string, start: number, end: number): NodeMessage | undefined {
  const bounds = fieldBounds;
  let at = start;
  const count = kind === 'event' ? 7 : 5;
  for (let i = 0; i < count; i++) {
    const fieldStop = fieldEnd(text, at, end, i === count - 1);
    if (fieldStop < 0) return undefined;
    bounds[2 * i] = at;
    bounds[2 * i + 1] = fieldStop;
    at = fieldStop + 1;
  }
  const first = kind === 'event' ? 4 : 0;
  const sk = optionalField(text, bounds[first + 6]!, bounds[first + 7]!);
  const n = optionalField(text, bounds[first + 8]!, bounds[first + 9]!);
  if (sk === null || n === null) return undefined;
  const session = kind === 'event' ? text.slice(bounds[0], bounds[1]) : undefined;
  const from = namedField(text, bounds[first + 2]!, bounds[first + 3]!, sk);
  const to = namedField(text, bounds[first + 4]!, bounds[first + 5]!, session);
  if (!from || !to) return undefined;
  const record: RoutedRecord = { e: text.slice(bounds[first], bounds[first + 1]), from: from as Sender, to: to as Target };
  if (sk !== undefined) record.sk = sk;
  if (n !== undefined) record.n = n;
  if (kind === 'all') return { t: 'all', msg: record };
  const hops = digits(text, bounds[2]!, bounds[3]!);
  if (hops < 0) return undefined;
  return { t: 'event', to: session!, msg: record, hops };
}

/** Where each field of the line being read starts and ends (reused: a line is read at once). */
const fieldBounds = new Int32Array(14);

/** The decimal number from `at` to `end`; -1 if it is not one (or is past the safe integers). */
function digits(text: string, at: number, end: number): number {
  if (end === at || end - at > 15) return -1;
  let value = 0;
  for (let i = at; i < end; i++) {
    const digit = text.charCodeAt(i) - DIGIT_0;
    if (digit < 0 || digit > 9) return -1;
    value = value * 10 + digit;
  }
  return value;
}

/** One stream entry: the sending node, and its messages in order as messageLines made them, joined by line breaks: one field for all (one RESP string to write and read). */
export function xaddCommand(stream: string, from: string, lines: string, after?: string): string[] {
  const command = ['XADD', stream, 'MAXLEN', '~', String(STREAM_MAX_LENGTH), '*', 'from', from, 'msgs', lines];
  if (after !== undefined) command.push('after', after);
  return command;
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
    let after: string | undefined;
    for (const [field, value] of pairs(item[1] ?? null)) {
      if (field === 'from') from = value;
      else if (field === 'msgs') msgs = parseLines(value);
      else if (field === 'after' && isStreamId(value)) after = value;
    }
    if (from === undefined || msgs === undefined || msgs.length === 0) {
      bad++;
      entries.push({ id, from: '', msgs: [] });
    } else entries.push(after === undefined ? { id, from, msgs } : { id, from, msgs, after });
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
      const msg = eventFromLine(kind === 101 ? 'event' : 'all', text, start + 1, end);
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
