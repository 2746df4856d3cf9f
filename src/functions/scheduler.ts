// Per-function placement of calls on instances: reuse a warm instance with a free slot,
// start one while under max_instances, queue (bounded) otherwise, 429 past the bound.
// Instances of an older version take no new calls: they finish what they run and are then
// stopped. Idle instances above min_instances are stopped after idle_timeout (scale to zero).
// The instance layer (start: acquire a VM and load the code; stop: delete it) is injected,
// which keeps this logic free of VMs and unit-testable.
import { KilnError } from '../errors.ts';

export interface SchedulerLimits {
  maxInstances: number;
  concurrency: number;
  queueSize: number;
  idleTimeoutMs: number;
  minInstances: number;
}

export interface InstanceLayer<I> {
  /** Starts an instance running `version` (acquire a blank VM, load the code). */
  start(version: number): Promise<I>;
  /** Stops it for good (its VM is deleted). */
  stop(instance: I, why: string): Promise<void>;
}

export interface Managed<I> {
  readonly seq: number;
  readonly version: number;
  /** null while starting. */
  instance: I | null;
  state: 'starting' | 'ready' | 'stopping';
  inflight: number;
  lastUsed: number;
}

export interface Slot<I> {
  readonly instance: I;
  readonly managed: Managed<I>;
  /** The instance was started for this call. */
  readonly cold: boolean;
  /** Ms the call waited in the queue (0 if it never queued). */
  readonly queuedMs: number;
  /** 'retire': the instance is unusable (timed out, crashed, out of memory): stop it. */
  release(outcome?: 'ok' | 'retire'): void;
}

interface Waiter<I> {
  resolve: (s: Slot<I>) => void;
  reject: (e: Error) => void;
  since: number;
}

export class FunctionScheduler<I> {
  private readonly instances: Managed<I>[] = [];
  private readonly queue: Waiter<I>[] = [];
  private seq = 0;
  private closed = false;

  constructor(
    private readonly name: string,
    private readonly layer: InstanceLayer<I>,
    private version: number,
    private limits: SchedulerLimits,
    private readonly onError: (e: unknown, what: string) => void = () => {},
    private readonly now: () => number = Date.now,
  ) {}

  get currentVersion(): number {
    return this.version;
  }

  snapshot(): { instances: Managed<I>[]; queued: number } {
    return { instances: [...this.instances], queued: this.queue.length };
  }

  /** A new version: calls from now on run it; older instances drain and stop. */
  setVersion(version: number, limits: SchedulerLimits): void {
    this.version = version;
    this.limits = limits;
    for (const m of [...this.instances]) if (m.version !== version && m.state === 'ready' && m.inflight === 0) this.retire(m, 'replaced by a new version');
    this.ensureMin();
    this.pump();
  }

  /** A slot on an instance of the current version; throws KILN_ERR_FUNCTION_THROTTLED when full. */
  acquire(): Promise<Slot<I>> {
    if (this.closed) return Promise.reject(new KilnError('KILN_ERR_FUNCTION_NOT_FOUND', `function ${this.name} was deleted`));
    if (this.queue.length === 0) {
      const free = this.freeInstance();
      if (free) return Promise.resolve(this.take(free, false, 0));
      if (this.instances.length < this.limits.maxInstances) return this.startFor(this.now());
    }
    if (this.queue.length >= this.limits.queueSize) {
      return Promise.reject(new KilnError('KILN_ERR_FUNCTION_THROTTLED', `function ${this.name}: all ${this.limits.maxInstances} instances are busy and ${this.queue.length} calls are queued (queue_size ${this.limits.queueSize})`, {
        max_instances: this.limits.maxInstances, queue_size: this.limits.queueSize,
      }));
    }
    return new Promise((resolve, reject) => this.queue.push({ resolve, reject, since: this.now() }));
  }

  /** Stops idle instances past idle_timeout, keeping min_instances of the current version. */
  reap(): void {
    const now = this.now();
    const idle = this.instances
      .filter((m) => m.state === 'ready' && m.inflight === 0 && now - m.lastUsed >= this.limits.idleTimeoutMs)
      .sort((a, b) => a.lastUsed - b.lastUsed);
    let keep = this.instances.filter((m) => m.version === this.version && m.state !== 'stopping').length - this.limits.minInstances;
    for (const m of idle) {
      if (m.version === this.version && keep <= 0) continue;
      if (m.version === this.version) keep--;
      this.retire(m, `idle for ${Math.round((now - m.lastUsed) / 1000)} s (idle_timeout ${this.limits.idleTimeoutMs / 1000} s)`);
    }
  }

  /** Deleting the function: queued calls fail, every instance stops (in-flight calls end). */
  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.queue.splice(0)) w.reject(new KilnError('KILN_ERR_FUNCTION_NOT_FOUND', `function ${this.name} was deleted`));
    await Promise.all(this.instances.filter((m) => m.state === 'ready').map((m) => this.retire(m, 'function deleted')));
  }

  /**
   * Every instance died at once (its node fenced its VMs, src/cluster/node-member.ts): each is
   * retired (its VM removed); calls from now on start new ones, min_instances is restored.
   */
  async retireAll(why: string): Promise<void> {
    await Promise.all(this.instances.filter((m) => m.state === 'ready').map((m) => this.retire(m, why)));
    this.ensureMin();
  }

  private freeInstance(): Managed<I> | undefined {
    // The least loaded ready instance of the current version (spreads calls at concurrency > 1).
    let best: Managed<I> | undefined;
    for (const m of this.instances) {
      if (m.state !== 'ready' || m.version !== this.version || m.inflight >= this.limits.concurrency) continue;
      if (!best || m.inflight < best.inflight) best = m;
    }
    return best;
  }

  private take(m: Managed<I>, cold: boolean, queuedMs: number): Slot<I> {
    m.inflight++;
    m.lastUsed = this.now();
    let released = false;
    return {
      instance: m.instance!,
      managed: m,
      cold,
      queuedMs,
      release: (outcome = 'ok') => {
        if (released) return;
        released = true;
        m.inflight--;
        m.lastUsed = this.now();
        if (outcome === 'retire') this.retire(m, 'instance unusable after this call');
        else if ((m.version !== this.version || this.closed) && m.inflight === 0) this.retire(m, this.closed ? 'function deleted' : 'replaced by a new version');
        this.pump();
      },
    };
  }

  /** Starts an instance for one call (that call is cold); other calls use it once it is warm. */
  private startFor(since: number): Promise<Slot<I>> {
    const began = this.now();
    const m: Managed<I> = { seq: ++this.seq, version: this.version, instance: null, state: 'starting', inflight: 0, lastUsed: this.now() };
    this.instances.push(m);
    return this.layer.start(m.version).then(
      (inst) => {
        m.instance = inst;
        if (this.closed) {
          this.remove(m);
          void this.layer.stop(inst, 'function deleted').catch((e) => this.onError(e, 'stop'));
          throw new KilnError('KILN_ERR_FUNCTION_NOT_FOUND', `function ${this.name} was deleted`);
        }
        m.state = 'ready';
        return this.take(m, true, began - since);
      },
      (e: unknown) => {
        this.remove(m);
        // The slot it would have had may serve the next queued call (or fail it the same way).
        queueMicrotask(() => this.pump());
        throw e;
      },
    );
  }

  /** Keeps min_instances of the current version running (started in the background). */
  private ensureMin(): void {
    const have = this.instances.filter((m) => m.version === this.version && m.state !== 'stopping').length;
    for (let i = have; i < this.limits.minInstances && this.instances.length < this.limits.maxInstances; i++) {
      this.startFor(this.now()).then((slot) => slot.release(), (e) => this.onError(e, 'min_instances start'));
    }
  }

  ensureMinInstances(): void {
    this.ensureMin();
  }

  private pump(): void {
    while (this.queue.length) {
      const free = this.freeInstance();
      if (free) {
        const w = this.queue.shift()!;
        w.resolve(this.take(free, false, this.now() - w.since));
        continue;
      }
      if (this.instances.length < this.limits.maxInstances) {
        const w = this.queue.shift()!;
        this.startFor(w.since).then(w.resolve, w.reject);
        continue;
      }
      // At the cap: an idle instance of an old version makes room for a current one.
      const old = this.instances.find((m) => m.state === 'ready' && m.version !== this.version && m.inflight === 0);
      if (old) {
        this.retire(old, 'replaced by a new version');
        continue;
      }
      break;
    }
  }

  private retire(m: Managed<I>, why: string): Promise<void> {
    if (m.state === 'stopping') return Promise.resolve();
    m.state = 'stopping';
    // It counts against max_instances until its VM is gone.
    const inst = m.instance;
    const stopped = inst ? this.layer.stop(inst, why).catch((e) => this.onError(e, 'stop')) : Promise.resolve();
    return stopped.finally(() => {
      this.remove(m);
      this.pump();
    });
  }

  private remove(m: Managed<I>): void {
    const i = this.instances.indexOf(m);
    if (i >= 0) this.instances.splice(i, 1);
  }
}
