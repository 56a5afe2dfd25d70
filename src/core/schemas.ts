// Valibot schemas for every client payload. Each message names the field that
// was wrong, because it is sent verbatim to the client in NO_U_TBH.

import * as v from 'valibot';

const MAX_NAME = 128;

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

export const IdentifySchema = strictObject(
  'd',
  {
    app_name: name('app_name'),
    client_id: name('client_id'),
    password: v.string('password must be a string'),
    reconnect: v.optional(v.boolean('reconnect must be true or false')),
    metadata: v.optional(object('metadata')),
    seq: v.optional(
      v.pipe(v.number('seq must be a number'), v.safeInteger('seq must be an integer'), v.minValue(0, 'seq must not be negative')),
    ),
  },
);
export type Identify = v.InferOutput<typeof IdentifySchema>;

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
    v.check((e) => !e.startsWith('NERVE_'), 'e must not start with NERVE_ (reserved for server events)'),
  ),
  d: v.optional(v.unknown()),
  to: TargetSchema,
  nonce: v.optional(v.pipe(v.string('nonce must be a string'), v.maxLength(MAX_NAME, `nonce must be at most ${MAX_NAME} characters`))),
});
export type Dispatch = v.InferOutput<typeof DispatchSchema>;

/** Validates, returning the parsed value or the first problem as text. */
export function validate<const S extends v.GenericSchema>(
  schema: S,
  input: unknown,
): { ok: true; value: v.InferOutput<S> } | { ok: false; error: string } {
  const result = v.safeParse(schema, input, { abortEarly: true });
  if (result.success) return { ok: true, value: result.output };
  const issue = result.issues[0];
  // A missing key is reported against its object; name the key instead.
  if (issue.type === 'object' && issue.input === undefined && issue.path?.length) {
    return { ok: false, error: `${issue.path.map((item) => String(item.key)).join('.')} is required` };
  }
  return { ok: false, error: issue.message };
}
