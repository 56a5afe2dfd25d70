// The runtime-neutral host (package export `nerve/host`): the Hub that drives
// the core over any WebSocket-like sockets, the NERVE_* config reader, the
// Hono app with the HTTP routes, token verification, the storage seam and the
// cluster link. See docs/embedding.md and docs/cluster.md.

export { Hub, type ClientEntry, type ClusterInput, type DispatchResult, type HubCluster, type HubHealth, type HubOptions, type HubSocket } from './hub.ts';
export { ConfigError, loadConfig, newWorkerId, parseWire, type ClusterSettings, type HostConfig } from './config.ts';
export { ClusterError, ClusterLink, startCluster, type ClusterLinkOptions } from './cluster/index.ts';
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
