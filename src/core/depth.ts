// How deep a frame nests (the frame object itself is level 1), measured without
// recursion, so that absurd nesting is refused before JSON.stringify, sift or a
// recursive encoder could overflow the stack on it later.

export function depthExceeded(maxDepth: number): string {
  return `objects and arrays nest deeper than the limit of ${maxDepth} levels`;
}

/** An error text if `value` nests objects and arrays deeper than `maxDepth` levels; for values already parsed (HTTP bodies). */
export function checkDepth(value: unknown, maxDepth: number): string | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  if (maxDepth < 1) return depthExceeded(maxDepth);
  const pending: object[] = [value];
  const depths: number[] = [1];
  while (pending.length > 0) {
    const node = pending.pop()!;
    const childDepth = depths.pop()! + 1;
    const children: unknown[] = Array.isArray(node) ? node : Object.values(node);
    for (let i = 0; i < children.length; i++) {
      const child = children[i];
      if (typeof child !== 'object' || child === null) continue;
      // A cycle also ends here, since every lap adds a level.
      if (childDepth > maxDepth) return depthExceeded(maxDepth);
      pending.push(child);
      depths.push(childDepth);
    }
  }
  return undefined;
}

/**
 * Whether JSON text nests deeper than `maxDepth`: exact for valid JSON (strings
 * are skipped), and invalid JSON is JSON.parse's to refuse. It runs before
 * JSON.parse on every inbound JSON frame, so the common case must stay cheap.
 */
export function jsonNestsDeeperThan(text: string, maxDepth: number): boolean {
  // Each level takes an opening and a closing bracket.
  if (text.length < 2 * (maxDepth + 1)) return false;
  // Depth cannot exceed the number of opening brackets, and indexOf counts
  // them at native speed: typical frames have a handful, strings included.
  let budget = maxDepth;
  for (let i = text.indexOf('{'); i !== -1; i = text.indexOf('{', i + 1)) if (--budget < 0) return scanDepth(text, maxDepth);
  for (let i = text.indexOf('['); i !== -1; i = text.indexOf('[', i + 1)) if (--budget < 0) return scanDepth(text, maxDepth);
  return false;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;

function scanDepth(text: string, maxDepth: number): boolean {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      let end = i;
      for (;;) {
        end = text.indexOf('"', end + 1);
        if (end === -1) return false;
        let backslashes = 0;
        while (text.charCodeAt(end - 1 - backslashes) === BACKSLASH) backslashes++;
        if (backslashes % 2 === 0) break;
      }
      i = end;
    } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      if (++depth > maxDepth) return true;
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
      depth--;
    }
  }
  return false;
}
