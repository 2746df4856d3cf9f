// The API role's own Prometheus endpoint: what this process did (requests sent on to nodes,
// placements) and the cluster as the store says (nodes by state, each node's last capacity
// report and heartbeat age). It does not merge the nodes' own /metrics: each node serves its
// VMs', pools' and functions' metrics itself and is scraped directly (docs/cluster.md); summing
// counters of several processes here would hide which node they came from and break when a
// node restarts (its counters reset).
import type { FastifyInstance } from 'fastify';
import client from 'prom-client';
import type { NodeRecord, Store } from '../store/store.ts';
import type { PlacementKind } from './api-placement.ts';

export class ApiMetrics {
  readonly registry = new client.Registry();
  private readonly forwarded = new client.Counter({
    name: 'kiln_api_forwarded_requests_total',
    help: 'Requests the API role sent to a node, by node, method and the node\'s status ("unavailable": no answer)',
    labelNames: ['node', 'method', 'status'] as const,
    registers: [this.registry],
  });
  private readonly upstream = new client.Histogram({
    name: 'kiln_api_node_response_seconds',
    help: 'Time until a node answered (headers) a request the API role sent it, by node',
    labelNames: ['node'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  private readonly placements = new client.Counter({
    name: 'kiln_api_placements_total',
    help: 'Creates placed by the API role, by what (vm, container, volume, template, image) and how ("placed": best of K, "template": on a node with the template, "pinned": where its snapshot or volumes are, "failed")',
    labelNames: ['what', 'kind'] as const,
    registers: [this.registry],
  });
  private readonly placementTime = new client.Histogram({
    name: 'kiln_api_placement_seconds',
    help: 'Placement decision time (store reads and the choice), per create',
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
    registers: [this.registry],
  });

  constructor(store: Store) {
    const nodes = async (): Promise<NodeRecord[]> => store.listNodes();
    // Read at each scrape: the store is the truth, this process keeps no copy of it.
    let scrape: Promise<NodeRecord[]> | null = null;
    const once = () => (scrape ??= nodes().finally(() => setImmediate(() => (scrape = null))));
    new client.Gauge({
      name: 'kiln_cluster_nodes', help: 'Registered nodes, by state', labelNames: ['state'] as const, registers: [this.registry],
      async collect() {
        this.reset();
        const all = await once();
        for (const state of ['ready', 'lost']) this.set({ state }, all.filter((n) => n.state === state).length);
      },
    });
    new client.Gauge({
      name: 'kiln_cluster_node_up', help: '1 while a node is ready, 0 when lost', labelNames: ['node'] as const, registers: [this.registry],
      async collect() {
        this.reset();
        for (const n of await once()) this.set({ node: n.name }, n.state === 'ready' ? 1 : 0);
      },
    });
    new client.Gauge({
      name: 'kiln_cluster_node_capacity',
      help: 'Each node\'s last capacity report: resource (vcpus, memory_mib), kind (capacity, committed)',
      labelNames: ['node', 'resource', 'kind'] as const, registers: [this.registry],
      async collect() {
        this.reset();
        for (const n of await once()) {
          this.set({ node: n.name, resource: 'vcpus', kind: 'capacity' }, n.capacity.vcpus);
          this.set({ node: n.name, resource: 'vcpus', kind: 'committed' }, n.capacity.committedVcpus);
          this.set({ node: n.name, resource: 'memory_mib', kind: 'capacity' }, n.capacity.memoryMib);
          this.set({ node: n.name, resource: 'memory_mib', kind: 'committed' }, n.capacity.committedMemoryMib);
        }
      },
    });
    new client.Gauge({
      name: 'kiln_cluster_node_vms', help: 'VMs on each node (its last capacity report)', labelNames: ['node'] as const, registers: [this.registry],
      async collect() {
        this.reset();
        for (const n of await once()) this.set({ node: n.name }, n.capacity.vms);
      },
    });
    new client.Gauge({
      name: 'kiln_cluster_node_disk_free_bytes', help: 'Free disk of each node\'s state dir (its last capacity report)', labelNames: ['node'] as const, registers: [this.registry],
      async collect() {
        this.reset();
        for (const n of await once()) this.set({ node: n.name }, n.capacity.diskFreeBytes);
      },
    });
    new client.Gauge({
      name: 'kiln_cluster_node_heartbeat_age_seconds', help: 'Time since each node\'s last heartbeat', labelNames: ['node'] as const, registers: [this.registry],
      async collect() {
        this.reset();
        const now = Date.now();
        for (const n of await once()) this.set({ node: n.name }, Math.max(0, (now - n.heartbeatAt) / 1000));
      },
    });
    client.collectDefaultMetrics({ register: this.registry, prefix: 'kiln_process_' });
  }

  /** A request sent to a node: its status, or 'unavailable' when the node did not answer. */
  forward(node: string, method: string, status: number | 'unavailable', ms: number): void {
    this.forwarded.inc({ node, method, status: String(status) });
    if (status !== 'unavailable') this.upstream.observe({ node }, ms / 1000);
  }

  placed(what: string, kind: PlacementKind | 'failed', ms: number): void {
    this.placements.inc({ what, kind });
    this.placementTime.observe(ms / 1000);
  }
}

export function registerApiMetricsRoute(app: FastifyInstance, metrics: ApiMetrics): void {
  app.get('/metrics', async (_req, reply) => {
    void reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
}
