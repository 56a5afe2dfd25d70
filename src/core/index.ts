// The embeddable Nerve protocol: feed `step` inputs from any transport and
// execute the outputs it returns. See docs/embedding.md.

export { step } from './step.ts';
export { createState, nextDeadline, type State } from './state.ts';
export { DEFAULT_LIMITS, type ConnId, type CoreConfig, type Input, type Limits, type Output } from './io.ts';
export { listClients, stats, type ClientInfo, type Stats } from './inspect.ts';
export * from './protocol.ts';
export { decodeFrame, encodeFrame } from './codec.ts';
