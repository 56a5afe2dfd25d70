// What nodes of a cluster say to each other, as plain JSON: registry entries
// on the bus, events relayed to the node that owns their recipient, and the
// release/handoff of a session that a client resumes on another node.

import type { ReplayRecord, RoutedRecord, SessionRecord } from './persist.ts';

/** A session as every node's replica knows it; published by its owner on every change. */
export interface RegistryEntry {
  app: string;
  id: string;
  /** The node that owns it. */
  node: string;
  /** Has an open connection (mode one only picks connected sessions). */
  connected: boolean;
  md: Record<string, unknown>;
  /** When its current or last connection identified (ms). */
  at: number;
  /** Who created it (see auth.ts authorityOf): only the same authority, or the password, may take it over. */
  au: string;
}

export type NodeMessage =
  /** Bus: a session was created, changed metadata, connected or disconnected. */
  | ({ t: 'up' } & RegistryEntry)
  /** Bus: a session ended on `node`. */
  | { t: 'down'; app: string; id: string; node: string }
  /** Bus: `node` is about to publish all its sessions again: forget what it published before. */
  | { t: 'reset'; node: string }
  /** Bus: a mode-all dispatch; every node delivers it to its own matching sessions, so all see one order. */
  | { t: 'all'; msg: RoutedRecord }
  /** Inbox: a directed event for session `to` (app\0client), or to route again if it is not here. */
  | { t: 'event'; to: string; msg: RoutedRecord; hops: number }
  /** Inbox: NERVE_UNDELIVERABLE for the sender session `to`. */
  | { t: 'undeliverable'; to: string; e: string; reason: string; nonce?: string | undefined; forwarded?: true }
  /** Inbox: `node` has a client identifying as session `key` and asks the owner to hand it over. */
  | { t: 'release'; key: string; node: string; reconnect: boolean }
  /**
   * Inbox: the owner's answer to `release`. With `session` (and its replay
   * buffer) the session is now the asker's; `refused` when it is connected
   * and the client did not ask to resume; `moved` when another node has it;
   * neither when no node has it.
   */
  | {
      t: 'handoff';
      key: string;
      session?: SessionRecord;
      replay?: ReplayRecord[];
      /** The last bus entry the old owner had handled for the session: mode-all events after it are the new owner's to deliver. */
      bus?: string;
      /** Set when the session was adopted and not resumed since (see Session.adoptedSeq). */
      adoptedSeq?: number;
      refused?: string;
      moved?: string;
    };
