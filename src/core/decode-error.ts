// The one error a frame decoder may throw: the peer's fault, answered with
// NO_U_TBH and a close. Kept alone so the lazily loaded codecs (msgpack.ts,
// zlib.ts) can throw it without pulling in the rest of the core.

export class DecodeError extends Error {
  constructor(
    message: string,
    /** Over a size limit (4413) rather than undecodable (4400). */
    readonly tooLarge = false,
  ) {
    super(message);
  }
}
