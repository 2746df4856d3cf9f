// Prometheus metrics, one registry per daemon (tests run several daemons in one process).
import client from 'prom-client';

export class Metrics {
  readonly registry = new client.Registry();
  readonly provisionPhase = new client.Histogram({
    name: 'kiln_provision_phase_seconds',
    help: 'Duration of each provisioning phase (timeline step), by phase and backend',
    labelNames: ['phase', 'backend', 'accelerator'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly provisionTotal = new client.Histogram({
    name: 'kiln_provision_seconds',
    help: 'Request to ready, per VM boot',
    labelNames: ['backend', 'accelerator'] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128],
    registers: [this.registry],
  });
  readonly vmTransitions = new client.Counter({
    name: 'kiln_vm_transitions_total',
    help: 'VM lifecycle transitions, by target state',
    labelNames: ['to'] as const,
    registers: [this.registry],
  });
  readonly vmmExits = new client.Counter({
    name: 'kiln_vmm_unexpected_exits_total',
    help: 'VMM processes that exited without being asked to',
    registers: [this.registry],
  });
  readonly vms: client.Gauge<'state'>;

  constructor(countByState: () => Promise<Record<string, number>>) {
    this.vms = new client.Gauge({
      name: 'kiln_vms',
      help: 'VMs by lifecycle state',
      labelNames: ['state'] as const,
      registers: [this.registry],
      async collect() {
        this.reset();
        for (const [state, n] of Object.entries(await countByState())) this.set({ state }, n);
      },
    });
    client.collectDefaultMetrics({ register: this.registry, prefix: 'kiln_process_' });
  }

  /** Admission control's ledger as gauges: committed and capacity, per resource. */
  trackCapacity(report: () => Promise<{ vcpus: { committed: number; capacity: number }; memory_mib: { committed: number; capacity: number } }>): void {
    new client.Gauge({
      name: 'kiln_capacity',
      help: 'Committed and total capacity for VMs (admission control), by resource (vcpus, memory_mib) and kind (committed, capacity)',
      labelNames: ['resource', 'kind'] as const,
      registers: [this.registry],
      async collect() {
        const r = await report();
        for (const resource of ['vcpus', 'memory_mib'] as const) {
          this.set({ resource, kind: 'committed' }, r[resource].committed);
          this.set({ resource, kind: 'capacity' }, r[resource].capacity);
        }
      },
    });
  }
}
