// Every state change is an event: persisted in the store (so a timeline survives restarts)
// and fanned out to live subscribers (SSE clients, metrics).
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { EventRecord, Store } from '../store/store.ts';

export class EventBus {
  private readonly emitter = new EventEmitter<{ event: [EventRecord] }>();
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
  ) {
    // SSE clients come and go; many at once is normal, not a leak.
    this.emitter.setMaxListeners(0);
  }

  /** Persists and broadcasts in order; never throws into the caller's control flow. */
  publish(type: string, vmId: string | null, data: Record<string, unknown> = {}): void {
    const ts = Date.now();
    this.tail = this.tail
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
