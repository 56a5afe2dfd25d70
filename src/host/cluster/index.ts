// Cluster mode for the long-running hosts (Node, Deno, Bun): the one call
// each of them makes to join the cluster NERVE_REDIS_URL names, and what the
// `nerve/host` export offers of it.

import type { HostConfig } from '../config.ts';
import type { Hub } from '../hub.ts';
import { ClusterLink } from './link.ts';

export { ClusterLink, type ClusterLinkOptions } from './link.ts';
export { ClusterError } from './redis.ts';

/**
 * Links `hub` to its cluster when `config` has one (NERVE_REDIS_URL), before
 * the host listens; resolves to undefined for a single node. Stop the link
 * with `link.stop()` once the hub has drained. Rejects with a ConfigError
 * when this node's settings differ from the cluster's, or a ClusterError when
 * Redis cannot be reached or @redis/client is not installed.
 */
export async function startCluster(hub: Hub, config: HostConfig, runtime: string): Promise<ClusterLink | undefined> {
  if (!config.clusterLink) return undefined;
  return ClusterLink.start({ hub, settings: config.clusterLink, runtime });
}
