// Every state change is an event: persisted in the store (so a timeline survives restarts)
// and fanned out to live subscribers (SSE clients, metrics). Retention keeps the table bounded
// however much any VM (or all of them) records: per VM, in total, and by age.
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { EventRecord, Store } from '../store/store.ts';

export interface EventRetention {
  keepPerVm: number;
  keepTotal: number;
  maxAgeMs: number;
}

const AGE_PRUNE_EVERY_MS = 3_600_000;

export class EventBus {
  private readonly emitter = new EventEmitter<{ event: [EventRecord] }>();
  private tail: Promise<unknown> = Promise.resolve();
  /** Appends since each VM's last prune (absent: never pruned since start). */
  private readonly sincePrune = new Map<string, number>();
  private sinceTotalPrune = 0;
  private lastAgePrune = -Infinity;
  private readonly slackPerVm: number;
  private readonly slackTotal: number;

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
    private readonly retention: EventRetention = { keepPerVm: 10_000, keepTotal: 500_000, maxAgeMs: 30 * 86_400_000 },
  ) {
    // SSE clients come and go; many at once is normal, not a leak.
    this.emitter.setMaxListeners(0);
    // Pruning runs every `slack` appends and leaves `keep - slack`, so rows never exceed `keep`.
    this.slackPerVm = Math.max(1, Math.floor(retention.keepPerVm / 10));
    this.slackTotal = Math.max(1, Math.floor(retention.keepTotal / 10));
    this.sinceTotalPrune = this.slackTotal;
  }

  private async prune(vmId: string | null, ts: number): Promise<void> {
    const r = this.retention;
    if (vmId !== null) {
      const n = (this.sincePrune.get(vmId) ?? this.slackPerVm) + 1;
      this.sincePrune.set(vmId, n);
      if (n > this.slackPerVm) {
        this.sincePrune.set(vmId, 1);
        await this.store.pruneEvents({ vmId, keepPerVm: Math.max(0, r.keepPerVm - this.slackPerVm) });
      }
    }
    if (++this.sinceTotalPrune > this.slackTotal) {
      this.sinceTotalPrune = 1;
      await this.store.pruneEvents({ keepTotal: Math.max(0, r.keepTotal - this.slackTotal) });
    }
    if (ts - this.lastAgePrune > AGE_PRUNE_EVERY_MS) {
      this.lastAgePrune = ts;
      await this.store.pruneEvents({ beforeTs: ts - r.maxAgeMs });
    }
  }

  /** Persists and broadcasts in order; never throws into the caller's control flow. */
  publish(type: string, vmId: string | null, data: Record<string, unknown> = {}): void {
    const ts = Date.now();
    this.tail = this.tail
      .then(() => this.prune(vmId, ts))
      .then(() => this.store.appendEvent({ ts, type, vmId, data }))
      .then((rec) => this.emitter.emit('event', rec))
      .catch((e) => this.log.error({ err: e, type }, 'failed to record event'));
  }

  /** Resolves once every event published so far is stored and broadcast. */
  flush(): Promise<void> {
    return this.tail.then(() => undefined);
  }

  subscribe(fn: (e: EventRecord) => void): () => void {
    this.emitter.on('event', fn);
    return () => this.emitter.off('event', fn);
  }
}
