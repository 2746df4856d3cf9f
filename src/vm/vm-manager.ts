// VM lifecycle: creating → booting → ready ⇄ paused → stopping → stopped | failed.
// Every transition goes through transition(): persisted, published, counted. Operations on
// one VM are serialised by a per-VM lock; the VMM's exit is handled under the same lock.
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { KilnConfig } from '../config.ts';
import { HOST_CPUS, HOST_MEMORY_MIB } from '../config.ts';
import type { Admission } from './admission.ts';
import { killAndWait, processesUnder } from './vmm-sweep.ts';
import { KilnError } from '../errors.ts';
import type { EventBus } from '../events/event-bus.ts';
import { ConsoleFollower } from '../guest/console-follower.ts';
import { GuestInputGate } from '../events/guest-input-gate.ts';
import { parseMarker, parseOutputLine, stopCommand, stripMarkers } from '../guest/console-protocol.ts';
import type { ImageService } from '../image/image-service.ts';
import { prepareVmRoot } from '../image/rootfs-prepare.ts';
import type { VolumeAttachRequest, VolumeService } from '../image/volume-service.ts';
import type { Metrics } from '../metrics/metrics.ts';
import { assertHostPortFree, tapName, type NetworkManager } from '../net/network-manager.ts';
import type { AgentInfo, ImageRecord, NetworkMode, PortMapping, ReadinessMode, Store, VmProcess, VmRecord, VmState } from '../store/store.ts';
import { AGENT_SESSION_PORT, AGENT_VSOCK_PORT, AgentLink, GUEST_CID, agentChannel, type AgentHub } from './agent-link.ts';
import { CleanupStack, describeFailures } from '../util/cleanup-stack.ts';
import { KeyedLock } from '../util/keyed-lock.ts';
import type { Accelerator, BackendName, VmmDriver, VmmExit, VmmInstance, VmmSnapshot, VmSpec } from '../vmm/driver.ts';
import { AgentClient } from '../guest/agent/client.ts';
import { clonePlan, createCloneNetwork } from '../net/clone-netns.ts';
import { normalizeEgress, type EgressPolicy, type EgressSpec } from '../net/egress.ts';
import type { GuestAssets } from './guest-assets.ts';
import { Timeline, fromMonotonic, preciseNow } from './timeline.ts';
import { guestConfig, runtimeFiles, vmSpec, type VmNetAttachment } from './vm-spec.ts';
import { CLASSIC_STOP_GRACE_MS, DEFAULT_DISK_GIB, GIB, checkClassicInput, checkDiskSize, classicDiskPath, ensureClassicDisk, growDiskOffline, newClassicVm, type ClassicInput } from './classic.ts';
import { encodeConfigDrive } from '../guest/config-drive.ts';
import { ConsoleMux, type ConsoleClient } from './console-mux.ts';
import { CLASSIC_BASE_ALIAS } from '../image/recipes/debian-classic.ts';

export const MIN_MEMORY_MIB = 128;
export const DEFAULT_IMAGE = 'default';

export interface CreateVmInput {
  name?: string;
  image?: string;
  vcpus?: number;
  memory_mib?: number;
  kernel_args?: string[];
  cmd?: string[];
  env?: Record<string, string>;
  network?: NetworkMode;
  /** Where the guest may connect beyond the host; default: the public internet only. */
  egress?: EgressSpec;
  ports?: { host: number; guest: number; proto?: 'tcp' | 'udp' }[];
  readiness?: ReadinessMode;
  volumes?: VolumeAttachRequest[];
  /** A classic VM (systemd, SSH, its own writable disk) instead of a workload VM. */
  classic?: ClassicInput;
  /** Container-style process overrides (entrypoint, workdir, user, tagged stdio). */
  process?: VmProcess;
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

/** kilnd-internal create options (not in the API). */
export interface CreateVmInternal {
  /** Guest RAM in `<runtime dir>/memory`, mapped shared: a template's golden VM (src/snapshot). */
  fileBackedMemory?: boolean;
}

/** A snapshot's restore, prepared and verified by the snapshot service (src/snapshot). */
export interface CloneRequest {
  snapshotId: string;
  name?: string;
  env?: Record<string, string>;
  imageId: string;
  vcpus: number;
  memoryMib: number;
  cmd: string[] | null;
  readiness: ReadinessMode;
  egress: EgressPolicy;
  /** The token the guest holds (the snapshotted VM's): authenticates the identity op. */
  guestToken: string;
  /** Copies the snapshot's scratch and config drives into the clone's runtime dir. */
  prepareFiles(runtimeDir: string, scratch: string, config: string): Promise<void>;
  /** The clone's VmSpec from the generic one: the snapshot's command line, NIC, memory file. */
  spec(base: VmSpec, netns: string | undefined): VmSpec;
  vmm: VmmSnapshot;
  /** The guest's network as snapshotted (null: none). */
  guestNet: { ip: string; tap: string; gatewayMac: string; mac?: string } | null;
}

/** Per running VMM: what kilnd holds while the VM is up. */
interface LiveVm {
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

const ACTIVE: readonly VmState[] = ['booting', 'ready', 'paused', 'stopping'];

export class VmManager {
  private readonly live = new Map<string, LiveVm>();
  private readonly lock = new KeyedLock();
  private readonly states = new EventEmitter<Record<string, [VmRecord | null]>>();
  /** The workload's tagged stdout/stderr, as the console delivers it (container logs). */
  readonly output = new EventEmitter<{ output: [WorkloadOutput] }>();
  private closing = false;
  /** VMs booted with their RAM in a shared file (template golden VMs); kilnd-internal. */
  private readonly fileBackedMemory = new Set<string>();

  constructor(
    private readonly deps: {
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
    },
  ) {
    this.states.setMaxListeners(0);
  }

  private get vmsDir(): string {
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

  list(): Promise<VmRecord[]> {
    return this.deps.store.listVms();
  }

  // ---- create / boot -------------------------------------------------------------------

  async create(input: CreateVmInput, internal: CreateVmInternal = {}): Promise<VmRecord> {
    if (this.closing) throw new KilnError('KILN_ERR_SHUTTING_DOWN', 'kilnd is shutting down');
    const vcpus = input.vcpus ?? 1;
    const memoryMib = input.memory_mib ?? 256;
    if (vcpus > HOST_CPUS) {
      throw new KilnError('KILN_ERR_RESOURCE_LIMIT', `vcpus ${vcpus} exceeds this host's ${HOST_CPUS} CPUs`);
    }
    if (memoryMib > HOST_MEMORY_MIB) {
      throw new KilnError('KILN_ERR_RESOURCE_LIMIT', `memory_mib ${memoryMib} exceeds this host's ${HOST_MEMORY_MIB} MiB`);
    }
    const network = input.network ?? 'bridge';
    const readiness = input.readiness ?? 'auto';
    if (network === 'none' && readiness !== 'auto') {
      throw new KilnError('KILN_ERR_VALIDATION', `readiness "${readiness}" needs the guest agent, which needs a network; a VM without one reports readiness over the serial console`);
    }
    const egress = normalizeEgress(input.egress);
    if (input.egress !== undefined && network === 'none') {
      throw new KilnError('KILN_ERR_VALIDATION', 'egress needs a network: drop "egress" or use "network": "bridge"');
    }
    const ports = portMappings(input.ports ?? []);
    if (ports.length && network === 'none') {
      throw new KilnError('KILN_ERR_VALIDATION', 'ports need a network: drop "ports" or use "network": "bridge"');
    }
    for (const p of ports) await assertHostPortFree(p.proto, p.hostPort);
    const id = `vm-${randomBytes(5).toString('hex')}`;
    const name = input.name ?? id;
    // Cheap checks first: a bad key or a taken name must not wait for a base image build.
    const classicIn = input.classic ? this.checkClassic(input, name) : null;
    if (await this.deps.store.getVm(name)) {
      throw new KilnError('KILN_ERR_NAME_CONFLICT', `a VM named ${JSON.stringify(name)} already exists`);
    }
    // A registry reference not pulled yet is pulled (and converted) here, before the VM exists.
    const image = await this.resolveImage(input);
    const volumes = await this.deps.volumes.resolveAttachments(input.volumes ?? []);
    let classic = null;
    if (classicIn) {
      if (image.format !== 'ext4') {
        throw new KilnError('KILN_ERR_VALIDATION', `a classic VM's disk is cloned from an ext4 image; ${image.name} is ${image.format} (pull or import it with format ext4, or use "${CLASSIC_BASE_ALIAS}")`);
      }
      const sizeBytes = (input.classic!.disk_size_gib ?? Math.max(DEFAULT_DISK_GIB, Math.ceil(image.sizeBytes / GIB))) * GIB;
      await checkDiskSize(sizeBytes, image.sizeBytes, this.deps.config.stateDir);
      classic = newClassicVm({ ...classicIn, diskPath: classicDiskPath(this.deps.config.stateDir, id), sizeBytes });
    }
    if (await this.deps.store.getVm(name)) {
      throw new KilnError('KILN_ERR_NAME_CONFLICT', `a VM named ${JSON.stringify(name)} already exists`);
    }
    const now = Date.now();
    const vm: VmRecord = {
      id,
      name,
      state: 'creating',
      stateReason: null,
      imageId: image.id,
      vcpus,
      memoryMib,
      kernelArgs: input.kernel_args ?? [],
      cmd: input.cmd ?? null,
      env: input.env ?? {},
      network,
      ip: null,
      ports,
      readiness,
      // Every VM with an agent channel (kiln's network, or Firecracker's vsock) gets a token.
      agentToken: network === 'bridge' || this.deps.driver.name === 'firecracker' ? randomBytes(16).toString('hex') : null,
      agent: null,
      health: 'unknown',
      healthReason: null,
      backend: this.deps.driver.name,
      accelerator: this.deps.accelerator,
      pid: null,
      bootCount: 1,
      consoleOffset: 0,
      exitCode: null,
      volumes,
      process: input.process ?? null,
      classic,
      egress: network === 'bridge' ? egress : null,
      createdAt: now,
      updatedAt: now,
    };
    const timeline = this.timeline(vm);
    timeline.begin('api.accept', preciseNow());
    await this.deps.admission.admit(vm, () => this.deps.store.insertVm(vm));
    if (network === 'bridge') {
      // Leased now, before boot: the address is in the create response.
      const addr = await this.deps.network.lease(id);
      if (!addr) {
        await this.deps.store.deleteVm(id);
        throw new KilnError('KILN_ERR_RESOURCE_LIMIT', `no free address left in ${this.deps.config.network.cidr}`);
      }
      vm.ip = addr.ip;
    }
    await timeline.end('api.accept');
    if (internal.fileBackedMemory) this.fileBackedMemory.add(id);
    this.deps.bus.publish('vm.created', id, { name, image: image.name });
    this.deps.metrics.vmTransitions.inc({ to: 'creating' });
    void this.lock.run(id, () => this.boot(vm, timeline)).catch((e) => this.deps.log.warn({ vm: id, err: e }, 'boot failed'));
    return vm;
  }

  /**
   * Classic VMs need a backend that reports a guest's reboot and power-off (QEMU's). A new one
   * is a request this host cannot take (KILN_ERR_VALIDATION on "classic"); an existing one
   * cannot boot under this kilnd's backend (KILN_ERR_INVALID_STATE).
   */
  private assertClassicBackend(code: 'KILN_ERR_VALIDATION' | 'KILN_ERR_INVALID_STATE'): void {
    const why = this.deps.driver.classicUnsupported;
    if (why) throw new KilnError(code, `classic VMs cannot run on the ${this.deps.driver.name} backend: ${why}`, { backend: this.deps.driver.name, field: 'classic' });
  }

  private checkClassic(input: CreateVmInput, name: string) {
    this.assertClassicBackend('KILN_ERR_VALIDATION');
    if (input.cmd) throw new KilnError('KILN_ERR_VALIDATION', 'a classic VM runs its image\'s init (systemd): "cmd" does not apply (use "user_data" for a first-boot script)');
    if ((input.network ?? 'bridge') !== 'bridge') {
      throw new KilnError('KILN_ERR_VALIDATION', 'a classic VM needs kiln\'s network (SSH, the agent): "network": "none" does not apply');
    }
    return checkClassicInput(input.classic!, name);
  }

  private async resolveImage(input: CreateVmInput): Promise<ImageRecord> {
    if (input.classic && (input.image === undefined || input.image === CLASSIC_BASE_ALIAS)) {
      if (!this.deps.classicBase) throw new KilnError('KILN_ERR_HOST_SETUP', 'this kilnd has no classic base image builder');
      return this.deps.classicBase();
    }
    return this.deps.images.resolveForVm(input.image ?? DEFAULT_IMAGE);
  }

  private timeline(vm: VmRecord): Timeline {
    return new Timeline(this.deps.store, this.deps.metrics, vm.id, vm.bootCount, {
      backend: vm.backend,
      accelerator: vm.accelerator,
    });
  }

  /** Runs under the VM's lock up to the VMM being spawned; readiness is awaited outside it. */
  private async boot(vm: VmRecord, timeline: Timeline): Promise<void> {
    const dir = this.runtimeDir(vm.id);
    const files = runtimeFiles(dir);
    const undo = new CleanupStack();
    const t0 = preciseNow();
    let live: LiveVm | null = null;
    try {
      const image = await this.deps.images.get(vm.imageId);
      const extra = await timeline.step('rootfs.prepare', async () => {
        const drives = await this.deps.volumes.drivesFor(vm, dir);
        if (vm.classic) {
          await this.prepareClassic(vm, image, dir, drives, undo);
          await this.deps.volumes.buildDrives(vm, drives);
          return drives;
        }
        const strategy = await prepareVmRoot({
          runtimeDir: dir, scratch: files.scratch, config: files.config, scratchTemplate: this.deps.assets.scratchTemplate,
          guest: { ...guestConfig(vm, image, this.deps.config.stopGraceMs, drives), agent: this.agentConfig(vm) }, undo,
        });
        if (strategy) this.deps.log.debug({ vm: vm.id, strategy }, 'writable layer cloned');
        await this.deps.volumes.buildDrives(vm, drives);
        return drives;
      });
      const net = await this.attachNetwork(vm, timeline, undo);
      const spec = vmSpec(vm, image, this.deps.assets, dir, this.deps.driver, net, extra);
      const channel = agentChannel(vm, dir);
      if (vm.agentToken && channel?.kind === 'vsock') spec.vsock = { guestCid: GUEST_CID, udsPath: channel.udsPath };
      if (this.fileBackedMemory.has(vm.id)) spec.memoryFile = { path: path.join(dir, 'memory'), shared: true };
      const consoleLog = path.join(dir, 'console.log');
      const consoleOffset = (await fs.stat(consoleLog).catch(() => null))?.size ?? 0;
      const instance = await timeline.step('vmm.spawn', () => this.deps.driver.start(spec));
      undo.push('vmm', () => instance.kill());
      timeline.begin('guest.kernel');
      live = this.track(vm, instance, consoleOffset, timeline);
      undo.release();
      // The port publications were rendered when the tap was plugged (network.plug).
      await this.transition(vm.id, 'booting', { pid: instance.pid, consoleOffset, exitCode: null, agent: null });
    } catch (e) {
      const errors = await undo.run();
      if (errors.length) this.deps.log.error({ vm: vm.id, errors: describeFailures(errors) }, 'cleanup after failed boot');
      const err = e instanceof KilnError ? e : new KilnError('KILN_ERR_VMM_FAILED', (e as Error).message);
      await this.transition(vm.id, 'failed', { pid: null }, `${err.code}: ${err.message}`);
      if (vm.ports.length) await this.deps.network.sync().catch(() => {});
      throw err;
    }
    void this.awaitReady(vm, live, t0);
  }

  /**
   * A classic VM's root: its own disk (cloned and grown on the first boot, kept afterwards)
   * and the config drive. The disk is outside the runtime dir: a failed boot keeps it.
   */
  private async prepareClassic(vm: VmRecord, image: ImageRecord, dir: string, drives: Awaited<ReturnType<VolumeService['drivesFor']>>, undo: CleanupStack): Promise<void> {
    if ((await fs.mkdir(dir, { recursive: true, mode: 0o700 })) !== undefined) {
      undo.push('runtime dir', () => fs.rm(dir, { recursive: true, force: true }));
    }
    const made = await ensureClassicDisk(vm.classic!, image);
    if (made) {
      vm.classic = { ...vm.classic!, disk: { ...vm.classic!.disk, strategy: made.strategy, cloneMs: Math.round(made.ms * 100) / 100 } };
      await this.deps.store.updateVm(vm.id, { classic: vm.classic });
      this.deps.log.info({ vm: vm.id, strategy: made.strategy, ms: made.ms }, 'classic VM disk cloned from its base image');
    }
    const guest = { ...guestConfig(vm, image, this.deps.config.stopGraceMs, drives), agent: this.agentConfig(vm) };
    await fs.writeFile(runtimeFiles(dir).config, encodeConfigDrive(guest));
  }

  /** The config-drive keys that start the guest agent (docs/agent-protocol.md). */
  private agentConfig(vm: VmRecord) {
    const channel = agentChannel(vm, this.runtimeDir(vm.id));
    if (!vm.agentToken || !channel) return undefined;
    if (channel.kind === 'vsock') return { token: vm.agentToken, vsockPort: AGENT_VSOCK_PORT };
    const hub = this.deps.agents;
    return { token: vm.agentToken, port: AGENT_SESSION_PORT, ...(AgentLink.pushes(vm, hub) ? { host: hub.pushTarget } : {}) };
  }

  private async attachNetwork(vm: VmRecord, timeline: Timeline, undo: CleanupStack): Promise<VmNetAttachment | undefined> {
    if (vm.network !== 'bridge' || !vm.ip) return undefined;
    const network = this.deps.network;
    return timeline.step('network.prepare', async () => {
      const nic = await network.plug(vm);
      undo.push('tap', () => network.unplug(vm.id));
      return { nic, kernelArgs: network.kernelArgs(network.address(vm.ip!)) };
    });
  }

  /** The NIC a running VM already has (re-attach after a kilnd restart). */
  private netAttachment(vm: VmRecord): VmNetAttachment | undefined {
    if (vm.network !== 'bridge' || !vm.ip) return undefined;
    const addr = this.deps.network.address(vm.ip);
    return { nic: { tap: tapName(vm.id), mac: addr.mac }, kernelArgs: this.deps.network.kernelArgs(addr) };
  }

  /** Takes a VM's tap and port rules off the host once its VMM is gone. */
  private async detachNetwork(vm: Pick<VmRecord, 'id' | 'network' | 'ip'>): Promise<void> {
    if (vm.network !== 'bridge') return;
    await this.deps.network.unplug(vm.id, vm.ip).catch((e) => this.deps.log.error({ vm: vm.id, err: e }, 'removing tap failed'));
    await this.deps.network.sync().catch((e) => this.deps.log.error({ vm: vm.id, err: e }, 'updating nftables failed'));
  }

  /** `restored`: a clone's timeline, whose `agent.hello` phase the hello ends. */
  private async awaitReady(vm: VmRecord, live: LiveVm, t0: number, restored?: Timeline): Promise<void> {
    const timeout = setTimeout(() => live.failBoot(new KilnError('KILN_ERR_BOOT_TIMEOUT', `guest not ready after ${this.deps.config.bootTimeoutMs} ms`)), this.deps.config.bootTimeoutMs);
    let agentReady: { info: AgentInfo; knownAt: number } | null = null;
    try {
      if (live.agent) {
        // The agent's readiness (push, or a logged fallback) is the VM's; the console's marker
        // only closes the guest.init phase.
        agentReady = await Promise.race([live.agent.ready(), live.ready.then(() => new Promise<never>(() => {}))]);
        // The hello proves the kernel booted and init finished, even if their console markers
        // are still on their way.
        await live.timeline?.settle(['guest.kernel', 'guest.init']);
        await restored?.end('agent.hello', fromMonotonic(agentReady.knownAt));
        const { info } = agentReady;
        // A problem reported while the hello was on its way (the agent is slower than a hostile
        // workload started at the same instant) is not erased by it.
        const healthy = info.readiness === 'push' && !live.misbehaved;
        await this.deps.store.updateVm(vm.id, { agent: info, ...(healthy ? { health: 'healthy' as const, healthReason: null } : {}) });
        this.deps.bus.publish('vm.agent', vm.id, { event: 'ready', readiness: info.readiness, channel: info.channel });
      } else {
        await live.ready;
      }
      await this.lock.run(vm.id, async () => {
        const cur = await this.deps.store.getVm(vm.id);
        if (cur?.state !== 'booting' || this.live.get(vm.id) !== live) return;
        this.deps.metrics.provisionTotal.observe({ backend: vm.backend, accelerator: vm.accelerator }, (preciseNow() - t0) / 1000);
        await this.transition(vm.id, 'ready');
      });
      if (agentReady && live.agent) void this.recordReadyLatency(vm.id, live.agent, agentReady);
    } catch (e) {
      // A boot that failed while its VMM still runs: kill it; the exit handler records why.
      if (this.live.get(vm.id) === live && !live.deleting) {
        live.failReason ??= `${(e as KilnError).code ?? 'KILN_ERR_GUEST_FAILED'}: ${(e as Error).message}`;
        await live.instance.kill().catch(() => {});
      }
    } finally {
      clearTimeout(timeout);
    }
  }

  /** Wires a running VMM's console and exit into the lifecycle. */
  private track(vm: VmRecord, instance: VmmInstance, consoleOffset: number, timeline: Timeline | null): LiveVm {
    const id = vm.id;
    let markReady!: () => void;
    let failBoot!: (e: Error) => void;
    const ready = new Promise<void>((res, rej) => {
      markReady = res;
      failBoot = rej;
    });
    ready.catch(() => {});
    const gi = this.deps.config.guestInput;
    const follower = new ConsoleFollower(instance.consoleLogPath, consoleOffset, { rotateAtBytes: Math.floor(gi.consoleLogMaxBytes / 2) });
    const live: LiveVm = { instance, follower, timeline, ready, markReady, failBoot, failReason: null, guestError: null, exitCode: null, deleting: false, agent: null, boot: vm.bootCount, outputSeq: 0,
      console: instance.openConsole ? new ConsoleMux(() => instance.openConsole!()) : null, gate: new GuestInputGate(gi.eventsPerSecond, gi.eventsBurst), seen: new Set(), misbehaved: false };
    const channel = agentChannel(vm, this.runtimeDir(id));
    if (vm.agentToken && channel) {
      live.agent = new AgentLink(vm, channel, this.deps.agents, this.deps.log, {
        onHello: (hello) => this.guestEvent(id, live, 'vm.agent', { event: 'hello', agent: hello.agent, connects: hello.connects, boot: hello.boot }),
        onExit: (exit) => {
          live.exitCode = exit.code ?? 128 + (exit.signal ?? 0);
        },
        onProblem: (p) => {
          live.misbehaved = true;
          if (this.admitGuestEvent(id, live)) void this.markUnhealthy(id, `guest agent ${p.reason}: ${p.message}`);
        },
      });
    }
    follower.on('line', (line) => this.onConsoleLine(id, live, line));
    // This boot's output now starts at the beginning of the (truncated) file.
    follower.on('rotated', () => void this.deps.store.updateVm(id, { consoleOffset: 0 }).catch(() => {}));
    follower.on('error', (e) => this.deps.log.warn({ vm: id, err: e }, 'console follower error'));
    follower.start();
    this.live.set(id, live);
    void instance.exited.then((exit) => this.lock.run(id, () => this.onVmmExit(id, live, exit)));
    return live;
  }

  private onConsoleLine(id: string, live: LiveVm, line: string): void {
    const out = parseOutputLine(line);
    if (out) {
      this.output.emit('output', { vmId: id, boot: live.boot, seq: live.outputSeq++, ...out });
      return;
    }
    const m = parseMarker(line);
    if (!m) return;
    if (m.event === 'boot' || m.event === 'ready') {
      if (live.seen.has(m.event)) return;
      live.seen.add(m.event);
    }
    switch (m.event) {
      case 'boot':
        void live.timeline?.end('guest.kernel');
        live.timeline?.begin('guest.init');
        break;
      case 'ready':
        live.agent?.markConsoleReady();
        void live.timeline?.end('guest.init').then(() => live.markReady());
        if (!live.timeline) live.markReady();
        this.guestEvent(id, live, 'vm.guest', { event: 'ready', ...m.fields });
        break;
      case 'exit':
        live.exitCode = m.fields.code !== undefined ? Number(m.fields.code) : 128 + Number(m.fields.signal ?? 0);
        this.guestEvent(id, live, 'vm.guest', { event: 'exit', ...m.fields });
        break;
      case 'warn':
        if (this.guestEvent(id, live, 'vm.guest', { event: 'warn', ...m.fields })) this.deps.log.warn({ vm: id, ...m.fields }, 'guest warning');
        break;
      case 'error':
        live.guestError = `kiln-init failed at ${m.fields.stage ?? '?'}: ${(m.fields.msg ?? '').replaceAll('_', ' ')} (errno ${m.fields.errno ?? '?'})`;
        live.failBoot(new KilnError('KILN_ERR_GUEST_FAILED', live.guestError));
        this.guestEvent(id, live, 'vm.guest', { event: 'error', ...m.fields });
        break;
    }
  }

  /**
   * Whether the guest may make kilnd record one more thing now (docs/security.md, "Bounded
   * guest input"). When not, the VM gets at most one `rate_limited` event per interval.
   */
  private admitGuestEvent(id: string, live: LiveVm): boolean {
    const v = live.gate.admit();
    if (v.pass) return true;
    if (v.notice) {
      this.deps.log.warn({ vm: id, dropped: v.notice.dropped }, 'guest input rate-limited');
      this.deps.bus.publish('vm.guest', id, { event: 'rate_limited', dropped: v.notice.dropped });
    }
    return false;
  }

  /** Records an event a guest caused, subject to its rate limit; true if it was recorded. */
  private guestEvent(id: string, live: LiveVm, type: string, data: Record<string, unknown>): boolean {
    if (!this.admitGuestEvent(id, live)) return false;
    this.deps.bus.publish(type, id, data);
    return true;
  }

  private async onVmmExit(id: string, live: LiveVm, exit: VmmExit): Promise<void> {
    if (this.live.get(id) !== live) return;
    this.live.delete(id);
    // The guest's last lines (its exit code, a container's final output) may not be read yet.
    await live.follower.drain();
    live.follower.close();
    live.agent?.close();
    live.console?.close('the VM stopped');
    live.failBoot(new KilnError('KILN_ERR_VMM_FAILED', exit.reason));
    if (live.deleting) return;
    const vm = await this.deps.store.getVm(id);
    if (!vm) return;
    const reason = live.failReason ?? (live.guestError ? `KILN_ERR_GUEST_FAILED: ${live.guestError}` : null);
    if (!reason && (vm.state === 'stopping' || exit.clean)) {
      const rebooting = !!vm.classic && vm.state !== 'stopping' && exit.reset === true;
      const why = vm.state === 'stopping' ? 'stopped on request'
        : rebooting ? 'guest rebooted: starting it again'
        : vm.classic ? 'guest powered off' : `guest powered off (workload exit code ${live.exitCode ?? 'unknown'})`;
      await this.transition(id, 'stopped', { pid: null, exitCode: live.exitCode }, why);
      await this.detachNetwork(vm);
      // `reboot` inside a classic VM means what it means on any machine. (QEMU runs with
      // -no-reboot so that a workload VM's reset ends it; here kilnd boots it again.)
      if (rebooting) {
        setImmediate(() => void this.start(id).catch((e) => this.deps.log.error({ vm: id, err: e }, 'restart after guest reboot failed')));
      }
      return;
    }
    await this.failAndRelease(vm, reason ?? `KILN_ERR_VMM_FAILED: ${exit.reason}`);
  }

  /** A failed VM keeps its record (and why) but no process, socket or file. */
  private async failAndRelease(vm: VmRecord, reason: string): Promise<void> {
    this.deps.metrics.vmmExits.inc();
    const tail = await this.consoleTail(vm, 2048);
    await fs.rm(this.runtimeDir(vm.id), { recursive: true, force: true });
    await this.transition(vm.id, 'failed', { pid: null }, reason, { console_tail: tail });
    await this.detachNetwork(vm);
  }

  /** The last `bytes` of the console log at or after `fromOffset`, without kiln's markers. */
  private async consoleTail(vm: VmRecord, bytes: number, fromOffset = vm.consoleOffset): Promise<string> {
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

  private async transition(
    id: string,
    to: VmState,
    patch: Partial<VmRecord> = {},
    reason: string | null = null,
    extra: Record<string, unknown> = {},
  ): Promise<VmRecord> {
    const prev = await this.deps.store.getVm(id);
    const vm = await this.deps.store.updateVm(id, { ...patch, state: to, stateReason: reason });
    this.deps.metrics.vmTransitions.inc({ to });
    this.deps.bus.publish('vm.state', id, { from: prev?.state ?? null, to, reason, ...extra });
    this.deps.log.info({ vm: id, from: prev?.state, to, reason }, 'vm state');
    this.states.emit(id, vm);
    return vm;
  }

  // ---- waiting ---------------------------------------------------------------------------

  /** Resolves when the VM reaches one of `targets`; rejects if it fails, vanishes or times out. */
  async waitFor(idOrName: string, targets: VmState[], timeoutMs: number): Promise<VmRecord> {
    const first = await this.get(idOrName);
    const id = first.id;
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

  // ---- operations --------------------------------------------------------------------------

  async stop(idOrName: string, graceMsIn?: number): Promise<VmRecord> {
    const { id, classic } = await this.get(idOrName);
    const graceMs = graceMsIn ?? (classic ? CLASSIC_STOP_GRACE_MS : this.deps.config.stopGraceMs);
    const live = await this.lock.run(id, async () => {
      const vm = await this.get(id);
      if (vm.state === 'stopped') return null;
      if (!ACTIVE.includes(vm.state) || vm.state === 'stopping') {
        throw new KilnError('KILN_ERR_INVALID_STATE', `cannot stop a VM that is ${vm.state}`);
      }
      const l = this.live.get(id);
      if (!l) throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${id} has no running VMM`);
      if (vm.state === 'paused') await l.instance.resume();
      await this.transition(id, 'stopping');
      if (vm.state === 'booting') await l.instance.kill();
      else if (vm.classic) await this.powerOffClassic(vm, l);
      else await this.writeConsole(id, l, stopCommand(graceMs)).catch(() => l.instance.kill());
      return l;
    });
    if (live) {
      // kiln-init gets `graceMs` to stop the workload; past that plus a margin, pull the plug.
      const stopped = await Promise.race([
        live.instance.exited.then(() => true),
        new Promise<boolean>((r) => setTimeout(() => r(false), graceMs + 5000).unref()),
      ]);
      if (!stopped) await live.instance.kill();
    }
    return this.waitFor(id, ['stopped'], 10_000).catch(() => this.get(id));
  }

  /**
   * systemd shuts a classic VM down: asked by the agent (SIGRTMIN+4 to PID 1, systemd's
   * poweroff), else by the ACPI power button (QMP system_powerdown), else it is killed.
   */
  private async powerOffClassic(vm: VmRecord, l: LiveVm): Promise<void> {
    try {
      if (!l.agent) throw new Error('no agent');
      await l.agent.client.shutdown(undefined, { timeoutMs: 5000 });
      this.deps.log.info({ vm: vm.id }, 'classic VM: poweroff requested through the agent');
    } catch (e) {
      this.deps.log.warn({ vm: vm.id, err: (e as Error).message }, 'classic VM: agent shutdown failed; pressing the ACPI power button');
      if (l.instance.powerdown) await l.instance.powerdown().catch(() => l.instance.kill());
      else await l.instance.kill();
    }
  }

  /** Resizes a stopped classic VM's disk (grow only; offline: truncate, e2fsck, resize2fs). */
  async resizeDisk(idOrName: string, sizeGib: number): Promise<VmRecord> {
    const { id } = await this.get(idOrName);
    return this.lock.run(id, async () => {
      const vm = await this.get(id);
      if (!vm.classic) throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${id} is not a classic VM: it has no disk of its own to resize`);
      if (vm.state !== 'stopped') throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${id} is ${vm.state}; its disk is resized while it is stopped (kiln vm stop first)`);
      const sizeBytes = sizeGib * GIB;
      const current = vm.classic.disk.sizeBytes;
      await checkDiskSize(sizeBytes, current, this.deps.config.stateDir, current);
      if (await fs.stat(vm.classic.disk.path).catch(() => null)) await growDiskOffline(vm.classic.disk.path, sizeBytes);
      const classic = { ...vm.classic, disk: { ...vm.classic.disk, sizeBytes } };
      const out = await this.deps.store.updateVm(id, { classic });
      this.deps.bus.publish('vm.disk', id, { event: 'resized', from_bytes: current, to_bytes: sizeBytes });
      return out;
    });
  }

  async start(idOrName: string): Promise<VmRecord> {
    const { id } = await this.get(idOrName);
    return this.lock.run(id, async () => {
      const vm = await this.get(id);
      if (vm.state !== 'stopped') throw new KilnError('KILN_ERR_INVALID_STATE', `cannot start a VM that is ${vm.state}`);
      if (vm.classic) this.assertClassicBackend('KILN_ERR_INVALID_STATE');
      // A boot uses this kilnd's backend and accelerator, whatever the last boot used. The VM
      // commits its vCPUs and memory again from here on ('creating'), if the host has them.
      const next = await this.deps.admission.admit(vm, () =>
        this.transition(id, 'creating', { bootCount: vm.bootCount + 1, backend: this.deps.driver.name, accelerator: this.deps.accelerator }),
      );
      await this.boot(next, this.timeline(next));
      return this.get(id);
    });
  }

  async pause(idOrName: string): Promise<VmRecord> {
    return this.withLive(idOrName, 'ready', async (live, id) => {
      await live.instance.pause();
      return this.transition(id, 'paused');
    });
  }

  async resume(idOrName: string): Promise<VmRecord> {
    return this.withLive(idOrName, 'paused', async (live, id) => {
      await live.instance.resume();
      return this.transition(id, 'ready');
    });
  }

  private async withLive(idOrName: string, required: VmState, fn: (l: LiveVm, id: string) => Promise<VmRecord>): Promise<VmRecord> {
    const { id } = await this.get(idOrName);
    return this.lock.run(id, async () => {
      const vm = await this.get(id);
      const live = this.live.get(id);
      if (vm.state !== required || !live) {
        throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${id} is ${vm.state}; this needs it ${required}`);
      }
      return fn(live, id);
    });
  }

  async delete(idOrName: string): Promise<void> {
    const { id, network, ip: lease } = await this.get(idOrName);
    await this.lock.run(id, async () => {
      const live = this.live.get(id);
      if (live) {
        live.deleting = true;
        await live.instance.kill();
        this.live.delete(id);
        live.follower.close();
        live.agent?.close();
        live.console?.close('the VM was deleted');
      }
      await fs.rm(this.runtimeDir(id), { recursive: true, force: true });
      const { classic } = await this.get(id);
      if (classic) await fs.rm(classic.disk.path, { force: true });
      await this.deps.store.deleteVm(id);
      this.fileBackedMemory.delete(id);
      // After the row is gone: its address and host ports are free again, and the render omits it.
      await this.detachNetwork({ id, network, ip: lease });
      this.deps.bus.publish('vm.deleted', id);
      this.states.emit(id, null);
    });
  }


  // ---- snapshots and clones (src/snapshot drives these) -----------------------------------

  /**
   * Runs `fn` with the VM's running VMM under the VM's lock (a snapshot). The VM must be
   * ready or paused; `fn` says whether it left the guest paused.
   */
  async withInstance<T>(idOrName: string, fn: (vm: VmRecord, instance: VmmInstance, runtimeDir: string) => Promise<{ result: T; paused: boolean }>): Promise<T> {
    const { id } = await this.get(idOrName);
    return this.lock.run(id, async () => {
      const vm = await this.get(id);
      const live = this.live.get(id);
      if ((vm.state !== 'ready' && vm.state !== 'paused') || !live) {
        throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${id} is ${vm.state}; a snapshot needs it ready or paused`);
      }
      const { result, paused } = await fn(vm, live.instance, this.runtimeDir(id));
      if (paused && vm.state === 'ready') await this.transition(id, 'paused', {}, 'snapshotted');
      if (!paused && vm.state === 'paused') await this.transition(id, 'ready');
      return result;
    });
  }

  /**
   * A new VM restored from a snapshot: its own namespace with the snapshot's guest network,
   * its own copies of the writable drives, the VMM loaded from the snapshot, then resumed and
   * given its own identity (hostname, token, env, RNG seed, clock, ARP) by the guest agent,
   * which re-handshakes: that hello is the clone's readiness. Returns once the VMM runs (like
   * create()); the VM turns ready when the agent says hello.
   */
  async createClone(req: CloneRequest): Promise<VmRecord> {
    if (this.closing) throw new KilnError('KILN_ERR_SHUTTING_DOWN', 'kilnd is shutting down');
    if (!req.guestNet) throw new KilnError('KILN_ERR_VALIDATION', 'the snapshot is of a VM without a network: its clones could not get an identity or an agent');
    const id = `vm-${randomBytes(5).toString('hex')}`;
    const name = req.name ?? id;
    if (await this.deps.store.getVm(name)) throw new KilnError('KILN_ERR_NAME_CONFLICT', `a VM named ${JSON.stringify(name)} already exists`);
    const now = Date.now();
    const vm: VmRecord = {
      id, name, state: 'creating', stateReason: null, imageId: req.imageId, vcpus: req.vcpus, memoryMib: req.memoryMib,
      kernelArgs: [], cmd: req.cmd, env: req.env ?? {}, network: 'bridge', ip: null, ports: [], readiness: req.readiness,
      agentToken: randomBytes(16).toString('hex'), agent: null, health: 'unknown', healthReason: null,
      backend: this.deps.driver.name, accelerator: this.deps.accelerator, pid: null, bootCount: 1, consoleOffset: 0,
      exitCode: null, volumes: [], egress: req.egress, createdAt: now, updatedAt: now,
    };
    const timeline = this.timeline(vm);
    timeline.begin('api.accept', preciseNow());
    await this.deps.admission.admit(vm, () => this.deps.store.insertVm(vm));
    await this.deps.store.linkClone(id, req.snapshotId);
    const addr = await this.deps.network.lease(id, [req.guestNet.ip]);
    if (!addr) {
      await this.deps.store.deleteVm(id);
      throw new KilnError('KILN_ERR_RESOURCE_LIMIT', `no free address left in ${this.deps.config.network.cidr}`);
    }
    vm.ip = addr.ip;
    await timeline.end('api.accept');
    this.deps.bus.publish('vm.created', id, { name, snapshot: req.snapshotId });
    this.deps.metrics.vmTransitions.inc({ to: 'creating' });
    await this.lock.run(id, () => this.restoreClone(vm, req, timeline));
    return this.get(id);
  }

  private async restoreClone(vm: VmRecord, req: CloneRequest, timeline: Timeline): Promise<void> {
    const dir = this.runtimeDir(vm.id);
    const files = runtimeFiles(dir);
    const undo = new CleanupStack();
    const t0 = preciseNow();
    let live: LiveVm | null = null;
    try {
      const image = await this.deps.images.get(vm.imageId);
      const net = req.guestNet!;
      const addr = this.deps.network.address(vm.ip!);
      const plan = clonePlan({
        vmId: vm.id, bridge: this.deps.network.bridge, hostVeth: tapName(vm.id), cloneIp: addr.ip, prefix: addr.prefix,
        gateway: addr.gateway, guestIp: net.ip, tap: net.tap, gatewayMac: net.gatewayMac, ...(net.mac ? { guestMac: net.mac } : {}),
        ...(this.deps.network.tapOwner ? { tapOwner: this.deps.network.tapOwner } : {}),
      });
      // Independent: the drive copies and the namespace (the VMM needs both before it starts).
      // Each registers its undo as soon as it exists, so a failure of either unwinds both.
      const prepared = await Promise.allSettled([
        timeline.step('rootfs.prepare', async () => {
          await fs.mkdir(dir, { recursive: true, mode: 0o700 });
          undo.push('runtime dir', () => fs.rm(dir, { recursive: true, force: true }));
          await req.prepareFiles(dir, files.scratch, files.config);
        }),
        timeline.step('network.prepare', async () => {
          await createCloneNetwork(plan);
          undo.push('clone network', () => this.deps.network.unplug(vm.id));
          // The namespace's veth is the clone's port on the bridge: its anti-spoofing and
          // egress rules exist before the guest resumes.
          await this.deps.network.sync();
        }),
      ]);
      for (const r of prepared) if (r.status === 'rejected') throw r.reason;
      const spec = req.spec(vmSpec(vm, image, this.deps.assets, dir, this.deps.driver, undefined, []), plan.netns);
      const instance = await this.deps.driver.restore(spec, req.vmm, undefined, (name, fn) => timeline.step(name, fn));
      undo.push('vmm', () => instance.kill());
      live = this.track(vm, instance, 0, null);
      await timeline.step('vmm.resume', () => instance.resume());
      await timeline.step('guest.identity', () => this.giveIdentity(vm, req, net.ip));
      // From the identity's answer to the guest's hello with its new token (awaitReady).
      timeline.begin('agent.hello');
      live.agent?.markConsoleReady();
      undo.release();
      await this.transition(vm.id, 'booting', { pid: instance.pid, consoleOffset: 0, exitCode: null, agent: null });
    } catch (e) {
      if (live) live.deleting = true;
      const errors = await undo.run();
      if (live) {
        this.live.delete(vm.id);
        live.follower.close();
        live.agent?.close();
      }
      if (errors.length) this.deps.log.error({ vm: vm.id, errors: describeFailures(errors) }, 'cleanup after failed restore');
      const err = e instanceof KilnError ? e : new KilnError('KILN_ERR_SNAPSHOT_FAILED', (e as Error).message);
      // The caller gets the error synchronously: a clone that never ran leaves no record.
      await this.deps.store.deleteVm(vm.id);
      this.deps.bus.publish('vm.deleted', vm.id, { reason: `${err.code}: ${err.message}` });
      this.states.emit(vm.id, null);
      throw err;
    }
    void this.awaitReady(vm, live, t0, timeline);
  }

  /** The identity op over the session channel, with the token the guest still holds. */
  private async giveIdentity(vm: VmRecord, req: CloneRequest, guestIp: string): Promise<void> {
    // The clone's own channel: TCP to its address (QEMU), or its vsock socket (Firecracker).
    const target = agentChannel(vm, this.runtimeDir(vm.id)) ?? { kind: 'tcp' as const, host: vm.ip!, port: AGENT_SESSION_PORT };
    const client = new AgentClient(target, req.guestToken, { connectTimeoutMs: 2000, opTimeoutMs: 5000 });
    const deadline = Date.now() + 15_000;
    for (let attempt = 0; ; attempt++) {
      try {
        await client.identity({ hostname: vm.name, token: vm.agentToken!, env: vm.env, entropy: randomBytes(64) });
        return;
      } catch (e) {
        // The first SYN can race the guest's TCP timers catching up after the resume.
        if (Date.now() > deadline || (e as KilnError).code === 'KILN_ERR_AGENT_PROTOCOL') {
          throw new KilnError('KILN_ERR_GUEST_FAILED', `the clone's agent (${guestIp} behind ${vm.ip}) did not take its identity: ${(e as Error).message}`);
        }
        await new Promise((r) => setTimeout(r, Math.min(50 * 2 ** attempt, 500)));
      }
    }
  }

  // ---- agent ------------------------------------------------------------------------------

  /** A session client for the VM's guest agent (exec, files, status); the VM must be ready. */
  async agent(idOrName: string): Promise<AgentClient> {
    const vm = await this.get(idOrName);
    const live = this.live.get(vm.id);
    if (!live?.agent) {
      const why = vm.network === 'none' ? 'it has no network (the agent needs one)' : `it is ${vm.state}`;
      throw new KilnError('KILN_ERR_AGENT_UNAVAILABLE', `VM ${vm.id} has no guest agent to talk to: ${why}`);
    }
    if (vm.state !== 'ready') throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${vm.id} is ${vm.state}; the agent is reachable when it is ready`);
    return live.agent.client;
  }

  private async recordReadyLatency(id: string, link: AgentLink, ready: { info: AgentInfo; knownAt: number }): Promise<void> {
    const m = await link.latency(ready.knownAt);
    if (!m || this.live.get(id)?.agent !== link) return;
    const info = { ...ready.info, ...m };
    await this.deps.store.updateVm(id, { agent: info }).catch(() => {});
    this.deps.bus.publish('vm.agent', id, { event: 'latency', readiness: info.readiness, latency_ms: info.latencyMs, clock_error_ms: info.clockErrorMs });
  }

  /** A guest that misbehaves on the agent channel stays up but is flagged, with the reason. */
  private async markUnhealthy(id: string, reason: string): Promise<void> {
    const vm = await this.deps.store.getVm(id);
    if (!vm) return;
    this.deps.log.warn({ vm: id, reason }, 'guest agent misbehaved: VM marked unhealthy');
    await this.deps.store.updateVm(id, { health: 'unhealthy', healthReason: reason });
    this.deps.bus.publish('vm.health', id, { health: 'unhealthy', reason });
  }

  // ---- console ---------------------------------------------------------------------------

  /** Bytes to the guest's serial input: through the shared connection while clients hold it. */
  private async writeConsole(id: string, live: LiveVm, data: string | Buffer): Promise<void> {
    if (live.console?.write(data)) return;
    await live.instance.writeConsole(data);
  }

  /**
   * Attaches an interactive client to a running VM's serial console. Returns the function
   * that sends its keystrokes and the detach.
   */
  async attachConsole(idOrName: string, client: ConsoleClient): Promise<{ write: (d: Buffer | string) => void; detach: () => void }> {
    const vm = await this.get(idOrName);
    const live = this.live.get(vm.id);
    if (!live) throw new KilnError('KILN_ERR_CONSOLE_UNAVAILABLE', `VM ${vm.id} is ${vm.state}: a console needs a running VM`);
    if (!live.console) {
      throw new KilnError('KILN_ERR_CONSOLE_UNAVAILABLE', `the ${vm.backend} backend has no interactive console for VM ${vm.id} (its serial output is in the log: kiln vm logs -f)`);
    }
    const mux = live.console;
    const detach = await mux.attach(client);
    return { write: (d) => void mux.write(d), detach };
  }

  // ---- logs ------------------------------------------------------------------------------

  async logs(idOrName: string, maxBytes = 1024 * 1024): Promise<string> {
    return this.consoleTail(await this.get(idOrName), maxBytes, 0);
  }

  /** Follows the console from its current end; returns the follower (caller closes it). */
  async followLogs(idOrName: string): Promise<ConsoleFollower> {
    const vm = await this.get(idOrName);
    const file = path.join(this.runtimeDir(vm.id), 'console.log');
    const size = (await fs.stat(file).catch(() => null))?.size;
    if (size === undefined) throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${vm.id} has no console log (never booted or failed)`);
    return new ConsoleFollower(file, size);
  }

  // ---- restart safety ----------------------------------------------------------------------

  /**
   * On daemon start: re-attach to every VMM that still runs, settle the VMs whose VMM went
   * away while kilnd was down, and remove runtime dirs nothing refers to.
   */
  async reconcile(): Promise<void> {
    const vms = await this.deps.store.listVms();
    for (const vm of vms) {
      await this.lock.run(vm.id, () => this.reconcileOne(vm)).catch((e) => this.deps.log.error({ vm: vm.id, err: e }, 'reconcile failed'));
    }
    await this.killOrphanVmms();
    await this.deps.network.sweep().catch((e) => this.deps.log.error({ err: e }, 'network sweep failed'));
    const known = new Set(vms.map((v) => v.id));
    for (const dir of await fs.readdir(this.vmsDir).catch(() => [] as string[])) {
      if (!known.has(dir)) {
        this.deps.log.warn({ dir }, 'removing runtime dir of an unknown VM');
        await fs.rm(path.join(this.vmsDir, dir), { recursive: true, force: true });
      }
    }
    // Classic disks of VMs deleted while kilnd was stopping, and clones a crash left half-made.
    const disks = path.dirname(classicDiskPath(this.deps.config.stateDir, 'x'));
    const keep = new Set(vms.flatMap((v) => (v.classic ? [path.basename(v.classic.disk.path)] : [])));
    for (const f of await fs.readdir(disks).catch(() => [] as string[])) {
      if (!keep.has(f)) {
        this.deps.log.warn({ disk: f }, 'removing a disk no VM refers to');
        await fs.rm(path.join(disks, f), { force: true });
      }
    }
  }

  /**
   * VMM processes under this state dir that no VM owns after the reconcile: a kilnd killed
   * between spawning a VMM and recording its pid, or a VM failed while kilnd was down. Killed
   * before the network sweep, so their taps and namespaces go with them.
   */
  private async killOrphanVmms(): Promise<void> {
    const owned = new Set([...this.live.values()].map((l) => l.instance.pid));
    const jails = path.join(this.deps.config.stateDir, 'jailer');
    for (const p of await processesUnder(this.vmsDir, jails).catch((e) => (this.deps.log.error({ err: e }, 'VMM sweep failed'), []))) {
      if (owned.has(p.pid)) continue;
      this.deps.log.warn({ vm: p.vmId, pid: p.pid }, 'killing a VMM process no VM owns');
      if (!(await killAndWait(p.pid))) this.deps.log.error({ vm: p.vmId, pid: p.pid }, 'a VMM process no VM owns did not die within 5 s of SIGKILL');
    }
  }

  private async reconcileOne(vm: VmRecord): Promise<void> {
    if (vm.state === 'creating') {
      await this.failAndRelease(vm, 'KILN_ERR_VMM_FAILED: kilnd stopped while the VM was being created');
      return;
    }
    if (!ACTIVE.includes(vm.state)) return;
    const image = await this.deps.store.getImage(vm.imageId);
    const dir = this.runtimeDir(vm.id);
    const driver = vm.backend === this.deps.driver.name ? this.deps.driver : this.deps.driverFor?.(vm.backend as BackendName);
    const extra = await this.deps.volumes.drivesFor(vm, dir).catch(() => []);
    const instance =
      image && vm.pid && driver ? await driver.attach(vmSpec(vm, image, this.deps.assets, dir, driver, this.netAttachment(vm), extra), vm.pid) : null;
    if (!instance) {
      const log = await this.logs(vm.id).catch(() => '');
      const console = (await fs.readFile(path.join(dir, 'console.log'), 'utf8').catch(() => '')).slice(vm.consoleOffset);
      // kiln-init says poweroff; under systemd (classic VMs) the kernel's own last line does.
      const poweredOff = console.includes('@kiln:poweroff') || (!!vm.classic && console.includes('reboot: Power down'));
      if (poweredOff || vm.state === 'stopping') {
        await this.transition(vm.id, 'stopped', { pid: null }, 'VMM exited while kilnd was down (guest powered off)');
        await this.detachNetwork(vm);
      } else {
        this.deps.log.warn({ vm: vm.id, tail: log.slice(-500) }, 'VMM vanished while kilnd was down');
        await this.failAndRelease(vm, 'KILN_ERR_VMM_FAILED: the VMM process exited while kilnd was down');
      }
      return;
    }
    // Replaying the console from this boot's start recovers readiness and exit codes that
    // happened while kilnd was down.
    const live = this.track(vm, instance, vm.consoleOffset, null);
    this.deps.log.info({ vm: vm.id, pid: instance.pid, state: vm.state }, 're-attached to running VMM');
    if (vm.state === 'stopping') {
      live.instance.kill().catch(() => {});
    } else if (vm.state === 'booting') {
      void this.awaitReady(vm, live, preciseNow());
    }
  }

  /** Daemon shutdown: let go of every VMM without stopping it. */
  async close(): Promise<void> {
    this.closing = true;
    for (const live of this.live.values()) {
      live.instance.detach();
      live.follower.close();
      live.agent?.close();
      live.console?.close('kilnd is shutting down');
    }
    this.live.clear();
  }
}

function portMappings(ports: NonNullable<CreateVmInput['ports']>): PortMapping[] {
  const seen = new Set<string>();
  return ports.map((p) => {
    const m: PortMapping = { proto: p.proto ?? 'tcp', hostPort: p.host, guestPort: p.guest };
    const key = `${m.proto}/${m.hostPort}`;
    if (seen.has(key)) throw new KilnError('KILN_ERR_VALIDATION', `host port ${key} is listed twice`);
    seen.add(key);
    return m;
  });
}
