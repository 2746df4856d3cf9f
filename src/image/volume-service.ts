// Volumes: persistent sparse ext4 files under <state>/volumes, attached to VMs as extra drives
// (kiln-init mounts them at their targets), and read-only host directories, which become a
// squashfs drive built from the directory when the VM boots (never copied into the image).
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../errors.ts';
import type { EventBus } from '../events/event-bus.ts';
import type { Store, VmRecord, VmVolume, VolumeRecord } from '../store/store.ts';
import { mkfsExt4 } from '../tools/mkfs-ext4.ts';
import { tempSibling } from '../util/atomic.ts';
import { buildRootfs } from './builders/builders.ts';
import { checkAllowedDir, openAllowedDir, underRoot } from './host-dir.ts';

/** One extra drive of a VM: what the VMM attaches and where kiln-init mounts it. */
export interface ExtraDrive {
  /** Drive id and virtio serial (≤ 20 characters). */
  id: string;
  path: string;
  readOnly: boolean;
  target: string;
}

export interface VolumeAttachRequest {
  volume?: string;
  host_path?: string;
  target: string;
  read_only?: boolean;
}

export const MAX_VOLUMES_PER_VM = 8;
const LIVE_STATES = new Set(['creating', 'booting', 'ready', 'paused', 'stopping']);

/** True when `p` (resolved) is one of `roots` or inside one. */
export function underAllowedRoot(p: string, roots: readonly string[]): boolean {
  return roots.some((root) => underRoot(p, root));
}

export class VolumeService {
  readonly volumesDir: string;

  constructor(
    private readonly store: Store,
    private readonly bus: EventBus,
    stateDir: string,
    private readonly allowedRoots: readonly string[],
  ) {
    this.volumesDir = path.join(stateDir, 'volumes');
  }

  async create(name: string, sizeMib: number): Promise<VolumeRecord> {
    if (await this.store.getVolume(name)) throw new KilnError('KILN_ERR_NAME_CONFLICT', `a volume named ${JSON.stringify(name)} already exists`);
    await fs.mkdir(this.volumesDir, { recursive: true, mode: 0o700 });
    const id = `vol-${randomBytes(5).toString('hex')}`;
    const file = path.join(this.volumesDir, `${id}.ext4`);
    const tmp = tempSibling(file);
    try {
      await mkfsExt4(tmp, { sizeMib, label: name.slice(0, 16) });
      await fs.rename(tmp, file);
    } catch (e) {
      await fs.rm(tmp, { force: true });
      if (/No space left|ENOSPC/.test((e as Error).message)) throw new KilnError('KILN_ERR_NO_SPACE', `no space for volume ${name}: ${(e as Error).message}`);
      throw e;
    }
    const rec: VolumeRecord = { id, name, sizeMib, path: file, createdAt: Date.now() };
    try {
      await this.store.insertVolume(rec);
    } catch (e) {
      await fs.rm(file, { force: true });
      throw e;
    }
    this.bus.publish('volume.created', null, { id, name, size_mib: sizeMib });
    return rec;
  }

  list(): Promise<VolumeRecord[]> {
    return this.store.listVolumes();
  }

  async get(idOrName: string): Promise<VolumeRecord> {
    const v = await this.store.getVolume(idOrName);
    if (!v) throw new KilnError('KILN_ERR_VOLUME_NOT_FOUND', `no volume ${JSON.stringify(idOrName)}`);
    return v;
  }

  private async attachedTo(volumeId: string): Promise<VmRecord[]> {
    return (await this.store.listVms()).filter((vm) => vm.volumes.some((a) => a.volumeId === volumeId));
  }

  async delete(idOrName: string): Promise<void> {
    const v = await this.get(idOrName);
    const users = await this.attachedTo(v.id);
    if (users.length) throw new KilnError('KILN_ERR_VOLUME_IN_USE', `volume ${v.name} is attached to ${users.map((u) => u.name).join(', ')}`);
    await this.store.deleteVolume(v.id);
    await fs.rm(v.path, { force: true });
    this.bus.publish('volume.deleted', null, { id: v.id, name: v.name });
  }

  /** Validates a create request's `volumes` and turns them into what the VM record stores. */
  async resolveAttachments(reqs: readonly VolumeAttachRequest[]): Promise<VmVolume[]> {
    if (reqs.length > MAX_VOLUMES_PER_VM) throw new KilnError('KILN_ERR_VALIDATION', `at most ${MAX_VOLUMES_PER_VM} volumes per VM`);
    const out: VmVolume[] = [];
    const targets = new Set<string>();
    for (const r of reqs) {
      const target = path.posix.normalize(r.target).replace(/(.)\/+$/, '$1');
      if (!target.startsWith('/') || target === '/' || r.target.split('/').includes('..') || target.includes(',')) {
        throw new KilnError('KILN_ERR_VALIDATION', `volume target must be an absolute path other than / (no "..", no commas): ${r.target}`);
      }
      if (targets.has(target)) throw new KilnError('KILN_ERR_VALIDATION', `two volumes mounted at ${target}`);
      targets.add(target);
      if ((r.volume === undefined) === (r.host_path === undefined)) {
        throw new KilnError('KILN_ERR_VALIDATION', 'each volume needs exactly one of "volume" and "host_path"');
      }
      if (r.volume !== undefined) {
        const v = await this.get(r.volume);
        const readOnly = r.read_only ?? false;
        if (!readOnly) {
          // Two running kernels writing one ext4 would corrupt it.
          const busy = (await this.attachedTo(v.id)).filter((vm) => LIVE_STATES.has(vm.state) && vm.volumes.some((a) => a.volumeId === v.id && !a.readOnly));
          if (busy.length) throw new KilnError('KILN_ERR_VOLUME_IN_USE', `volume ${v.name} is attached read-write to running VM ${busy[0]!.name}`);
        }
        out.push({ volumeId: v.id, target, readOnly });
      } else {
        const hostPath = path.resolve(r.host_path!);
        const real = await checkAllowedDir(hostPath, this.allowedRoots);
        if (r.read_only === false) throw new KilnError('KILN_ERR_VALIDATION', `host directories are attached read-only (${hostPath})`);
        out.push({ hostPath: real, target, readOnly: true });
      }
    }
    return out;
  }

  /** The VM's extra drives (paths only; nothing is built). */
  async drivesFor(vm: VmRecord, runtimeDir: string): Promise<ExtraDrive[]> {
    const out: ExtraDrive[] = [];
    for (const [i, a] of vm.volumes.entries()) {
      const id = `vol${i}`;
      if (a.volumeId) {
        const v = await this.store.getVolume(a.volumeId);
        if (!v) throw new KilnError('KILN_ERR_VOLUME_NOT_FOUND', `volume ${a.volumeId} attached to ${vm.name} no longer exists`);
        out.push({ id, path: v.path, readOnly: a.readOnly, target: a.target });
      } else {
        out.push({ id, path: path.join(runtimeDir, `${id}.squashfs`), readOnly: true, target: a.target });
      }
    }
    return out;
  }

  /**
   * Builds each host directory's squashfs drive into the VM's runtime dir (which must exist),
   * unless an earlier boot of the VM did.
   */
  async buildDrives(vm: VmRecord, drives: readonly ExtraDrive[]): Promise<void> {
    for (const [i, a] of vm.volumes.entries()) {
      if (!a.hostPath) continue;
      const d = drives[i]!;
      if (await fs.stat(d.path).catch(() => null)) continue;
      // Checked again at build time (the VM may be created long before it boots), and read
      // through the opened directory, so a swap after this check cannot reach outside.
      const dir = await openAllowedDir(a.hostPath, this.allowedRoots);
      const tmp = tempSibling(d.path);
      try {
        await buildRootfs(dir.readPath, tmp, 'squashfs');
        await fs.rename(tmp, d.path);
      } finally {
        await dir.close();
        await fs.rm(tmp, { force: true });
      }
    }
  }
}
