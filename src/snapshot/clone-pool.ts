// A pool of clones restored ahead of demand, per snapshot: each is a real VM (its namespace,
// drives, VMM, address, rules and admission share are all made and owned like any VM's),
// restored, given an identity, warmed up and paused, under a name no API call can give
// (POOLED_PREFIX). A create that asks for a clone of that snapshot with nothing the pool
// cannot give (its own egress policy) takes one: VmManager.adopt resumes it and sends the
// identity op, one round trip, so the create spends its time only on what is its own.
//
// Why whole VMs and not pieces (namespaces, drives, a VMM in `-incoming defer`): under TCG
// the guest's first request after a restore costs 150–400 ms of translation warm-up, more
// than every host-side step together; only a clone that has run holds a warm translation
// cache. On KVM the same pool takes the VMM start and state load off the path as well.
//
// Bounded: at most `size` per snapshot, refilled one restore at a time in the background once
// the takes have gone quiet (REFILL_QUIET_MS after the last one: a burst of creates is not
// slowed by restores competing with it for the CPU), each refill admitted like any create (a full host gets no refill: the pool shrinks, the
// host does not overcommit). A kilnd crash leaves pooled VMs that reconcile re-attaches and
// sweep() then deletes; delete of the snapshot or its template drains its pool first.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import client from 'prom-client';
import type { Metrics } from '../metrics/metrics.ts';
import type { Store, VmRecord } from '../store/store.ts';
import { POOLED_PREFIX, isPooled, type VmManager } from '../vm/vm-manager.ts';

/** A refill starts this long after the last take of its snapshot finished. */
export const REFILL_QUIET_MS = 250;

export interface PoolRequest {
  name?: string;
  env: Record<string, string>;
  labels?: Record<string, string>;
  /** A request with its own egress policy is not served from the pool (pooled clones have the default). */
  customEgress: boolean;
}

export interface ClonePoolReport {
  size: number;
  ready: number;
  filling: number;
  hits: number;
  misses: number;
  refills: number;
  refill_failures: number;
  by_snapshot: { snapshot: string; ready: number }[];
}

export class ClonePool {
  readonly #ready = new Map<string, string[]>();
  readonly #filling = new Map<string, Promise<void>>();
  readonly #warmers = new Map<string, (vmId: string) => Promise<void>>();
  /** Takes in progress per snapshot, and the refill each quiet period will start. */
  readonly #taking = new Map<string, number>();
  readonly #quiet = new Map<string, NodeJS.Timeout>();
  #closed = false;
  #stats = { hits: 0, misses: 0, refills: 0, refill_failures: 0 };
  readonly #counter: client.Counter<'event'>;

  constructor(
    private readonly deps: {
      /** Clones per snapshot (0: no pool). */
      size: number;
      vms: VmManager;
      store: Store;
      log: Logger;
      metrics: Metrics;
      /** A clone of `snapshotId` the slow way (the pool's refill, and a miss). */
      restore: (snapshotId: string, name: string) => Promise<VmRecord>;
    },
  ) {
    const report = () => this.report();
    this.#counter = new client.Counter({ name: 'kiln_clone_pool_total', help: 'Clone pool: creates served (hit), not served (miss), clones restored into it (refill) and refills that failed', labelNames: ['event'] as const, registers: [deps.metrics.registry] });
    new client.Gauge({
      name: 'kiln_clone_pool_clones',
      help: 'Clone pool: pooled clones ready and being restored, and the configured size per snapshot',
      labelNames: ['kind'] as const,
      registers: [deps.metrics.registry],
      collect() {
        const r = report();
        this.set({ kind: 'ready' }, r.ready);
        this.set({ kind: 'filling' }, r.filling);
        this.set({ kind: 'size' }, r.size);
      },
    });
  }

  get size(): number {
    return this.deps.size;
  }

  /**
   * What a pooled clone of `snapshotId` runs before it is paused, beyond the agent round
   * trip: the first thing whoever takes it will run (an E2B sandbox's login shell, for
   * instance). Under TCG a restored VM's emulator has translated none of the guest's code
   * yet, and that first run is the slow part of a create served by the pool; run in the
   * clone itself, its translations are there when the taker's own run comes.
   */
  warmWith(snapshotId: string, warm: (vmId: string) => Promise<void>): void {
    this.#warmers.set(snapshotId, warm);
  }

  /**
   * A pooled clone of `snapshotId` made the caller's VM, or null (a miss: the caller restores
   * one itself). Either way the pool is refilled for next time.
   */
  async take(snapshotId: string, req: PoolRequest): Promise<VmRecord | null> {
    if (this.deps.size <= 0) return null;
    const ids = this.#ready.get(snapshotId) ?? [];
    const id = req.customEgress ? undefined : ids.shift();
    if (!id) {
      this.refillWhenQuiet(snapshotId);
      return this.count('misses');
    }
    this.#taking.set(snapshotId, (this.#taking.get(snapshotId) ?? 0) + 1);
    clearTimeout(this.#quiet.get(snapshotId));
    try {
      const vm = await this.deps.vms.adopt(id, { ...(req.name ? { name: req.name } : {}), env: req.env, ...(req.labels ? { labels: req.labels } : {}) });
      this.count('hits');
      return vm;
    } catch (e) {
      this.deps.log.warn({ vm: id, snapshot: snapshotId, err: (e as Error).message }, 'a pooled clone could not be taken: restoring one instead');
      await this.deps.vms.delete(id).catch(() => {});
      return this.count('misses');
    } finally {
      this.#taking.set(snapshotId, this.#taking.get(snapshotId)! - 1);
      this.refillWhenQuiet(snapshotId);
    }
  }

  /**
   * A refill is a whole restore (a VMM start, a guest's first run) and would compete for the
   * CPU with the takes it follows: it starts once no take of this snapshot has been running
   * for REFILL_QUIET_MS, so ten creates at once are all served before the pool refills.
   */
  private refillWhenQuiet(snapshotId: string): void {
    if (this.#closed || (this.#taking.get(snapshotId) ?? 0) > 0) return;
    clearTimeout(this.#quiet.get(snapshotId));
    const t = setTimeout(() => {
      this.#quiet.delete(snapshotId);
      if ((this.#taking.get(snapshotId) ?? 0) === 0) this.refill(snapshotId);
    }, REFILL_QUIET_MS);
    t.unref();
    this.#quiet.set(snapshotId, t);
  }

  private count(what: 'hits' | 'misses'): null {
    this.#stats[what]++;
    this.#counter.inc({ event: what === 'hits' ? 'hit' : 'miss' });
    return null;
  }

  /** Starts filling the pool of `snapshotId` up to its size, one clone at a time, unless it is filling already. */
  refill(snapshotId: string): void {
    if (this.deps.size <= 0 || this.#closed || this.#filling.has(snapshotId)) return;
    const run = this.fill(snapshotId).finally(() => this.#filling.delete(snapshotId));
    this.#filling.set(snapshotId, run);
  }

  private async fill(snapshotId: string): Promise<void> {
    while (!this.#closed && (this.#ready.get(snapshotId)?.length ?? 0) < this.deps.size) {
      let vm: VmRecord | null = null;
      try {
        vm = await this.deps.restore(snapshotId, `${POOLED_PREFIX}${snapshotId}.${randomBytes(4).toString('hex')}`);
        await this.deps.vms.waitFor(vm.id, ['ready'], 120_000);
        // The session path's first use after a restore is the slow one (TCG's translation
        // cache is empty): spent here, not on the create that takes this clone.
        await (await this.deps.vms.agent(vm.id)).status({ timeoutMs: 10_000 });
        const warm = this.#warmers.get(snapshotId);
        if (warm) await warm(vm.id).catch((e) => this.deps.log.info({ vm: vm!.id, err: (e as Error).message }, 'pooled clone warm-up skipped'));
        await this.deps.vms.pause(vm.id);
        if (this.#closed) throw new Error('the pool is closing');
        this.#ready.set(snapshotId, [...(this.#ready.get(snapshotId) ?? []), vm.id]);
        this.#stats.refills++;
        this.#counter.inc({ event: 'refill' });
      } catch (e) {
        this.#stats.refill_failures++;
        this.#counter.inc({ event: 'refill_failure' });
        if (vm) await this.deps.vms.delete(vm.id).catch(() => {});
        // Capacity, a deleted snapshot, a guest that did not come up: stop; the next take retries.
        this.deps.log.warn({ snapshot: snapshotId, err: (e as Error).message }, 'clone pool refill stopped');
        return;
      }
    }
  }

  /** Deletes the pooled clones of `snapshotId` (all snapshots when omitted): their snapshot is going away, or kilnd is. */
  async drain(snapshotId?: string): Promise<void> {
    const keys = snapshotId ? [snapshotId] : [...this.#ready.keys()];
    for (const k of keys) {
      clearTimeout(this.#quiet.get(k));
      this.#quiet.delete(k);
    }
    for (const k of keys) await this.#filling.get(k)?.catch(() => {});
    for (const k of keys) {
      const ids = this.#ready.get(k) ?? [];
      this.#ready.delete(k);
      for (const id of ids) await this.deps.vms.delete(id).catch((e) => this.deps.log.error({ vm: id, err: e }, 'deleting a pooled clone failed'));
    }
  }

  /**
   * Start-up: pooled clones a previous kilnd left (re-attached by reconcile, or failed) are
   * deleted; the pool refills on demand.
   */
  async sweep(): Promise<void> {
    for (const vm of await this.deps.store.listVms()) {
      if (!isPooled(vm)) continue;
      this.deps.log.warn({ vm: vm.id, state: vm.state }, 'deleting a pooled clone a previous kilnd left');
      await this.deps.vms.delete(vm.id).catch((e) => this.deps.log.error({ vm: vm.id, err: e }, 'deleting a leftover pooled clone failed'));
    }
  }

  /** kilnd stops: no new refills; the pooled VMs stay (like every VM) and the next start sweeps them. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const t of this.#quiet.values()) clearTimeout(t);
    this.#quiet.clear();
    await Promise.allSettled(this.#filling.values());
  }

  report(): ClonePoolReport {
    const by = [...this.#ready.entries()].map(([snapshot, ids]) => ({ snapshot, ready: ids.length }));
    return { size: this.deps.size, ready: by.reduce((n, b) => n + b.ready, 0), filling: this.#filling.size, ...this.#stats, by_snapshot: by };
  }
}
