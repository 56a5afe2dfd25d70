// The Node host's frame encoder, read back by `ws`'s own frame parser: every
// payload size class, text and binary, multi-byte UTF-8, many frames in one buffer.

import { createRequire } from 'node:module';
import type { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { encodeFrames } from '../adapters/node-frames.ts';

// ws exports its Receiver without types; it parses frames as a client would.
const { Receiver } = createRequire(import.meta.url)('ws') as { Receiver: new (options: object) => Writable };

type Message = { data: string | Buffer; binary: boolean };

function parse(bytes: Buffer): Promise<Message[]> {
  return new Promise((resolve, reject) => {
    const messages: Message[] = [];
    const receiver = new Receiver({ isServer: false, maxPayload: 0 });
    receiver.on('message', (data: Buffer, binary: boolean) => messages.push({ data: binary ? Buffer.from(data) : data.toString(), binary }));
    receiver.on('error', reject);
    receiver.write(bytes, () => resolve(messages));
  });
}

describe('encodeFrames', () => {
  it('frames payloads of every length class so a client parses them back', async () => {
    const sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000];
    const frames = sizes.map((n) => 'x'.repeat(n));
    const messages = await parse(encodeFrames(frames));
    expect(messages.map((m) => m.data)).toEqual(frames);
    expect(messages.every((m) => !m.binary)).toBe(true);
  });

  it('sizes text by its UTF-8 bytes, not its characters', async () => {
    const text = '{"op":8,"d":"héllo → 世界 🙂"}';
    const bytes = encodeFrames([text]);
    expect(bytes.length).toBe(2 + Buffer.byteLength(text));
    expect((await parse(bytes))[0]!.data).toBe(text);
  });

  it('sends bytes as binary frames, in order with text frames', async () => {
    const packed = Uint8Array.of(0x82, 0xa2, 0x6f, 0x70, 0x08);
    const messages = await parse(encodeFrames(['first', packed, 'last']));
    expect(messages).toEqual([
      { data: 'first', binary: false },
      { data: Buffer.from(packed), binary: true },
      { data: 'last', binary: false },
    ]);
  });

  it('reuses its scratch lengths without carrying old entries into a shorter batch', async () => {
    const lengths: number[] = [];
    encodeFrames(['a'.repeat(300), 'b', 'c'], lengths);
    expect(await parse(encodeFrames(['z'], lengths))).toEqual([{ data: 'z', binary: false }]);
  });
});
