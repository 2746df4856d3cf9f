// Templates: one golden snapshot per (image, vcpus, memory) and guest build. The golden VM
// boots once with its RAM in a shared memory file, reaches agent-ready, is snapshotted in
// 'mapped' mode (only device state is written; its RAM file becomes the snapshot's memory)
// and is destroyed without ever running again. Clones map that memory privately: restore
// reads almost nothing, and unwritten pages stay shared between all clones.
//
// A template is keyed by everything its snapshot depends on (image digest, kernel,
// initramfs/kiln-init, backend and VMM version, accelerator, size): when any of them changes
// the key changes, and the next ensure() builds a new one (the old one is removed once no
// clone runs from it).
//
// In a cluster the snapshot's files are on the node that built it, so the key includes the
// node: each node builds its own template of an image (from its own copy of the image's
// file, fetched from a peer if it had none) and never clones, supersedes or fails another's.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { KilnConfig } from '../config.ts';
import { KilnError } from '../errors.ts';
import type { EventBus } from '../events/event-bus.ts';
import type { ImageService } from '../image/image-service.ts';
import type { ImageRecord, Store, TemplateRecord, VmRecord } from '../store/store.ts';
import { KeyedLock } from '../util/keyed-lock.ts';
import type { VmManager } from '../vm/vm-manager.ts';
import type { RestoreInput, SnapshotService } from './snapshot-service.ts';
import { KIND_LABEL } from '../vm/labels.ts';

export interface TemplateSpec {
  vcpus?: number;
  memoryMib?: number;
  /**
   * The golden VM's environment (its workload starts with it, and clones continue that very
   * process): part of the template's key. E.g. a function runtime's heap cap.
   */
  env?: Record<string, string>;
}

export interface BuildOptions {
  /** Runs on the golden VM once it is ready, before the snapshot (not part of the key). */
  beforeSnapshot?: (golden: VmRecord) => Promise<void>;
}

export const DEFAULT_TEMPLATE_VCPUS = 1;
export const DEFAULT_TEMPLATE_MEMORY_MIB = 256;

export class TemplateService {
  readonly #lock = new KeyedLock();

  constructor(
    private readonly deps: {
      config: KilnConfig;
      store: Store;
      vms: VmManager;
      images: ImageService;
      snapshots: SnapshotService;
      bus: EventBus;
      log: Logger;
      /** The cluster node this kilnd is (null or absent on a single host): part of every key. */
      nodeId?: string | null;
    },
  ) {}

  /** Whether the template's snapshot files are on this node (on a single host: always). */
  private async isOwn(t: TemplateRecord): Promise<boolean> {
    if (!this.deps.nodeId) return true;
    if (!t.snapshotId) return false;
    return !!(await fs.stat(path.join(this.deps.snapshots.dir, t.snapshotId)).catch(() => null));
  }

  async key(image: Pick<ImageRecord, 'id' | 'digest'>, vcpus: number, memoryMib: number, env: Record<string, string> = {}): Promise<string> {
    const compat = await this.deps.snapshots.compat();
    // Env joins the key only when set, so templates made without one keep their keys.
    const sortedEnv = Object.keys(env).length ? Object.fromEntries(Object.entries(env).sort(([a], [b]) => a.localeCompare(b))) : undefined;
    const material = JSON.stringify({
      image: image.id, digest: image.digest, vcpus, memoryMib, compat, ...(sortedEnv ? { env: sortedEnv } : {}), ...(this.deps.nodeId ? { node: this.deps.nodeId } : {}),
    });
    return createHash('sha256').update(material).digest('hex').slice(0, 32);
  }

  async get(id: string): Promise<TemplateRecord> {
    const t = await this.deps.store.getTemplate(id);
    if (!t) throw new KilnError('KILN_ERR_TEMPLATE_NOT_FOUND', `no template ${JSON.stringify(id)}`);
    return t;
  }

  list(): Promise<TemplateRecord[]> {
    return this.deps.store.listTemplates();
  }

  /**
   * The ready template for `imageRef` at this size, built now if there is none or the one
   * there is stale. Concurrent callers for the same key share one build.
   */
  async ensure(imageRef: string, spec: TemplateSpec = {}, opts: BuildOptions = {}): Promise<TemplateRecord> {
    const image = await this.deps.images.resolveForVm(imageRef);
    const vcpus = spec.vcpus ?? DEFAULT_TEMPLATE_VCPUS;
    const memoryMib = spec.memoryMib ?? DEFAULT_TEMPLATE_MEMORY_MIB;
    const key = await this.key(image, vcpus, memoryMib, spec.env);
    return this.#lock.run(key, async () => {
      const cur = await this.deps.store.getTemplateByKey(key);
      if (cur?.state === 'ready' && cur.snapshotId && (await this.deps.store.getSnapshot(cur.snapshotId))) return cur;
      if (cur) await this.remove(cur);
      const built = await this.build(image, vcpus, memoryMib, key, spec.env ?? {}, opts);
      await this.removeSuperseded(built);
      return built;
    });
  }

  /**
   * The current, ready template for this image and spec, or null; never builds (a caller on
   * a hot path boots instead and asks ensure() in the background).
   */
  async readyFor(imageRef: string, spec: TemplateSpec = {}): Promise<TemplateRecord | null> {
    const image = await this.deps.images.resolveForVm(imageRef);
    const key = await this.key(image, spec.vcpus ?? DEFAULT_TEMPLATE_VCPUS, spec.memoryMib ?? DEFAULT_TEMPLATE_MEMORY_MIB, spec.env);
    const t = await this.deps.store.getTemplateByKey(key);
    return t?.state === 'ready' && t.snapshotId && (await this.deps.store.getSnapshot(t.snapshotId)) ? t : null;
  }

  /** A template id (rebuilt if stale), or an image reference (its default-size template). */
  async resolve(idOrImage: string, spec: TemplateSpec = {}): Promise<TemplateRecord> {
    const t = await this.deps.store.getTemplate(idOrImage);
    if (!t) return this.ensure(idOrImage, spec);
    const image = await this.deps.store.getImage(t.imageId);
    if (!image) throw new KilnError('KILN_ERR_IMAGE_NOT_FOUND', `template ${t.id}'s image ${t.imageId} was deleted`);
    // The golden VM's env is in its snapshot's metadata (a function runtime's, for instance).
    const env = t.snapshotId ? (await this.deps.store.getSnapshot(t.snapshotId))?.meta.guest.env : undefined;
    if (t.state === 'ready' && t.key === (await this.key(image, t.vcpus, t.memoryMib, env))) return t;
    return this.ensure(image.id, { vcpus: t.vcpus, memoryMib: t.memoryMib, ...(env ? { env } : {}) });
  }

  /** Creates a VM by restoring the template's snapshot (see SnapshotService.restore). */
  async clone(idOrImage: string, input: RestoreInput & TemplateSpec = {}): Promise<VmRecord> {
    const t = await this.resolve(idOrImage, input);
    return this.deps.snapshots.restore(t.snapshotId!, input);
  }

  private async build(image: ImageRecord, vcpus: number, memoryMib: number, key: string, env: Record<string, string>, opts: BuildOptions): Promise<TemplateRecord> {
    const now = Date.now();
    const t: TemplateRecord = {
      id: `tpl-${randomBytes(5).toString('hex')}`, imageId: image.id, vcpus, memoryMib, key,
      state: 'building', stateReason: null, snapshotId: null, createdAt: now, updatedAt: now,
    };
    await this.deps.store.insertTemplate(t);
    this.deps.bus.publish('template.building', null, { template: t.id, image: image.name });
    let golden: VmRecord | null = null;
    try {
      golden = await this.deps.vms.create({ image: image.id, vcpus, memory_mib: memoryMib, name: `${t.id}-golden`, network: 'bridge', labels: { [KIND_LABEL]: 'template', 'kiln.template': t.id }, ...(Object.keys(env).length ? { env } : {}) }, { fileBackedMemory: true });
      await this.deps.vms.waitFor(golden.id, ['ready'], this.deps.config.bootTimeoutMs + 10_000);
      // Agent-ready is when the workload was forked; a caller whose workload must be serving
      // (a function runtime's shim) waits for that here, so clones resume it already serving.
      await opts.beforeSnapshot?.(golden);
      const snap = await this.deps.snapshots.create(golden.id, { resume: false, templateId: t.id });
      const ready = await this.deps.store.updateTemplate(t.id, { state: 'ready', snapshotId: snap.id });
      this.deps.bus.publish('template.ready', null, { template: t.id, snapshot: snap.id });
      this.deps.snapshots.pool.refill(snap.id);
      return ready;
    } catch (e) {
      const reason = `${(e as KilnError).code ?? 'KILN_ERR_INTERNAL'}: ${(e as Error).message}`;
      await this.deps.store.updateTemplate(t.id, { state: 'failed', stateReason: reason }).catch(() => {});
      throw e;
    } finally {
      // Never resumed: its RAM file is now the snapshot's memory.
      if (golden) await this.deps.vms.delete(golden.id).catch((e) => this.deps.log.error({ vm: golden!.id, err: e }, 'removing a golden VM failed'));
    }
  }

  /**
   * Start-up: a build that a kilnd crash interrupted never finishes. Its template is failed
   * (the next clone of that image builds anew) and its golden VM, which nothing would ever
   * snapshot or delete, is removed.
   */
  async sweep(): Promise<void> {
    for (const t of await this.deps.store.listTemplates()) {
      if (t.state !== 'building') continue;
      // In a cluster another node's build may be under way: only a build whose golden VM is
      // this node's is this node's (one cut before its golden VM existed is replaced by the
      // next ensure() of its key, which only this node computes).
      if (this.deps.nodeId && !(await this.deps.store.getVm(`${t.id}-golden`))) continue;
      await this.deps.store.updateTemplate(t.id, { state: 'failed', stateReason: 'KILN_ERR_INTERNAL: kilnd stopped while the template was being built' });
      const golden = await this.deps.store.getVm(`${t.id}-golden`);
      if (golden) await this.deps.vms.delete(golden.id).catch((e) => this.deps.log.error({ vm: golden.id, err: e }, 'removing an interrupted build\'s golden VM failed'));
      this.deps.log.warn({ template: t.id, golden: golden?.id ?? null }, 'failed a template build that kilnd stopped during');
    }
  }

  /** Older templates of the same image and size: removed unless clones still run from them. */
  private async removeSuperseded(current: TemplateRecord): Promise<void> {
    for (const t of await this.deps.store.listTemplates()) {
      if (t.id === current.id || t.imageId !== current.imageId || t.vcpus !== current.vcpus || t.memoryMib !== current.memoryMib) continue;
      if (!(await this.isOwn(t))) continue;
      await this.remove(t).catch((e) => this.deps.log.info({ template: t.id, err: (e as Error).message }, 'superseded template kept while clones run'));
    }
  }

  /** Refused (KILN_ERR_SNAPSHOT_IN_USE) while clones of its snapshot run. */
  async delete(id: string): Promise<void> {
    await this.remove(await this.get(id));
  }

  private async remove(t: TemplateRecord): Promise<void> {
    if (t.snapshotId && (await this.deps.store.getSnapshot(t.snapshotId))) {
      const clones = await this.deps.snapshots.liveClones(t.snapshotId);
      if (clones.length) {
        throw new KilnError('KILN_ERR_SNAPSHOT_IN_USE', `template ${t.id} has ${clones.length} running clone(s): ${clones.join(', ')}`, { clones });
      }
      await this.deps.snapshots.delete(t.snapshotId, { byTemplate: true });
    }
    await this.deps.store.deleteTemplate(t.id);
    this.deps.bus.publish('template.deleted', null, { template: t.id });
  }
}
