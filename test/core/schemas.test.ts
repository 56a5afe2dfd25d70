// The hand-written DISPATCH fast path must give the same verdict and value as
// the valibot schema it shortcuts, on any input.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DispatchSchema, validate, validateDispatch } from '../../src/core/schemas.ts';

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
