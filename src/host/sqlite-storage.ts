// HubStorage over a Durable Object's SQLite (`ctx.storage.sql`): the table
// layout, loading it back, and one transaction per changeset. Typed against
// the few calls it makes, so src/host needs no Cloudflare types.

import type { Changeset, Stored } from '../core/persist.ts';
import type { HubStorage } from './storage.ts';

/** The part of a Durable Object's `SqlStorage` used here. */
export interface SqlExec {
  exec(query: string, ...bindings: unknown[]): { toArray(): Record<string, unknown>[] };
}

/** The part of `DurableObjectStorage` used here. */
export interface SqlBackedStorage {
  readonly sql: SqlExec;
  transactionSync<T>(closure: () => T): T;
}

const SCHEMA = [
  'CREATE TABLE IF NOT EXISTS nerve_meta (id INTEGER PRIMARY KEY, v TEXT NOT NULL)',
  'CREATE TABLE IF NOT EXISTS nerve_sessions (ord INTEGER PRIMARY KEY, v TEXT NOT NULL)',
  'CREATE TABLE IF NOT EXISTS nerve_replay (ord INTEGER NOT NULL, s INTEGER NOT NULL, v TEXT NOT NULL, PRIMARY KEY (ord, s))',
  'CREATE TABLE IF NOT EXISTS nerve_apps (name TEXT PRIMARY KEY, v TEXT NOT NULL)',
  'CREATE TABLE IF NOT EXISTS nerve_held (id INTEGER PRIMARY KEY, v TEXT NOT NULL)',
];

export class SqliteStorage implements HubStorage {
  private readonly sql: SqlExec;

  constructor(private readonly storage: SqlBackedStorage) {
    this.sql = storage.sql;
    for (const statement of SCHEMA) this.sql.exec(statement);
  }

  load(): Stored {
    const rows = <T>(query: string) => this.sql.exec(query).toArray().map((row) => JSON.parse(row.v as string) as T);
    const [meta] = rows<NonNullable<Stored['meta']>>('SELECT v FROM nerve_meta WHERE id = 1');
    return {
      ...(meta ? { meta } : {}),
      sessions: rows('SELECT v FROM nerve_sessions'),
      replay: rows('SELECT v FROM nerve_replay'),
      apps: rows('SELECT v FROM nerve_apps'),
      held: rows('SELECT v FROM nerve_held'),
    };
  }

  /** One transaction: a row SQLite refuses (over the 2 MB row limit) rolls back the whole changeset. */
  write(changes: Changeset): void {
    const sql = this.sql;
    this.storage.transactionSync(() => {
      for (const ord of changes.dropSessions) {
        sql.exec('DELETE FROM nerve_sessions WHERE ord = ?', ord);
        sql.exec('DELETE FROM nerve_replay WHERE ord = ?', ord);
      }
      for (const { ord, below } of changes.trimReplay) sql.exec('DELETE FROM nerve_replay WHERE ord = ? AND s < ?', ord, below);
      for (const name of changes.dropApps) sql.exec('DELETE FROM nerve_apps WHERE name = ?', name);
      for (const id of changes.dropHeld) sql.exec('DELETE FROM nerve_held WHERE id = ?', id);
      for (const record of changes.sessions) {
        sql.exec('INSERT OR REPLACE INTO nerve_sessions (ord, v) VALUES (?, ?)', record.ord, JSON.stringify(record));
      }
      for (const record of changes.replay) {
        sql.exec('INSERT OR REPLACE INTO nerve_replay (ord, s, v) VALUES (?, ?, ?)', record.ord, record.s, JSON.stringify(record));
      }
      for (const record of changes.apps) sql.exec('INSERT OR REPLACE INTO nerve_apps (name, v) VALUES (?, ?)', record.name, JSON.stringify(record));
      for (const record of changes.held) sql.exec('INSERT OR REPLACE INTO nerve_held (id, v) VALUES (?, ?)', record.id, JSON.stringify(record));
      if (changes.meta) sql.exec('INSERT OR REPLACE INTO nerve_meta (id, v) VALUES (1, ?)', JSON.stringify(changes.meta));
    });
  }
}
