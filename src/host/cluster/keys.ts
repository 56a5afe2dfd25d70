// The names of every Redis key a cluster uses (docs/cluster.md, "What lives in
// Redis"). A node's own keys share the hash tag {n:<node>} and an app's owners
// {a:<app>}, so each MULTI and each script touches one slot.

/** The keys of one node's namespace: its stored state and its inbox. */
export interface NodeKeys {
  inbox: string;
  sessions: string;
  replay: string;
  held: string;
  apps: string;
  meta: string;
}

export class ClusterKeys {
  readonly config: string;
  readonly nodes: string;
  readonly bus: string;

  constructor(readonly cluster: string) {
    this.config = `${cluster}:config`;
    this.nodes = `${cluster}:nodes`;
    this.bus = `${cluster}:bus`;
  }

  alive(node: string): string {
    return `${this.cluster}:alive:${node}`;
  }

  reap(node: string): string {
    return `${this.cluster}:reap:${node}`;
  }

  owners(app: string): string {
    return `${this.cluster}:{a:${app}}:owners`;
  }

  inbox(node: string): string {
    return `${this.cluster}:{n:${node}}:inbox`;
  }

  node(node: string): NodeKeys {
    const prefix = `${this.cluster}:{n:${node}}`;
    return {
      inbox: `${prefix}:inbox`,
      sessions: `${prefix}:sessions`,
      replay: `${prefix}:replay`,
      held: `${prefix}:held`,
      apps: `${prefix}:apps`,
      meta: `${prefix}:meta`,
    };
  }
}

/** The state hashes of a namespace, without the inbox (which outlives a rewrite of the state). */
export function stateKeys(keys: NodeKeys): string[] {
  return [keys.sessions, keys.replay, keys.held, keys.apps, keys.meta];
}
