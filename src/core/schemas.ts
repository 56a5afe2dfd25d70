// Valibot schemas for every client payload. Each message names the field that
// was wrong, because it is sent verbatim to the client in NO_U_TBH.

import * as v from 'valibot';
import { MAX_NAME, RESERVED_EVENT_PREFIX } from './protocol.ts';

export { MAX_NAME };

function name(field: string) {
  const message = `${field} must be a non-empty string`;
  return v.pipe(
    v.string(message),
    v.minLength(1, message),
    v.maxLength(MAX_NAME, `${field} must be at most ${MAX_NAME} characters`),
  );
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value);
}

function object(field: string) {
  return v.custom<Record<string, unknown>>(isPlainObject, `${field} must be an object`);
}

/** valibot's object() accepts arrays; a frame field that must be an object should not. */
function strictObject<const E extends v.ObjectEntries>(field: string, entries: E) {
  return v.pipe(object(field), v.object(entries, `${field} must be an object`));
}

/** JWTs with a few claims are well under 2 KiB; a JWKS-signed RS4096 one stays under 8. */
const MAX_TOKEN = 8_192;

export const IdentifySchema = strictObject(
  'd',
  {
    app_name: name('app_name'),
    client_id: name('client_id'),
    password: v.optional(v.string('password must be a string')),
    token: v.optional(v.pipe(v.string('token must be a string'), v.maxLength(MAX_TOKEN, `token must be at most ${MAX_TOKEN} characters`))),
    reconnect: v.optional(v.boolean('reconnect must be true or false')),
    metadata: v.optional(object('metadata')),
    seq: v.optional(
      v.pipe(v.number('seq must be a number'), v.safeInteger('seq must be an integer'), v.minValue(0, 'seq must not be negative')),
    ),
  },
);

export const TargetSchema = strictObject(
  'to',
  {
    app_name: name('to.app_name'),
    client_id: v.optional(name('to.client_id')),
    query: v.optional(object('to.query')),
    mode: v.optional(v.picklist(['one', 'all'], 'to.mode must be "one" or "all"')),
    key: v.optional(v.pipe(v.string('to.key must be a string'), v.maxLength(MAX_NAME, `to.key must be at most ${MAX_NAME} characters`))),
  },
);

/** A DISPATCH frame (from a socket) or a POST /dispatch body: same fields. */
export const DispatchSchema = v.object({
  e: v.pipe(
    name('e'),
    v.check((e) => !e.startsWith(RESERVED_EVENT_PREFIX), `e must not start with ${RESERVED_EVENT_PREFIX} (reserved for server events)`),
  ),
  d: v.optional(v.unknown()),
  to: TargetSchema,
  nonce: v.optional(v.pipe(v.string('nonce must be a string'), v.maxLength(MAX_NAME, `nonce must be at most ${MAX_NAME} characters`))),
});
export type Dispatch = v.InferOutput<typeof DispatchSchema>;

export type Validated<T> = { ok: true; value: T } | { ok: false; error: string };

const isName = (value: unknown): value is string => typeof value === 'string' && value.length > 0 && value.length <= MAX_NAME;
const isShort = (value: unknown): value is string | undefined =>
  value === undefined || (typeof value === 'string' && value.length <= MAX_NAME);

/**
 * DISPATCH is the hot path and valibot allocates per field, so the common,
 * valid case is checked by hand. Anything else goes through DispatchSchema,
 * which stays the one definition of what is valid and words every error.
 * A property test holds the two to the same verdict.
 */
export function validateDispatch(body: unknown): Validated<Dispatch> {
  if (isPlainObject(body)) {
    const { e, to, nonce } = body;
    if (
      isName(e) &&
      !e.startsWith(RESERVED_EVENT_PREFIX) &&
      isPlainObject(to) &&
      isName(to.app_name) &&
      (to.client_id === undefined || isName(to.client_id)) &&
      (to.query === undefined || isPlainObject(to.query)) &&
      (to.mode === undefined || to.mode === 'one' || to.mode === 'all') &&
      isShort(to.key) &&
      isShort(nonce)
    ) {
      const mode = to.mode as 'one' | 'all' | undefined;
      const target = { app_name: to.app_name, client_id: to.client_id, query: to.query, mode, key: to.key };
      return { ok: true, value: { e, d: body.d, to: target, nonce } };
    }
  }
  return validate(DispatchSchema, body);
}

/** Validates, returning the parsed value or the first problem as text. */
export function validate<const S extends v.GenericSchema>(
  schema: S,
  input: unknown,
): Validated<v.InferOutput<S>> {
  const result = v.safeParse(schema, input, { abortEarly: true });
  if (result.success) return { ok: true, value: result.output };
  const issue = result.issues[0];
  // A missing key is reported against its object; name the key instead.
  if (issue.type === 'object' && issue.input === undefined && issue.path?.length) {
    return { ok: false, error: `${issue.path.map((item) => String(item.key)).join('.')} is required` };
  }
  return { ok: false, error: issue.message };
}
