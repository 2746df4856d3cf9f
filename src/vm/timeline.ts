// One provision's timeline: named phases with wall-clock start/end, persisted per boot and
// observed into the phase histogram. Phase names are the provisioning step names.
import { performance } from 'node:perf_hooks';
import type { Metrics } from '../metrics/metrics.ts';
import type { PhaseRecord, Store } from '../store/store.ts';
import { failpoint } from '../util/failpoints.ts';

/** performance.now() is monotonic and sub-ms; anchor it once to the wall clock. */
const ORIGIN = Date.now() - performance.now();
export const preciseNow = (): number => ORIGIN + performance.now();
/** A performance.now() reading (e.g. when the host learnt of a hello) on the same clock. */
export const fromMonotonic = (t: number): number => ORIGIN + t;

export class Timeline {
  private readonly open = new Map<string, number>();
  private readonly ended = new Set<string>();

  constructor(
    private readonly store: Store,
    private readonly metrics: Metrics,
    private readonly vmId: string,
    private readonly boot: number,
    private readonly labels: { backend: string; accelerator: string },
  ) {}

  begin(name: string, at = preciseNow()): void {
    // A phase is measured once per boot: a late marker must not reopen a settled phase.
    if (this.ended.has(name)) return;
    this.open.set(name, at);
  }

  async end(name: string, at = preciseNow()): Promise<void> {
    const startedAt = this.open.get(name);
    if (startedAt === undefined) return;
    this.open.delete(name);
    this.ended.add(name);
    // A signal timestamped before the phase was opened (a hello overtaking its caller) ends it empty.
    at = Math.max(at, startedAt);
    this.metrics.provisionPhase.observe({ phase: name, ...this.labels }, (at - startedAt) / 1000);
    await this.store.recordPhase({ vmId: this.vmId, boot: this.boot, name, startedAt, endedAt: at });
  }

  /**
   * Ends `names` in order at `at`: open ones end, ones never begun are recorded as empty at
   * `at`. For a signal that proves them all over (the agent's hello, which can overtake the
   * console markers the phases are otherwise bounded by).
   */
  async settle(names: readonly string[], at = preciseNow()): Promise<void> {
    for (const name of names) {
      if (this.ended.has(name)) continue;
      if (!this.open.has(name)) this.begin(name, at);
      await this.end(name, at);
    }
  }

  async step<T>(name: string, fn: () => Promise<T>): Promise<T> {
    this.begin(name);
    failpoint(`${name}:before`);
    const out = await fn();
    await this.end(name);
    failpoint(`${name}:after`);
    return out;
  }
}

export function phaseView(p: PhaseRecord) {
  return {
    phase: p.name,
    started_at: new Date(p.startedAt).toISOString(),
    ended_at: p.endedAt === null ? null : new Date(p.endedAt).toISOString(),
    duration_ms: p.endedAt === null ? null : Math.round((p.endedAt - p.startedAt) * 100) / 100,
  };
}
