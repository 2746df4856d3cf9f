// VM lifecycle: creating → booting → ready ⇄ paused → stopping → stopped | failed.
// The facade the API and the services call. Every transition goes through VmCore.transition()
// (persisted, published, counted); operations on one VM are serialised by a per-VM lock, and
// the VMM's exit is handled under the same lock. The parts: the record (vm-record.ts), the
// provisioning pipeline (provision/), the live VM (live-vm.ts), readiness (await-ready.ts),
// the console (vm-console.ts), stopping (vm-stop.ts), restart safety (reconcile.ts) and
// cluster fencing (fencing.ts).
import fs from 'node:fs/promises';
import { KilnError } from '../errors.ts';
import type { AgentClient } from '../guest/agent/client.ts';
import type { ConsoleFollower } from '../guest/console-follower.ts';
import type { VmRecord, VmState } from '../store/store.ts';
import { CleanupStack } from '../util/cleanup-stack.ts';
import type { VmmInstance } from '../vmm/driver.ts';
import { awaitReady } from './await-ready.ts';
import { resizeClassicDisk } from './classic-disk.ts';
import type { ConsoleClient } from './console-mux.ts';
import { mergeLabels, validateLabels, vmKind, type Labels } from './labels.ts';
import { LiveVms } from './live-vm.ts';
import { bootSteps, classicSteps } from './provision/boot.ts';
import { provision, type ProvisionCtx, type ProvisionSteps } from './provision/pipeline.ts';
import { giveIdentity, restoreSteps } from './provision/restore.ts';
import { Reconciler } from './reconcile.ts';
import { preciseNow, type Timeline } from './timeline.ts';
import { VmCore, type LiveVm, type VmDeps, type WorkloadOutput } from './vm-core.ts';
import { VmConsole } from './vm-console.ts';
import { stopVm } from './vm-stop.ts';
import { fenceNode, unfenceNode } from './fencing.ts';
import { acceptVm, assertClassicBackend, cloneRecord, isPooled, newVmRecord, type CloneRequest, type CreateVmInput, type CreateVmInternal } from './vm-record.ts';

export { DEFAULT_IMAGE, MIN_MEMORY_MIB, POOLED_PREFIX, isPooled, type CloneRequest, type CreateVmInput, type CreateVmInternal } from './vm-record.ts';
export type { WorkloadOutput } from './vm-core.ts';

export class VmManager {
  private readonly core: VmCore;
  private readonly lives: LiveVms;
  private readonly console: VmConsole;
  private readonly reconciler: Reconciler;
  private readonly steps: { boot: ProvisionSteps; classic: ProvisionSteps; restore: ProvisionSteps };
  /** The workload's tagged stdout/stderr, as the console delivers it (container logs). */
  readonly output: VmCore['output'];

  constructor(deps: VmDeps) {
    this.core = new VmCore(deps);
    this.output = this.core.output;
    this.lives = new LiveVms(this.core, (id) => this.start(id));
    this.console = new VmConsole(this.core);
    this.reconciler = new Reconciler(this.core, this.lives, this.console);
    const parts = { core: this.core, lives: this.lives };
    this.steps = { boot: bootSteps(parts), classic: classicSteps(parts), restore: restoreSteps(parts) };
  }

  private get deps(): VmDeps {
    return this.core.deps;
  }

  runtimeDir(id: string): string {
    return this.core.runtimeDir(id);
  }

  get(idOrName: string): Promise<VmRecord> {
    return this.core.get(idOrName);
  }

  /** The users' VMs (pooled clones are kilnd's until a create takes one). */
  async list(): Promise<VmRecord[]> {
    return (await this.deps.store.listVms()).filter((vm) => !isPooled(vm));
  }

  /** The provisioning lists, by kind (docs/architecture.md shows them; tests check the edits). */
  stepNames(): Record<'boot' | 'classic' | 'restore', string[]> {
    return { boot: this.steps.boot.names, classic: this.steps.classic.names, restore: this.steps.restore.names };
  }

  // ---- create / boot -------------------------------------------------------------------

  /** Returns the record at once (creating); the boot goes on under the VM's lock. */
  async create(input: CreateVmInput, internal: CreateVmInternal = {}): Promise<VmRecord> {
    this.assertOpen();
    const { vm, image } = await newVmRecord(this.core, input);
    const timeline = await acceptVm(this.core, vm);
    if (internal.fileBackedMemory) this.core.fileBackedMemory.add(vm.id);
    this.deps.bus.publish('vm.created', vm.id, { name: vm.name, image: image.name, kind: vmKind(vm), labels: vm.labels ?? {} });
    this.deps.metrics.vmTransitions.inc({ to: 'creating' });
    void this.queueBoot(vm, timeline).catch((e) => this.deps.log.warn({ vm: vm.id, err: e }, 'boot failed'));
    return vm;
  }

  /**
   * A cold boot takes a boot slot before its first step and holds it until the guest is
   * ready or has failed: the guests booting at once share the host's CPUs, and a boot's
   * deadline measures the guest, not a queue. A wait shows in the timeline (`boot.queue`).
   */
  private async queueBoot(vm: VmRecord, timeline: Timeline): Promise<void> {
    const queued = preciseNow();
    const slot = await this.core.bootSlots.acquire();
    try {
      if (slot.waited) {
        timeline.begin('boot.queue', queued);
        await timeline.end('boot.queue');
      }
      await this.core.lock.run(vm.id, async () => {
        // Deleted while it waited for its turn: nothing to boot.
        if ((await this.deps.store.getVm(vm.id))?.state !== 'creating') return slot.release();
        await this.boot(vm, timeline, slot.release);
      });
    } catch (e) {
      slot.release();
      throw e;
    }
  }

  /**
   * A new VM restored from a snapshot: its own namespace with the snapshot's guest network,
   * its own copies of the writable drives, the VMM loaded from the snapshot, then resumed and
   * given its own identity by the guest agent, which re-handshakes: that hello is the clone's
   * readiness. Returns once the VMM runs (like create()); a clone that never ran leaves no record.
   */
  async createClone(req: CloneRequest): Promise<VmRecord> {
    this.assertOpen();
    const vm = await cloneRecord(this.core, req);
    const timeline = await acceptVm(this.core, vm, { snapshotId: req.snapshotId, preferIps: [req.guestNet!.ip] });
    this.deps.bus.publish('vm.created', vm.id, { name: vm.name, snapshot: req.snapshotId, kind: vmKind(vm), labels: vm.labels ?? {} });
    this.deps.metrics.vmTransitions.inc({ to: 'creating' });
    await this.core.lock.run(vm.id, () =>
      this.run(this.steps.restore, vm, timeline, req, () => {}, (err) => this.core.forget(vm.id, `${err.code}: ${err.message}`)),
    );
    return this.get(vm.id);
  }

  /**
   * A create served by a pooled clone (src/snapshot/clone-pool.ts): the running, paused
   * clone becomes the user's VM. One round trip to the guest: resume, then the identity op
   * (hostname, env, RNG reseed, clock, ARP flush), whose answer is its readiness; the
   * record's timeline is a new boot with those phases.
   */
  async adopt(id: string, as: { name?: string; env: Record<string, string>; labels?: Labels }): Promise<VmRecord> {
    this.assertOpen();
    return this.core.lock.run(id, async () => {
      const cur = await this.get(id);
      const live = this.core.live.get(id);
      if (!isPooled(cur) || !live?.agent || (cur.state !== 'paused' && cur.state !== 'ready')) {
        throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${id} is not a pooled clone ready to be taken`);
      }
      const t0 = preciseNow();
      const name = as.name ?? id;
      const labels = validateLabels(as.labels ?? {}, { allowReserved: true });
      const vm = { ...cur, name, env: as.env, labels, bootCount: cur.bootCount + 1 };
      const timeline = this.core.timeline(vm);
      timeline.begin('api.accept', t0);
      await this.deps.store.updateVm(id, { name, env: as.env, labels, bootCount: vm.bootCount });
      await timeline.end('api.accept');
      this.deps.bus.publish('vm.created', id, { name, pooled: true, kind: vmKind(vm), labels });
      try {
        await timeline.step('vmm.resume', async () => {
          // Made at background CPU priority (vm-spec.ts): from now on it serves a request.
          await live.instance.setCpuPriority?.('normal');
          if (cur.state === 'paused') await live.instance.resume();
        });
        await timeline.step('guest.identity', () => giveIdentity(this.core, vm, cur.agentToken!, cur.ip!));
      } catch (e) {
        live.failReason = `${(e as KilnError).code ?? 'KILN_ERR_GUEST_FAILED'}: ${(e as Error).message}`;
        await live.instance.kill().catch(() => {});
        throw e;
      }
      this.deps.metrics.provisionTotal.observe({ backend: vm.backend, accelerator: vm.accelerator }, (preciseNow() - t0) / 1000);
      return this.core.transition(id, 'ready', {}, 'taken from the clone pool');
    });
  }

  /** Runs under the VM's lock up to the VMM being handed over; readiness is awaited outside it. */
  private async boot(vm: VmRecord, timeline: Timeline, release: () => void): Promise<void> {
    const list = vm.classic ? this.steps.classic : this.steps.boot;
    await this.run(list, vm, timeline, undefined, release, async (err) => {
      await this.core.transition(vm.id, 'failed', { pid: null }, `${err.code}: ${err.message}`);
      if (vm.ports.length) await this.deps.network.sync().catch(() => {});
    });
  }

  /** `done`: called once the VM is ready or has failed (a boot's slot). */
  private async run(list: ProvisionSteps, vm: VmRecord, timeline: Timeline, clone: CloneRequest | undefined, done: () => void, onFailure: (err: KilnError) => Promise<void>): Promise<void> {
    const t0 = preciseNow();
    const dir = this.runtimeDir(vm.id);
    let ctx: ProvisionCtx;
    try {
      const image = await this.deps.images.get(vm.imageId);
      ctx = { vm, image, timeline, undo: new CleanupStack(), dir, t0, drives: [], consoleOffset: 0, ...(clone ? { clone } : {}) };
    } catch (e) {
      const err = e instanceof KilnError ? e : new KilnError('KILN_ERR_VMM_FAILED', (e as Error).message);
      await onFailure(err);
      throw err;
    }
    await provision(list, ctx, this.deps.log, onFailure, clone ? 'KILN_ERR_SNAPSHOT_FAILED' : 'KILN_ERR_VMM_FAILED');
    void awaitReady(this.core, vm, ctx.live!, t0, clone ? timeline : undefined).finally(done);
  }

  private assertOpen(): void {
    if (this.core.closing) throw new KilnError('KILN_ERR_SHUTTING_DOWN', 'kilnd is shutting down');
    if (this.core.fenced) throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `this node is fenced: ${this.core.fenced}`);
  }

  waitFor(idOrName: string, targets: VmState[], timeoutMs: number): Promise<VmRecord> {
    return this.core.waitFor(idOrName, targets, timeoutMs);
  }

  // ---- operations --------------------------------------------------------------------------

  /** Asks the guest to stop (kiln-init, or systemd for a classic VM) and pulls the plug past the grace period (vm-stop.ts). */
  stop(idOrName: string, graceMs?: number): Promise<VmRecord> {
    return stopVm(this.core, this.console, idOrName, graceMs);
  }

  /** Resizes a stopped classic VM's disk (grow only; offline: truncate, e2fsck, resize2fs). */
  resizeDisk(idOrName: string, sizeGib: number): Promise<VmRecord> {
    return resizeClassicDisk(this.core, idOrName, sizeGib);
  }

  async start(idOrName: string): Promise<VmRecord> {
    this.assertOpen();
    const { id } = await this.get(idOrName);
    const slot = await this.core.bootSlots.acquire();
    try {
      return await this.startWithSlot(id, slot.release);
    } catch (e) {
      slot.release();
      throw e;
    }
  }

  private startWithSlot(id: string, release: () => void): Promise<VmRecord> {
    return this.core.lock.run(id, async () => {
      const vm = await this.get(id);
      if (vm.state !== 'stopped') throw new KilnError('KILN_ERR_INVALID_STATE', `cannot start a VM that is ${vm.state}`);
      if (vm.classic) assertClassicBackend(this.core, 'KILN_ERR_INVALID_STATE');
      // A boot uses this kilnd's backend and accelerator, whatever the last boot used. The VM
      // commits its vCPUs and memory again from here on ('creating'), if the host has them.
      const next = await this.deps.admission.admit(vm, () =>
        this.core.transition(id, 'creating', { bootCount: vm.bootCount + 1, backend: this.deps.driver.name, accelerator: this.deps.accelerator }),
      );
      await this.boot(next, this.core.timeline(next), release);
      return this.get(id);
    });
  }

  async pause(idOrName: string): Promise<VmRecord> {
    return this.withLive(idOrName, 'ready', async (live, id) => {
      await live.instance.pause();
      return this.core.transition(id, 'paused');
    });
  }

  async resume(idOrName: string): Promise<VmRecord> {
    return this.withLive(idOrName, 'paused', async (live, id) => {
      await live.instance.resume();
      return this.core.transition(id, 'ready');
    });
  }

  /**
   * Changes some of a VM's labels (a null value removes one), under the VM's lock so two
   * changes never lose each other's keys; a `vm.labels` event carries the whole new map.
   */
  async setLabels(idOrName: string, patch: Record<string, string | null>): Promise<VmRecord> {
    const { id } = await this.get(idOrName);
    return this.core.lock.run(id, async () => {
      const cur = await this.get(id);
      const labels = mergeLabels(cur.labels ?? {}, patch);
      const vm = await this.deps.store.updateVm(id, { labels });
      this.deps.bus.publish('vm.labels', id, { kind: vmKind(vm), labels });
      return vm;
    });
  }

  private async withLive(idOrName: string, required: VmState, fn: (l: LiveVm, id: string) => Promise<VmRecord>): Promise<VmRecord> {
    const { id } = await this.get(idOrName);
    return this.core.lock.run(id, async () => {
      const vm = await this.get(id);
      const live = this.core.live.get(id);
      if (vm.state !== required || !live) {
        throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${id} is ${vm.state}; this needs it ${required}`);
      }
      return fn(live, id);
    });
  }

  async delete(idOrName: string): Promise<void> {
    const { id, network, ip: lease } = await this.get(idOrName);
    await this.core.lock.run(id, async () => {
      const live = this.core.live.get(id);
      if (live) {
        live.deleting = true;
        await live.instance.kill();
        this.core.release(id, live, 'the VM was deleted');
      }
      await fs.rm(this.runtimeDir(id), { recursive: true, force: true });
      const { classic } = await this.get(id);
      if (classic) await fs.rm(classic.disk.path, { force: true });
      await this.deps.store.deleteVm(id);
      this.core.fileBackedMemory.delete(id);
      // After the row is gone: its address and host ports are free again, and the render omits it.
      await this.core.detachNetwork({ id, network, ip: lease });
      this.deps.bus.publish('vm.deleted', id);
      this.core.states.emit(id, null);
    });
  }

  // ---- snapshots (src/snapshot drives these) ------------------------------------------------

  /**
   * Runs `fn` with the VM's running VMM under the VM's lock (a snapshot). The VM must be
   * ready or paused; `fn` says whether it left the guest paused.
   */
  async withInstance<T>(idOrName: string, fn: (vm: VmRecord, instance: VmmInstance, runtimeDir: string) => Promise<{ result: T; paused: boolean }>): Promise<T> {
    const { id } = await this.get(idOrName);
    return this.core.lock.run(id, async () => {
      const vm = await this.get(id);
      const live = this.core.live.get(id);
      if ((vm.state !== 'ready' && vm.state !== 'paused') || !live) {
        throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${id} is ${vm.state}; a snapshot needs it ready or paused`);
      }
      const { result, paused } = await fn(vm, live.instance, this.runtimeDir(id));
      if (paused && vm.state === 'ready') await this.core.transition(id, 'paused', {}, 'snapshotted');
      if (!paused && vm.state === 'paused') await this.core.transition(id, 'ready');
      return result;
    });
  }

  // ---- agent ------------------------------------------------------------------------------

  /** A session client for the VM's guest agent (exec, files, status); the VM must be ready. */
  async agent(idOrName: string): Promise<AgentClient> {
    const vm = await this.get(idOrName);
    const live = this.core.live.get(vm.id);
    if (!live?.agent) {
      const why = vm.network === 'none' ? 'it has no network (the agent needs one)' : `it is ${vm.state}`;
      throw new KilnError('KILN_ERR_AGENT_UNAVAILABLE', `VM ${vm.id} has no guest agent to talk to: ${why}`);
    }
    if (vm.state !== 'ready') throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${vm.id} is ${vm.state}; the agent is reachable when it is ready`);
    return live.agent.client;
  }

  // ---- console and logs --------------------------------------------------------------------

  attachConsole(idOrName: string, client: ConsoleClient): Promise<{ write: (d: Buffer | string) => void; detach: () => void }> {
    return this.console.attach(idOrName, client);
  }

  logs(idOrName: string, maxBytes?: number): Promise<string> {
    return this.console.logs(idOrName, maxBytes);
  }

  /** Follows the console from its current end; returns the follower (caller closes it). */
  followLogs(idOrName: string): Promise<ConsoleFollower> {
    return this.console.follow(idOrName);
  }

  // ---- restart safety ----------------------------------------------------------------------

  /** On daemon start (reconcile.ts). */
  reconcile(): Promise<void> {
    return this.reconciler.reconcile();
  }

  // ---- cluster fencing (fencing.ts) ---------------------------------------------------------

  /** Kills every VMM of a fenced node; no boot starts until unfence(). The VMs it killed. */
  fence(reason: string): Promise<string[]> {
    return fenceNode(this.core, reason);
  }

  /** After the rejoin: boots may start again; the fenced VMs' leftovers go. */
  unfence(vmIds: readonly string[]): Promise<void> {
    return unfenceNode(this.core, vmIds);
  }

  /** Daemon shutdown: let go of every VMM without stopping it. */
  async close(): Promise<void> {
    this.core.closing = true;
    for (const [id, live] of this.core.live) {
      live.instance.detach();
      this.core.release(id, live, 'kilnd is shutting down');
    }
    this.core.live.clear();
  }
}
