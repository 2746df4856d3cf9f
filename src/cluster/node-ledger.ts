// What the API role places creates on: the ready nodes and what each has committed, kept in
// memory and refreshed from the store in the background, so a create does not wait for a
// database round trip (it was a third of the API → node overhead: docs/cluster.md "Measured").
//
// How fresh: once started, the view is read every `refreshMs` in the background (one query:
// the nodes joined with their VMs' sums), whether creates come or not, since creates come
// seconds apart as often as in bursts; a view older than `refreshMs` is served while a refresh
// runs behind it (stale while revalidate); one older than `maxAgeMs` (the first create, or the
// store failing to answer) is refreshed before it is used. What this API process placed since is added on top as
// reservations, dropped once a refresh that began after the node answered has seen the VM's
// row, so a burst of creates through one API process spreads as if each had read the store.
// Creates through other API processes reach this view at the next refresh (≤ refreshMs later);
// a node's own admission stays the authority either way: one that is full after all refuses
// with KILN_ERR_CAPACITY before anything is made.
import type { NodeRecord, Store, VmState } from '../store/store.ts';

interface Reservation {
  nodeId: string;
  vcpus: number;
  memoryMib: number;
  /** When the node answered the create (its row is in the store from then on); null while in flight. */
  doneAt: number | null;
}

export interface NodeLedgerOptions {
  /** Serve a view this old while refreshing it in the background (default 250 ms). */
  refreshMs?: number;
  /** Never serve a view older than this: refresh first (default 2 s). */
  maxAgeMs?: number;
  now?: () => number;
}

export class NodeLedger {
  private nodes: NodeRecord[] = [];
  private readAt = -Infinity;
  private refreshing: Promise<void> | null = null;
  private readonly reservations = new Set<Reservation>();
  private timer: NodeJS.Timeout | null = null;
  private readonly refreshMs: number;
  private readonly maxAgeMs: number;
  private readonly now: () => number;

  constructor(
    private readonly store: Pick<Store, 'listNodesWithCommitted'>,
    private readonly committing: readonly VmState[],
    o: NodeLedgerOptions = {},
  ) {
    this.refreshMs = o.refreshMs ?? 250;
    this.maxAgeMs = o.maxAgeMs ?? 2000;
    this.now = o.now ?? (() => performance.now());
  }

  /** The nodes with their committed resources as the store last said, plus this process's reservations. */
  async view(): Promise<NodeRecord[]> {
    const age = this.now() - this.readAt;
    if (age > this.maxAgeMs) await this.refresh();
    else if (age > this.refreshMs) void this.refresh().catch(() => {});
    const extra = new Map<string, { vcpus: number; memoryMib: number }>();
    for (const r of this.reservations) {
      const e = extra.get(r.nodeId) ?? { vcpus: 0, memoryMib: 0 };
      extra.set(r.nodeId, { vcpus: e.vcpus + r.vcpus, memoryMib: e.memoryMib + r.memoryMib });
    }
    return this.nodes.map((n) => {
      const e = extra.get(n.id);
      return e ? { ...n, capacity: { ...n.capacity, committedVcpus: n.capacity.committedVcpus + e.vcpus, committedMemoryMib: n.capacity.committedMemoryMib + e.memoryMib } } : n;
    });
  }

  /**
   * Counts a create placed on `nodeId` until the store shows it. The returned function is called
   * when the node has answered: `made` false (refused, failed, unreachable) drops it at once.
   */
  reserve(nodeId: string, d: { vcpus: number; memoryMib: number }): (made: boolean) => void {
    const r: Reservation = { nodeId, vcpus: d.vcpus, memoryMib: d.memoryMib, doneAt: null };
    this.reservations.add(r);
    return (made) => {
      if (made) r.doneAt = this.now();
      else this.reservations.delete(r);
    };
  }

  /** Reads the store now (one query: nodes joined with their VMs' sums); concurrent callers share it. */
  refresh(): Promise<void> {
    if (this.refreshing) return this.refreshing;
    const startedAt = this.now();
    this.refreshing = (async () => {
      try {
        const rows = await this.store.listNodesWithCommitted(this.committing);
        // A node's committed figure: the larger of its last heartbeat's and its VM rows' now, so a
        // VM placed a moment ago counts before the node's next heartbeat.
        this.nodes = rows.map(({ node: n, committed: c }) => ({
          ...n,
          capacity: { ...n.capacity, committedVcpus: Math.max(n.capacity.committedVcpus, c.vcpus), committedMemoryMib: Math.max(n.capacity.committedMemoryMib, c.memoryMib) },
        }));
        this.readAt = startedAt;
        // The rows this read saw include every create answered before it began.
        for (const r of this.reservations) if (r.doneAt !== null && r.doneAt < startedAt) this.reservations.delete(r);
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  /** Keeps the view fresh in the background until close(); a failed read is retried at the next tick. */
  start(): this {
    this.timer ??= setInterval(() => void this.refresh().catch(() => {}), this.refreshMs).unref();
    return this;
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Reservations not yet seen in the store (tests, /healthz). */
  get pending(): number {
    return this.reservations.size;
  }
}
