// The runtime-neutral host (package export `nerve/host`): the Hub that drives
// the core over any WebSocket-like sockets, the NERVE_* config reader, the
// Hono app with the HTTP routes, token verification and the storage seam.
// See docs/embedding.md.

export { Hub, type DispatchResult, type HubOptions, type HubSocket } from './hub.ts';
export { ConfigError, loadConfig, newWorkerId, parseWire, type HostConfig } from './config.ts';
export { createHttpApp, refuseUpgrade, type Upgrade } from './http.ts';
export { MemoryStorage, StorageWriter, type HubStorage, type StorageLog } from './storage.ts';
export { createTokenVerifier, TokenError, type TokenSettings, type VerifyToken } from './tokens.ts';
export {
  announce,
  mountedApp,
  resolveConfig,
  runUntilSignalled,
  type ConfigInput,
  type Env,
  type NerveServer,
  type ProcessHooks,
  type ServeOptions,
} from './boot.ts';
