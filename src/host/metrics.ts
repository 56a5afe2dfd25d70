// Prometheus text exposition of the hub's counters, gauges and limits, and in
// a cluster those of its link (docs/cluster.md, "Operating it").

import type { Stats } from '../core/inspect.ts';
import type { CoreConfig } from '../core/io.ts';

type Metric = [name: string, type: 'gauge' | 'counter', help: string, value: number];

/** What a cluster link reports. */
export interface ClusterMetrics {
  up: boolean;
  nodes: number;
  remoteSessions: number;
  relayed: number;
  received: number;
  commands: number;
  errors: number;
  adopted: number;
}

function clusterMetrics(cluster: ClusterMetrics): Metric[] {
  return [
    ['nerve_cluster_up', 'gauge', '1 while this node is linked to the cluster through Redis.', cluster.up ? 1 : 0],
    ['nerve_cluster_nodes', 'gauge', 'Live nodes seen in the cluster, this one included.', cluster.nodes],
    ['nerve_cluster_remote_sessions', 'gauge', "Sessions of other nodes in this node's replica of the registry.", cluster.remoteSessions],
    ['nerve_cluster_relayed_total', 'counter', 'Node messages sent to other nodes (inboxes and the bus).', cluster.relayed],
    ['nerve_cluster_received_total', 'counter', 'Node messages read from the inbox and the bus.', cluster.received],
    ['nerve_cluster_redis_commands_total', 'counter', 'Redis commands issued.', cluster.commands],
    ['nerve_cluster_redis_errors_total', 'counter', 'Redis commands that failed.', cluster.errors],
    ['nerve_cluster_adopted_total', 'counter', 'Dead or departed nodes adopted by this node.', cluster.adopted],
  ];
}

export function renderMetrics(config: CoreConfig, stats: Stats, cluster?: ClusterMetrics): string {
  const label = `worker="${config.worker}"`;
  const { held, replay, metadata } = stats.memory;
  const metrics: Metric[] = [
    ['nerve_connections', 'gauge', 'Open WebSocket connections (a connection stops counting once its close is sent).', stats.connections],
    ['nerve_connections_unidentified', 'gauge', 'Open connections that have not identified yet.', stats.unidentified],
    ['nerve_connections_limit', 'gauge', 'NERVE_MAX_CONNECTIONS.', config.maxConnections],
    ['nerve_connections_unidentified_limit', 'gauge', 'NERVE_MAX_UNIDENTIFIED.', config.maxUnidentified],
    ['nerve_clients', 'gauge', 'Identified sessions with an open connection.', stats.clients],
    ['nerve_sessions_resumable', 'gauge', 'Sessions waiting in their resume window.', stats.resumable],
    ['nerve_held_dispatches', 'gauge', 'Dispatches held for a recipient that is not there yet.', stats.held],
    ['nerve_held_bytes', 'gauge', 'Bytes of held dispatches, queries included.', held],
    ['nerve_replay_bytes', 'gauge', 'Bytes in replay buffers.', replay],
    ['nerve_metadata_bytes', 'gauge', 'Bytes of client metadata as JSON.', metadata],
    ['nerve_memory_used_bytes', 'gauge', 'Held, replay and metadata bytes: what counts against NERVE_MAX_MEMORY.', held + replay + metadata],
    ['nerve_memory_limit_bytes', 'gauge', 'NERVE_MAX_MEMORY.', config.maxMemory],
    ['nerve_outbound_backlog_bytes', 'gauge', 'Bytes transports hold for readers that are behind.', stats.outboundBacklog],
    ['nerve_frames_in_total', 'counter', 'Frames received.', stats.framesIn],
    ['nerve_frames_out_total', 'counter', 'Frames sent.', stats.framesOut],
    ['nerve_dispatches_total', 'counter', 'Dispatches accepted for routing (WebSocket and HTTP).', stats.dispatches],
    ['nerve_deliveries_total', 'counter', 'Dispatches handed to a session (one per recipient).', stats.deliveries],
    ['nerve_dispatches_queued_total', 'counter', 'Dispatches held for a later recipient.', stats.queued],
    ['nerve_dispatches_undeliverable_total', 'counter', 'Dispatches that ended as NERVE_UNDELIVERABLE.', stats.undeliverable],
    ['nerve_slow_consumers_total', 'counter', 'Connections cut with 4507 because their reader fell behind.', stats.slowConsumers],
    ...(cluster ? clusterMetrics(cluster) : []),
  ];
  const lines: string[] = [];
  for (const [name, type, help, value] of metrics) {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name}{${label}} ${value}`);
  }
  lines.push('# HELP nerve_errors_total Connections closed for a protocol error, by close code.', '# TYPE nerve_errors_total counter');
  for (const [code, count] of Object.entries(stats.errors)) lines.push(`nerve_errors_total{${label},code="${code}"} ${count}`);
  lines.push('# HELP nerve_refused_total Frames and connections refused, by the kind of refusal.', '# TYPE nerve_refused_total counter');
  for (const [reason, count] of Object.entries(stats.refused)) lines.push(`nerve_refused_total{${label},reason="${reason}"} ${count}`);
  return `${lines.join('\n')}\n`;
}
