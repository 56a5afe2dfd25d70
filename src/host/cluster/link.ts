// The cluster link: one node's connection to its cluster through Redis
// (docs/cluster.md, "How it works"). It registers the node and keeps its
// liveness, writes what each turn changed (state and stream cursors in one
// MULTI, then claims, then relays) with at most one write in flight, reads
// its inbox and the bus into the hub, tells the core when the link or the set
// of live nodes changes, and adopts nodes that died. Redis failures become a
// link that is down, never an exception in the hub.

import type { NodeMessage } from '../../core/cluster-messages.ts';
import { isEmptyChangeset, Persister } from '../../core/persist.ts';
import { sessionKey } from '../../core/state.ts';
import { ConfigError, type ClusterSettings } from '../config.ts';
import type { ClusterOutput, Hub, HubCluster } from '../hub.ts';
import type { ClusterMetrics } from '../metrics.ts';
import { fingerprint, firstDifference, newSalt, parseFingerprint, type Fingerprint } from './fingerprint.ts';
import { ClusterKeys, stateKeys, type NodeKeys } from './keys.ts';
import {
  changesetCommands,
  ReplayChunks,
  claimCommand,
  claimOwner,
  compareIds,
  cursorsCommand,
  forgetCursorsCommand,
  loadNamespace,
  EntryLines,
  LineStarts,
  parseEntries,
  parseXread,
  readRange,
  xaddCommand,
  type Cursors,
  type NodeEntry,
} from './namespace.ts';
import { ClusterError, connectRedis, describeError, redactUrl, type RedisCounters, type RedisPort, type RedisReply } from './redis.ts';

type Relay = Extract<ClusterOutput, { type: 'relay' }>;
type Claim = Extract<ClusterOutput, { type: 'claim' }>;

/** How often the live nodes are read and dead ones looked for. */
const SCAN_MS = 1_000;
/** How long one XREAD waits for entries; also how soon a newly inherited inbox is read. */
const READ_BLOCK_MS = 1_000;
const READ_COUNT = 1_000;
/** How long a start waits for Redis before giving up with one line. */
const START_TIMEOUT_MS = 10_000;
/** How long a stop spends writing the final state before it leaves anyway. */
const STOP_TIMEOUT_MS = 5_000;
const RETRY_MS = 100;
/** The same warning is logged at most once per this many ms. */
const WARN_EVERY_MS = 60_000;

/** A dead node this node adopted, whose inbox it still reads for a while. */
interface Inherited {
  /** The last entry of its inbox stepped here; stored with this node's state. */
  cursor: string;
  /** When its keys are deleted. */
  until: number;
  /** The write that stores its adopted state here: once that is done it is reaped (no one adopts it again). */
  storedBy: number;
  reaped: boolean;
}

const schedule: (callback: () => void) => void = typeof setImmediate === 'function' ? (callback) => void setImmediate(callback) : (callback) => void setTimeout(callback, 0);

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    (timer as { unref?: () => void }).unref?.();
  });
}

function sameNodes(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((node, i) => node === b[i]);
}

export interface ClusterLinkOptions {
  hub: Hub;
  settings: ClusterSettings;
  /** `node`, `deno` or `bun`: recorded in the cluster's node list. */
  runtime: string;
}

export class ClusterLink implements HubCluster {
  private readonly hub: Hub;
  private readonly settings: ClusterSettings;
  private readonly runtime: string;
  private readonly self: string;
  private readonly keys: ClusterKeys;
  private readonly own: NodeKeys;
  private readonly timeout: number;
  private readonly startedAt = Date.now();
  private readonly counters: RedisCounters = { commands: 0, errors: 0 };
  private command!: RedisPort;
  private reader!: RedisPort;

  private up = false;
  private stopping = false;
  private stopped = false;
  /** Changes at every link change, so a read or scan begun before one is not acted on after it. */
  private epoch = 0;
  private linkedAt = 0;
  private liveNodes: string[];

  private persister = new Persister();
  /** The next write replaces this node's whole stored state (at start, and after the link was down). */
  private rewriteAll = true;
  /** Which replay chunks this node's namespace holds: reset with it at each rewrite. */
  private readonly replayChunks = new ReplayChunks();
  private cursors: Cursors = { inbox: '0-0', bus: '0-0' };
  private writtenCursors = '';
  /** Adopted nodes no longer read, whose cursor fields the next write removes. */
  private forgottenInboxes = new Set<string>();
  /** Relays waiting for the next write, encoded, by destination stream. */
  private outgoing = new Map<string, EntryLines>();
  private readonly lineStarts = new LineStarts();
  /** The id of this node's last entry on the bus: its inbox entries come after it. */
  private lastBusEntry: string | undefined;
  private claims: Claim[] = [];
  /** The write that will carry what is stepped from now on. */
  private generation = 1;
  /** The last write whose state was stored. */
  private storedThrough = 0;
  private barrierAsked = false;
  private writing: Promise<void> | undefined;
  private turnScheduled = false;
  private relinking = false;
  private scanning = false;
  /** Counts reads of the node list, so an older one finishing late does not undo a newer one. */
  private nodeReads = 0;
  private nodesApplied = 0;
  private readonly inherited = new Map<string, Inherited>();
  private readonly adopting = new Set<string>();
  private readonly fingerprints = new Map<string, Fingerprint>();
  private readonly warned = new Map<string, number>();

  private relayed = 0;
  private received = 0;
  private adopted = 0;
  private livenessTimer: ReturnType<typeof setInterval> | undefined;
  private scanTimer: ReturnType<typeof setInterval> | undefined;
  private reading: Promise<void> | undefined;
  private leaving: Promise<void> | undefined;

  private constructor(options: ClusterLinkOptions) {
    this.hub = options.hub;
    this.settings = options.settings;
    this.runtime = options.runtime;
    this.self = options.hub.config.worker;
    this.keys = new ClusterKeys(options.settings.name);
    this.own = this.keys.node(this.self);
    this.timeout = options.settings.nodeTimeout;
    this.liveNodes = [this.self];
  }

  /**
   * Connects, checks this node's settings against the cluster's, registers it
   * and links the hub (which must have been created with `cluster: true`).
   * Rejects with a ConfigError naming the first setting that differs, or a
   * ClusterError when Redis cannot be reached.
   */
  static async start(options: ClusterLinkOptions): Promise<ClusterLink> {
    if (!options.hub.state.cluster) throw new ClusterError('the hub was not created for a cluster (its config needs cluster: true)');
    const link = new ClusterLink(options);
    await link.open();
    return link;
  }

  private async open(): Promise<void> {
    const url = this.settings.redisUrl;
    const connections = await Promise.allSettled([
      connectRedis({ url, name: `${this.self}`, replyTimeout: this.timeout, counters: this.counters }, START_TIMEOUT_MS),
      // A blocked XREAD is answered only after its block time.
      connectRedis({ url, name: `${this.self}-read`, replyTimeout: READ_BLOCK_MS + this.timeout, counters: this.counters }, START_TIMEOUT_MS),
    ]);
    const [command, reader] = connections;
    if (command.status === 'rejected' || reader.status === 'rejected') {
      for (const connection of connections) if (connection.status === 'fulfilled') await connection.value.close();
      const failed = command.status === 'rejected' ? command : (reader as PromiseRejectedResult);
      throw failed.reason;
    }
    this.command = command.value;
    this.reader = reader.value;
    try {
      const difference = await this.checkConfig();
      if (difference) throw new ConfigError(difference);
      await this.register();
      // Renewed from here on: reading a long bus below must not let this node look dead.
      this.livenessTimer = setInterval(() => void this.renewLiveness(), Math.max(1, Math.floor(this.timeout / 4)));
      const { live } = await this.readNodes();
      this.hub.attachCluster(this);
      this.resetPersister();
      this.markUp(live);
      // The registry of every other node is what the bus says: read it all before taking clients.
      await this.catchUpOnBus();
    } catch (error) {
      this.up = false;
      clearInterval(this.livenessTimer);
      await this.command.close();
      await this.reader.close();
      if (error instanceof ConfigError || error instanceof ClusterError) throw error;
      throw new ClusterError(`cannot join cluster ${JSON.stringify(this.settings.name)} at ${redactUrl(url)}: ${describeError(error)}`);
    }
    for (const port of [this.command, this.reader]) {
      port.onDown((reason) => this.goDown(reason));
      port.onReady(() => void this.relink());
    }
    this.scanTimer = setInterval(() => void this.scan(), SCAN_MS);
    this.reading = this.readLoop();
  }

  // ── what the hub asks ────────────────────────────────────────────────────

  collect(output: ClusterOutput): void {
    if (output.type === 'relay') this.queueRelay(output);
    else this.claims.push(output);
    this.scheduleTurn();
  }

  /**
   * Encodes a relay into its destination's next entry at once: what waits
   * for the write is a few strings per event, not the objects that made them.
   */
  private queueRelay(relay: Relay): void {
    const stream = relay.to === undefined ? this.keys.bus : this.keys.inbox(relay.to);
    const waiting = this.outgoing.get(stream);
    const entry = waiting ?? new EntryLines(this.lineStarts);
    try {
      entry.add(relay.msg);
    } catch (error) {
      this.warn('cluster message cannot be sent: not JSON', { t: relay.msg.t, error: describeError(error) });
      return;
    }
    if (!waiting) this.outgoing.set(stream, entry);
  }

  stepped(): void {
    this.scheduleTurn();
  }

  barrier(): number | undefined {
    if (!this.up) return undefined;
    this.barrierAsked = true;
    this.scheduleTurn();
    return this.generation;
  }

  status(): { up: boolean; nodes: number } {
    return { up: this.up, nodes: this.up ? this.liveNodes.length : 1 };
  }

  metrics(): ClusterMetrics {
    let remoteSessions = 0;
    for (const session of this.hub.state.sessions.values()) if (session.node !== undefined) remoteSessions++;
    return {
      up: this.up,
      nodes: this.status().nodes,
      remoteSessions,
      relayed: this.relayed,
      received: this.received,
      commands: this.counters.commands,
      errors: this.counters.errors,
      adopted: this.adopted,
    };
  }

  /** Whether this node is linked to its cluster now. */
  get linked(): boolean {
    return this.up;
  }

  /**
   * Leaves the cluster, after the hub has drained: stops reading, writes the
   * final state, and deletes this node's liveness so another node adopts
   * what is left at once. Its namespace stays for that node to load.
   */
  stop(): Promise<void> {
    this.leaving ??= this.leave();
    return this.leaving;
  }

  private async leave(): Promise<void> {
    this.stopping = true;
    clearInterval(this.livenessTimer);
    clearInterval(this.scanTimer);
    // Closing the reader ends its blocked XREAD: nothing more is read, so the final state is final.
    await this.reader.close();
    await this.reading?.catch(() => undefined);
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    while (this.up && Date.now() < deadline) {
      if (this.writing) {
        await Promise.race([this.writing, sleep(deadline - Date.now())]);
        continue;
      }
      if (!this.hasWork()) break;
      this.startWrite();
    }
    if (this.up) {
      // Adopted inboxes still being read are this node's to hand on: their cursors are in its stored state.
      const goodbyes = [this.reapStored(), this.command.command(['DEL', this.keys.alive(this.self)])];
      await Promise.race([Promise.allSettled(goodbyes), sleep(Math.max(0, deadline - Date.now()))]);
    }
    this.up = false;
    this.stopped = true;
    this.hub.stored(Infinity);
    await this.command.close();
  }

  // ── linking ──────────────────────────────────────────────────────────────

  /** The cluster's fingerprint check: undefined when this node may join, else the line saying why not. */
  private async checkConfig(): Promise<string | undefined> {
    const name = this.settings.name;
    let text = await this.command.command(['GET', this.keys.config]);
    if (text === null) {
      const mine = await this.fingerprintWith(newSalt());
      if ((await this.command.command(['SET', this.keys.config, JSON.stringify(mine), 'NX'])) === 'OK') return undefined;
      text = await this.command.command(['GET', this.keys.config]);
    }
    const theirs = typeof text === 'string' ? parseFingerprint(text) : undefined;
    const difference = theirs
      ? firstDifference(await this.fingerprintWith(theirs.salt), theirs, name)
      : `cluster ${JSON.stringify(name)} was configured by a Nerve that stores its settings differently (key ${this.keys.config})`;
    if (difference === undefined) return undefined;
    // With no node alive to disagree, the settings of the cluster are whatever the nodes starting now have.
    if (await this.anyOtherNodeAlive()) return difference;
    const mine = await this.fingerprintWith(newSalt());
    await this.command.command(['SET', this.keys.config, JSON.stringify(mine)]);
    this.hub.log('info', 'cluster settings replaced: no live node ran with the old ones', { cluster: name });
    return undefined;
  }

  private async fingerprintWith(salt: string): Promise<Fingerprint> {
    let known = this.fingerprints.get(salt);
    if (!known) {
      known = await fingerprint(this.hub.config, salt);
      this.fingerprints.set(salt, known);
    }
    return known;
  }

  private async anyOtherNodeAlive(): Promise<boolean> {
    const { live } = await this.readNodes();
    return live.some((node) => node !== this.self);
  }

  private async register(): Promise<void> {
    const started = String(this.startedAt);
    await Promise.all([
      this.command.command(['HSET', this.keys.nodes, this.self, JSON.stringify({ runtime: this.runtime, started: this.startedAt })]),
      this.command.command(['SET', this.keys.alive(this.self), started, 'PX', String(this.timeout)]),
    ]);
  }

  /** Feeds the bus from its start, page by page, as `node` inputs: what a joining node knows of the others. */
  private async catchUpOnBus(): Promise<void> {
    for (;;) {
      const reply = await this.command.command(['XRANGE', this.keys.bus, `(${this.cursors.bus}`, '+', 'COUNT', String(READ_COUNT)]);
      const page = parseEntries(reply);
      for (const entry of page.entries) {
        this.deliver(entry, true);
        this.cursors.bus = entry.id;
      }
      if (page.entries.length < READ_COUNT) break;
    }
    // Nodes that joined while this one was starting are live by now, or soon found dead.
    await this.refreshNodes();
  }

  /** Every node in the node list, split by whether its liveness key is still there (this node counts as live). */
  private async readNodes(): Promise<{ live: string[]; dead: string[] }> {
    const reply = await this.command.command(['HKEYS', this.keys.nodes]);
    const others = (Array.isArray(reply) ? reply : []).filter((node): node is string => typeof node === 'string' && node !== this.self);
    const alive = await Promise.all(others.map((node) => this.command.command(['EXISTS', this.keys.alive(node)])));
    const live = [this.self];
    const dead: string[] = [];
    others.forEach((node, i) => (alive[i] === 1 ? live : dead).push(node));
    live.sort();
    return { live, dead };
  }

  private markUp(nodes: string[]): void {
    this.up = true;
    this.epoch++;
    this.linkedAt = Date.now();
    this.liveNodes = nodes;
    this.hub.log('info', 'cluster link up', { cluster: this.settings.name, nodes: nodes.length });
    this.hub.fromCluster({ type: 'link', up: true, nodes });
    this.scheduleTurn();
  }

  private goDown(reason: string): void {
    if (!this.up || this.stopped) return;
    this.up = false;
    this.epoch++;
    this.hub.log('warn', 'cluster link down', { cluster: this.settings.name, reason });
    this.hub.fromCluster({ type: 'link', up: false, nodes: [this.self] });
    // There is nothing to wait for while down: what was held goes out now (docs/cluster.md, faults).
    this.hub.stored(Infinity);
  }

  /**
   * Links again once both connections are back: the settings are checked and
   * the node registered again, its whole state written again (Redis may have
   * lost it, or another node adopted it meanwhile), streams Redis forgot read
   * from their start, and the core told, so it republishes and reclaims.
   */
  private async relink(): Promise<void> {
    if (this.up || this.stopping || this.relinking) return;
    if (!this.command.ready || !this.reader.ready) return;
    this.relinking = true;
    try {
      await this.writing;
      const difference = await this.checkConfig();
      if (difference) {
        this.warn("cluster link stays down: this node's settings differ from the cluster's", { reason: difference });
        return;
      }
      await this.register();
      const streams = [this.own.inbox, this.keys.bus, ...[...this.inherited.keys()].map((node) => this.keys.inbox(node))];
      const exists = await Promise.all(streams.map((stream) => this.command.command(['EXISTS', stream])));
      const { live } = await this.readNodes();
      if (this.up || this.stopping) return;
      if (exists[0] === 0) this.cursors.inbox = '0-0';
      if (exists[1] === 0) this.cursors.bus = '0-0';
      [...this.inherited.values()].forEach((inherited, i) => {
        if (exists[i + 2] === 0) inherited.cursor = '0-0';
      });
      this.resetPersister();
      this.markUp(live);
    } catch (error) {
      // Redis is still coming back; the next scan tries again.
      this.warn('cluster link not restored yet', { error: describeError(error) });
    } finally {
      this.relinking = false;
    }
  }

  /** A persister that knows nothing stored, with every session and app marked: the next write stores it all. */
  private resetPersister(): void {
    const state = this.hub.state;
    this.persister = new Persister();
    this.persister.track(state);
    for (const key of state.sessions.keys()) state.changes!.sessions.add(key);
    for (const name of state.apps.keys()) state.changes!.apps.add(name);
    this.rewriteAll = true;
    this.writtenCursors = '';
    // A Redis that restarted empty numbers its bus afresh: an inbox entry must not wait for an id from before.
    this.lastBusEntry = undefined;
  }

  private async renewLiveness(): Promise<void> {
    if (!this.up || this.stopping) return;
    const epoch = this.epoch;
    try {
      const previous = await this.command.command(['SET', this.keys.alive(this.self), String(this.startedAt), 'PX', String(this.timeout), 'GET']);
      // It had lapsed (a stall longer than the timeout): another node may be adopting this one, so link again and reclaim.
      if (previous === null && epoch === this.epoch) {
        this.goDown(`liveness lapsed for longer than NERVE_NODE_TIMEOUT (${this.timeout} ms)`);
        void this.relink();
      }
    } catch (error) {
      if (epoch === this.epoch) this.goDown(`liveness not renewed: ${describeError(error)}`);
    }
  }

  /** Every second: link again if down; else read the live nodes, tell the core of changes, tend and adopt. */
  private async scan(): Promise<void> {
    if (this.stopping || this.scanning) return;
    if (!this.up) return this.relink();
    this.scanning = true;
    const epoch = this.epoch;
    try {
      const dead = await this.refreshNodes();
      if (!this.up || epoch !== this.epoch) return;
      await this.tendInherited();
      // Right after Redis comes back every node looks dead until it renews: wait one timeout first.
      if (Date.now() - this.linkedAt < this.timeout) return;
      for (const node of dead) if (!this.adopting.has(node) && !this.inherited.has(node)) void this.adopt(node);
    } catch (error) {
      this.warn('cluster scan failed', { error: describeError(error) });
    } finally {
      this.scanning = false;
    }
  }

  /** Reads the live nodes and tells the core when they changed; returns the nodes whose liveness lapsed. */
  private async refreshNodes(): Promise<string[]> {
    const epoch = this.epoch;
    const read = ++this.nodeReads;
    const { live, dead } = await this.readNodes();
    if (this.up && epoch === this.epoch && read > this.nodesApplied) {
      this.nodesApplied = read;
      if (!sameNodes(live, this.liveNodes)) {
        this.liveNodes = live;
        this.hub.fromCluster({ type: 'link', up: true, nodes: live });
      }
    }
    return dead;
  }

  // ── writing ──────────────────────────────────────────────────────────────

  private scheduleTurn(): void {
    if (this.turnScheduled || !this.up || this.stopped) return;
    this.turnScheduled = true;
    schedule(() => {
      this.turnScheduled = false;
      if (this.up && !this.writing && this.hasWork()) this.startWrite();
    });
  }

  private hasWork(): boolean {
    const marks = this.hub.state.changes;
    return (
      this.outgoing.size > 0 ||
      this.claims.length > 0 ||
      this.barrierAsked ||
      this.rewriteAll ||
      (marks !== undefined && marks.sessions.size + marks.apps.size > 0) ||
      this.forgottenInboxes.size > 0 ||
      JSON.stringify(this.cursorSnapshot()) !== this.writtenCursors
    );
  }

  private cursorSnapshot(): Cursors {
    const snapshot: Cursors = { inbox: this.cursors.inbox, bus: this.cursors.bus };
    if (this.inherited.size > 0) snapshot.inherited = Object.fromEntries([...this.inherited].map(([node, inherited]) => [node, inherited.cursor]));
    return snapshot;
  }

  private startWrite(): void {
    this.writing = this.write()
      .catch((error: unknown) => {
        this.hub.log('error', 'cluster write failed unexpectedly', { error: error instanceof Error ? (error.stack ?? error.message) : String(error) });
        // Whatever waited for this write must not wait forever; linking again writes the whole state.
        this.goDown(`a cluster write failed: ${describeError(error)}`);
      })
      .finally(() => {
        this.writing = undefined;
        if (this.hasWork()) this.scheduleTurn();
      });
  }

  /**
   * One write: this node's state and cursors in one MULTI, then claims,
   * then one XADD per destination. Issued back to back on one connection, Redis runs them in
   * that order. The persister is told the state is stored only once EXEC
   * succeeded; relays and claims that failed are sent again after the link
   * comes back.
   */
  private async write(): Promise<void> {
    const state = this.hub.state;
    const persister = this.persister;
    const generation = this.generation++;
    this.barrierAsked = false;
    const changes = persister.flush(state);
    const snapshot = this.cursorSnapshot();
    const cursors = JSON.stringify(snapshot);
    const doneInboxes = [...this.forgottenInboxes];
    const rewrite = this.rewriteAll;
    const claims = this.claims;
    this.claims = [];
    // One entry per destination: relays of this turn after any an earlier write failed to append.
    const entries = [...this.outgoing].map(([stream, entry]) => ({ stream, payload: entry.text(), count: entry.count }));
    this.outgoing = new Map();

    const stateCommands: string[][] = [];
    if (rewrite) {
      stateCommands.push(['DEL', ...stateKeys(this.own)]);
      this.replayChunks.reset();
    }
    if (!isEmptyChangeset(changes)) stateCommands.push(...changesetCommands(this.own, changes, this.replayChunks));
    if (doneInboxes.length > 0 && !rewrite) stateCommands.push(forgetCursorsCommand(this.own, doneInboxes));
    if (rewrite || cursors !== this.writtenCursors) stateCommands.push(cursorsCommand(this.own, snapshot));

    const stateWrite = stateCommands.length > 0 ? this.command.transaction(stateCommands) : Promise.resolve([]);
    const claimed = claims.map((claim) => this.command.command(claimCommand(this.keys.owners(claim.app), claim.client, claim.node, claim.expected)));
    // An inbox entry names the bus entry it comes after (NodeEntry.after): this write's, once appended, or the last one.
    const busIndex = entries.findIndex((entry) => entry.stream === this.keys.bus);
    const busAppend = busIndex < 0 ? undefined : this.command.command(xaddCommand(this.keys.bus, this.self, entries[busIndex]!.payload));
    const appended = entries.map((entry, i) => {
      if (i === busIndex) return busAppend!;
      if (busAppend === undefined) return this.command.command(xaddCommand(entry.stream, this.self, entry.payload, this.lastBusEntry));
      return busAppend.then((id) => this.command.command(xaddCommand(entry.stream, this.self, entry.payload, String(id))));
    });

    const [stateResult, claimResults, appendResults] = await Promise.all([
      stateWrite.then(
        () => undefined,
        (error: unknown) => describeError(error),
      ),
      Promise.allSettled(claimed),
      Promise.allSettled(appended),
    ]);

    let failure = stateResult;
    if (failure === undefined && persister === this.persister) {
      persister.commit(changes);
      this.storedThrough = generation;
      this.writtenCursors = cursors;
      for (const node of doneInboxes) this.forgottenInboxes.delete(node);
      if (rewrite) this.rewriteAll = false;
    }
    const failedClaims: Claim[] = [];
    const answers: { key: string; owner: string | undefined }[] = [];
    claimResults.forEach((result, i) => {
      const claim = claims[i]!;
      if (result.status === 'rejected') {
        failedClaims.push(claim);
        failure ??= describeError(result.reason);
      } else if (claim.answer) answers.push({ key: sessionKey(claim.app, claim.client), owner: claimOwner(result.value) });
    });
    appendResults.forEach((result, i) => {
      const entry = entries[i]!;
      if (result.status === 'fulfilled') {
        this.relayed += entry.count;
        if (i === busIndex) this.lastBusEntry = String(result.value);
      }
      else {
        // Sent again ahead of what was relayed to the same node since, in one entry, so order holds.
        let later = this.outgoing.get(entry.stream);
        if (!later) this.outgoing.set(entry.stream, (later = new EntryLines(this.lineStarts)));
        later.prepend(entry.payload, entry.count);
        failure ??= describeError(result.reason);
      }
    });
    if (failedClaims.length > 0) this.claims = [...failedClaims, ...this.claims];
    for (const answer of answers) this.hub.fromCluster({ type: 'claimed', key: answer.key, owner: answer.owner });
    if (failure !== undefined) this.goDown(`a cluster write failed: ${failure}`);
    else this.hub.stored(generation);
  }

  // ── reading ──────────────────────────────────────────────────────────────

  private async readLoop(): Promise<void> {
    while (!this.stopping) {
      if (!this.up || !this.reader.ready) {
        await sleep(RETRY_MS);
        continue;
      }
      const epoch = this.epoch;
      const streams = [this.own.inbox, this.keys.bus];
      const ids = [this.cursors.inbox, this.cursors.bus];
      for (const [node, inherited] of this.inherited) {
        streams.push(this.keys.inbox(node));
        ids.push(inherited.cursor);
      }
      let reply: RedisReply;
      try {
        reply = await this.reader.command(['XREAD', 'COUNT', String(READ_COUNT), 'BLOCK', String(READ_BLOCK_MS), 'STREAMS', ...streams, ...ids]);
      } catch {
        if (!this.stopping) await sleep(RETRY_MS);
        continue;
      }
      // Read before the link changed: the cursors may have moved back since, so this is read again.
      if (epoch !== this.epoch || !this.up || this.stopping) continue;
      const read = new Map<string, { entries: NodeEntry[]; bad: number }>();
      for (const [stream, entries] of parseXread(reply)) read.set(stream, parseEntries(entries));
      // A node that just joined publishes at once: count it as live before routing to its sessions, not a scan later.
      if (this.fromUnknownNode(read)) {
        try {
          await this.refreshNodes();
        } catch {
          // The next scan reads them again.
        }
        if (epoch !== this.epoch || !this.up || this.stopping) continue;
      }
      this.feed(read);
    }
  }

  private fromUnknownNode(streams: Map<string, { entries: NodeEntry[] }>): boolean {
    for (const { entries } of streams.values()) {
      for (const entry of entries) if (entry.from !== '' && !this.liveNodes.includes(entry.from)) return true;
    }
    return false;
  }

  /** Each entry is one `node` input, in stream order; the cursor moves past it whether or not it parsed. */
  /**
   * Inboxes first, each entry after the bus entries it was written after
   * (NodeEntry.after): those of this read are delivered ahead of it, and an
   * inbox waits at an entry whose bus entry this read did not reach (it is
   * read again next time, the bus further on). Then the rest of the bus.
   */
  private feed(streams: Map<string, { entries: NodeEntry[]; bad: number }>): void {
    for (const [stream, { bad }] of streams) if (bad > 0) this.warn('cluster stream entries skipped: not node messages', { stream, count: bad });
    const bus = streams.get(this.keys.bus)?.entries ?? [];
    let busAt = 0;
    const busThrough = (id: string): boolean => {
      while (busAt < bus.length && compareIds(bus[busAt]!.id, id) <= 0) this.deliverBus(bus[busAt++]!);
      return compareIds(this.cursors.bus, id) >= 0;
    };
    for (const [stream, { entries }] of streams) {
      if (stream === this.keys.bus) continue;
      const inherited = stream === this.own.inbox ? undefined : this.inheritedBy(stream);
      for (const entry of entries) {
        if (entry.after !== undefined && !busThrough(entry.after)) break;
        this.deliver(entry, false);
        if (stream === this.own.inbox) this.cursors.inbox = entry.id;
        else if (inherited) inherited.cursor = entry.id;
      }
    }
    while (busAt < bus.length) this.deliverBus(bus[busAt++]!);
  }

  private deliverBus(entry: NodeEntry): void {
    this.deliver(entry, true);
    this.cursors.bus = entry.id;
  }

  private inheritedBy(stream: string): Inherited | undefined {
    for (const [node, inherited] of this.inherited) if (this.keys.inbox(node) === stream) return inherited;
    return undefined;
  }

  /** One entry as one `node` input; a bus entry says where on the bus it is, which a session moving between nodes needs. */
  private deliver(entry: NodeEntry, fromBus: boolean): void {
    if (entry.msgs.length === 0) return;
    this.received += entry.msgs.length;
    this.hub.fromCluster(fromBus ? { type: 'node', from: entry.from, msgs: entry.msgs, at: entry.id } : { type: 'node', from: entry.from, msgs: entry.msgs });
  }

  // ── adoption ─────────────────────────────────────────────────────────────

  /**
   * Adopts a node whose liveness lapsed, if this node gets its lock first:
   * claims its sessions (dropping those another node owns by now), and hands
   * the core its stored state with what its inbox (and the inboxes it was
   * reading for nodes it had adopted) and the bus held that it never handled.
   * Those inboxes are then read here for two timeouts more.
   */
  private async adopt(node: string): Promise<void> {
    this.adopting.add(node);
    try {
      const lock = await this.command.command(['SET', this.keys.reap(node), this.self, 'NX', 'PX', String(2 * this.timeout)]);
      if (lock !== 'OK') return;
      const keys = this.keys.node(node);
      const loaded = await loadNamespace(this.command, keys);
      if (loaded.skipped > 0) this.warn('adopted node rows skipped: not records', { node, count: loaded.skipped });
      const stored = loaded.stored;
      const kept = new Set<number>();
      const owners = await Promise.all(stored.sessions.map((record) => this.claimFrom(record.app, record.id, node)));
      stored.sessions = stored.sessions.filter((record, i) => {
        const ours = owners[i] === undefined;
        if (ours) kept.add(record.ord);
        return ours;
      });
      stored.replay = stored.replay.filter((row) => kept.has(row.ord));
      const inboxes = new Map<string, string>([[node, loaded.cursors.inbox ?? '0-0'], ...Object.entries(loaded.cursors.inherited ?? {})]);
      const unread = new Map<string, NodeEntry[]>();
      for (const [owner, after] of inboxes) {
        if (owner === this.self || this.inherited.has(owner)) continue;
        unread.set(owner, (await readRange(this.command, this.keys.inbox(owner), after)).entries);
      }
      // Mode-all events it had not read, up to where this node has read the bus: those after it are read as usual.
      const bus: NodeEntry[] = [];
      let through = loaded.cursors.bus ?? this.cursors.bus;
      while (compareIds(through, this.cursors.bus) < 0) {
        const target = this.cursors.bus;
        bus.push(...(await readRange(this.command, this.keys.bus, through, target)).entries);
        through = target;
      }
      const flat = (entries: NodeEntry[]) => entries.flatMap((entry) => entry.msgs) as NodeMessage[];
      const inbox = [...unread.values()].flatMap(flat);
      this.hub.fromCluster({ type: 'adopt', node, stored, inbox, bus: bus.map((entry) => ({ at: entry.id, msgs: entry.msgs })) });
      this.adopted++;
      const until = Date.now() + 2 * this.timeout;
      for (const [owner, entries] of unread) {
        this.inherited.set(owner, { cursor: entries.at(-1)?.id ?? inboxes.get(owner)!, until, storedBy: this.generation, reaped: false });
        this.forgottenInboxes.delete(owner);
      }
      this.scheduleTurn();
    } catch (error) {
      this.warn('adopting a node failed; another scan tries again', { node, error: describeError(error) });
    } finally {
      this.adopting.delete(node);
    }
  }

  /**
   * Claims a dead node's session for this node: undefined when it is ours now,
   * else the node that keeps it. A session another dead node claimed (an
   * adopter that died before storing it) has no one else to go to: it is
   * claimed from that node too.
   */
  private async claimFrom(app: string, client: string, dead: string): Promise<string | undefined> {
    const owners = this.keys.owners(app);
    const owner = claimOwner(await this.command.command(claimCommand(owners, client, this.self, dead)));
    if (owner === undefined || this.liveNodes.includes(owner)) return owner;
    return claimOwner(await this.command.command(claimCommand(owners, client, this.self, owner)));
  }

  /**
   * Each scan, for every adopted node: once its state is stored here it is
   * reaped — its own copy of the state and its place in the node list go, so
   * no one adopts it again — and until then its lock is renewed. After two
   * timeouts the rest of its keys go, unless it came back meanwhile, and its
   * inbox is no longer read.
   */
  private async tendInherited(): Promise<void> {
    await this.reapStored();
    for (const [node, inherited] of [...this.inherited]) {
      if (!inherited.reaped) {
        await this.command.command(['SET', this.keys.reap(node), this.self, 'PX', String(2 * this.timeout)]);
        continue;
      }
      if (Date.now() < inherited.until) continue;
      if ((await this.command.command(['EXISTS', this.keys.alive(node)])) === 0) {
        const keys = this.keys.node(node);
        await Promise.all([this.command.command(['DEL', ...stateKeys(keys), keys.inbox]), this.command.command(['DEL', this.keys.reap(node)])]);
      }
      this.inherited.delete(node);
      this.forgottenInboxes.add(node);
      this.scheduleTurn();
    }
  }

  /** Reaps the adopted nodes whose adoption is stored here by now. */
  private async reapStored(): Promise<void> {
    for (const [node, inherited] of this.inherited) {
      if (inherited.reaped || this.storedThrough < inherited.storedBy) continue;
      const keys = this.keys.node(node);
      await Promise.all([this.command.command(['DEL', keys.sessions, keys.replay, keys.held, keys.apps]), this.command.command(['HDEL', this.keys.nodes, node])]);
      inherited.reaped = true;
    }
  }

  /** Logs a warning, the same one at most once a minute. */
  private warn(msg: string, fields: Record<string, unknown>): void {
    const now = Date.now();
    const last = this.warned.get(msg);
    if (last !== undefined && now - last < WARN_EVERY_MS) return;
    this.warned.set(msg, now);
    this.hub.log('warn', msg, fields);
  }
}
