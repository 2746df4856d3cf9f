// A node's membership in a cluster: it registers, heartbeats its capacity report every
// `heartbeatMs`, and sweeps for silent nodes: any ready node whose last
// heartbeat is older than `lostAfterMs` is marked lost, with its live VMs, in one store
// transaction (compare-and-set: of several sweeping nodes exactly one marks each; its own
// heartbeat, written just before with the same clock, keeps a node from marking itself). No
// coordinator is needed for failure detection: every node checks every other.
//
// Rejoin: a node's heartbeat is compare-and-set on (ready, incarnation). When it fails, the
// node was declared lost meanwhile: it registers again (new incarnation) and settles the VMs
// that were marked lost: they are recorded stopped, never resumed behind the cluster's back.
// A kilnd restarted after a crash has already let go of their VMMs in its reconcile (they are
// not in a live state), so nothing of them runs twice.
import type { Logger } from 'pino';
import type { NodeCapacity, NodeRecord, Store } from '../store/store.ts';

export interface NodeMemberOptions {
  /** The shared (unscoped) store. */
  store: Store;
  nodeId: string;
  name: string;
  capacity: () => Promise<NodeCapacity>;
  heartbeatMs: number;
  lostAfterMs: number;
  log: Logger;
  /** Event sink (the daemon's bus): node.registered, node.rejoined, node.lost, vm.lost. */
  publish?: (type: string, vmId: string | null, data: Record<string, unknown>) => void;
}

export const REJOIN_REASON = 'its node was lost and rejoined: the VM was stopped, not resumed, so that it cannot run twice';

export class NodeMember {
  node: NodeRecord | null = null;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> = Promise.resolve();
  private stopped = false;

  constructor(private readonly o: NodeMemberOptions) {}

  /** Registers at `url` (where the API reaches this node) and starts heartbeating. */
  async start(url: string): Promise<NodeRecord> {
    this.url = url;
    const node = await this.register('node.registered');
    this.schedule();
    return node;
  }

  private url = '';

  private async register(event: 'node.registered' | 'node.rejoined'): Promise<NodeRecord> {
    const node = await this.o.store.registerNode({ id: this.o.nodeId, name: this.o.name, url: this.url, capacity: await this.o.capacity() }, Date.now());
    this.node = node;
    const settled = await this.settleLostVms();
    this.o.log.info({ node: node.id, name: node.name, incarnation: node.incarnation, settled }, event === 'node.rejoined' ? 'node rejoined the cluster' : 'node registered');
    this.o.publish?.(event, null, { node: node.id, name: node.name, incarnation: node.incarnation, settled });
    return node;
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

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.tick()
        .catch((e) => this.o.log.warn({ err: e }, 'cluster heartbeat failed'))
        .finally(() => this.schedule());
    }, this.o.heartbeatMs);
  }

  /** One heartbeat and one sweep. */
  async tick(): Promise<void> {
    const now = Date.now();
    const beat = this.node ? await this.o.store.heartbeatNode(this.o.nodeId, this.node.incarnation, await this.o.capacity(), now) : null;
    if (beat) this.node = beat;
    else {
      this.o.log.warn({ node: this.o.nodeId }, 'heartbeat refused: this node was declared lost; registering again');
      await this.register('node.rejoined');
    }
    for (const { node, vms } of await this.o.store.markNodesLost(now - this.o.lostAfterMs, now)) {
      this.o.log.warn({ node, vms }, 'node stopped heartbeating: marked lost with its VMs');
      this.o.publish?.('node.lost', null, { node, vms });
      for (const vm of vms) this.o.publish?.('vm.lost', vm, { node });
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running;
  }
}
