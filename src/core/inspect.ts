// Read-only views of the state for /health, /metrics and /clients.

import type { Counters, Memory, State } from './state.ts';

export interface ClientInfo {
  app_name: string;
  client_id: string;
  metadata: Record<string, unknown>;
  /** ms since the epoch when the current (or last) connection identified. */
  connected_at: number;
  /** false while the session waits in its resume window. */
  connected: boolean;
  /** In a cluster: the node that owns the session. */
  node?: string;
}

export function listClients(state: State, appName?: string): ClientInfo[] {
  const apps = appName === undefined ? [...state.apps.values()] : [state.apps.get(appName)].filter((app) => app !== undefined);
  const list: ClientInfo[] = [];
  for (const app of apps) {
    for (const session of app.sessions) {
      const info: ClientInfo = {
        app_name: app.name,
        client_id: session.clientId,
        metadata: { ...session.metadata },
        connected_at: session.connectedAt,
        connected: session.node === undefined ? session.conn !== null : session.remoteConnected === true,
      };
      if (state.cluster) info.node = session.node ?? state.cluster.self;
      list.push(info);
    }
  }
  return list;
}

export interface Stats extends Counters {
  /** Open connections whose close has not been sent. */
  connections: number;
  unidentified: number;
  clients: number;
  resumable: number;
  held: number;
  memory: Memory;
  /** Bytes transports hold for connections that are behind, as last reported. */
  outboundBacklog: number;
  /** In a cluster: other nodes' sessions in this node's replica (0 otherwise). */
  remoteSessions: number;
}

export function stats(state: State): Stats {
  let held = 0;
  for (const app of state.apps.values()) held += app.held.length;
  let remoteSessions = 0;
  if (state.cluster) for (const session of state.sessions.values()) if (session.node !== undefined) remoteSessions++;
  let outboundBacklog = 0;
  for (const conn of state.conns.values()) if (!conn.closing && Number.isFinite(conn.backlog)) outboundBacklog += conn.backlog;
  return {
    ...state.counters,
    connections: state.liveConns,
    unidentified: state.unidentifiedConns,
    clients: state.connectedClients,
    resumable: state.sessions.size - remoteSessions - state.connectedClients,
    held,
    memory: { ...state.memory },
    outboundBacklog,
    remoteSessions,
  };
}
