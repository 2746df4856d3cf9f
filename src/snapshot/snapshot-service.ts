// VM snapshots: taken from a running VM (pause → VMM state + guest RAM → the writable drives
// copied while paused → resume or stay paused), written to a temporary directory and renamed
// into `<state>/snapshots/<id>` complete (files read-only, sha256 recorded), restored into
// new VMs (clones) after the compatibility and file checks, and reference-counted: a snapshot
// with running clones or owned by a template is not deleted.
import { normalizeEgress, type EgressSpec } from '../net/egress.ts';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { KilnConfig } from '../config.ts';
import { KilnError } from '../errors.ts';
import type { EventBus } from '../events/event-bus.ts';
import type { ImageService } from '../image/image-service.ts';
import { tapName, type NetworkManager } from '../net/network-manager.ts';
import { macFor } from '../net/ipv4.ts';
import type { ImageRecord, SnapshotRecord, Store, VmRecord, VmState } from '../store/store.ts';
import { cloneFile } from '../tools/cp.ts';
import { failpoint } from '../util/failpoints.ts';
import type { GuestAssets } from '../vm/guest-assets.ts';
import { isPooled, type VmManager } from '../vm/vm-manager.ts';
import type { Metrics } from '../metrics/metrics.ts';
import { ClonePool } from './clone-pool.ts';
import { runtimeFiles, vmSpec } from '../vm/vm-spec.ts';
import type { Accelerator, VmmDriver, VmmSnapshot } from '../vmm/driver.ts';
import { cloneNetnsName, netnsExists } from '../net/clone-netns.ts';
import { assertCompatible, describeFile, SNAPSHOT_FORMAT, verifyFiles, type SnapshotCompat, type SnapshotGuest, type SnapshotMeta } from './meta.ts';

const SCRATCH = 'scratch.ext4';
const CONFIG = 'config.img';
const MEMORY = 'memory';
const META = 'meta.json';
/** A clone in these states has a VMM that may map the snapshot's memory file. */
const LIVE: readonly VmState[] = ['creating', 'booting', 'ready', 'paused', 'stopping'];

export interface RestoreInput {
  name?: string;
  env?: Record<string, string>;
  /** The clone's egress policy (src/net/egress.ts); default: the public internet only. */
  egress?: EgressSpec;
  /** The clone's labels (src/vm/labels.ts). */
  labels?: Record<string, string>;
}

export class SnapshotService {
  #compat: Promise<SnapshotCompat> | null = null;
  /** Clones restored ahead of demand (clone-pool.ts); size 0: none. */
  readonly pool: ClonePool;

  constructor(
    private readonly deps: {
      config: KilnConfig;
      store: Store;
      vms: VmManager;
      images: ImageService;
      driver: VmmDriver;
      network: NetworkManager;
      assets: GuestAssets;
      accelerator: Accelerator;
      bus: EventBus;
      log: Logger;
      metrics: Metrics;
      /** The cluster node this kilnd is (absent on a single host): its snapshots are the ones in its state dir. */
      nodeId?: string | null;
    },
  ) {
    this.pool = new ClonePool({
      size: deps.config.clonePoolSize, vms: deps.vms, store: deps.store, log: deps.log, metrics: deps.metrics,
      restore: (id, name) => this.restoreCold(id, { name }),
    });
  }

  get dir(): string {
    return path.join(this.deps.config.stateDir, 'snapshots');
  }

  /** What this host would stamp on a snapshot now (and requires of one it restores). */
  compat(): Promise<SnapshotCompat> {
    this.#compat ??= (async () => {
      const { driver, assets, accelerator } = this.deps;
      const kernelSize = (await fs.stat(assets.kernel.path)).size;
      return {
        backend: driver.name,
        vmmVersion: await driver.version(),
        accelerator,
        kernel: `${assets.kernel.version} (${kernelSize} bytes)`,
        initramfs: assets.initramfs.hash,
        machine: driver.kernelCmdline(accelerator, []),
      };
    })();
    this.#compat.catch(() => (this.#compat = null));
    return this.#compat;
  }

  /**
   * The snapshot, its `path` this node's directory for it: a record's path is where the node
   * that took it put it, and in a cluster that is another machine's disk (never read here).
   */
  async get(id: string): Promise<SnapshotRecord> {
    const s = await this.deps.store.getSnapshot(id);
    if (!s) throw new KilnError('KILN_ERR_SNAPSHOT_NOT_FOUND', `no snapshot ${JSON.stringify(id)}`);
    return { ...s, path: path.join(this.dir, path.basename(s.path)) };
  }

  list(): Promise<SnapshotRecord[]> {
    return this.deps.store.listSnapshots();
  }

  /** Users' clones whose VMM runs from this snapshot now (its reference count; pooled clones are drained instead). */
  async liveClones(id: string): Promise<string[]> {
    const out: string[] = [];
    for (const vmId of await this.deps.store.listClones(id)) {
      const vm = await this.deps.store.getVm(vmId);
      if (vm && LIVE.includes(vm.state) && !isPooled(vm)) out.push(vmId);
    }
    return out;
  }

  /**
   * Snapshots a ready or paused VM. `resume` (default true): the guest runs on afterwards;
   * false: it stays paused. `templateId`: the template that will own it (its golden VM).
   */
  async create(vmIdOrName: string, opts: { resume?: boolean; templateId?: string } = {}): Promise<SnapshotRecord> {
    const resume = opts.resume ?? true;
    const id = `snap-${randomBytes(5).toString('hex')}`;
    const final = path.join(this.dir, id);
    const tmp = path.join(this.dir, `.tmp-${id}`);
    await fs.mkdir(tmp, { recursive: true, mode: 0o700 });
    let recorded = false;
    try {
      const compat = await this.compat();
      const bridgeMac = await this.deps.network.bridgeMac();
      const meta = await this.deps.vms.withInstance(vmIdOrName, async (vm, instance, runtimeDir) => {
        // A running clone's guest still has its snapshot's network (in its namespace).
        const parentId = (await netnsExists(cloneNetnsName(vm.id))) ? await this.deps.store.snapshotOfVm(vm.id) : null;
        const parent = parentId ? (await this.deps.store.getSnapshot(parentId))?.meta.guest : undefined;
        if (vm.backend !== this.deps.driver.name) {
          throw new KilnError('KILN_ERR_SNAPSHOT_INCOMPATIBLE', `VM ${vm.id} runs on ${vm.backend}; this kilnd snapshots ${this.deps.driver.name} VMs`);
        }
        if (vm.volumes.length) {
          throw new KilnError('KILN_ERR_VALIDATION', `VM ${vm.id} has volumes attached; volumes are not part of a snapshot (detach them, or snapshot a VM without)`);
        }
        const image = await this.deps.images.get(vm.imageId);
        let vmm: VmmSnapshot;
        try {
          vmm = await instance.snapshot(tmp, { resume: false });
        } catch (e) {
          // The save stopped the guest first: a VM that was running runs on, whatever failed.
          if (vm.state === 'ready') await instance.resume().catch(() => {});
          throw snapshotError(e);
        }
        let resumed = false;
        try {
          // Paused and its disks flushed: the writable layer now matches the memory image.
          const files = runtimeFiles(runtimeDir);
          await cloneFile(files.scratch, path.join(tmp, SCRATCH));
          await cloneFile(files.config, path.join(tmp, CONFIG));
          if (vmm.memory === 'mapped' && vmm.memoryFile) await fs.rename(vmm.memoryFile, path.join(tmp, MEMORY));
          else if (vmm.memoryFile && path.dirname(vmm.memoryFile) !== tmp) await fs.rename(vmm.memoryFile, path.join(tmp, MEMORY));
          if (resume && vmm.memory !== 'mapped') {
            await instance.resume();
            resumed = true;
          }
        } catch (e) {
          // A failed snapshot leaves a running VM running, even one asked to stay paused after it.
          if (vm.state === 'ready' && vmm.memory !== 'mapped' && !resumed) await instance.resume().catch(() => {});
          throw e;
        }
        return { result: this.metaFor(vm, image, compat, vmm, bridgeMac, tmp, parent), paused: !resumed };
      });
      const full = await this.describe(tmp, meta);
      await fs.writeFile(path.join(tmp, META), JSON.stringify(full, null, 2) + '\n', { mode: 0o400 });
      for (const f of full.files) await fs.chmod(path.join(tmp, f.name), 0o400);
      failpoint('snapshot.rename:before');
      await fs.rename(tmp, final);
      failpoint('snapshot.rename:after');
      const vm = await this.deps.store.getVm(vmIdOrName);
      const record: SnapshotRecord = {
        id,
        sourceVmId: vm?.id ?? null,
        templateId: opts.templateId ?? null,
        path: final,
        meta: full,
        sizeBytes: await allocatedBytes(final, full),
        createdAt: Date.now(),
      };
      await this.deps.store.insertSnapshot(record);
      recorded = true;
      this.deps.bus.publish('snapshot.created', vm?.id ?? null, { snapshot: id, memory: full.memory, size_bytes: record.sizeBytes });
      return record;
    } catch (e) {
      await fs.rm(tmp, { recursive: true, force: true });
      // Renamed but never recorded: no record will ever own it.
      if (!recorded) await fs.rm(final, { recursive: true, force: true });
      throw snapshotError(e);
    }
  }

  private metaFor(
    vm: VmRecord, image: ImageRecord, compat: SnapshotCompat, vmm: VmmSnapshot, gatewayMac: string | null, dir: string, parent?: SnapshotGuest,
  ): SnapshotMeta {
    const net = vm.ip ? { nic: { tap: tapName(vm.id), mac: macFor(vm.ip) }, kernelArgs: this.deps.network.kernelArgs(this.deps.network.address(vm.ip)) } : undefined;
    // The exact command line the guest booted with: a restore must present the same machine.
    const spec = vmSpec(vm, image, this.deps.assets, dir, this.deps.driver, net, []);
    const guestNet = parent
      ? { kernelCmdline: parent.kernelCmdline, guestIp: parent.guestIp, tap: parent.tap, mac: parent.mac, gatewayMac: parent.gatewayMac }
      : { kernelCmdline: spec.kernel.cmdline, guestIp: vm.ip, tap: vm.ip ? tapName(vm.id) : null, mac: vm.ip ? macFor(vm.ip) : null, gatewayMac };
    return {
      format: SNAPSHOT_FORMAT,
      compat,
      guest: {
        imageId: vm.imageId,
        imageDigest: image.digest,
        vcpus: vm.vcpus,
        memoryMib: vm.memoryMib,
        ...guestNet,
        agentToken: vm.agentToken,
        cmd: vm.cmd,
        env: vm.env,
        readiness: vm.readiness,
        extraDrives: vm.volumes.length,
      },
      memory: vmm.memory,
      stateFile: path.basename(vmm.stateFile),
      memoryFile: vmm.memoryFile ? MEMORY : null,
      scratchFile: SCRATCH,
      configFile: CONFIG,
      ...(vmm.vsockPath ? { vsockPath: vmm.vsockPath } : {}),
      files: [],
    };
  }

  /** Sizes and checksums of the files (scratch: size only, it is a sparse 2 GiB disk). */
  private async describe(dir: string, meta: SnapshotMeta): Promise<SnapshotMeta> {
    const files = [await describeFile(dir, meta.stateFile, true), await describeFile(dir, meta.configFile, true), await describeFile(dir, meta.scratchFile, false)];
    if (meta.memoryFile) files.push(await describeFile(dir, meta.memoryFile, true));
    return { ...meta, files };
  }

  /** Refuses while clones run from it or a template owns it; else removes files and record. */
  async delete(id: string, opts: { byTemplate?: boolean } = {}): Promise<void> {
    const s = await this.get(id);
    if (s.templateId && !opts.byTemplate) {
      throw new KilnError('KILN_ERR_SNAPSHOT_IN_USE', `snapshot ${id} belongs to template ${s.templateId}; delete the template`, { template: s.templateId });
    }
    const clones = await this.liveClones(id);
    if (clones.length) {
      throw new KilnError('KILN_ERR_SNAPSHOT_IN_USE', `snapshot ${id} has ${clones.length} running clone(s): ${clones.join(', ')}`, { clones });
    }
    await this.pool.drain(id);
    await this.deps.store.deleteSnapshot(id);
    await fs.rm(s.path, { recursive: true, force: true });
    this.deps.bus.publish('snapshot.deleted', null, { snapshot: id });
  }

  /** Checks a snapshot can be restored here: compatibility, then its files. */
  async verify(id: string): Promise<SnapshotRecord> {
    const s = await this.get(id);
    if (this.deps.nodeId && !(await fs.stat(s.path).catch(() => null))) {
      throw new KilnError('KILN_ERR_SNAPSHOT_NOT_FOUND',
        `snapshot ${id}'s files are on another node: a cluster's snapshots are restored on the node that took them`, { snapshot: id, elsewhere: true });
    }
    assertCompatible(id, s.meta, await this.compat());
    await verifyFiles(id, s.path, s.meta.files);
    return s;
  }

  /**
   * A new VM from the snapshot: a pooled clone when the pool has one (ready when this
   * returns), else a restore (see VmManager.createClone).
   */
  async restore(id: string, input: RestoreInput = {}): Promise<VmRecord> {
    if (this.pool.size > 0) {
      const s = await this.get(id);
      if (input.name && (await this.deps.store.getVm(input.name))) throw new KilnError('KILN_ERR_NAME_CONFLICT', `a VM named ${JSON.stringify(input.name)} already exists`);
      const taken = await this.pool.take(id, { ...(input.name ? { name: input.name } : {}), env: { ...s.meta.guest.env, ...input.env }, ...(input.labels ? { labels: input.labels } : {}), customEgress: input.egress !== undefined });
      if (taken) return taken;
    }
    return this.restoreCold(id, input);
  }

  private async restoreCold(id: string, input: RestoreInput): Promise<VmRecord> {
    const s = await this.verify(id);
    const m = s.meta;
    if (m.guest.extraDrives) throw new KilnError('KILN_ERR_VALIDATION', `snapshot ${id} is of a VM with volumes; it cannot be cloned`);
    if (!(await this.deps.store.getImage(m.guest.imageId))) {
      throw new KilnError('KILN_ERR_IMAGE_NOT_FOUND', `snapshot ${id} needs image ${m.guest.imageId}, which was deleted`);
    }
    const at = (f: string | null) => (f ? path.join(s.path, f) : null);
    const vmm: VmmSnapshot = {
      stateFile: at(m.stateFile)!,
      memory: m.memory,
      memoryFile: at(m.memoryFile),
      ...(m.vsockPath ? { vsockPath: m.vsockPath } : {}),
    };
    const g = m.guest;
    return this.deps.vms.createClone({
      snapshotId: id,
      name: input.name,
      env: { ...g.env, ...input.env },
      imageId: g.imageId,
      vcpus: g.vcpus,
      memoryMib: g.memoryMib,
      cmd: g.cmd,
      readiness: g.readiness as VmRecord['readiness'],
      egress: normalizeEgress(input.egress),
      ...(input.labels ? { labels: input.labels } : {}),
      guestToken: g.agentToken ?? '',
      vmm,
      guestNet: g.guestIp && g.tap && g.gatewayMac ? { ip: g.guestIp, tap: g.tap, gatewayMac: g.gatewayMac, ...(g.mac ? { mac: g.mac } : {}) } : null,
      prepareFiles: async (_dir, scratch, config) => {
        // The snapshot's files are read-only; the clone's copies are its own and writable.
        const copy = async (from: string, to: string) => {
          await cloneFile(path.join(s.path, from), to);
          await fs.chmod(to, 0o600);
        };
        const copies = await Promise.allSettled([copy(m.scratchFile, scratch), copy(m.configFile, config)]);
        for (const r of copies) if (r.status === 'rejected') throw r.reason;
      },
      spec: (base, netns) => ({
        ...base,
        kernel: { ...base.kernel, cmdline: g.kernelCmdline },
        nics: g.tap && g.mac ? [{ tap: g.tap, mac: g.mac }] : [],
        ...(netns ? { netns } : {}),
        ...(m.memory === 'mapped' ? { memoryFile: { path: vmm.memoryFile!, shared: false } } : {}),
      }),
    });
  }

  /**
   * Start-up: directories of snapshots that never completed (temporary ones, and ones a crash
   * left between their rename and their record). A snapshot exists only once it is recorded.
   */
  async sweep(): Promise<void> {
    const recorded = new Set((await this.deps.store.listSnapshots()).map((s) => path.basename(s.path)));
    for (const e of await fs.readdir(this.dir).catch(() => [] as string[])) {
      if (recorded.has(e)) continue;
      this.deps.log.warn({ dir: e }, 'removing a snapshot directory no snapshot record owns');
      await fs.rm(path.join(this.dir, e), { recursive: true, force: true });
    }
  }
}

async function allocatedBytes(dir: string, meta: SnapshotMeta): Promise<number> {
  let total = 0;
  for (const f of meta.files) total += ((await fs.stat(path.join(dir, f.name))).blocks ?? 0) * 512;
  return total;
}

/** A full state disk is the operator's to fix, and says so (507); anything else is the snapshot's. */
function snapshotError(e: unknown): KilnError {
  if ((e as NodeJS.ErrnoException)?.code === 'ENOSPC' || (e as KilnError)?.code === 'KILN_ERR_NO_SPACE') {
    return e instanceof KilnError ? e : new KilnError('KILN_ERR_NO_SPACE', `no space left on the state disk for the snapshot: ${(e as Error).message}`);
  }
  return e instanceof KilnError ? e : new KilnError('KILN_ERR_SNAPSHOT_FAILED', (e as Error).message);
}
