// Where blank runtime instances come from: a booted VM of the runtime's image whose shim
// answers, with no function code loaded yet. `InstanceSource` is the one seam: BootSource
// boots one per call, WarmPool keeps some booted ahead of demand, and a snapshot-restore
// source (issue #8) can take BootSource's place under the pool without the functions layer
// knowing.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { KilnError } from '../errors.ts';
import type { VmManager } from '../vm/vm-manager.ts';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SHIM_PORT, runtimeSpec, type RuntimeName } from './runtimes.ts';
import { ShimClient } from './shim-client.ts';
import { KIND_LABEL } from '../vm/labels.ts';

export interface InstanceShape {
  vcpus: number;
  memoryMib: number;
  /** A custom runtime image (any image with the runtime on PATH); default: kiln's runtime image. */
  image?: string;
}

export type InstanceOrigin = 'pool' | 'boot' | 'restore';

export interface BlankInstance {
  vmId: string;
  ip: string;
  runtime: RuntimeName;
  shape: InstanceShape;
  /** How this instance was obtained, recorded on each invocation it serves cold. */
  origin: InstanceOrigin;
  /** Ms from the acquire() call to a shim that answers. */
  acquireMs: number;
  /** Ms the instance took to come up when it was made (boot or restore), pooled or not. */
  startMs: number;
  /** How its VM was made: booted, or restored from the runtime's template snapshot. */
  made: 'boot' | 'restore';
  shim: ShimClient;
}

export interface InstanceSource {
  /** A blank, booted instance of `runtime` with `shape`; the caller owns it from then on. */
  acquire(runtime: RuntimeName, shape: InstanceShape): Promise<BlankInstance>;
  /** Destroys an instance (its VM is deleted). */
  destroy(inst: BlankInstance): Promise<void>;
}

/** Name prefix of every VM the functions layer owns (kilnd sweeps leftovers at start). */
export const FUNCTION_VM_PREFIX = 'kiln-fn-';

export function shapeKey(runtime: RuntimeName, shape: InstanceShape): string {
  return `${runtime}/${shape.vcpus}cpu/${shape.memoryMib}mib${shape.image ? `/${shape.image}` : ''}`;
}

/**
 * A custom image has the runtime but not kiln's shim: the shim's source travels in the VM's
 * environment (the config drive, not the kernel command line) and a shell writes it out and
 * runs it with the image's own `node` / `python3`.
 */
async function customRuntimeWorkload(runtime: RuntimeName, shape: InstanceShape): Promise<{ cmd: string[]; env: Record<string, string> }> {
  const spec = runtimeSpec(runtime);
  const src = await fs.readFile(fileURLToPath(spec.shimSource), 'utf8');
  const file = `/tmp/kiln-shim${path.extname(spec.shimPath)}`;
  const run = runtime === 'node' ? `exec node ${file}` : `exec python3 -u ${file}`;
  return {
    cmd: ['/bin/sh', '-c', `printf '%s' "$KILN_SHIM_SOURCE" > ${file} && unset KILN_SHIM_SOURCE && ${run}`],
    env: { ...runtimeEnv(runtime, shape), KILN_SHIM_SOURCE: src, KILN_SHIM_PORT: String(SHIM_PORT) },
  };
}

/**
 * Node's old space is capped below the instance's memory (¾ of it minus 64 MiB for the kernel,
 * the runtime and V8's other spaces; 128 MiB → 32, 256 → 128, 512 → 320): a function that
 * exhausts it fails fast with V8's "heap out of memory" instead of the guest thrashing its
 * page cache (under emulation, minutes) before the kernel's OOM killer acts.
 */
export function nodeHeapMib(memoryMib: number): number {
  return Math.max(24, Math.floor(memoryMib * 0.75) - 64);
}

export function runtimeEnv(runtime: RuntimeName, shape: InstanceShape): Record<string, string> {
  return runtime === 'node' ? { NODE_OPTIONS: `--max-old-space-size=${nodeHeapMib(shape.memoryMib)}` } : {};
}

/** Where the shims read their per-instance key (src/functions/shims/*). */
export const SHIM_KEY_PATH = '/run/kiln/shim.key';

/**
 * Waits for a new instance's VM to be ready, gives its shim a fresh key through the guest
 * agent (whose sessions only open to a guest that proved it holds the VM's token: a restored
 * clone gets its own key, not its template's), waits for the shim to answer (the VM going
 * away ends the wait), and returns the shim's client.
 */
export async function connectShim(vms: VmManager, vmId: string, timeoutMs: number, connections: number): Promise<ShimClient> {
  const deadline = Date.now() + timeoutMs;
  const vm = await vms.waitFor(vmId, ['ready'], timeoutMs);
  if (!vm.ip) throw new KilnError('KILN_ERR_RUNTIME_UNAVAILABLE', `${vmId} has no address on kiln's network`);
  const key = randomBytes(32).toString('hex');
  // 0644: whatever user the runtime runs as must read it; inside the instance only the
  // function's own code runs, and the key guards the shim's port against everyone outside.
  await (await vms.agent(vmId)).put(SHIM_KEY_PATH, Buffer.from(key), { mode: 0o644, mkdirs: true, timeoutMs: Math.max(1000, deadline - Date.now()) });
  const shim = new ShimClient(vm.ip, SHIM_PORT, connections, key);
  try {
    await shim.waitHealthy(deadline, async () => (await vms.get(vmId).catch(() => null))?.state === 'ready');
    return shim;
  } catch (e) {
    await shim.close();
    throw e;
  }
}

/** Boots a VM of the runtime image per acquire(). */
export class BootSource implements InstanceSource {
  constructor(
    private readonly o: {
      vms: VmManager;
      /** The runtime's image name (built from its recipe on first use). */
      runtimeImage: (runtime: RuntimeName) => Promise<string>;
      bootTimeoutMs: number;
      /** Connections per instance to its shim: the function's concurrency. */
      connections: number;
      log: Logger;
    },
  ) {}

  async acquire(runtime: RuntimeName, shape: InstanceShape): Promise<BlankInstance> {
    const t0 = performance.now();
    const image = shape.image ?? (await this.o.runtimeImage(runtime));
    const vm = await this.o.vms.create({
      name: `${FUNCTION_VM_PREFIX}${runtime}-${randomBytes(4).toString('hex')}`,
      image,
      vcpus: shape.vcpus,
      memory_mib: shape.memoryMib,
      network: 'bridge',
      labels: { [KIND_LABEL]: 'function', 'kiln.runtime': runtime },
      ...(shape.image ? await customRuntimeWorkload(runtime, shape) : { env: runtimeEnv(runtime, shape) }),
    });
    try {
      const shim = await connectShim(this.o.vms, vm.id, this.o.bootTimeoutMs, this.o.connections);
      const ms = performance.now() - t0;
      return { vmId: vm.id, ip: vm.ip!, runtime, shape, origin: 'boot', made: 'boot', acquireMs: ms, startMs: ms, shim };
    } catch (e) {
      await this.o.vms.delete(vm.id).catch(() => {});
      const ke = e instanceof KilnError ? e : new KilnError('KILN_ERR_RUNTIME_UNAVAILABLE', (e as Error).message);
      throw new KilnError('KILN_ERR_RUNTIME_UNAVAILABLE', `a ${runtime} instance did not come up: ${ke.message}`, { vm: vm.id, cause: ke.code });
    }
  }

  async destroy(inst: BlankInstance): Promise<void> {
    await inst.shim.close();
    await this.o.vms.delete(inst.vmId).catch((e: unknown) => {
      if ((e as KilnError).code !== 'KILN_ERR_VM_NOT_FOUND') throw e;
    });
  }
}

interface PoolEntry {
  ready: BlankInstance[];
  filling: number;
  /** Calls waiting for a refill already under way (sooner than a boot of their own). */
  waiters: { resolve: (i: BlankInstance) => void; reject: (e: Error) => void }[];
  runtime: RuntimeName;
  shape: InstanceShape;
}

/**
 * Keeps `size` blank instances per shape that has been asked for (a shape is warmed when a
 * function with it is deployed). A hit hands one out and refills in the background; a miss
 * falls through to the inner source. Refills run one at a time: they share the CPU with
 * the calls they are meant to speed up.
 */
export class WarmPool implements InstanceSource {
  private readonly pools = new Map<string, PoolEntry>();
  private chain: Promise<void> = Promise.resolve();
  private closed = false;
  readonly stats = { hits: 0, misses: 0 };

  constructor(
    private readonly inner: InstanceSource,
    private size: number,
    private readonly o: {
      alive: (inst: BlankInstance) => Promise<boolean>;
      log: Logger;
      onChange?: () => void;
    },
  ) {}

  get targetSize(): number {
    return this.size;
  }

  /** Starts keeping `size` warm instances of this shape. */
  warm(runtime: RuntimeName, shape: InstanceShape): void {
    this.entry(runtime, shape);
    this.fill(shapeKey(runtime, shape));
  }

  /** Stops keeping instances of this shape (no function uses it any more); deletes those it holds. */
  async forget(runtime: RuntimeName, shape: InstanceShape): Promise<void> {
    const key = shapeKey(runtime, shape);
    const p = this.pools.get(key);
    if (!p || p.waiters.length || p.filling) return;
    this.pools.delete(key);
    for (const inst of p.ready.splice(0)) await this.inner.destroy(inst).catch(() => {});
  }

  /** What the pool holds now (GET /v1/functions/pool, metrics). */
  describe(): { runtime: RuntimeName; vcpus: number; memory_mib: number; ready: number; filling: number; target: number }[] {
    return [...this.pools.values()].map((p) => ({ runtime: p.runtime, vcpus: p.shape.vcpus, memory_mib: p.shape.memoryMib, ready: p.ready.length, filling: p.filling, target: this.size }));
  }

  async acquire(runtime: RuntimeName, shape: InstanceShape): Promise<BlankInstance> {
    const t0 = performance.now();
    const key = shapeKey(runtime, shape);
    const p = this.entry(runtime, shape);
    while (p.ready.length) {
      const inst = p.ready.shift()!;
      this.o.onChange?.();
      if (await this.o.alive(inst)) {
        this.stats.hits++;
        this.fill(key);
        return { ...inst, origin: 'pool', acquireMs: performance.now() - t0 };
      }
      this.o.log.warn({ vm: inst.vmId }, 'pooled function instance died while idle; discarded');
      void this.inner.destroy(inst).catch(() => {});
    }
    if (p.filling > p.waiters.length) {
      // A refill is booting this shape right now: it is ready sooner than a new boot.
      const inst = await new Promise<BlankInstance>((resolve, reject) => p.waiters.push({ resolve, reject }));
      this.stats.hits++;
      this.fill(key);
      return { ...inst, origin: 'pool', acquireMs: performance.now() - t0 };
    }
    this.stats.misses++;
    try {
      return await this.inner.acquire(runtime, shape);
    } finally {
      this.fill(key);
    }
  }

  destroy(inst: BlankInstance): Promise<void> {
    return this.inner.destroy(inst);
  }

  /** Stops refilling; pooled VMs are deleted (`drain`) or left to the next start's sweep. */
  async close(drain: boolean): Promise<void> {
    this.closed = true;
    for (const p of this.pools.values()) {
      for (const w of p.waiters.splice(0)) w.reject(new KilnError('KILN_ERR_SHUTTING_DOWN', 'kilnd is shutting down'));
    }
    // Not waiting for a refill under way: its VM outlives kilnd and the next start sweeps it.
    if (!drain) return;
    await this.chain;
    for (const p of this.pools.values()) {
      for (const inst of p.ready.splice(0)) await this.inner.destroy(inst).catch(() => {});
    }
  }

  private entry(runtime: RuntimeName, shape: InstanceShape): PoolEntry {
    const key = shapeKey(runtime, shape);
    let p = this.pools.get(key);
    if (!p) {
      p = { ready: [], filling: 0, waiters: [], runtime, shape: { ...shape } };
      this.pools.set(key, p);
    }
    return p;
  }

  private fill(key: string): void {
    const p = this.pools.get(key);
    if (!p || this.closed) return;
    while (p.ready.length + p.filling < this.size) {
      p.filling++;
      this.o.onChange?.();
      this.chain = this.chain.then(async () => {
        try {
          if (this.closed) return;
          const inst = await this.inner.acquire(p.runtime, p.shape);
          if (this.closed) await this.inner.destroy(inst);
          else if (p.waiters.length) p.waiters.shift()!.resolve(inst);
          else p.ready.push(inst);
        } catch (e) {
          // At capacity the pool stays smaller: it never pushes the host past admission control.
          if ((e as KilnError).code === 'KILN_ERR_CAPACITY') this.o.log.warn({ pool: key, reason: (e as Error).message }, 'warm pool not refilled: host at capacity');
          else this.o.log.error({ err: e, pool: key }, 'warm pool refill failed');
          p.waiters.shift()?.reject(e as Error);
        } finally {
          p.filling--;
          this.o.onChange?.();
        }
      });
    }
  }
}
