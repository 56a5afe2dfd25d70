// Steady traffic for the cluster fault suites, and the count of what it did:
// requesters send requests (nonce = request id) to a responder app in mode
// one, responders reply to `from` with the same nonce, and a broadcaster sends
// mode-all dispatches that every subscriber must see. Every client is a
// ResumingClient (test/support/cluster.ts), spread over the nodes, that
// follows GO_AWAY and dropped connections to another node and resumes there.

import { type Cluster, type ClusterNode, ResumingClient, waitUntil } from '../support/cluster.ts';

export interface LoadOptions {
  requesters?: number;
  responders?: number;
  subscribers?: number;
  /** ms between two requests of one requester. */
  requestEvery?: number;
  /** ms between two broadcasts. */
  broadcastEvery?: number;
}

/** A crash the counts must allow for: docs/cluster.md, "A node crashes". */
export interface Crash {
  /** Worker id of the killed node. */
  worker: string;
  /** When it was killed (Date.now()). */
  at: number;
}

/**
 * How far back from a crash an event a client already had may come to it
 * again: docs/cluster.md allows what the crashed node wrote to a socket in
 * its last turn, before storing it, to be replayed on resume. A turn is far
 * shorter; this is what the test process can tell apart from it.
 */
const LAST_TURN = 1000;

let loads = 0;

export class Load {
  readonly requesters: ResumingClient[] = [];
  readonly responders: ResumingClient[] = [];
  readonly subscribers: ResumingClient[] = [];
  readonly broadcaster: ResumingClient;
  /** Request ids each requester sent, in order. */
  private readonly sent = new Map<ResumingClient, string[]>();
  /** Broadcast ids sent, in order. */
  private readonly broadcasts: string[] = [];
  private timers: ReturnType<typeof setInterval>[] = [];
  private readonly apps: { req: string; resp: string; sub: string; pub: string };

  constructor(
    readonly cluster: Cluster,
    private readonly options: LoadOptions = {},
  ) {
    const tag = `${++loads}-${Math.random().toString(16).slice(2, 6)}`;
    this.apps = { req: `req-${tag}`, resp: `resp-${tag}`, sub: `sub-${tag}`, pub: `pub-${tag}` };
    for (let i = 0; i < (options.requesters ?? 3); i++) {
      const client = new ResumingClient(cluster, this.apps.req, `requester-${i}`);
      this.requesters.push(client);
      this.sent.set(client, []);
    }
    for (let i = 0; i < (options.responders ?? 3); i++) {
      const client = new ResumingClient(cluster, this.apps.resp, `responder-${i}`, { queueWhileAway: true });
      client.on('REQ', (frame, self) => {
        self.dispatch('REPLY', { app_name: frame.from.app_name, client_id: frame.from.client_id }, frame.d, frame.nonce);
      });
      this.responders.push(client);
    }
    for (let i = 0; i < (options.subscribers ?? 3); i++) this.subscribers.push(new ResumingClient(cluster, this.apps.sub, `subscriber-${i}`));
    this.broadcaster = new ResumingClient(cluster, this.apps.pub, 'broadcaster');
  }

  get clients(): ResumingClient[] {
    return [...this.requesters, ...this.responders, ...this.subscribers, this.broadcaster];
  }

  /** The clients whose connection is on `node` now. */
  clientsOn(node: ClusterNode): ResumingClient[] {
    return this.clients.filter((client) => client.node === node);
  }

  /** Connects every client to the nodes in turn, waits until every node lists all of them, then starts sending. */
  async start(): Promise<void> {
    const nodes = this.cluster.available();
    await Promise.all(this.clients.map((client, i) => client.connect(nodes[i % nodes.length])));
    await this.listedOn(this.cluster.nodes);
    const every = this.options.requestEvery ?? 30;
    for (const requester of this.requesters) {
      const ids = this.sent.get(requester)!;
      this.timers.push(
        setInterval(() => {
          const id = `${requester.clientId}:${ids.length}`;
          if (requester.dispatch('REQ', { app_name: this.apps.resp }, id, id)) ids.push(id);
        }, every),
      );
    }
    this.timers.push(
      setInterval(() => {
        const id = `b${this.broadcasts.length}`;
        if (this.broadcaster.dispatch('BCAST', { app_name: this.apps.sub, mode: 'all' }, id, id)) this.broadcasts.push(id);
      }, this.options.broadcastEvery ?? 100),
    );
  }

  /** Resolves once every given node lists every session of the load as connected: its registry is whole. */
  async listedOn(nodes: ClusterNode[]): Promise<void> {
    for (const client of this.clients) {
      await this.cluster.waitForClient(client.app, client.clientId, { worker: client.node?.worker, on: nodes });
    }
  }

  /** Resolves once every client is connected (none is resuming), within `timeout`. */
  async settled(timeout = 15_000): Promise<void> {
    await Promise.all(this.clients.map((client) => client.settled(timeout)));
  }

  /** Replies received by requesters so far. */
  private repliesReceived(): number {
    return this.requesters.reduce((n, requester) => n + requester.routed.filter((r) => r.frame.e === 'REPLY').length, 0);
  }

  /** Resolves once `count` more requests have been answered: traffic is flowing. */
  async progress(count: number, timeout = 15_000): Promise<void> {
    const from = this.repliesReceived();
    await waitUntil(() => this.repliesReceived() - from, (n) => n >= count, timeout, `${count} more replies`);
  }

  /**
   * Stops sending, waits (at most `timeout`) until every client is connected
   * and everything acknowledged has arrived, and returns what is wrong with
   * the counts (nothing, when the cluster kept its promises) and the totals.
   */
  async finish(crash?: Crash, timeout = 20_000): Promise<{ problems: string[]; totals: Record<string, number> }> {
    for (const timer of this.timers.splice(0)) clearInterval(timer);
    const deadline = Date.now() + timeout;
    await this.settled(timeout).catch(() => undefined);
    await waitUntil(() => this.missing().length, (n) => n === 0, Math.max(0, deadline - Date.now()), 'everything acknowledged delivered').catch(() => undefined);
    return { problems: this.problems(crash), totals: this.totals() };
  }

  async close(): Promise<void> {
    for (const timer of this.timers.splice(0)) clearInterval(timer);
    await Promise.all(this.clients.map((client) => client.close()));
  }

  /** Ids of acknowledged requests. */
  private ackedRequests(): string[] {
    return this.requesters.flatMap((requester) => this.sent.get(requester)!.filter((id) => requester.acks.has(id)));
  }

  /** Ids of replies the hub acknowledged to a responder. */
  private ackedReplies(): string[] {
    return [...new Set(this.responders.flatMap((responder) => [...responder.acks.keys()]))];
  }

  private ackedBroadcasts(): string[] {
    return this.broadcasts.filter((id) => this.broadcaster.acks.has(id));
  }

  /** What was acknowledged and has not arrived (yet). */
  private missing(): string[] {
    const requests = this.receipts(this.responders, 'REQ');
    const replies = this.receipts(this.requesters, 'REPLY');
    const missing = [
      ...this.ackedRequests().filter((id) => !requests.has(id)).map((id) => `request ${id}`),
      ...this.ackedReplies().filter((id) => !replies.has(id)).map((id) => `reply ${id}`),
    ];
    for (const subscriber of this.subscribers) {
      const got = new Set(subscriber.routed.filter((r) => r.frame.e === 'BCAST').map((r) => r.frame.d));
      missing.push(
        ...this.ackedBroadcasts()
          .filter((id) => !got.has(id))
          .map((id) => `broadcast ${id} at ${subscriber.clientId} (its NERVE_ACK: ${JSON.stringify(this.broadcaster.acks.get(id))})`),
      );
    }
    return missing;
  }

  /** Every receipt of event `e` by `clients`, by payload id. */
  private receipts(clients: ResumingClient[], e: string): Map<string, { client: ResumingClient; at: number; via: string }[]> {
    const byId = new Map<string, { client: ResumingClient; at: number; via: string }[]>();
    for (const client of clients) {
      for (const r of client.routed) {
        if (r.frame.e !== e) continue;
        byId.set(r.frame.d, [...(byId.get(r.frame.d) ?? []), { client, at: r.at, via: r.via }]);
      }
    }
    return byId;
  }

  /**
   * A second receipt the crash explains: the same client had it first
   * through the killed node, in the last moments before the kill.
   */
  private explainedByCrash(receipts: { client: ResumingClient; at: number; via: string }[], crash: Crash | undefined): boolean {
    if (!crash) return false;
    const [first, ...again] = receipts;
    return (
      first !== undefined &&
      first.via === crash.worker &&
      first.at <= crash.at &&
      crash.at - first.at <= LAST_TURN &&
      again.every((r) => r.client === first.client)
    );
  }

  private problems(crash: Crash | undefined): string[] {
    const problems = this.missing().map((what) => `acknowledged and never arrived: ${what}`);
    const requests = this.receipts(this.responders, 'REQ');
    const replies = this.receipts(this.requesters, 'REPLY');
    for (const requester of this.requesters) {
      for (const id of this.sent.get(requester)!) {
        const d = requester.acks.get(id);
        if (d && d.delivered + d.queued !== 1) problems.push(`request ${id} acknowledged with ${JSON.stringify(d)}: mode one goes to one responder or is held`);
      }
    }
    for (const [id, receipts] of requests) {
      if (receipts.length > 1 && !this.explainedByCrash(receipts, crash)) {
        problems.push(`request ${id} delivered ${receipts.length} times (${receipts.map((r) => `${r.client.clientId} via ${r.via}`).join(', ')})`);
      }
    }
    for (const [id, receipts] of replies) {
      // A responder that got the request twice answers it twice.
      const answeredTwice = (requests.get(id)?.length ?? 0) > 1 && receipts.length <= (requests.get(id)?.length ?? 0);
      if (receipts.length > 1 && !answeredTwice && !this.explainedByCrash(receipts, crash)) {
        problems.push(`reply ${id} delivered ${receipts.length} times (via ${receipts.map((r) => r.via).join(', ')})`);
      }
    }
    const acked = this.ackedBroadcasts();
    // Every subscriber is a session of the cluster throughout (connected, or resumable while it moves).
    for (const id of acked) {
      const d = this.broadcaster.acks.get(id)!;
      if (d.delivered !== this.subscribers.length) problems.push(`broadcast ${id} acknowledged with ${JSON.stringify(d)}, not ${this.subscribers.length} delivered`);
    }
    const orders: string[][] = [];
    for (const subscriber of this.subscribers) {
      const got = subscriber.routed.filter((r) => r.frame.e === 'BCAST');
      const seen = new Map<string, typeof got>();
      for (const r of got) seen.set(r.frame.d, [...(seen.get(r.frame.d) ?? []), r]);
      for (const [id, receipts] of seen) {
        const asReceipts = receipts.map((r) => ({ client: subscriber, at: r.at, via: r.via }));
        if (receipts.length > 1 && !this.explainedByCrash(asReceipts, crash)) problems.push(`broadcast ${id} delivered ${receipts.length} times to ${subscriber.clientId}`);
      }
      const order = [...seen.keys()];
      // One sender's broadcasts, so the one order is the order sent.
      const numbers = order.map((id) => Number(id.slice(1)));
      if (numbers.some((n, i) => i > 0 && n <= numbers[i - 1]!)) problems.push(`${subscriber.clientId} saw broadcasts out of order: ${order.join(' ')}`);
      orders.push(crash ? order.filter((id) => acked.includes(id)) : order);
    }
    for (const [i, order] of orders.entries()) {
      if (i > 0 && order.join(' ') !== orders[0]!.join(' ')) {
        problems.push(`${this.subscribers[i]!.clientId} saw other broadcasts than ${this.subscribers[0]!.clientId}: ${order.length} against ${orders[0]!.length}`);
      }
    }
    for (const client of this.clients) {
      const name = `${client.app}/${client.clientId}`;
      const wasOnCrashed = crash !== undefined && client.connections.some((c) => c.worker === crash.worker);
      // `s` is checked where nothing of the crash's last turn can come again.
      if (!wasOnCrashed) {
        if (client.repeatedS.length > 0) problems.push(`${name} got s ${client.repeatedS.join(', ')} again`);
        if (client.skippedS.length > 0) problems.push(`${name} never got s ${client.skippedS.map(([a, b]) => (a === b ? a : `${a}-${b}`)).join(', ')}`);
      }
      if (client.refusals.length > 0) problems.push(`${name} was refused: ${client.refusals.join('; ')}`);
      if (client.failedAttempts.length > 0) problems.push(`${name} failed to resume: ${client.failedAttempts.join('; ')}`);
      if (client.undeliverable.length > 0) problems.push(`${name} got NERVE_UNDELIVERABLE: ${JSON.stringify(client.undeliverable.slice(0, 3))}`);
      if (client.sessions.length !== client.connections.length) {
        problems.push(`${name} had ${client.connections.length} connections and ${client.sessions.length} NERVE_SESSION`);
      }
      const notResumed = client.sessions.slice(1).filter((d) => d?.resumed !== true || (d.missed ?? 0) !== 0);
      if (notResumed.length > 0) problems.push(`${name} did not resume its session: ${JSON.stringify(notResumed)}`);
      if (!client.connected) problems.push(`${name} is not connected at the end`);
    }
    return problems;
  }

  private totals(): Record<string, number> {
    return {
      requestsSent: [...this.sent.values()].reduce((n, ids) => n + ids.length, 0),
      requestsAcknowledged: this.ackedRequests().length,
      repliesReceived: this.repliesReceived(),
      broadcastsAcknowledged: this.ackedBroadcasts().length,
      resumes: this.clients.reduce((n, client) => n + client.connections.length - 1, 0),
    };
  }
}
