// What every part of the VM lifecycle shares: kilnd's dependencies, the live VMs, the per-VM
// lock, and the one way a VM changes state (transition(): persisted, published, counted).
// The parts are the record (vm-record.ts), provisioning (provision/), the live VM and its
// console (live-vm.ts, vm-console.ts), readiness (await-ready.ts) and restart safety
// (reconcile.ts); vm-manager.ts is the facade the API calls.
import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { KilnConfig } from '../config.ts';
import { KilnError } from '../errors.ts';
import type { EventBus } from '../events/event-bus.ts';
import type { GuestInputGate } from '../events/guest-input-gate.ts';
import type { AgentClient } from '../guest/agent/client.ts';
import type { ConsoleFollower } from '../guest/console-follower.ts';
import { stripMarkers } from '../guest/console-protocol.ts';
import type { ImageService } from '../image/image-service.ts';
import type { VolumeService } from '../image/volume-service.ts';
import type { Metrics } from '../metrics/metrics.ts';
import type { NetworkManager } from '../net/network-manager.ts';
import type { ImageRecord, Store, VmRecord, VmState } from '../store/store.ts';
import { KeyedLock } from '../util/keyed-lock.ts';
import { Slots } from '../util/slots.ts';
import { defaultConcurrentBoots } from '../config.ts';
import type { Accelerator, BackendName, VmmDriver, VmmInstance } from '../vmm/driver.ts';
import type { Admission } from './admission.ts';
import type { AgentHub, AgentLink } from './agent-link.ts';
import type { ConsoleMux } from './console-mux.ts';
import type { GuestAssets } from './guest-assets.ts';
import { vmKind } from './labels.ts';
import { Timeline } from './timeline.ts';

export interface VmDeps {
  config: KilnConfig;
  store: Store;
  bus: EventBus;
  images: ImageService;
  volumes: VolumeService;
  driver: VmmDriver;
  metrics: Metrics;
  network: NetworkManager;
  agents: AgentHub;
  log: Logger;
  assets: GuestAssets;
  accelerator: Accelerator;
  /** Refuses a VM the host has no vCPUs or memory left for, before anything is made. */
  admission: Admission;
  /**
   * The driver of another backend, for VMs a previous kilnd started with it (the host's
   * backend can change between runs, e.g. `auto` after Firecracker was installed).
   */
  driverFor?: (name: BackendName) => VmmDriver;
  /** The classic VMs' base image ("debian"), built from Debian's archive on first use. */
  classicBase?: () => Promise<ImageRecord>;
  /** Makes a session client for a guest agent (tests give a fake). */
  agentClient?: (...args: ConstructorParameters<typeof AgentClient>) => AgentClient;
}

/** One piece of the workload's stdout/stderr (containers: `stdio: 'tagged'`). */
export interface WorkloadOutput {
  vmId: string;
  boot: number;
  /** Position among this boot's pieces: a console replay after a kilnd restart repeats them. */
  seq: number;
  stream: 'stdout' | 'stderr';
  text: string;
  /** The piece did not end a line. */
  partial: boolean;
}

/** Per running VMM: what kilnd holds while the VM is up. */
export interface LiveVm {
  instance: VmmInstance;
  follower: ConsoleFollower;
  timeline: Timeline | null;
  ready: Promise<void>;
  markReady: () => void;
  failBoot: (e: Error) => void;
  /** Set before kilnd kills the VMM itself, so the exit handler knows why it died. */
  failReason: string | null;
  guestError: string | null;
  exitCode: number | null;
  deleting: boolean;
  /** The guest agent of a VM on kiln's network; null: the serial console is the only channel. */
  agent: AgentLink | null;
  boot: number;
  outputSeq: number;
  /** The interactive console connection, shared by attached clients; null where the VMM has none. */
  console: ConsoleMux | null;
  /** Rate limit on what this guest can make kilnd record (markers, hellos, agent problems). */
  gate: GuestInputGate;
  /** Markers that mean something once per boot; a guest repeating them (forged) is ignored. */
  seen: Set<string>;
  /** The agent channel reported a problem this boot: its later hello does not make it healthy. */
  misbehaved: boolean;
}

export const ACTIVE: readonly VmState[] = ['booting', 'ready', 'paused', 'stopping'];

export class VmCore {
  readonly live = new Map<string, LiveVm>();
  readonly lock = new KeyedLock();
  readonly states = new EventEmitter<Record<string, [VmRecord | null]>>();
  /** The workload's tagged stdout/stderr, as the console delivers it (container logs). */
  readonly output = new EventEmitter<{ output: [WorkloadOutput] }>();
  /** VMs booted with their RAM in a shared file (template golden VMs); kilnd-internal. */
  readonly fileBackedMemory = new Set<string>();
  closing = false;
  /** Cluster fencing (src/cluster/node-member.ts): why this node may run no VMM now; null: it may. */
  fenced: string | null = null;
  /** Cold boots in flight (KILN_MAX_CONCURRENT_BOOTS): held from the first step to ready or failed. */
  readonly bootSlots: Slots;

  constructor(readonly deps: VmDeps) {
    this.states.setMaxListeners(0);
    this.bootSlots = new Slots(deps.config.maxConcurrentBoots ?? defaultConcurrentBoots(deps.accelerator));
  }

  get vmsDir(): string {
    return path.join(this.deps.config.stateDir, 'vms');
  }

  runtimeDir(id: string): string {
    return path.join(this.vmsDir, id);
  }

  async get(idOrName: string): Promise<VmRecord> {
    const vm = await this.deps.store.getVm(idOrName);
    if (!vm) throw new KilnError('KILN_ERR_VM_NOT_FOUND', `no VM ${JSON.stringify(idOrName)}`);
    return vm;
  }

  timeline(vm: VmRecord): Timeline {
    return new Timeline(this.deps.store, this.deps.metrics, vm.id, vm.bootCount, { backend: vm.backend, accelerator: vm.accelerator });
  }

  async transition(id: string, to: VmState, patch: Partial<VmRecord> = {}, reason: string | null = null, extra: Record<string, unknown> = {}): Promise<VmRecord> {
    const prev = await this.deps.store.getVm(id);
    const vm = await this.deps.store.updateVm(id, { ...patch, state: to, stateReason: reason });
    this.deps.metrics.vmTransitions.inc({ to });
    this.deps.bus.publish('vm.state', id, { from: prev?.state ?? null, to, reason, kind: vmKind(vm), ...extra });
    this.deps.log.info({ vm: id, from: prev?.state, to, reason }, 'vm state');
    this.states.emit(id, vm);
    return vm;
  }

  /** A record that never ran goes away entirely (a clone whose restore failed). */
  async forget(id: string, reason: string): Promise<void> {
    await this.deps.store.deleteVm(id);
    this.deps.bus.publish('vm.deleted', id, { reason });
    this.states.emit(id, null);
  }

  /** Stops tracking a live VM kilnd is letting go of (deleted, failed provisioning, shutdown). */
  release(id: string, live: LiveVm, why: string): void {
    if (this.live.get(id) === live) this.live.delete(id);
    // A boot still waiting for its guest ends now (and gives back its boot slot).
    live.failBoot(new KilnError('KILN_ERR_INVALID_STATE', why));
    live.follower.close();
    live.agent?.close();
    live.console?.close(why);
  }

  /** Takes a VM's tap and port rules off the host once its VMM is gone. */
  async detachNetwork(vm: Pick<VmRecord, 'id' | 'network' | 'ip'>): Promise<void> {
    if (vm.network !== 'bridge') return;
    await this.deps.network.unplug(vm.id, vm.ip).catch((e) => this.deps.log.error({ vm: vm.id, err: e }, 'removing tap failed'));
    await this.deps.network.sync().catch((e) => this.deps.log.error({ vm: vm.id, err: e }, 'updating nftables failed'));
  }

  /** A failed VM keeps its record (and why) but no process, socket or file. */
  async failAndRelease(vm: VmRecord, reason: string): Promise<void> {
    this.deps.metrics.vmmExits.inc();
    const tail = await this.consoleTail(vm, 2048);
    await fs.rm(this.runtimeDir(vm.id), { recursive: true, force: true });
    await this.transition(vm.id, 'failed', { pid: null }, reason, { console_tail: tail });
    await this.detachNetwork(vm);
  }

  /** The last `bytes` of the console log at or after `fromOffset`, without kiln's markers. */
  async consoleTail(vm: VmRecord, bytes: number, fromOffset = vm.consoleOffset): Promise<string> {
    const fh = await fs.open(path.join(this.runtimeDir(vm.id), 'console.log'), 'r').catch(() => null);
    if (!fh) return '';
    try {
      const { size } = await fh.stat();
      const start = Math.min(size, Math.max(fromOffset, size - bytes));
      const buf = Buffer.alloc(size - start);
      await fh.read(buf, 0, buf.length, start);
      return stripMarkers(buf.toString('utf8'));
    } finally {
      await fh.close();
    }
  }

  /** Resolves when the VM reaches one of `targets`; rejects if it fails, vanishes or times out. */
  async waitFor(idOrName: string, targets: VmState[], timeoutMs: number): Promise<VmRecord> {
    const { id } = await this.get(idOrName);
    return new Promise<VmRecord>((resolve, reject) => {
      let done = false;
      const finish = (err: Error | null, vm?: VmRecord) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.states.off(id, onState);
        if (err) reject(err);
        else resolve(vm!);
      };
      const onState = (vm: VmRecord | null) => {
        if (!vm) return finish(new KilnError('KILN_ERR_VM_NOT_FOUND', `VM ${id} was deleted`));
        if (targets.includes(vm.state)) return finish(null, vm);
        if (vm.state === 'failed') {
          const code = vm.stateReason?.match(/^(KILN_ERR_[A-Z_]+)/)?.[1] as KilnError['code'] | undefined;
          return finish(new KilnError(code ?? 'KILN_ERR_VMM_FAILED', `VM ${id} failed: ${vm.stateReason ?? ''}`, { vm: id }));
        }
        if (vm.state === 'stopped') finish(new KilnError('KILN_ERR_INVALID_STATE', `VM ${id} stopped: ${vm.stateReason ?? ''}`));
      };
      const timer = setTimeout(() => finish(new KilnError('KILN_ERR_BOOT_TIMEOUT', `VM ${id} not ${targets.join('|')} after ${timeoutMs} ms`)), timeoutMs);
      this.states.on(id, onState);
      void this.deps.store.getVm(id).then(onState);
    });
  }
}
