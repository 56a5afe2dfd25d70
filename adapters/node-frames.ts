// Node host: a socket's outgoing WebSocket frames for one hub flush, written
// as one buffer. `ws` would spend two stream writes and two option objects per
// frame; frames from a server are never masked, so framing is only a 2–10 byte
// header (RFC 6455 §5.2) and one write per socket per flush carries any number.

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

/** Scratch space for payload sizes, shared: encodeFrames runs to completion before anyone else. */
const lengths: number[] = [];

/**
 * A `ws` connection as the hub sees it. The hub hands over one turn's frames
 * at once and they go straight to the TCP socket as one buffer; `ws` keeps the
 * handshake, reading, control frames and the closing handshake. Frames for a
 * connection that is no longer open are dropped, as `ws` itself drops sends
 * after close.
 */
export class NodeSocket implements HubSocket {
  private readonly raw: Socket;

  constructor(private readonly ws: WebSocket) {
    this.raw = (ws as unknown as { _socket: Socket })._socket;
  }

  send(frames: readonly (string | Uint8Array)[]): void {
    if (this.ws.readyState === OPEN && !this.raw.destroyed) this.raw.write(encodeFrames(frames, lengths));
  }

  close(code: number, reason: string): void {
    this.ws.close(code, reason);
  }

  /** Bytes written to the TCP socket that Node has not yet handed to the OS. */
  buffered(): number {
    return this.raw.writableLength;
  }

  /**
   * Half-closes the TCP connection (FIN after what is queued) instead of
   * destroying it: a destroy with unread input sends a reset, and a reset
   * makes the peer's kernel discard what it received but had not yet read.
   * ws destroys the socket after its own close timeout, or when the peer ends.
   */
  terminate(): void {
    if (!this.raw.destroyed) this.raw.end();
  }
}
