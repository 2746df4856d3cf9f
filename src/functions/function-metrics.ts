// Prometheus metrics of functions, registered on the daemon's registry.
import client from 'prom-client';
import type { Metrics } from '../metrics/metrics.ts';
import type { InvocationRecord } from '../store/function-store.ts';
import type { FunctionService } from './function-service.ts';
import type { InstanceOrigin } from './instance-source.ts';

export class FunctionMetrics {
  private service: FunctionService | null = null;
  readonly invokeSeconds: client.Histogram<'runtime' | 'start' | 'status'>;
  readonly hostOverheadSeconds: client.Histogram<'runtime'>;
  readonly pool: client.Counter<'runtime' | 'result'>;
  readonly throttles: client.Counter<'runtime'>;

  constructor(metrics: Metrics) {
    const registers = [metrics.registry];
    this.invokeSeconds = new client.Histogram({
      name: 'kiln_function_invoke_seconds',
      help: 'Invocation duration as kilnd saw it (queue, instance start, load, call), by start (cold|warm) and status',
      labelNames: ['runtime', 'start', 'status'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.hostOverheadSeconds = new client.Histogram({
      name: 'kiln_function_host_overhead_seconds',
      help: 'Warm invocations: total minus the handler time the guest measured',
      labelNames: ['runtime'] as const,
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1],
      registers,
    });
    this.pool = new client.Counter({
      name: 'kiln_function_pool_total',
      help: 'Instance starts by where the VM came from: hit (warm pool), miss (boot), restore',
      labelNames: ['runtime', 'result'] as const,
      registers,
    });
    this.throttles = new client.Counter({
      name: 'kiln_function_throttled_total',
      help: 'Invocations refused with 429 (max_instances busy, queue full)',
      labelNames: ['runtime'] as const,
      registers,
    });
    const self = this;
    new client.Gauge({
      name: 'kiln_function_instances',
      help: 'Function instances by state (starting, ready, stopping), and blank instances in the warm pool (pooled)',
      labelNames: ['runtime', 'state'] as const,
      registers,
      collect() {
        this.reset();
        const s = self.service;
        if (!s) return;
        for (const e of s.list()) {
          for (const m of e.scheduler.snapshot().instances) this.inc({ runtime: e.current.runtime, state: m.state });
        }
        for (const p of s.pool.describe()) this.inc({ runtime: p.runtime, state: 'pooled' }, p.ready);
      },
    });
  }

  observe(service: FunctionService): void {
    this.service = service;
  }

  poolResult(runtime: string, origin: InstanceOrigin): void {
    this.pool.inc({ runtime, result: origin === 'pool' ? 'hit' : origin === 'boot' ? 'miss' : origin });
  }

  throttled(runtime: string): void {
    this.throttles.inc({ runtime });
  }

  invoked(runtime: string, inv: InvocationRecord): void {
    const seconds = (inv.durationMs ?? 0) / 1000;
    this.invokeSeconds.observe({ runtime, start: inv.cold ? 'cold' : 'warm', status: inv.status }, seconds);
    if (!inv.cold && inv.guestMs !== null && inv.durationMs !== null) this.hostOverheadSeconds.observe({ runtime }, Math.max(0, inv.durationMs - inv.guestMs) / 1000);
  }
}
