// Runs adapters/cloudflare.ts in workerd through Miniflare, bundled the way
// wrangler bundles it, with a small WebSocket client for the Cloudflare tests.

import { Miniflare } from 'miniflare';
import WebSocket from 'ws';
import { bundleWorker } from '../support/bundle.ts';

export interface RunningWorker {
  mf: Miniflare;
  /** ws://127.0.0.1:PORT/ */
  url: string;
  http: string;
  /** Every line workerd printed (the hub's JSON logs among them). */
  lines: string[];
  logs(msg: string): Record<string, unknown>[];
  dispose(): Promise<void>;
}

export const PASSWORD = 'cf-test-password';

export async function startWorker(vars: Record<string, string> = {}): Promise<RunningWorker> {
  const lines: string[] = [];
  const collect = (stream: NodeJS.ReadableStream) => {
    let rest = '';
    stream.on('data', (chunk: Buffer) => {
      const parts = (rest + chunk.toString()).split('\n');
      rest = parts.pop()!;
      lines.push(...parts.filter(Boolean));
    });
  };
  const mf = new Miniflare({
    modules: true,
    script: await bundleWorker(),
    compatibilityDate: '2026-04-20',
    durableObjects: { NERVE_HUB: { className: 'NerveHub', useSQLite: true } },
    bindings: { NERVE_PASSWORD: PASSWORD, ...vars },
    host: '127.0.0.1',
    port: 0,
    cf: false,
    handleRuntimeStdio: (stdout, stderr) => {
      collect(stdout);
      collect(stderr);
    },
  });
  const ready = await mf.ready;
  const http = ready.origin;
  return {
    mf,
    url: `${http.replace(/^http/, 'ws')}/`,
    http,
    lines,
    logs(msg) {
      const found: Record<string, unknown>[] = [];
      for (const line of lines) {
        if (!line.startsWith('{')) continue;
        try {
          const entry = JSON.parse(line) as Record<string, unknown>;
          if (entry.msg === msg) found.push(entry);
        } catch {
          // not one of ours
        }
      }
      return found;
    },
    dispose: () => mf.dispose(),
  };
}

export interface Frame {
  op: number;
  d?: unknown;
  e?: string;
  s?: number;
  nonce?: string;
  from?: unknown;
}

/** A raw protocol client that records everything and lets a test wait for it. */
export class Peer {
  readonly frames: (Frame | Uint8Array)[] = [];
  closed: { code: number; reason: string } | undefined;
  private waiters: (() => void)[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer, binary) => {
      this.frames.push(binary ? new Uint8Array(data) : (JSON.parse(data.toString()) as Frame));
      this.wake();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.wake();
    });
    ws.on('error', () => this.wake());
  }

  static connect(url: string): Promise<Peer> {
    const ws = new WebSocket(url);
    const peer = new Peer(ws);
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(peer));
      ws.once('error', reject);
    });
  }

  private wake(): void {
    for (const resolve of this.waiters.splice(0)) resolve();
  }

  send(frame: object | string): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  json(): Frame[] {
    return this.frames.filter((frame): frame is Frame => !(frame instanceof Uint8Array));
  }

  /** Resolves once `check` holds, or fails after `ms`. */
  async until<T>(check: () => T | undefined | false, ms = 5_000): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      const value = check();
      if (value) return value;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; frames so far: ${JSON.stringify(this.frames)} closed: ${JSON.stringify(this.closed)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  frame(match: (frame: Frame) => boolean, ms?: number): Promise<Frame> {
    return this.until(() => this.json().find(match), ms);
  }

  event(e: string, ms?: number): Promise<Frame> {
    return this.frame((frame) => frame.op === 8 && frame.e === e, ms);
  }

  waitClosed(ms?: number): Promise<{ code: number; reason: string }> {
    return this.until(() => this.closed, ms);
  }

  /** Connects, identifies, and waits for WELCOME. */
  static async identify(url: string, app_name: string, client_id: string, extra: Record<string, unknown> = {}): Promise<Peer> {
    const peer = await Peer.connect(url);
    peer.send({ op: 1, d: { app_name, client_id, password: PASSWORD, ...extra } });
    await peer.frame((frame) => frame.op === 2);
    return peer;
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function getJson(url: string, auth = true): Promise<unknown> {
  const response = await fetch(url, auth ? { headers: { authorization: `Bearer ${PASSWORD}` } } : {});
  return response.json();
}
