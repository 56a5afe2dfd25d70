// Node host: a socket's outgoing WebSocket frames for one event-loop turn,
// written as one buffer when the turn ends. `ws` would spend two stream writes
// and two option objects per frame; frames from a server are never masked, so
// framing is only a 2–10 byte header (RFC 6455 §5.2) and one write per socket
// per turn carries any number of them.

import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import type { HubSocket } from '../src/host/hub.ts';

const OPEN = 1;
const TEXT = 0x81; // FIN + text opcode
const BINARY = 0x82; // FIN + binary opcode

/** Bytes of header before a payload of `length` bytes. */
function headerSize(length: number): number {
  return length < 126 ? 2 : length < 65536 ? 4 : 10;
}

/**
 * Encodes whole frames, text for strings and binary for bytes, into one buffer.
 * `lengths` is scratch space for the payload sizes (reused between calls).
 */
export function encodeFrames(frames: readonly (string | Uint8Array)[], lengths: number[] = []): Buffer {
  let total = 0;
  for (let i = 0; i < frames.length; i++) {
    const frame = frames[i]!;
    const length = typeof frame === 'string' ? Buffer.byteLength(frame) : frame.byteLength;
    lengths[i] = length;
    total += headerSize(length) + length;
  }
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (let i = 0; i < frames.length; i++) {
    const frame = frames[i]!;
    const length = lengths[i]!;
    out[at++] = typeof frame === 'string' ? TEXT : BINARY;
    if (length < 126) out[at++] = length;
    else if (length < 65536) {
      out[at++] = 126;
      out.writeUInt16BE(length, at);
      at += 2;
    } else {
      out[at++] = 127;
      out.writeUInt32BE(Math.floor(length / 2 ** 32), at);
      out.writeUInt32BE(length >>> 0, at + 4);
      at += 8;
    }
    if (typeof frame === 'string') out.write(frame, at, length, 'utf8');
    else out.set(frame, at);
    at += length;
  }
  return out;
}

/** Sockets with frames waiting for the end of this turn. */
const pending: BatchedSocket[] = [];
function flushAll(): void {
  for (let i = 0; i < pending.length; i++) pending[i]!.flush();
  pending.length = 0;
}

/**
 * A `ws` connection as the hub sees it. Data frames go straight to the TCP
 * socket, batched per turn; `ws` keeps the handshake, reading, control frames
 * and the closing handshake. Frames queued for a connection that is no longer
 * open are dropped, as `ws` itself drops sends after close.
 */
export class BatchedSocket implements HubSocket {
  private readonly frames: (string | Uint8Array)[] = [];
  private readonly lengths: number[] = [];
  private readonly raw: Socket;

  constructor(private readonly ws: WebSocket) {
    this.raw = (ws as unknown as { _socket: Socket })._socket;
  }

  send(data: string | Uint8Array): void {
    if (this.ws.readyState !== OPEN) return;
    if (this.frames.length === 0 && pending.push(this) === 1) setImmediate(flushAll);
    this.frames.push(data);
  }

  close(code: number, reason: string): void {
    // NO_U_TBH (or GO_AWAY) is queued just before; it must leave before the close frame.
    this.flush();
    this.ws.close(code, reason);
  }

  flush(): void {
    const frames = this.frames;
    if (frames.length === 0) return;
    if (this.ws.readyState === OPEN && !this.raw.destroyed) this.raw.write(encodeFrames(frames, this.lengths));
    frames.length = 0;
  }
}
