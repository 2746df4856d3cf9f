// The layers under the VM lifecycle, faked for its unit tests: a VMM driver whose "guest"
// prints kiln-init's console markers, a network that only counts taps, images and volumes
// that are records. The store is the real SQLite one in a temp dir. Never the evidence that
// VMs work (test/ boots real ones); the evidence that the lifecycle's bookkeeping and undo do.
import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { defaultConfig } from '../../config.ts';
import { EventBus } from '../../events/event-bus.ts';
import { MARKER_PREFIX } from '../../guest/console-protocol.ts';
import type { ImageService } from '../../image/image-service.ts';
import type { VolumeService } from '../../image/volume-service.ts';
import { Metrics } from '../../metrics/metrics.ts';
import type { NetworkManager } from '../../net/network-manager.ts';
import type { ImageRecord, VmRecord } from '../../store/store.ts';
import { SqliteStore } from '../../store/sqlite-store.ts';
import { mkfsExt4 } from '../../tools/mkfs-ext4.ts';
import type { VmmDriver, VmmExit, VmmInstance, VmSpec } from '../../vmm/driver.ts';
import { Admission } from '../admission.ts';
import type { AgentHub } from '../agent-link.ts';
import type { GuestAssets } from '../guest-assets.ts';
import { VmManager } from '../vm-manager.ts';

export type GuestScript = 'ready' | 'hang' | 'crash';

let nextPid = 4_000_000;

export class FakeInstance implements VmmInstance {
  readonly pid = nextPid++;
  readonly consoleLogPath: string;
  #exit!: (e: VmmExit) => void;
  readonly exited = new Promise<VmmExit>((r) => (this.#exit = r));
  gone = false;
  paused = false;

  constructor(readonly spec: VmSpec, script: GuestScript) {
    this.consoleLogPath = path.join(spec.runtimeDir, 'console.log');
    setTimeout(() => void this.play(script), 5);
  }

  private async play(script: GuestScript): Promise<void> {
    if (this.gone) return;
    if (script === 'crash') return this.end({ reason: 'the fake VMM crashed', clean: false });
    await this.print(`${MARKER_PREFIX}boot`);
    if (script === 'ready') await this.print(`${MARKER_PREFIX}ready`);
  }

  print(line: string): Promise<void> {
    return fs.appendFile(this.consoleLogPath, `${line}\n`);
  }

  private end(exit: VmmExit): void {
    if (this.gone) return;
    this.gone = true;
    this.#exit(exit);
  }

  async writeConsole(data: string | Buffer): Promise<void> {
    // kiln-init's stop command: the workload stops, the guest powers off.
    if (String(data).includes('stop')) {
      await this.print(`${MARKER_PREFIX}exit code=0`);
      await this.print(`${MARKER_PREFIX}poweroff`);
      this.end({ reason: 'guest powered off', clean: true });
    }
  }

  async pause(): Promise<void> {
    this.paused = true;
  }

  async resume(): Promise<void> {
    this.paused = false;
  }

  snapshot(): never {
    throw new Error('the fake VMM takes no snapshots');
  }

  async kill(): Promise<void> {
    this.end({ reason: 'killed', clean: false });
  }

  detach(): void {}
}

export class FakeDriver implements VmmDriver {
  readonly name = 'qemu' as const;
  readonly instances: FakeInstance[] = [];
  readonly reaped: string[] = [];
  script: GuestScript = 'ready';
  failStart: Error | null = null;

  async start(spec: VmSpec): Promise<VmmInstance> {
    if (this.failStart) throw this.failStart;
    await fs.mkdir(spec.runtimeDir, { recursive: true });
    // A real VMM has its console log open before start() returns (the follower watches it).
    await fs.appendFile(path.join(spec.runtimeDir, 'console.log'), '');
    const i = new FakeInstance(spec, this.script);
    this.instances.push(i);
    return i;
  }

  restore(): never {
    throw new Error('the fake VMM restores nothing');
  }

  async attach(_spec: VmSpec, pid: number): Promise<VmmInstance | null> {
    return this.instances.find((i) => i.pid === pid && !i.gone) ?? null;
  }

  async reap(cgroup: string): Promise<number> {
    this.reaped.push(cgroup);
    return 0;
  }

  running(): FakeInstance[] {
    return this.instances.filter((i) => !i.gone);
  }

  async version(): Promise<string> {
    return 'fake 1.0';
  }

  kernelCmdline(_a: unknown, extra: readonly string[]): string {
    return ['console=ttyS0', ...extra].join(' ');
  }
}

export class FakeNetwork {
  readonly bridge = 'kfake0';
  readonly tapOwner = undefined;
  readonly taps = new Set<string>();
  failPlug: Error | null = null;
  #leases = new Map<string, string>();

  async lease(id: string): Promise<{ ip: string } | null> {
    const ip = `10.99.0.${this.#leases.size + 2}`;
    this.#leases.set(id, ip);
    return { ip };
  }

  async plug(vm: VmRecord) {
    if (this.failPlug) throw this.failPlug;
    this.taps.add(vm.id);
    return { tap: `t-${vm.id}`, mac: '02:00:00:00:00:01' };
  }

  async unplug(id: string): Promise<void> {
    this.taps.delete(id);
  }

  /** Fencing: the taps of VMs whose VMMs were killed. */
  async takeDown(ids: readonly string[]): Promise<void> {
    for (const id of ids) this.taps.delete(id);
  }

  async sync(): Promise<void> {}
  async sweep(): Promise<void> {}

  address(ip: string) {
    return { ip, prefix: 24, gateway: '10.99.0.1', mac: '02:00:00:00:00:01' };
  }

  kernelArgs(): string[] {
    return [];
  }
}

export class FakeVolumes {
  failBuild: Error | null = null;
  async resolveAttachments() {
    return [];
  }
  async drivesFor() {
    return [];
  }
  async buildDrives(): Promise<void> {
    if (this.failBuild) throw this.failBuild;
  }
}

export interface VmLayer {
  manager: VmManager;
  store: SqliteStore;
  bus: EventBus;
  driver: FakeDriver;
  network: FakeNetwork;
  volumes: FakeVolumes;
  stateDir: string;
  dispose(): Promise<void>;
}

const IMAGE: ImageRecord = {
  id: 'img-fake', name: 'fake', digest: 'sha256:fake', format: 'squashfs', path: '/nonexistent/fake.img', sizeBytes: 1,
  config: { cmd: ['/bin/true'], entrypoint: null, env: [], workingDir: null, user: null, exposedPorts: [] } as unknown as ImageRecord['config'],
  createdAt: 0, state: 'ready', source: null, manifestDigest: null, layers: [], builder: null,
};

/** A VmManager over fakes and a real SQLite store in a fresh temp dir. */
export async function vmLayer(opts: { maxConcurrentBoots?: number } = {}): Promise<VmLayer> {
  const stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-vmlayer-'));
  const config = { ...defaultConfig({ KILN_STATE_DIR: stateDir }), bootTimeoutMs: 10_000, stopGraceMs: 500, maxConcurrentBoots: opts.maxConcurrentBoots ?? 8 };
  const store = new SqliteStore(path.join(stateDir, 'kiln.db'));
  await store.insertImage(IMAGE);
  const log = pino({ level: 'silent' });
  const bus = new EventBus(store, log);
  const metrics = new Metrics(async () => ({}));
  const driver = new FakeDriver();
  const network = new FakeNetwork();
  const volumes = new FakeVolumes();
  const scratchTemplate = path.join(stateDir, 'scratch.ext4');
  await mkfsExt4(scratchTemplate, { sizeMib: 8, label: 'kiln-scratch', resizable: false });
  const assets = { kernel: { path: '/nonexistent/vmlinuz' }, initramfs: { path: '/nonexistent/initrd' }, scratchTemplate } as unknown as GuestAssets;
  const admission = new Admission({ ...config.capacity, vmmOverheadMib: 0 }, { vcpus: 64, memoryMib: 65536 }, () => store.listVms());
  const agents: AgentHub = { listener: null, pushUnavailable: 'unit test', pushTarget: '10.99.0.1:1', neighbours: new EventEmitter() as never };
  const images = { get: async () => IMAGE, resolveForVm: async () => IMAGE, ensureLocal: async () => IMAGE } as unknown as ImageService;
  const manager = new VmManager({
    config, store, bus, images, volumes: volumes as unknown as VolumeService, driver, metrics, network: network as unknown as NetworkManager,
    agents, log, assets, accelerator: 'tcg', admission,
  });
  return {
    manager, store, bus, driver, network, volumes, stateDir,
    async dispose() {
      await manager.close();
      for (const i of driver.running()) await i.kill();
      await store.close();
      await fs.rm(stateDir, { recursive: true, force: true });
    },
  };
}
