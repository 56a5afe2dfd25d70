// The hand-written DISPATCH fast path must give the same verdict and value as
// the valibot schema it shortcuts, on any input.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RESERVED_EVENT_PREFIX } from '../../src/core/protocol.ts';
import { DispatchSchema, IdentifySchema, MAX_NAME, validate, validateDispatch } from '../../src/core/schemas.ts';

const name = fc.oneof(fc.string({ maxLength: 3 }), fc.constant(''), fc.constant('NERVE_X'), fc.string({ minLength: 127, maxLength: 130 }));
const maybe = <T>(arb: fc.Arbitrary<T>) => fc.option(fc.oneof(arb, fc.anything()), { nil: undefined });
const target = fc.oneof(
  fc.record(
    {
      app_name: fc.oneof(name, fc.anything()),
      client_id: maybe(name),
      query: maybe(fc.dictionary(fc.string(), fc.jsonValue())),
      mode: maybe(fc.constantFrom('one', 'all', 'ONE')),
      key: maybe(name),
    },
    { requiredKeys: [] },
  ),
  fc.anything(),
);
const body = fc.oneof(
  fc.record({ e: fc.oneof(name, fc.anything()), d: fc.jsonValue(), to: target, nonce: maybe(name) }, { requiredKeys: [] }),
  fc.anything(),
);

/** Drops keys whose value is undefined, which valibot leaves out. */
const defined = (value: unknown) => JSON.parse(JSON.stringify(value ?? null));

describe('DISPATCH validation fast path', () => {
  it('agrees with the schema on every input', () => {
    fc.assert(
      fc.property(body, (input) => {
        const fast = validateDispatch(input);
        const slow = validate(DispatchSchema, input);
        expect(fast.ok).toBe(slow.ok);
        if (fast.ok && slow.ok) expect(defined(fast.value)).toEqual(defined(slow.value));
        else if (!fast.ok && !slow.ok) expect(fast.error).toBe(slow.error);
      }),
      { numRuns: 5_000 },
    );
  });
});

// The client SDK checks names before sending; both sides must use the same limits.
describe('shared name rules', () => {
  const fits = 'x'.repeat(MAX_NAME);
  const over = 'x'.repeat(MAX_NAME + 1);
  const dispatches: ((name: string) => Record<string, unknown>)[] = [
    (name) => ({ e: name, to: { app_name: 'a' } }),
    (name) => ({ e: 'E', to: { app_name: name } }),
    (name) => ({ e: 'E', to: { app_name: 'a', client_id: name } }),
    (name) => ({ e: 'E', to: { app_name: 'a', key: name } }),
    (name) => ({ e: 'E', to: { app_name: 'a' }, nonce: name }),
  ];

  it('MAX_NAME is the longest name every field takes', () => {
    expect(MAX_NAME).toBe(128);
    for (const make of dispatches) {
      expect(validateDispatch(make(fits)).ok, JSON.stringify(make('…'))).toBe(true);
      expect(validateDispatch(make(over)).ok, JSON.stringify(make('…'))).toBe(false);
    }
    for (const field of ['app_name', 'client_id']) {
      const identify = (name: string) => ({ app_name: 'a', client_id: 'c', password: 'pw', [field]: name });
      expect(validate(IdentifySchema, identify(fits)).ok).toBe(true);
      expect(validate(IdentifySchema, identify(over))).toEqual({ ok: false, error: `${field} must be at most ${MAX_NAME} characters` });
    }
  });

  it('event names may not start with RESERVED_EVENT_PREFIX, on the fast path and the schema alike', () => {
    const reserved = { e: `${RESERVED_EVENT_PREFIX}ACK`, to: { app_name: 'a' } };
    const error = `e must not start with ${RESERVED_EVENT_PREFIX} (reserved for server events)`;
    expect(validateDispatch(reserved)).toEqual({ ok: false, error });
    expect(validate(DispatchSchema, reserved)).toEqual({ ok: false, error });
    expect(validateDispatch({ e: `X${RESERVED_EVENT_PREFIX}`, to: { app_name: 'a' } }).ok).toBe(true);
  });
});
