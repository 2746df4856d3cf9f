// Containers: an OCI image run as its own microVM. A container IS a VM (same id, same name,
// one namespace for both); the containers table adds what only containers have: the image
// reference as given, the restart policy and its persisted state, --rm. Lifecycle, network,
// volumes, exec and the agent are the VM's (VmManager); this adds Docker's process semantics
// (src/containers/oci-process.ts), a per-container log of the workload's own stdout/stderr
// (tagged on the console by kiln-init, kept in container-log.ts) and restart policies.
import type { EgressSpec } from '../net/egress.ts';
import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { KilnError } from '../errors.ts';
import type { EventBus } from '../events/event-bus.ts';
import type { ImageService } from '../image/image-service.ts';
import { parseImageReference } from '../image/oci/reference.ts';
import type { VolumeAttachRequest } from '../image/volume-service.ts';
import type { ContainerRecord, EventRecord, Store, VmRecord } from '../store/store.ts';
import { KeyedLock } from '../util/keyed-lock.ts';
import type { VmManager, WorkloadOutput } from '../vm/vm-manager.ts';
import { ContainerLog, DEFAULT_LOG_MAX_BYTES, type LogRecord } from './container-log.ts';
import { mergeProcess } from './oci-process.ts';
import { backoffDelay, parseRestartPolicy, shouldRestart, STABLE_RUN_MS } from './restart-policy.ts';
import { statsFromSamples, type ContainerStatsValues } from './stats.ts';
import { KIND_LABEL } from '../vm/labels.ts';

/** Containers are small by default: a workload, not a machine. */
export const DEFAULT_CONTAINER_MEMORY_MIB = 128;

export interface CreateContainerInput {
  image: string;
  name?: string;
  cmd?: string[];
  entrypoint?: string[];
  env?: Record<string, string>;
  workdir?: string;
  user?: string;
  ports?: { host: number; guest: number; proto?: 'tcp' | 'udp' }[];
  /** The VM's egress policy (src/net/egress.ts); default: the public internet only. */
  egress?: EgressSpec;
  volumes?: VolumeAttachRequest[];
  vcpus?: number;
  memory_mib?: number;
  restart?: string;
  auto_remove?: boolean;
}

/** Docker-like container states, derived from the VM's and the restart policy's. */
export type ContainerState = 'starting' | 'running' | 'paused' | 'stopping' | 'restarting' | 'exited' | 'failed' | 'lost';

export interface ContainerInfo {
  container: ContainerRecord;
  vm: VmRecord;
  state: ContainerState;
  /** When a pending restart fires (epoch ms), if one is pending. */
  restartAt: number | null;
}

/** How a container ended, for `logs -f` / `kiln run` to report. */
export interface ContainerEnd {
  id: string;
  state: ContainerState;
  exitCode: number | null;
  removed: boolean;
}

export class ContainerService {
  private readonly lock = new KeyedLock();
  private readonly logs = new Map<string, Promise<ContainerLog | null>>();
  private readonly timers = new Map<string, { timer: NodeJS.Timeout; at: number }>();
  /** When each container's current run became ready (for the backoff's stable-run reset). */
  private readonly runningSince = new Map<string, number>();
  /** Removals this service is carrying out: they report the end themselves, with the exit code. */
  private readonly removing = new Set<string>();
  /** Emits 'end' when a container settled (exited for good, failed or removed). */
  readonly ends = new EventEmitter<{ end: [ContainerEnd] }>();
  private unsubscribe: (() => void) | null = null;
  private readonly onOutput = (o: WorkloadOutput) => {
    void this.logFor(o.vmId).then((log) => log?.append(o));
  };

  constructor(
    private readonly deps: {
      stateDir: string;
      store: Store;
      bus: EventBus;
      images: ImageService;
      vms: VmManager;
      log: Logger;
      logMaxBytes?: number;
    },
  ) {
    this.ends.setMaxListeners(0);
  }

  private get dir(): string {
    return path.join(this.deps.stateDir, 'containers');
  }

  private logDir(id: string): string {
    return path.join(this.dir, id);
  }

  /** Before VmManager.reconcile(): its console replay carries output already partly stored. */
  attach(): void {
    this.deps.vms.output.on('output', this.onOutput);
    this.unsubscribe = this.deps.bus.subscribe((e) => this.onEvent(e));
  }

  /** After VmManager.reconcile(): act on exits that happened while kilnd was down. */
  async reconcile(): Promise<void> {
    const known = new Set<string>();
    for (const c of await this.deps.store.listContainers()) {
      known.add(c.id);
      await this.lock.run(c.id, () => this.handleExit(c.id)).catch((e) => this.deps.log.error({ container: c.id, err: e }, 'container reconcile failed'));
    }
    for (const d of await fs.readdir(this.dir).catch(() => [] as string[])) {
      if (!known.has(d)) await fs.rm(path.join(this.dir, d), { recursive: true, force: true });
    }
  }

  close(): void {
    this.deps.vms.output.off('output', this.onOutput);
    this.unsubscribe?.();
    for (const t of this.timers.values()) clearTimeout(t.timer);
    this.timers.clear();
  }

  // ---- create ------------------------------------------------------------------------------

  async create(input: CreateContainerInput): Promise<ContainerInfo> {
    const restart = parseRestartPolicy(input.restart);
    if (input.auto_remove && restart.name !== 'no') {
      throw new KilnError('KILN_ERR_VALIDATION', `auto-remove (--rm) and restart policy "${input.restart}" conflict: a container cannot be both removed and restarted on exit`);
    }
    // Reference-shaped but unparsable is a malformed reference (400), not an unknown image.
    if (/[/:@]/.test(input.image)) parseImageReference(input.image);
    const image = await this.deps.images.resolveForVm(input.image);
    // Nothing to run, a relative workdir, a bad user: refused before any VM exists.
    mergeProcess(image.config, { cmd: input.cmd, entrypoint: input.entrypoint, env: input.env, workdir: input.workdir, user: input.user });
    const vm = await this.deps.vms.create({
      name: input.name,
      image: image.id,
      vcpus: input.vcpus,
      memory_mib: input.memory_mib ?? DEFAULT_CONTAINER_MEMORY_MIB,
      cmd: input.cmd,
      env: input.env,
      ports: input.ports,
      ...(input.egress !== undefined ? { egress: input.egress } : {}),
      volumes: input.volumes,
      network: 'bridge',
      labels: { [KIND_LABEL]: 'container' },
      process: {
        ...(input.entrypoint ? { entrypoint: input.entrypoint } : {}),
        ...(input.workdir ? { workdir: input.workdir } : {}),
        ...(input.user ? { user: input.user } : {}),
        stdio: 'tagged',
      },
    });
    const c: ContainerRecord = {
      id: vm.id,
      image: input.image,
      restart,
      autoRemove: input.auto_remove ?? false,
      restartCount: 0,
      backoffStep: 0,
      userStopped: false,
      handledBoot: 0,
      restartAt: null,
      createdAt: vm.createdAt,
    };
    try {
      await this.deps.store.insertContainer(c);
    } catch (e) {
      await this.deps.vms.delete(vm.id).catch(() => {});
      throw e;
    }
    this.deps.bus.publish('container.created', vm.id, { name: vm.name, image: input.image });
    return this.info(c, vm);
  }

  // ---- queries -----------------------------------------------------------------------------

  async get(idOrName: string): Promise<ContainerInfo> {
    const vm = await this.deps.store.getVm(idOrName);
    const c = vm ? await this.deps.store.getContainer(vm.id) : null;
    if (!vm || !c) throw new KilnError('KILN_ERR_CONTAINER_NOT_FOUND', `no container ${JSON.stringify(idOrName)}`);
    return this.info(c, vm);
  }

  async list(all = false): Promise<ContainerInfo[]> {
    const out: ContainerInfo[] = [];
    for (const c of await this.deps.store.listContainers()) {
      const vm = await this.deps.store.getVm(c.id);
      if (!vm) continue;
      const info = this.info(c, vm);
      if (all || info.state !== 'exited' && info.state !== 'failed') out.push(info);
    }
    return out;
  }

  private info(c: ContainerRecord, vm: VmRecord): ContainerInfo {
    const pending = this.timers.get(c.id);
    return { container: c, vm, state: this.stateOf(c, vm), restartAt: pending?.at ?? c.restartAt };
  }

  private stateOf(c: ContainerRecord, vm: VmRecord): ContainerState {
    switch (vm.state) {
      case 'creating':
      case 'booting':
        return 'starting';
      case 'ready':
        return 'running';
      case 'paused':
        return 'paused';
      case 'stopping':
        return 'stopping';
      case 'failed':
        return 'failed';
      case 'lost':
        // Its node stopped heartbeating (a cluster): whether it still runs is unknown.
        return 'lost';
      case 'stopped':
        // Exited, unless the policy is about to start it again (or has not decided yet).
        return this.timers.has(c.id) || c.restartAt !== null || this.undecided(c, vm) ? 'restarting' : 'exited';
    }
  }

  /** The VM's last exit has not been through the restart policy yet. */
  private undecided(c: ContainerRecord, vm: VmRecord): boolean {
    return vm.state === 'stopped' && c.handledBoot < vm.bootCount &&
      shouldRestart(c.restart, { exitCode: vm.exitCode, userStopped: c.userStopped, restartCount: c.restartCount });
  }

  // ---- operations --------------------------------------------------------------------------

  async stop(idOrName: string, graceMs?: number): Promise<ContainerInfo> {
    const { container: c } = await this.get(idOrName);
    await this.lock.run(c.id, async () => {
      this.cancelRestart(c.id);
      await this.deps.store.updateContainer(c.id, { userStopped: true, restartAt: null });
    });
    const vm = await this.deps.vms.get(c.id);
    if (vm.state !== 'stopped' && vm.state !== 'failed') await this.deps.vms.stop(c.id, graceMs);
    return this.get(c.id);
  }

  async start(idOrName: string): Promise<ContainerInfo> {
    const { container: c } = await this.get(idOrName);
    await this.lock.run(c.id, async () => {
      const vm = await this.deps.vms.get(c.id);
      if (vm.state === 'failed') {
        throw new KilnError('KILN_ERR_INVALID_STATE', `container ${c.id} failed (${vm.stateReason ?? 'unknown reason'}); remove it and run a new one`);
      }
      if (vm.state !== 'stopped') throw new KilnError('KILN_ERR_INVALID_STATE', `container ${vm.name} is not stopped (its VM is ${vm.state})`);
      this.cancelRestart(c.id);
      // A user start is a fresh start: the policy's count and backoff begin again.
      await this.deps.store.updateContainer(c.id, { userStopped: false, restartCount: 0, backoffStep: 0, restartAt: null });
      await this.deps.vms.start(c.id);
    });
    return this.get(c.id);
  }

  /**
   * A container this node took over from a lost node (src/cluster/takeover.ts), already
   * claimed (stopped, this node's, a new address): booted here, counted as one restart of its
   * policy.
   */
  async startMoved(id: string): Promise<void> {
    await this.lock.run(id, async () => {
      const c = await this.deps.store.getContainer(id);
      if (!c) throw new KilnError('KILN_ERR_CONTAINER_NOT_FOUND', `no container ${id}`);
      this.cancelRestart(id);
      await this.deps.store.updateContainer(id, { restartCount: c.restartCount + 1, restartAt: null });
      await this.deps.vms.start(id);
    });
  }

  async pause(idOrName: string): Promise<ContainerInfo> {
    const { container: c } = await this.get(idOrName);
    await this.deps.vms.pause(c.id);
    return this.get(c.id);
  }

  async resume(idOrName: string): Promise<ContainerInfo> {
    const { container: c } = await this.get(idOrName);
    await this.deps.vms.resume(c.id);
    return this.get(c.id);
  }

  /** Docker's rm: a running container needs `force` (which kills it at once). */
  async remove(idOrName: string, force = false): Promise<void> {
    const info = await this.get(idOrName);
    const id = info.container.id;
    if (!force && !['exited', 'failed', 'restarting'].includes(info.state)) {
      throw new KilnError('KILN_ERR_INVALID_STATE', `container ${info.vm.name} is ${info.state}: stop it first, or remove it with force`);
    }
    this.removing.add(id);
    try {
      await this.lock.run(id, async () => {
        this.cancelRestart(id);
        await this.deps.vms.delete(id);
        await this.dropLog(id);
      });
      this.runningSince.delete(id);
      this.deps.bus.publish('container.removed', id, {});
      this.ends.emit('end', { id, state: 'exited', exitCode: info.vm.exitCode, removed: true });
    } finally {
      // After the vm.deleted event has gone by (events are delivered in order).
      void this.deps.bus.flush().then(() => this.removing.delete(id));
    }
  }

  // ---- logs and stats ----------------------------------------------------------------------

  private logFor(id: string): Promise<ContainerLog | null> {
    let p = this.logs.get(id);
    if (!p) {
      p = this.deps.store.getContainer(id).then(async (c) => {
        if (!c) {
          this.logs.delete(id);
          return null;
        }
        return ContainerLog.open(this.logDir(id), this.deps.logMaxBytes ?? DEFAULT_LOG_MAX_BYTES,
          (e) => this.deps.log.warn({ container: id, err: e }, 'writing the container log failed; output is still streamed'));
      });
      this.logs.set(id, p);
    }
    return p;
  }

  private async dropLog(id: string): Promise<void> {
    const p = this.logs.get(id);
    this.logs.delete(id);
    await (await p?.catch(() => null))?.settle();
    await fs.rm(this.logDir(id), { recursive: true, force: true });
  }

  async logRecords(idOrName: string, tail?: number): Promise<LogRecord[]> {
    const { container: c } = await this.get(idOrName);
    const log = await this.logFor(c.id);
    return log ? log.read(tail) : [];
  }

  /**
   * Retained records, then new ones as they arrive, until the container settles (exits with
   * no restart coming, fails, or is removed): then `onEnd`. Returns a stop function.
   */
  async follow(idOrName: string, onRecord: (r: LogRecord) => void, onEnd: (e: ContainerEnd) => void, tail?: number): Promise<() => void> {
    const { container: c } = await this.get(idOrName);
    const log = await this.logFor(c.id);
    let ended = false;
    const end = (e: ContainerEnd) => {
      if (ended || e.id !== c.id) return;
      ended = true;
      stop();
      // Pieces still on their way through the log's write queue come first.
      void log?.settle().then(() => onEnd(e));
    };
    this.ends.on('end', end);
    const stopLog = log ? await log.follow(onRecord, tail) : () => {};
    const stop = () => {
      stopLog();
      this.ends.off('end', end);
    };
    // Already over before we subscribed?
    const now = await this.get(c.id).catch(() => null);
    if (!now) end({ id: c.id, state: 'exited', exitCode: null, removed: true });
    else if (now.state === 'exited' || now.state === 'failed') end({ id: c.id, state: now.state, exitCode: now.vm.exitCode, removed: false });
    return stop;
  }

  async stats(idOrName: string, intervalMs = 500): Promise<ContainerStatsValues> {
    const { container: c } = await this.get(idOrName);
    const agent = await this.deps.vms.agent(c.id);
    const a = await agent.stats();
    await new Promise((r) => setTimeout(r, intervalMs));
    const b = await agent.stats();
    return statsFromSamples(a, b);
  }

  // ---- restart policy ----------------------------------------------------------------------

  private onEvent(e: EventRecord): void {
    if (!e.vmId) return;
    if (e.type === 'vm.deleted') {
      // Also when removed as a VM (DELETE /v1/vms/{id}): its row went with it, its log goes too.
      const id = e.vmId;
      if (!this.removing.has(id) && (this.logs.has(id) || this.timers.has(id))) {
        this.cancelRestart(id);
        void this.dropLog(id).then(() => this.ends.emit('end', { id, state: 'exited', exitCode: null, removed: true }));
      }
      return;
    }
    if (e.type !== 'vm.state') return;
    const id = e.vmId;
    const to = e.data.to;
    if (to === 'ready') this.runningSince.set(id, e.ts);
    if (to === 'stopped' || to === 'failed') {
      void this.lock.run(id, () => this.handleExit(id, e.ts)).catch((err) => this.deps.log.error({ container: id, err }, 'restart policy failed'));
    }
  }

  /** Runs under the container's lock: decide what the exit of the VM's current boot means. */
  private async handleExit(id: string, exitedAt = Date.now()): Promise<void> {
    const c = await this.deps.store.getContainer(id);
    const vm = await this.deps.store.getVm(id);
    if (!c || !vm || (vm.state !== 'stopped' && vm.state !== 'failed')) return;
    if (c.handledBoot >= vm.bootCount) {
      // Decided before a kilnd restart, not yet carried out: the timer died with that kilnd.
      if (c.restartAt !== null && !this.timers.has(id) && vm.state === 'stopped' && !c.userStopped) this.scheduleRestart(id, Math.max(0, c.restartAt - Date.now()));
      return;
    }
    const since = this.runningSince.get(id);
    this.runningSince.delete(id);
    // A failed VM (its VMM died, kilnd killed it) has no runtime dir left to boot again.
    const restart = vm.state === 'stopped' &&
      shouldRestart(c.restart, { exitCode: vm.exitCode, userStopped: c.userStopped, restartCount: c.restartCount });
    if (!restart) {
      await this.deps.store.updateContainer(id, { handledBoot: vm.bootCount });
      const state: ContainerState = vm.state === 'failed' ? 'failed' : 'exited';
      this.deps.bus.publish('container.exited', id, { exit_code: vm.exitCode, state });
      if (c.autoRemove) {
        this.cancelRestart(id);
        this.removing.add(id);
        await this.deps.vms.delete(id).catch((e) => this.deps.log.error({ container: id, err: e }, 'auto-remove failed'));
        await this.dropLog(id);
        this.deps.bus.publish('container.removed', id, { auto: true });
        this.ends.emit('end', { id, state, exitCode: vm.exitCode, removed: true });
        void this.deps.bus.flush().then(() => this.removing.delete(id));
        return;
      }
      this.ends.emit('end', { id, state, exitCode: vm.exitCode, removed: false });
      return;
    }
    const ran = since === undefined ? 0 : exitedAt - since;
    const step = ran >= STABLE_RUN_MS ? 0 : c.backoffStep;
    const delay = backoffDelay(step);
    await this.deps.store.updateContainer(id, { handledBoot: vm.bootCount, restartCount: c.restartCount + 1, backoffStep: step + 1, restartAt: Date.now() + delay });
    this.deps.bus.publish('container.restarting', id, { exit_code: vm.exitCode, restart_count: c.restartCount + 1, delay_ms: delay });
    this.deps.log.info({ container: id, exitCode: vm.exitCode, restart: c.restartCount + 1, delayMs: delay }, 'restart policy: restarting');
    this.scheduleRestart(id, delay);
  }

  private scheduleRestart(id: string, delay: number): void {
    const timer = setTimeout(() => {
      void this.lock.run(id, async () => {
        if (this.timers.get(id)?.timer !== timer) return;
        this.timers.delete(id);
        const cur = await this.deps.store.getContainer(id);
        const v = await this.deps.store.getVm(id);
        if (!cur || cur.userStopped || v?.state !== 'stopped') return;
        await this.deps.store.updateContainer(id, { restartAt: null });
        await this.deps.vms.start(id);
      }).catch((err) => this.deps.log.error({ container: id, err }, 'restart failed'));
    }, delay);
    timer.unref();
    this.timers.set(id, { timer, at: Date.now() + delay });
  }

  /** Under the container's lock. */
  private cancelRestart(id: string): void {
    const t = this.timers.get(id);
    if (t) clearTimeout(t.timer);
    this.timers.delete(id);
  }
}
