// The baseline's protocol logic, shared by its Node, Bun and Deno hosts: the
// least a relay must do to speak Nerve's wire format (HELLO, IDENTIFY/WELCOME,
// heartbeats, op 8 to a client_id / round-robin / all of an app, with `from`
// and `s`). No schema validation, no queueing, no resume, no metadata.

export interface Peer {
  send(text: string): void;
  close(code: number, reason: string): void;
}

export interface RelayConn {
  peer: Peer;
  app: string;
  id: string;
  /** `"from":{…}` pre-encoded once at IDENTIFY, reused for every dispatch. */
  from: string;
  s: number;
}

interface App {
  conns: RelayConn[];
  cursor: number;
}

export function createRelay(opts: { password: string; heartbeatInterval: number; worker: string }) {
  const byKey = new Map<string, RelayConn>();
  const apps = new Map<string, App>();
  const hello = JSON.stringify({ op: 0, d: { heartbeat_interval: opts.heartbeatInterval, worker: opts.worker } });
  const welcome = JSON.stringify({ op: 2, d: "hi i'm dad" });

  const deliver = (to: RelayConn, head: string) => {
    to.s++;
    to.peer.send(head + to.s + '}');
  };

  return {
    open(peer: Peer): RelayConn {
      peer.send(hello);
      return { peer, app: '', id: '', from: '', s: 0 };
    },

    message(conn: RelayConn, text: string): void {
      let f: any;
      try {
        f = JSON.parse(text);
      } catch {
        conn.peer.close(4400, 'bad frame');
        return;
      }
      switch (f?.op) {
        case 3:
          conn.peer.send('{"op":4}');
          return;
        case 1: {
          const d = f.d ?? {};
          if (d.password !== opts.password) return conn.peer.close(4401, 'bad password');
          conn.app = String(d.app_name);
          conn.id = String(d.client_id);
          conn.from = JSON.stringify({ app_name: conn.app, client_id: conn.id });
          byKey.set(conn.app + '\0' + conn.id, conn);
          let app = apps.get(conn.app);
          if (!app) apps.set(conn.app, (app = { conns: [], cursor: 0 }));
          app.conns.push(conn);
          conn.peer.send(welcome);
          return;
        }
        case 8: {
          const to = f.to;
          if (!conn.from || !to) return;
          // Encoded once per dispatch; each recipient only gets its own `s` appended.
          const head =
            '{"op":8,"e":' + JSON.stringify(f.e) + ',"d":' + JSON.stringify(f.d ?? null) +
            ',"from":' + conn.from + (f.nonce !== undefined ? ',"nonce":' + JSON.stringify(f.nonce) : '') + ',"s":';
          if (to.client_id !== undefined) {
            const r = byKey.get(to.app_name + '\0' + to.client_id);
            if (r) deliver(r, head);
            return;
          }
          const app = apps.get(to.app_name);
          if (!app || app.conns.length === 0) return;
          if (to.mode === 'all') {
            for (const r of app.conns) if (r !== conn) deliver(r, head);
          } else {
            const r = app.conns[app.cursor++ % app.conns.length];
            if (r !== conn) deliver(r, head);
          }
          return;
        }
        default:
          return;
      }
    },

    close(conn: RelayConn): void {
      if (!conn.from) return;
      const key = conn.app + '\0' + conn.id;
      if (byKey.get(key) === conn) byKey.delete(key);
      const app = apps.get(conn.app);
      if (app) {
        const i = app.conns.indexOf(conn);
        if (i >= 0) app.conns.splice(i, 1);
      }
    },
  };
}

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
