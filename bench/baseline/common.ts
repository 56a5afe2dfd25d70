// What the baseline relays share: their settings from NERVE_* variables and the
// listening line bench/run.ts waits for. The relaying itself is written once
// per runtime (node.ts, bun.ts, deno.ts), each the fastest that runtime allows.

export function baselineConfig(env: Record<string, string | undefined>) {
  return {
    port: Number(env.NERVE_PORT ?? 6669),
    host: env.NERVE_HOST ?? '127.0.0.1',
    password: env.NERVE_PASSWORD ?? 'pw',
    heartbeatInterval: Number(env.NERVE_HEARTBEAT_INTERVAL ?? 45_000),
    worker: 'nerve-base00',
  };
}

export function listeningLine(port: number, runtime: string): string {
  return JSON.stringify({ msg: 'listening', port, worker: 'nerve-base00', runtime, baseline: true });
}
