// Function instances by snapshot restore (issue #8): a runtime's template is the runtime
// image booted once with its shim listening, snapshotted at agent-ready; every instance after
// that is a clone of it — own netns, address, hostname, token and RNG seed — whose shim is
// already running. The first instance of a shape boots (and the template is built beside it,
// in the background); restores take over once the template is ready. A failed build or
// restore falls back to booting and is retried later, so functions never depend on it.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { VmRecord } from '../store/store.ts';
import type { VmManager } from '../vm/vm-manager.ts';
import { FUNCTION_VM_PREFIX, connectShim, runtimeEnv, shapeKey, type BlankInstance, type InstanceShape, type InstanceSource } from './instance-source.ts';
import type { RuntimeName } from './runtimes.ts';
import { KIND_LABEL } from '../vm/labels.ts';

/** What this source needs from the snapshot layer (src/snapshot/templates.ts provides it). */
export interface TemplateProvider {
  /** The ready template's snapshot for this image and spec; null if none (never builds). */
  readySnapshot(image: string, spec: TemplateShape): Promise<string | null>;
  /**
   * Builds (or finds) the template; slow: a boot plus a snapshot. `beforeSnapshot` runs on
   * the booted golden VM first.
   */
  build(image: string, spec: TemplateShape, beforeSnapshot: (vmId: string) => Promise<void>): Promise<void>;
  restore(snapshotId: string, input: { name: string; labels?: Record<string, string> }): Promise<VmRecord>;
}

export interface TemplateShape {
  vcpus: number;
  memoryMib: number;
  env: Record<string, string>;
}

/** After a failed template build or restore, boots are used for this long before retrying. */
const RETRY_AFTER_MS = 5 * 60_000;

export class RestoreSource implements InstanceSource {
  private readonly building = new Set<string>();
  private readonly failedUntil = new Map<string, number>();

  constructor(
    private readonly boot: InstanceSource,
    private readonly o: {
      vms: VmManager;
      templates: TemplateProvider;
      runtimeImage: (runtime: RuntimeName) => Promise<string>;
      bootTimeoutMs: number;
      connections: number;
      log: Logger;
    },
  ) {}

  async acquire(runtime: RuntimeName, shape: InstanceShape): Promise<BlankInstance> {
    // A custom runtime image carries kiln's shim in its boot environment: booted every time.
    if (shape.image) return this.boot.acquire(runtime, shape);
    const key = shapeKey(runtime, shape);
    if ((this.failedUntil.get(key) ?? 0) > Date.now()) return this.boot.acquire(runtime, shape);
    const t0 = performance.now();
    const image = await this.o.runtimeImage(runtime);
    const spec: TemplateShape = { vcpus: shape.vcpus, memoryMib: shape.memoryMib, env: runtimeEnv(runtime, shape) };
    const snapshot = await this.o.templates.readySnapshot(image, spec).catch(() => null);
    if (!snapshot) {
      this.buildInBackground(key, image, spec);
      return this.boot.acquire(runtime, shape);
    }
    try {
      return await this.restore(snapshot, runtime, shape, t0);
    } catch (e) {
      this.failedUntil.set(key, Date.now() + RETRY_AFTER_MS);
      this.o.log.warn({ runtime, shape: key, err: (e as Error).message }, 'function instance restore failed; booting instead');
      return this.boot.acquire(runtime, shape);
    }
  }

  destroy(inst: BlankInstance): Promise<void> {
    return this.boot.destroy(inst);
  }

  private buildInBackground(key: string, image: string, spec: TemplateShape): void {
    if (this.building.has(key)) return;
    this.building.add(key);
    const t0 = Date.now();
    // The snapshot is taken once the shim answers: clones resume a listening shim, not a
    // runtime still starting up (seconds of emulated CPU for node under TCG).
    const shimServing = async (vmId: string) => (await connectShim(this.o.vms, vmId, this.o.bootTimeoutMs, 1)).close();
    this.o.templates.build(image, spec, shimServing).then(
      () => this.o.log.info({ shape: key, ms: Date.now() - t0 }, 'function runtime template ready: instances are restored from now on'),
      (e: Error) => {
        this.failedUntil.set(key, Date.now() + RETRY_AFTER_MS);
        this.o.log.warn({ shape: key, err: e.message }, 'function runtime template build failed; instances boot');
      },
    ).finally(() => this.building.delete(key));
  }

  private async restore(snapshotId: string, runtime: RuntimeName, shape: InstanceShape, t0: number): Promise<BlankInstance> {
    const vm = await this.o.templates.restore(snapshotId, {
      name: `${FUNCTION_VM_PREFIX}${runtime}-${randomBytes(4).toString('hex')}`,
      labels: { [KIND_LABEL]: 'function', 'kiln.runtime': runtime },
    });
    try {
      // The shim was listening when the template was taken (see buildInBackground).
      const shim = await connectShim(this.o.vms, vm.id, this.o.bootTimeoutMs, this.o.connections);
      const ms = performance.now() - t0;
      return { vmId: vm.id, ip: shim.ip, runtime, shape, origin: 'restore', made: 'restore', acquireMs: ms, startMs: ms, shim };
    } catch (e) {
      await this.o.vms.delete(vm.id).catch(() => {});
      throw e;
    }
  }
}
