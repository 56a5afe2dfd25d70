// Where a hub that can lose its memory keeps its state: the HubStorage seam
// (SQLite in a Durable Object today, any store later), an in-memory store, and
// StorageWriter, which writes each step's changeset and survives failed writes.

import { isEmptyChangeset, splitChangeset, type Changeset, type Persister, type Stored } from '../core/persist.ts';
import type { State } from '../core/state.ts';

/**
 * A store for the rows `Persister` produces. Synchronous, as a Durable
 * Object's SQLite is: a step's changeset is written before the next input is
 * stepped, so what the persister records as stored is never behind an
 * earlier write still in flight. An async store would need the hub to queue
 * inputs until each write settled (or to pipeline changesets and commit them
 * in order); not needed while the one store is in-process SQLite.
 */
export interface HubStorage {
  /** Everything stored, for `Persister.restore`. */
  load(): Stored;
  /** Applies one changeset atomically (deletes first, then puts), or throws having applied none of it. */
  write(changes: Changeset): void;
}

/** Rows as JSON text, as SQLite holds them, so what comes back has been through JSON. */
export class MemoryStorage implements HubStorage {
  meta: string | undefined;
  readonly sessions: Map<number, string> = new Map();
  readonly replay: Map<number, Map<number, string>> = new Map();
  readonly apps: Map<string, string> = new Map();
  readonly held: Map<number, string> = new Map();

  load(): Stored {
    const parse = <T>(rows: Iterable<string>) => [...rows].map((v) => JSON.parse(v) as T);
    return {
      ...(this.meta === undefined ? {} : { meta: JSON.parse(this.meta) as NonNullable<Stored['meta']> }),
      sessions: parse(this.sessions.values()),
      replay: parse([...this.replay.values()].flatMap((rows) => [...rows.values()])),
      apps: parse(this.apps.values()),
      held: parse(this.held.values()),
    };
  }

  write(changes: Changeset): void {
    // Serialized before anything is applied, so a record that cannot be written leaves no half-applied changeset.
    const sessions = changes.sessions.map((record) => [record.ord, JSON.stringify(record)] as const);
    const replay = changes.replay.map((record) => [record.ord, record.s, JSON.stringify(record)] as const);
    const apps = changes.apps.map((record) => [record.name, JSON.stringify(record)] as const);
    const held = changes.held.map((record) => [record.id, JSON.stringify(record)] as const);
    const meta = changes.meta && JSON.stringify(changes.meta);
    for (const ord of changes.dropSessions) {
      this.sessions.delete(ord);
      this.replay.delete(ord);
    }
    for (const { ord, below } of changes.trimReplay) {
      const rows = this.replay.get(ord);
      if (rows) for (const s of [...rows.keys()]) if (s < below) rows.delete(s);
    }
    for (const name of changes.dropApps) this.apps.delete(name);
    for (const id of changes.dropHeld) this.held.delete(id);
    for (const [ord, v] of sessions) this.sessions.set(ord, v);
    for (const [ord, s, v] of replay) {
      let rows = this.replay.get(ord);
      if (!rows) this.replay.set(ord, (rows = new Map()));
      rows.set(s, v);
    }
    for (const [name, v] of apps) this.apps.set(name, v);
    for (const [id, v] of held) this.held.set(id, v);
    if (meta !== undefined) this.meta = meta;
  }
}

export type StorageLog = (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** At most this many lost records are named in the log line; the count is always given. */
const NAMED_LOST = 20;

/**
 * Writes what each step changed, and commits it to the persister only once
 * the write returned. A failed write is never thrown into the hub:
 *
 * 1. The first failure is logged with its error; nothing is committed, so the
 *    next step's changeset carries it again, with whatever changed since.
 * 2. When that write fails too, the changeset is written one record at a
 *    time. Records the store still refuses (a row over its size limit) are
 *    logged as lost and everything is committed: storage matches memory
 *    except for them, and later writes no longer carry them.
 * 3. If every record is refused, the store itself is failing rather than a
 *    record: nothing is committed or dropped, and each later step tries again
 *    record by record until the store accepts something.
 */
export class StorageWriter {
  /** Consecutive steps whose write failed. */
  private failures = 0;

  constructor(
    private readonly storage: HubStorage,
    private readonly persister: Persister,
    private readonly log: StorageLog,
  ) {}

  /** True while storage is behind memory. */
  get behind(): boolean {
    return this.failures > 0;
  }

  /**
   * True after a first failed write: one more step soon (a tick will do)
   * settles it, by writing or by dropping the record at fault, so an idle hub
   * is not evicted with the step unwritten. Not while the store refuses
   * everything, which would keep an idle hub awake for nothing.
   */
  get retrying(): boolean {
    return this.failures === 1;
  }

  /** Brings storage up to date with `state` as far as the store allows. */
  save(state: State): void {
    const changes = this.persister.flush(state);
    if (isEmptyChangeset(changes)) return;
    try {
      this.storage.write(changes);
    } catch (error) {
      this.failed(changes, error);
      return;
    }
    this.persister.commit(changes);
    if (this.failures > 0) this.log('info', 'storage write recovered', { failedWrites: this.failures });
    this.failures = 0;
  }

  private failed(changes: Changeset, error: unknown): void {
    this.failures++;
    if (this.failures === 1) {
      this.log('warn', 'storage write failed; retrying with the next step', { error: describe(error) });
      return;
    }
    const parts = splitChangeset(changes);
    const lost: string[] = [];
    let firstError: unknown;
    for (const part of parts) {
      try {
        this.storage.write(part.changes);
      } catch (partError) {
        firstError ??= partError;
        lost.push(part.record);
      }
    }
    if (lost.length === parts.length) {
      if (this.failures === 2) this.log('error', 'storage refuses every record; storage stays behind until it accepts writes', { records: parts.length, error: describe(firstError) });
      return;
    }
    this.persister.commit(changes);
    this.failures = 0;
    if (lost.length > 0) {
      this.log('error', 'storage write lost records', { count: lost.length, records: lost.slice(0, NAMED_LOST), error: describe(firstError) });
    } else this.log('info', 'storage write recovered', { records: parts.length });
  }
}
