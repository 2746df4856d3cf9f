// A node's membership in a cluster: it registers, heartbeats its capacity report every
// `heartbeatMs`, and sweeps for silent nodes: any ready node whose last
// heartbeat is older than `lostAfterMs` is marked lost, with its live VMs, in one store
// transaction (compare-and-set: of several sweeping nodes exactly one marks each; its own
// heartbeat, written just before with the same clock, keeps a node from marking itself). No
// coordinator is needed for failure detection: every node checks every other. After the
// sweep, restart-policy containers of lost nodes are taken over (takeover.ts).
//
// Rejoin: a node's heartbeat is compare-and-set on (ready, incarnation). When it fails, the
// node was declared lost meanwhile: it registers again (new incarnation) and settles the VMs
// that were marked lost: they are recorded stopped, never resumed behind the cluster's back.
// A kilnd restarted after a crash has already let go of their VMMs in its reconcile (they are
// not in a live state), so nothing of them runs twice.
//
// Fencing: a node that has not heartbeat for `fenceAfterMs` (two heartbeats less than the lost
// deadline: the store is unreachable, or the heartbeat hangs or is refused) kills its own
// VMMs, since the others are about to mark them lost and may start its containers elsewhere.
// A watchdog timer checks, independent of the heartbeat (which may hang on a black-holed
// connection). A fenced node boots nothing until it has registered again; then the VMs it
// killed are recorded stopped (unless the cluster moved them meanwhile).
import type { Logger } from 'pino';
import { LOSABLE_STATES } from '../store/rows.ts';
import type { NodeCapacity, NodeRecord, Store } from '../store/store.ts';
import type { Takeover } from './takeover.ts';

export interface NodeFence {
  /** Kills every VMM of this node without writing to the store (VmManager.fence); the VMs killed. */
  kill(reason: string): Promise<string[]>;
  /** After the rejoin recorded them: boots may start again (VmManager.unfence). */
  release(vmIds: readonly string[]): Promise<void>;
}

export interface NodeMemberOptions {
  /** The shared (unscoped) store. */
  store: Store;
  nodeId: string;
  name: string;
  capacity: () => Promise<NodeCapacity>;
  heartbeatMs: number;
  lostAfterMs: number;
  log: Logger;
  /** Event sink (the daemon's bus): node.registered, node.rejoined, node.lost, vm.lost, node.fenced. */
  publish?: (type: string, vmId: string | null, data: Record<string, unknown>) => void;
  /** How this node stops its VMMs when it cannot heartbeat; absent: never fenced (tests' sweepers). */
  fence?: NodeFence;
  /** Takes over lost nodes' restart-policy containers after each sweep. */
  takeover?: Takeover;
  /**
   * After each registration and heartbeat the store accepted, with its time: renews the fence
   * watchdog's lease (fence-lease.ts), which kills this node's VMMs if kilnd dies.
   */
  onBeat?: (at: number) => Promise<void>;
}

export const REJOIN_REASON = 'its node was lost and rejoined: the VM was stopped, not resumed, so that it cannot run twice';
export const FENCED_REASON = 'its node could not reach the cluster store within the deadline: it killed the VM (fencing), so that it cannot run twice';

/** How long a node may go without a heartbeat before it fences itself: before the others' deadline. */
export function fenceAfterMs(heartbeatMs: number, lostAfterMs: number): number {
  // Two heartbeats early: the watchdog's period and the kill itself fit before the others' sweep.
  return Math.max(lostAfterMs / 2, lostAfterMs - 2 * heartbeatMs);
}

export class NodeMember {
  node: NodeRecord | null = null;
  private timer: NodeJS.Timeout | null = null;
  private watchdog: NodeJS.Timeout | null = null;
  private running: Promise<void> = Promise.resolve();
  private stopped = false;
  /** When the last heartbeat (or registration) that the store accepted was stamped. */
  private lastBeatAt = 0;
  /** Non-null while fenced: the VMs the fence killed, recorded stopped at the rejoin. */
  private fenced: Set<string> | null = null;
  private fencing: Promise<void> = Promise.resolve();
  /** The takeover pass in flight, if any. */
  private sweeping: Promise<void> | null = null;
  readonly fenceAfterMs: number;

  constructor(private readonly o: NodeMemberOptions) {
    this.fenceAfterMs = fenceAfterMs(o.heartbeatMs, o.lostAfterMs);
  }

  /** Registers at `url` (where the API reaches this node) and starts heartbeating. */
  async start(url: string): Promise<NodeRecord> {
    this.url = url;
    const node = await this.register('node.registered');
    this.schedule();
    if (this.o.fence) {
      this.watchdog = setInterval(() => void this.checkFence(), Math.min(this.o.heartbeatMs / 2, 250));
    }
    return node;
  }

  /** Whether this node is fenced now (it cut its VMMs and waits to rejoin). */
  get isFenced(): boolean {
    return this.fenced !== null;
  }

  private url = '';
  /** Where this node serves E2B's API (its E2B listener, advertised); null: it serves none. */
  private e2bUrl: string | null = null;

  /** Advertises this node's E2B listener from its next registration on (set before start()). */
  advertiseE2b(url: string): void {
    this.e2bUrl = url;
  }

  private async register(event: 'node.registered' | 'node.rejoined'): Promise<NodeRecord> {
    const now = Date.now();
    const node = await this.o.store.registerNode({ id: this.o.nodeId, name: this.o.name, url: this.url, e2bUrl: this.e2bUrl, capacity: await this.o.capacity() }, now);
    this.node = node;
    this.lastBeatAt = now;
    await this.beat(now);
    const settled = await this.settleLostVms();
    const fenced = this.fenced ? await this.settleFencedVms([...this.fenced]) : [];
    this.o.log.info({ node: node.id, name: node.name, incarnation: node.incarnation, settled, fenced }, event === 'node.rejoined' ? 'node rejoined the cluster' : 'node registered');
    this.o.publish?.(event, null, { node: node.id, name: node.name, incarnation: node.incarnation, settled, fenced });
    if (this.fenced) {
      const killed = [...this.fenced];
      this.fenced = null;
      // Not awaited: the cleanup (taps, function instances) must not hold up the heartbeats.
      void this.o.fence!.release(killed).catch((e) => this.o.log.error({ err: e }, 'cleanup after fencing failed'));
    }
    return node;
  }

  /** The accepted beat's hook; its failure is logged, never the heartbeat's (the watchdog fences late rather than never). */
  private async beat(at: number): Promise<void> {
    await this.o.onBeat?.(at).catch((e) => this.o.log.error({ err: e }, 'renewing the fence lease failed'));
  }

  /** This node's VMs the cluster marked lost: recorded stopped (their VMMs are not tracked). */
  private async settleLostVms(): Promise<string[]> {
    const out: string[] = [];
    for (const vm of await this.o.store.listVms()) {
      if (vm.nodeId !== this.o.nodeId || vm.state !== 'lost') continue;
      if (await this.o.store.transitionVm(vm.id, ['lost'], { state: 'stopped', pid: null, stateReason: REJOIN_REASON })) out.push(vm.id);
    }
    return out;
  }

  /**
   * The VMs the fence killed that the cluster had not marked lost: recorded stopped. Only while
   * still this node's: one moved meanwhile is another node's now. (Registration just stamped a
   * fresh heartbeat, so no sweep can mark this node lost between the read and the write.)
   */
  private async settleFencedVms(ids: string[]): Promise<string[]> {
    const out: string[] = [];
    for (const id of ids) {
      const vm = await this.o.store.getVm(id);
      if (!vm || vm.nodeId !== this.o.nodeId) continue;
      if (await this.o.store.transitionVm(id, LOSABLE_STATES, { state: 'stopped', pid: null, stateReason: FENCED_REASON })) out.push(id);
    }
    return out;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.tick()
        .catch((e) => this.o.log.warn({ err: e }, 'cluster heartbeat failed'))
        .finally(() => this.schedule());
    }, this.o.heartbeatMs);
  }

  /** One heartbeat and one sweep (a fenced node registers again instead of heartbeating). */
  async tick(): Promise<void> {
    const now = Date.now();
    // Bounded: a black-holed connection must not stop the heartbeats (the fence does not wait for it).
    const deadline = Math.max(this.o.lostAfterMs, 1_000);
    await this.fencing;
    if (this.fenced || !this.node) {
      await withDeadline(this.register('node.rejoined'), deadline, 'registration');
    } else {
      const beat = await withDeadline(this.o.store.heartbeatNode(this.o.nodeId, this.node.incarnation, await this.o.capacity(), now), deadline, 'heartbeat');
      if (beat) {
        this.node = beat;
        this.lastBeatAt = now;
        await this.beat(now);
      } else {
        this.o.log.warn({ node: this.o.nodeId }, 'heartbeat refused: this node was declared lost; registering again');
        await this.register('node.rejoined');
      }
    }
    for (const { node, vms, pulls } of await this.o.store.markNodesLost(now - this.o.lostAfterMs, now)) {
      this.o.log.warn({ node, vms, pulls }, 'node stopped heartbeating: marked lost with its VMs (its image pulls under way dropped)');
      this.o.publish?.('node.lost', null, { node, vms, pulls });
      for (const vm of vms) this.o.publish?.('vm.lost', vm, { node });
    }
    // Only a node whose heartbeat just counted takes work over; never a fenced one. In the
    // background, one pass at a time: booting what it takes must not delay the next heartbeat.
    if (this.o.takeover && !this.fenced && !this.sweeping) {
      this.sweeping = this.o.takeover.sweep()
        .then((moved) => {
          if (moved.length) this.o.log.warn({ containers: moved }, 'started restart-policy containers of lost nodes here');
        })
        .catch((e) => this.o.log.warn({ err: e }, 'taking over lost containers failed'))
        .finally(() => {
          this.sweeping = null;
        });
    }
  }

  /** The watchdog: past the fence deadline without a heartbeat, kill this node's VMMs. */
  private checkFence(): Promise<void> {
    if (this.stopped || !this.o.fence || !this.node || Date.now() - this.lastBeatAt <= this.fenceAfterMs) return this.fencing;
    this.fencing = this.fencing.then(async () => {
      // Again, in order: a rejoin that finished meanwhile cancels it.
      const silentMs = Date.now() - this.lastBeatAt;
      if (this.stopped || silentMs <= this.fenceAfterMs) return;
      const first = this.fenced === null;
      this.fenced ??= new Set();
      const reason = `no heartbeat for ${Math.round(silentMs)} ms (fence after ${this.fenceAfterMs} ms)`;
      if (first) this.o.log.error({ node: this.o.nodeId, silentMs }, 'fencing: no heartbeat within the deadline; killing this node\'s VMMs');
      // Called again while fenced: kills what a boot in flight spawned since.
      const killed = await this.o.fence!.kill(reason);
      for (const id of killed) this.fenced!.add(id);
      if (first || killed.length) {
        this.o.log.error({ node: this.o.nodeId, killed, silentMs }, 'fenced: this node cannot heartbeat; its VMMs were killed');
        this.o.publish?.('node.fenced', null, { node: this.o.nodeId, vms: killed, silent_ms: Math.round(silentMs) });
      }
    }).catch((e) => this.o.log.error({ err: e }, 'fencing failed'));
    return this.fencing;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.watchdog) clearInterval(this.watchdog);
    await this.running;
    await this.fencing;
    await this.sweeping;
  }
}

function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}
