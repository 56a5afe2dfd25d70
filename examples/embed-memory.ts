// Embedding the pure core with no transport at all: connections are arrays and
// time is a number the caller advances. The smallest complete host, and the
// shape of a deterministic test harness (docs/embedding.md).

import { DEFAULT_LIMITS, createState, nextDeadline, step, type CoreConfig, type Input } from '../src/core/index.ts';

export interface MemoryConn {
  id: number;
  /** Frames the core sent to this connection, parsed. */
  inbox: { op: number; [field: string]: unknown }[];
  /** The close the core asked for, if any. */
  closed?: { code: number; reason: string };
  send(frame: object): void;
  /** The peer hangs up; `code` is its close code (none = dropped). */
  hangUp(code?: number): void;
}

export function memoryHub(config: Partial<CoreConfig> & { password: string }) {
  const state = createState({ ...DEFAULT_LIMITS, worker: 'nerve-000000', ...config });
  const conns = new Map<number, MemoryConn>();
  const logs: string[] = [];
  let now = 0;
  let nextId = 1;

  function run(input: Input): void {
    for (const output of step(state, input)[1]) {
      if (output.type === 'send') conns.get(output.conn)?.inbox.push(JSON.parse(output.data as string));
      else if (output.type === 'close') {
        const conn = conns.get(output.conn);
        if (conn) conn.closed = { code: output.code, reason: output.reason };
        // A real transport reports the close when it completes; here it completes at once.
        conns.delete(output.conn);
        run({ type: 'close', now, conn: output.conn });
      } else if (output.type === 'log') logs.push(output.msg);
    }
  }

  return {
    logs,
    connect(): MemoryConn {
      const id = nextId++;
      const conn: MemoryConn = {
        id,
        inbox: [],
        send: (frame) => run({ type: 'message', now, conn: id, data: JSON.stringify(frame) }),
        hangUp: (code) => conns.delete(id) && run({ type: 'close', now, conn: id, code }),
      };
      conns.set(id, conn);
      run({ type: 'open', now, conn: id, wire: { format: 'json', compression: 'none' } });
      return conn;
    },
    /** Moves the clock forward, ticking at each deadline on the way, as a host's one timer would. */
    advance(ms: number): void {
      const until = now + ms;
      // Each tick retires or re-files the deadline it was for, so this ends; the bound guards a core bug.
      for (let i = 0, at = nextDeadline(state); at !== undefined && at <= until; i++, at = nextDeadline(state)) {
        if (i === 100_000) throw new Error(`deadline ${at} is not advancing`);
        now = Math.max(now, at);
        run({ type: 'tick', now });
      }
      now = until;
    },
  };
}
