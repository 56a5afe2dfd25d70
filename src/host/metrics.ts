// Prometheus text exposition of the hub's counters and gauges.

import type { Stats } from '../core/inspect.ts';

type Metric = [name: string, type: 'gauge' | 'counter', help: string, value: number];

export function renderMetrics(worker: string, stats: Stats): string {
  const label = `worker="${worker}"`;
  const metrics: Metric[] = [
    ['nerve_connections', 'gauge', 'Open WebSocket connections.', stats.connections],
    ['nerve_clients', 'gauge', 'Identified sessions with an open connection.', stats.clients],
    ['nerve_sessions_resumable', 'gauge', 'Sessions waiting in their resume window.', stats.resumable],
    ['nerve_held_dispatches', 'gauge', 'Dispatches held for a recipient that is not there yet.', stats.held],
    ['nerve_frames_in_total', 'counter', 'Frames received.', stats.framesIn],
    ['nerve_frames_out_total', 'counter', 'Frames sent.', stats.framesOut],
    ['nerve_dispatches_total', 'counter', 'Dispatches accepted for routing (WebSocket and HTTP).', stats.dispatches],
    ['nerve_deliveries_total', 'counter', 'Dispatches handed to a session (one per recipient).', stats.deliveries],
    ['nerve_dispatches_queued_total', 'counter', 'Dispatches held for a later recipient.', stats.queued],
    ['nerve_dispatches_undeliverable_total', 'counter', 'Dispatches that ended as NERVE_UNDELIVERABLE.', stats.undeliverable],
  ];
  const lines: string[] = [];
  for (const [name, type, help, value] of metrics) {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name}{${label}} ${value}`);
  }
  lines.push('# HELP nerve_errors_total Connections closed for a protocol error, by close code.', '# TYPE nerve_errors_total counter');
  for (const [code, count] of Object.entries(stats.errors)) lines.push(`nerve_errors_total{${label},code="${code}"} ${count}`);
  return `${lines.join('\n')}\n`;
}
