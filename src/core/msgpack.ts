// msgpack frames carry JSON's data model and nothing else: strict decoding with
// @msgpack/msgpack (nil, booleans, finite numbers, strings, arrays, maps with
// string or integer keys), and plain msgpack written by msgpackr's fast packer.
// Imports only its libraries and two tiny core modules (DecodeError, the depth
// message), so a client can load it lazily.

import { Decoder, DecodeError as LibraryDecodeError, type ExtensionCodecType } from '@msgpack/msgpack';
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

/** What an extension decodes to: never a live object, only a marker the check below refuses by path. */
class RefusedExtension {
  constructor(readonly type: number) {}
}

/** A `__proto__` key, held under a symbol until it can be defined as an ordinary own property. */
const PROTO_KEY = Symbol('__proto__');
const PROTO_BYTES = Array.from('__proto__', (c) => c.charCodeAt(0));

/** Set while decoding when some map got a symbol key (`__proto__` or a refused key), so the check looks for them. */
let symbolKeys = 0;
/** The first refused extension, for when decoding fails before the check can name its place. */
let firstExtension: number | undefined;

const refuseExtensions: ExtensionCodecType<undefined> = {
  tryToEncode: () => null,
  decode(_data, type) {
    firstExtension ??= type;
    return new RefusedExtension(type);
  },
};

/** Keys become what JavaScript would make of them in JSON: strings; integers as their decimal digits. */
function convertKey(key: unknown): string | number {
  if (typeof key === 'string') return key;
  if (typeof key === 'number' && Number.isSafeInteger(key)) return String(key);
  symbolKeys++;
  if (key === PROTO_KEY) return key as unknown as string;
  // The map's own path is known only to the check, which reports this symbol's description.
  return Symbol(keyType(key)) as unknown as string;
}

function keyType(key: unknown): string {
  if (key === null) return 'nil';
  if (typeof key === 'number') return Number.isInteger(key) ? 'integer beyond ±(2^53 − 1)' : 'float';
  if (Array.isArray(key)) return 'array';
  if (key instanceof Uint8Array) return 'bin';
  if (key instanceof RefusedExtension) return `extension ${extensionName(key.type)}`;
  if (typeof key === 'object') return 'map';
  return typeof key;
}

function extensionName(type: number): string {
  if (type === -1) return 'type -1 (timestamp)';
  return type < 0 ? `type ${type}` : `type 0x${type.toString(16).padStart(2, '0')}`;
}

const keyText = new TextDecoder();

/**
 * The library refuses a `__proto__` key outright; JSON.parse makes it an own
 * key, so we do too. Only 9-byte keys pass through here (the rest keep the
 * library's own decoding), and `__proto__` comes back as PROTO_KEY.
 */
const protoAwareKeys = {
  canBeCached: (byteLength: number) => byteLength === PROTO_BYTES.length,
  decode(bytes: Uint8Array, offset: number, byteLength: number): string {
    let i = 0;
    while (i < byteLength && bytes[offset + i] === PROTO_BYTES[i]) i++;
    if (i === byteLength) return PROTO_KEY as unknown as string;
    return keyText.decode(bytes.subarray(offset, offset + byteLength));
  },
};

const options = { extensionCodec: refuseExtensions, mapKeyConverter: convertKey, useBigInt64: false, rawStrings: false } as const;
/** The library's cached key decoding: every frame's keys are mostly the same few. */
const decoder = new Decoder(options);
/** For the rare frame with a `__proto__` key, which `decoder` refuses. */
const protoAwareDecoder = new Decoder({ ...options, keyDecoder: protoAwareKeys });

/**
 * Decodes one msgpack frame into a JSON value; throws DecodeError naming where
 * anything JSON cannot carry was found, or if it nests deeper than `maxDepth`.
 */
export function decodeMsgpack(bytes: Uint8Array, maxDepth: number): unknown {
  let chosen = decoder;
  let value: unknown;
  try {
    value = decodeWith(chosen, bytes);
  } catch (error) {
    if (!(error instanceof LibraryDecodeError)) throw undecodable(chosen, bytes, maxDepth, error);
    // Perhaps a `__proto__` key; anything else it refused, the retry reports.
    chosen = protoAwareDecoder;
    try {
      value = decodeWith(chosen, bytes);
    } catch (retryError) {
      throw undecodable(chosen, bytes, maxDepth, retryError);
    }
  }
  if (symbolKeys === 0 && firstExtension === undefined && isPlainJson(value, maxDepth)) return value;
  const refusal = refusalIn(value, maxDepth);
  if (refusal) throw refusal;
  return value;
}

function decodeWith(chosen: Decoder, bytes: Uint8Array): unknown {
  symbolKeys = 0;
  firstExtension = undefined;
  return chosen.decode(bytes);
}

function undecodable(chosen: Decoder, bytes: Uint8Array, maxDepth: number, error: unknown): DecodeError {
  if (error instanceof RangeError && error.message.startsWith('Extra ')) {
    // msgpackr writes RegExp, Set, Error… as an extension followed by plain
    // values, which a standard decoder sees as bytes after the frame: the
    // frame's first value still tells where the extension was.
    symbolKeys = 0;
    firstExtension = undefined;
    const values = chosen.decodeMulti(bytes);
    try {
      const refusal = refusalIn(values.next().value, maxDepth);
      if (refusal) return refusal;
    } catch {
      // The first value decoded once already; whatever this is, the answer below stands.
    } finally {
      // A suspended generator leaves the decoder marked busy, and a busy
      // decoder clones itself without our key conversion.
      values.return();
    }
    return new DecodeError('undecodable msgpack frame: bytes after the value');
  }
  if (firstExtension !== undefined) return refused(`extension ${extensionName(firstExtension)}`, undefined);
  // Only the library's own messages: engine RangeErrors (DataView bounds) differ between runtimes.
  if (error instanceof LibraryDecodeError) return new DecodeError(`undecodable msgpack frame: ${error.message}`);
  return new DecodeError('undecodable msgpack frame');
}

// ── the check: JSON values only, within the depth limit, without recursion ──

interface PathStep {
  parent: PathStep | undefined;
  key: string | number;
}

const NOT_JSON = 'frames carry JSON values only';

function refused(what: string, where: string | undefined, why = NOT_JSON): DecodeError {
  return new DecodeError(`msgpack ${what}${where === undefined ? '' : ` at ${where}`} is not allowed: ${why}`);
}

/** The common case, checked without building paths: nothing to refuse, nothing too deep, no symbol-held key. */
function isPlainJson(root: unknown, maxDepth: number): boolean {
  if (typeof root !== 'object' || root === null) return typeof root !== 'number' || Number.isFinite(root);
  if (root instanceof RefusedExtension || root instanceof Uint8Array || maxDepth < 1) return false;
  const pending: object[] = [root];
  const depths: number[] = [1];
  while (pending.length > 0) {
    const node = pending.pop()!;
    const childDepth = depths.pop()! + 1;
    const children: unknown[] = Array.isArray(node) ? node : Object.values(node);
    for (let i = 0; i < children.length; i++) {
      const child = children[i];
      if (typeof child === 'object') {
        if (child === null) continue;
        // Only arrays, maps, bins and refused extensions come out of the decoder.
        if (child instanceof RefusedExtension || child instanceof Uint8Array || childDepth > maxDepth) return false;
        pending.push(child);
        depths.push(childDepth);
      } else if (typeof child === 'number' && !Number.isFinite(child)) {
        return false;
      }
    }
  }
  return true;
}

/** What is wrong with a decoded value, if anything; its extensions first, since msgpackr's trail garbage behind them. */
function refusalIn(value: unknown, maxDepth: number): DecodeError | undefined {
  if (firstExtension === undefined) return walk(value, maxDepth, false);
  return walk(value, Infinity, true) ?? refused(`extension ${extensionName(firstExtension)}`, undefined);
}

/** The refusal with its path: run only when isPlainJson found something, or when keys need settling. */
function walk(root: unknown, maxDepth: number, extensionsOnly: boolean): DecodeError | undefined {
  if (typeof root !== 'object' || root === null || !isContainer(root)) return checkLeaf(root, undefined, undefined, extensionsOnly);
  if (maxDepth < 1) return new DecodeError(depthExceeded(maxDepth));
  const pending: object[] = [root];
  const depths: number[] = [1];
  const paths: (PathStep | undefined)[] = [undefined];
  while (pending.length > 0) {
    const node = pending.pop() as Record<string | number, unknown>;
    const childDepth = depths.pop()! + 1;
    const path = paths.pop();
    const keys = Array.isArray(node) ? undefined : Object.keys(node);
    if (keys && symbolKeys > 0) {
      const refusal = settleSymbolKeys(node, path, keys, extensionsOnly);
      if (refusal) return refusal;
    }
    const count = keys ? keys.length : (node as unknown as unknown[]).length;
    for (let i = 0; i < count; i++) {
      const key = keys ? keys[i]! : i;
      const child = node[key];
      if (typeof child === 'object' && child !== null && isContainer(child)) {
        if (childDepth > maxDepth) return new DecodeError(depthExceeded(maxDepth));
        pending.push(child);
        depths.push(childDepth);
        paths.push({ parent: path, key });
      } else {
        const refusal = checkLeaf(child, path, key, extensionsOnly);
        if (refusal) return refusal;
      }
    }
  }
  return undefined;
}

/** Decoded arrays and maps; everything else that is an object is a refused marker or a bin. */
function isContainer(value: object): boolean {
  return Array.isArray(value) || Object.getPrototypeOf(value) === Object.prototype;
}

function checkLeaf(value: unknown, path: PathStep | undefined, key: string | number | undefined, extensionsOnly: boolean): DecodeError | undefined {
  if (value instanceof RefusedExtension) return refused(`extension ${extensionName(value.type)}`, describe(path, key));
  if (extensionsOnly) return undefined;
  if (typeof value === 'number' && !Number.isFinite(value)) return refused(`float ${value}`, describe(path, key));
  if (value instanceof Uint8Array) {
    // A base64 string would arrive as text on msgpack and JSON connections
    // alike, so the receiver could not tell it from a string the sender meant.
    return refused('bin', describe(path, key), `${NOT_JSON}; send text, or encode bytes as a base64 string yourself`);
  }
  return undefined;
}

/** Refuses a map's symbol-held key, or turns `__proto__` into an ordinary own key (appended to `keys`). */
function settleSymbolKeys(map: Record<string | symbol, unknown>, path: PathStep | undefined, keys: string[], extensionsOnly: boolean): DecodeError | undefined {
  for (const symbol of Object.getOwnPropertySymbols(map)) {
    if (symbol === PROTO_KEY) {
      const value = map[symbol];
      delete map[symbol];
      // An own data property, as JSON.parse makes it: never the prototype setter.
      Object.defineProperty(map, '__proto__', { value, writable: true, enumerable: true, configurable: true });
      keys.push('__proto__');
    } else if (!extensionsOnly || symbol.description!.startsWith('extension')) {
      return refused(`map key of type ${symbol.description}`, describe(path, undefined), 'keys must be strings or integers');
    }
  }
  return undefined;
}

const LONGEST_KEY_SHOWN = 32;

/** `d.items[3].name`; "the top level" for the frame itself. */
function describe(path: PathStep | undefined, key: string | number | undefined): string {
  const steps: (string | number)[] = key === undefined ? [] : [key];
  for (let step = path; step; step = step.parent) steps.push(step.key);
  if (steps.length === 0) return 'the top level';
  let text = '';
  for (let i = steps.length - 1; i >= 0; i--) {
    const step = steps[i]!;
    if (typeof step === 'number') text += `[${step}]`;
    else text += (text === '' ? '' : '.') + (step.length > LONGEST_KEY_SHOWN ? `${step.slice(0, LONGEST_KEY_SHOWN)}…` : step);
  }
  return text;
}
