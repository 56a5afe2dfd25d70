// msgpack frames carry JSON's data model and nothing else: one pass over the bytes refuses what
// JSON cannot carry (naming where), too deep or too wide a frame and malformed input before
// @msgpack/msgpack builds anything; msgpackr packs. Imports two tiny core modules, so clients load it lazily.

import { Decoder, type ExtensionCodecType } from '@msgpack/msgpack';
import { Packr } from 'msgpackr/pack';
import { DecodeError } from './decode-error.ts';
import { depthExceeded } from './depth.ts';

// ── encoding ────────────────────────────────────────────────────────────────

// msgpackr packs about 2.5× faster than @msgpack/msgpack, and frames are packed
// on the hot path of msgpack connections. useRecords would add a msgpackr-only
// extension; variableMapSize writes fixmap/map16/map32 (the default always
// writes map16 and throws past 65 535 keys); undefined would otherwise become
// fixext 0 — all three would make frames unreadable to other languages.
const packr = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: true, encodeUndefinedAsNil: true });

export function packMsgpack(value: unknown): Uint8Array {
  return packr.pack(value);
}

// ── decoding ────────────────────────────────────────────────────────────────

// The library refuses a `__proto__` key outright; JSON.parse makes it an own
// key, in its place among the others, so we do too. It is decoded as this
// placeholder, which the library stores in order like any key, and renamed
// once decoded. No real key can collide: every string key goes through
// keyDecoder below, whose text is ASCII or TextDecoder's well-formed UTF-16,
// never a lone surrogate.
const PROTO_PLACEHOLDER = '\ud800__proto__';
const PROTO_BYTES = Array.from('__proto__', (c) => c.charCodeAt(0));

/** How many `__proto__` keys the running decode has turned into PROTO_PLACEHOLDER. */
let protoKeys = 0;

/** Keys become what JavaScript would make of them in JSON: strings; integers as their decimal digits. */
function convertKey(key: unknown): string {
  // The scan lets through only strings and safe integers (a float key like 1.0 included, as "1").
  return typeof key === 'string' ? key : String(key);
}

// The scan refuses every extension before the library sees the frame; this only
// makes sure none could ever become a live object (the default codec builds
// Dates). Getting here is a bug in the scan, so it is not a DecodeError.
const noExtensions: ExtensionCodecType<undefined> = {
  tryToEncode: () => null,
  decode(_data, type) {
    throw new Error(`msgpack extension ${type} got past the scan`);
  },
};

const keyText = new TextDecoder();

// Keys repeat from frame to frame (op, d, to, app_name…), so the last short
// ASCII key seen in each of a few hundred slots is kept and compared with the
// bytes in place. A miss costs only the decoding: the library's own cache
// copies the bytes of every key it misses, which made a frame of distinct keys
// cost twice as much.
const KEY_SLOTS = 256;
const LONGEST_KEY_CACHED = 16;
const keySlots: string[] = new Array<string>(KEY_SLOTS).fill('');
const keyUnits: number[] = [];

const keyDecoder = {
  // Every key but the empty one, so that all key text comes from decode() (see PROTO_PLACEHOLDER).
  canBeCached: (byteLength: number) => byteLength > 0,
  decode(bytes: Uint8Array, offset: number, byteLength: number): string {
    if (byteLength > LONGEST_KEY_CACHED) return keyText.decode(bytes.subarray(offset, offset + byteLength));
    if (byteLength === PROTO_BYTES.length && isProto(bytes, offset)) {
      protoKeys++;
      return PROTO_PLACEHOLDER;
    }
    const slot = (bytes[offset]! ^ (bytes[offset + byteLength - 1]! << 3) ^ (byteLength << 5)) & (KEY_SLOTS - 1);
    const cached = keySlots[slot]!;
    if (cached.length === byteLength) {
      let i = 0;
      while (i < byteLength && cached.charCodeAt(i) === bytes[offset + i]) i++;
      if (i === byteLength) return cached;
    }
    let bits = 0;
    for (let i = 0; i < byteLength; i++) bits |= bytes[offset + i]!;
    if (bits >= 0x80) return keyText.decode(bytes.subarray(offset, offset + byteLength));
    keyUnits.length = byteLength;
    for (let i = 0; i < byteLength; i++) keyUnits[i] = bytes[offset + i]!;
    const key = String.fromCharCode.apply(null, keyUnits);
    keySlots[slot] = key;
    return key;
  },
};

function isProto(bytes: Uint8Array, offset: number): boolean {
  for (let i = 0; i < PROTO_BYTES.length; i++) if (bytes[offset + i] !== PROTO_BYTES[i]) return false;
  return true;
}

const decoder = new Decoder({ extensionCodec: noExtensions, mapKeyConverter: convertKey, keyDecoder, useBigInt64: false, rawStrings: false });

/**
 * Decodes one msgpack frame into a JSON value; throws DecodeError naming where
 * anything JSON cannot carry was found, if it nests deeper than `maxDepth`, or
 * if it holds more arrays and maps than its size allows (see containerLimit).
 * Nothing is built until the whole frame has passed the scan. A `maxDepth` of
 * Infinity (the client, reading what the hub already bounded) lifts both limits.
 */
export function decodeMsgpack(bytes: Uint8Array, maxDepth: number): unknown {
  scan(bytes, maxDepth, maxDepth === Infinity ? Infinity : containerLimit(bytes.length));
  protoKeys = 0;
  const value = decoder.decode(bytes);
  if (protoKeys > 0) settleProtoKeys(value);
  return value;
}

/** Renames each PROTO_PLACEHOLDER to an own `__proto__` data property in the same place, as JSON.parse makes it: never the prototype setter. */
function settleProtoKeys(root: unknown): void {
  const pending: unknown[] = [root];
  while (protoKeys > 0 && pending.length > 0) {
    const node = pending.pop();
    if (typeof node !== 'object' || node === null) continue;
    if (!Array.isArray(node) && Object.hasOwn(node, PROTO_PLACEHOLDER)) {
      const map = node as Record<string, unknown>;
      const entries = Object.entries(map);
      for (const [key] of entries) delete map[key];
      for (const [key, value] of entries) {
        if (key === PROTO_PLACEHOLDER) {
          Object.defineProperty(map, '__proto__', { value, writable: true, enumerable: true, configurable: true });
          protoKeys--;
        } else {
          map[key] = value;
        }
      }
    }
    for (const child of Object.values(node)) if (typeof child === 'object' && child !== null) pending.push(child);
  }
}

// ── the scan: every header and length, before anything is built ────────────
//
// One pass over the bytes, without recursion and without allocating per value,
// so a frame the library would spend a million objects on is refused for the
// cost of a loop: a million levels at the 33rd, a million empty arrays once
// they outnumber what JSON of that size could hold. A refusal names the first
// offending value in byte order, its path read off the stack of open containers.

const NOT_JSON = 'frames carry JSON values only';
const UNDECODABLE = 'undecodable msgpack frame';

// Building values is what a frame costs, and V8 pays about the same per array
// or object whichever parser asks (JSON.parse of 1 MiB of `[]` or `{}` took
// 20–40 ms of CPU on Node 20). msgpack writes an empty one in 1 byte where JSON
// needs 3 (`[],`), so without a bound a msgpack frame could make the hub build
// three times the objects any JSON frame of its size can. Strings, keys and
// numbers are only about twice as dense as JSON, as all compact data is, and
// are not limited.
const CONTAINERS_FREE = 1_024;
const BYTES_PER_CONTAINER = 3;

/** The most arrays and maps a frame of `size` bytes may hold: as many as JSON text of that size could, and any small frame. */
function containerLimit(size: number): number {
  return CONTAINERS_FREE + Math.floor(size / BYTES_PER_CONTAINER);
}

/** Per open array or map, innermost last: children still to come (a map's keys and values both count). */
let left = new Float64Array(64);
/** How many children it has, for the index of the one being read. */
let total = new Float64Array(64);
/** Where the key of its entry being read starts, if a map. */
let keyAt = new Float64Array(64);
let isMap = new Uint8Array(64);

function growStack(): void {
  const grown = (from: Float64Array) => {
    const to = new Float64Array(from.length * 2);
    to.set(from);
    return to;
  };
  left = grown(left);
  total = grown(total);
  keyAt = grown(keyAt);
  const maps = new Uint8Array(isMap.length * 2);
  maps.set(isMap);
  isMap = maps;
}

// What a head byte starts. The kinds a value may be refused for come last, so that most values need one comparison.
const INT = 0;
const STR = 1;
const ATOM = 2; // nil, false, true
const ARRAY = 3;
const MAP = 4;
const INT64 = 5;
const FLOAT = 6;
const BIN = 7;
const EXT = 8;
const UNUSED = 9; // 0xc1

/** For head bytes 0xc0–0xdf: kind, bytes of header (head and length field), and for forms without a length field their whole size. */
const KIND = Uint8Array.of(ATOM, UNUSED, ATOM, ATOM, BIN, BIN, BIN, EXT, EXT, EXT, FLOAT, FLOAT, INT, INT, INT, INT64, INT, INT, INT, INT64, EXT, EXT, EXT, EXT, EXT, STR, STR, STR, ARRAY, ARRAY, MAP, MAP);
const HEADER = Uint8Array.of(1, 1, 1, 1, 2, 3, 5, 2, 3, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 3, 5, 3, 5, 3, 5);
const SIZE = Uint8Array.of(1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 5, 9, 2, 3, 5, 9, 2, 3, 5, 9, 3, 4, 6, 10, 18, 0, 0, 0, 0, 0, 0, 0);

/**
 * Checks one frame's bytes: exactly one well-formed value, nothing JSON cannot
 * carry, nesting within `maxDepth`, at most `maxContainers` arrays and maps.
 * Throws the DecodeError the frame earns.
 */
function scan(bytes: Uint8Array, maxDepth: number, maxContainers: number): void {
  const end = bytes.length;
  let pos = 0;
  let depth = 0;
  let containers = 0;
  for (;;) {
    if (pos >= end) throw new DecodeError(UNDECODABLE);
    const head = bytes[pos]!;
    let kind: number;
    let header = 1;
    let next: number;
    let count = 0;
    if (head < 0x80 || head >= 0xe0) {
      kind = INT;
      next = pos + 1;
    } else if (head >= 0xa0 && head < 0xc0) {
      kind = STR;
      next = pos + 1 + (head & 0x1f);
    } else if (head < 0xa0) {
      kind = head < 0x90 ? MAP : ARRAY;
      count = head & 0x0f;
      next = pos + 1;
    } else {
      kind = KIND[head - 0xc0]!;
      if (kind === UNUSED) throw new DecodeError(`${UNDECODABLE}: Unrecognized type byte: 0xc1`);
      header = HEADER[head - 0xc0]!;
      if (header === 1) next = pos + SIZE[head - 0xc0]!;
      else {
        // The length field must be whole before it is read.
        if (pos + header > end) throw new DecodeError(UNDECODABLE);
        const length = header === 2 ? bytes[pos + 1]! : header === 3 ? (bytes[pos + 1]! << 8) | bytes[pos + 2]! : uint32At(bytes, pos + 1);
        if (kind === ARRAY || kind === MAP) {
          count = length;
          next = pos + header;
        } else {
          // ext 8/16/32 have their type byte after the length.
          next = pos + header + length + (kind === EXT ? 1 : 0);
        }
      }
    }
    // Judged only once all its bytes are there: a truncated frame is undecodable, whatever it started.
    if (next > end) throw new DecodeError(UNDECODABLE);
    // A map's children alternate key, value, so its keys come when an even number is left.
    if (depth > 0 && isMap[depth - 1] === 1 && left[depth - 1]! % 2 === 0) {
      keyAt[depth - 1] = pos;
      if (kind !== STR && kind !== INT) {
        const type = keyRefusal(bytes, pos, kind);
        if (type !== undefined) throw refused(`map key of type ${type}`, where(bytes, depth - 1), 'keys must be strings or integers');
      }
    } else if (kind >= FLOAT) {
      const what = valueRefusal(bytes, pos, kind);
      if (what !== undefined) throw refused(what, where(bytes, depth), kind === BIN ? BIN_ADVICE : NOT_JSON);
    }
    pos = next;
    if (kind === ARRAY || kind === MAP) {
      if (depth >= maxDepth) throw new DecodeError(depthExceeded(maxDepth));
      if (++containers > maxContainers) throw new DecodeError(tooManyContainers(end));
      if (count > 0) {
        // Every child takes a byte at least: a header that claims more than are left is where the frame breaks.
        if (count > end - pos) throw new DecodeError(UNDECODABLE);
        if (depth === left.length) growStack();
        const children = kind === MAP ? 2 * count : count;
        left[depth] = children;
        total[depth] = children;
        isMap[depth] = kind === MAP ? 1 : 0;
        depth++;
        continue;
      }
    }
    // A value is complete, and so is every container it was the last child of.
    while (depth > 0 && --left[depth - 1]! === 0) depth--;
    if (depth === 0) {
      if (pos !== end) throw new DecodeError(`${UNDECODABLE}: bytes after the value`);
      return;
    }
  }
}

function tooManyContainers(size: number): string {
  return `msgpack frame holds more than ${containerLimit(size)} arrays and maps, the most its ${size} bytes allow (${CONTAINERS_FREE}, plus one per ${BYTES_PER_CONTAINER} bytes as JSON needs)`;
}

function uint32At(bytes: Uint8Array, at: number): number {
  return bytes[at]! * 0x1000000 + ((bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!);
}

const scratch = new DataView(new ArrayBuffer(8));

/** The number an int, int64 or float (any form) at `at` decodes to, as the library reads it. */
function numberAt(bytes: Uint8Array, at: number): number {
  const head = bytes[at]!;
  if (head < 0x80) return head;
  if (head >= 0xe0) return head - 0x100;
  for (let i = 0; i < 8; i++) scratch.setUint8(i, bytes[at + 1 + i] ?? 0);
  switch (head) {
    case 0xca: return scratch.getFloat32(0);
    case 0xcb: return scratch.getFloat64(0);
    case 0xcc: return scratch.getUint8(0);
    case 0xcd: return scratch.getUint16(0);
    case 0xce: return scratch.getUint32(0);
    // 64 bits as high × 2^32 + low, the nearest double, exactly as the library computes it.
    case 0xcf: return scratch.getUint32(0) * 0x100000000 + scratch.getUint32(4);
    case 0xd0: return scratch.getInt8(0);
    case 0xd1: return scratch.getInt16(0);
    case 0xd2: return scratch.getInt32(0);
    case 0xd3: return scratch.getInt32(0) * 0x100000000 + scratch.getUint32(4);
    default: return NaN;
  }
}

/** Why a map key other than a string or a small integer is refused, or undefined if it is an integer after all. */
function keyRefusal(bytes: Uint8Array, at: number, kind: number): string | undefined {
  switch (kind) {
    case ATOM:
      return bytes[at] === 0xc0 ? 'nil' : 'boolean';
    case ARRAY:
      return 'array';
    case MAP:
      return 'map';
    case BIN:
      return 'bin';
    case EXT:
      return `extension ${extensionName(extensionType(bytes, at))}`;
    default: {
      // An int64, or a float that holds an integer (1.0 is the key "1", as in JavaScript).
      const key = numberAt(bytes, at);
      if (Number.isSafeInteger(key)) return undefined;
      return Number.isInteger(key) ? 'integer beyond ±(2^53 − 1)' : 'float';
    }
  }
}

/** What a float, bin or extension value is refused as, or undefined for a finite float. */
function valueRefusal(bytes: Uint8Array, at: number, kind: number): string | undefined {
  if (kind === BIN) return 'bin';
  if (kind === EXT) return `extension ${extensionName(extensionType(bytes, at))}`;
  // Only NaN and ±Infinity have every exponent bit set (8 in float 32, 11 in float 64): no float is read to check.
  const second = bytes[at + 2]!;
  if ((bytes[at + 1]! & 0x7f) !== 0x7f || second < (bytes[at] === 0xca ? 0x80 : 0xf0)) return undefined;
  return `float ${numberAt(bytes, at)}`;
}

function extensionType(bytes: Uint8Array, at: number): number {
  const head = bytes[at]!;
  // fixext has its type right after the head; ext 8/16/32 after a 1-, 2- or 4-byte length.
  const offset = head >= 0xd4 ? 1 : HEADER[head - 0xc0]!;
  return (bytes[at + offset]! << 24) >> 24;
}

function extensionName(type: number): string {
  if (type === -1) return 'type -1 (timestamp)';
  return type < 0 ? `type ${type}` : `type 0x${type.toString(16).padStart(2, '0')}`;
}

function refused(what: string, where: string, why: string): DecodeError {
  return new DecodeError(`msgpack ${what} at ${where} is not allowed: ${why}`);
}

// A base64 string would arrive as text on msgpack and JSON connections alike,
// so the receiver could not tell it from a string the sender meant.
const BIN_ADVICE = `${NOT_JSON}; send text, or encode bytes as a base64 string yourself`;

const LONGEST_KEY_SHOWN = 32;

/** `d.items[3].name` for the value being read inside the `depth` outermost open containers; "the top level" for none. */
function where(bytes: Uint8Array, depth: number): string {
  if (depth === 0) return 'the top level';
  let text = '';
  for (let level = 0; level < depth; level++) {
    if (isMap[level] === 0) {
      text += `[${total[level]! - left[level]!}]`;
      continue;
    }
    const key = keyAt[level]!;
    const head = bytes[key]!;
    let name: string;
    if ((head >= 0xa0 && head < 0xc0) || (head >= 0xd9 && head <= 0xdb)) {
      const header = head < 0xc0 ? 1 : HEADER[head - 0xc0]!;
      const length = head < 0xc0 ? head & 0x1f : header === 2 ? bytes[key + 1]! : header === 3 ? (bytes[key + 1]! << 8) | bytes[key + 2]! : uint32At(bytes, key + 1);
      // Only as much as is shown: a key may be a megabyte long.
      name = keyText.decode(bytes.subarray(key + header, key + header + Math.min(length, 4 * (LONGEST_KEY_SHOWN + 1))));
    } else {
      name = String(numberAt(bytes, key));
    }
    if (name.length > LONGEST_KEY_SHOWN) name = `${name.slice(0, LONGEST_KEY_SHOWN)}…`;
    text += (text === '' ? '' : '.') + name;
  }
  return text;
}
