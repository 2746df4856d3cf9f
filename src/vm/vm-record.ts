// A VM's record, from a request to a row: validation (cheap checks first), the image it boots,
// and acceptance (`api.accept`): admission against the host's capacity, the row, the address
// lease. Nothing is made on the host until the record exists, so a crash at any later
// instant leaves a row that says what to clean up.
import { randomBytes } from 'node:crypto';
import { HOST_CPUS, HOST_MEMORY_MIB } from '../config.ts';
import { KilnError } from '../errors.ts';
import { CLASSIC_BASE_ALIAS } from '../image/recipes/debian-classic.ts';
import type { VolumeAttachRequest } from '../image/volume-service.ts';
import { assertHostPortFree } from '../net/network-manager.ts';
import { normalizeEgress, type EgressPolicy, type EgressSpec } from '../net/egress.ts';
import type { ImageRecord, NetworkMode, PortMapping, ReadinessMode, VmProcess, VmRecord } from '../store/store.ts';
import type { VmmSnapshot, VmSpec } from '../vmm/driver.ts';
import { DEFAULT_DISK_GIB, GIB, checkClassicInput, checkDiskSize, classicDiskPath, newClassicVm, type ClassicInput } from './classic.ts';
import { validateLabels, type Labels } from './labels.ts';
import type { Timeline } from './timeline.ts';
import { preciseNow } from './timeline.ts';
import type { VmCore } from './vm-core.ts';

export const MIN_MEMORY_MIB = 128;
/**
 * Names of pooled clones (src/snapshot/clone-pool.ts): a prefix no API name can have (names
 * start with a letter or digit), so a pooled VM is never mistaken for a user's, and one a
 * crash left behind is recognised at start-up.
 */
export const POOLED_PREFIX = '_pool.';
export const isPooled = (vm: Pick<VmRecord, 'name'>): boolean => vm.name.startsWith(POOLED_PREFIX);
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
  /** What the VM is (src/vm/labels.ts); the API refuses kiln's own prefixes before this. */
  labels?: Labels;
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
  labels?: Labels;
  /** Copies the snapshot's scratch and config drives into the clone's runtime dir. */
  prepareFiles(runtimeDir: string, scratch: string, config: string): Promise<void>;
  /** The clone's VmSpec from the generic one: the snapshot's command line, NIC, memory file. */
  spec(base: VmSpec, netns: string | undefined): VmSpec;
  vmm: VmmSnapshot;
  /** The guest's network as snapshotted (null: none). */
  guestNet: { ip: string; tap: string; gatewayMac: string; mac?: string } | null;
}

const newId = () => `vm-${randomBytes(5).toString('hex')}`;

async function assertNameFree(core: VmCore, name: string): Promise<void> {
  if (await core.deps.store.getVm(name)) throw new KilnError('KILN_ERR_NAME_CONFLICT', `a VM named ${JSON.stringify(name)} already exists`);
}

/** A create request, checked and resolved into its record (not stored yet). */
export async function newVmRecord(core: VmCore, input: CreateVmInput): Promise<{ vm: VmRecord; image: ImageRecord }> {
  const { deps } = core;
  const vcpus = input.vcpus ?? 1;
  const memoryMib = input.memory_mib ?? 256;
  if (vcpus > HOST_CPUS) throw new KilnError('KILN_ERR_RESOURCE_LIMIT', `vcpus ${vcpus} exceeds this host's ${HOST_CPUS} CPUs`);
  if (memoryMib > HOST_MEMORY_MIB) throw new KilnError('KILN_ERR_RESOURCE_LIMIT', `memory_mib ${memoryMib} exceeds this host's ${HOST_MEMORY_MIB} MiB`);
  const network = input.network ?? 'bridge';
  const readiness = input.readiness ?? 'auto';
  if (network === 'none' && readiness !== 'auto') {
    throw new KilnError('KILN_ERR_VALIDATION', `readiness "${readiness}" needs the guest agent, which needs a network; a VM without one reports readiness over the serial console`);
  }
  const egress = normalizeEgress(input.egress);
  if (input.egress !== undefined && network === 'none') throw new KilnError('KILN_ERR_VALIDATION', 'egress needs a network: drop "egress" or use "network": "bridge"');
  const labels = validateLabels(input.labels ?? {}, { allowReserved: true });
  const ports = portMappings(input.ports ?? []);
  if (ports.length && network === 'none') throw new KilnError('KILN_ERR_VALIDATION', 'ports need a network: drop "ports" or use "network": "bridge"');
  for (const p of ports) await assertHostPortFree(p.proto, p.hostPort);
  const id = newId();
  const name = input.name ?? id;
  // Cheap checks first: a bad key or a taken name must not wait for a base image build.
  const classicIn = input.classic ? checkClassic(core, input, name) : null;
  await assertNameFree(core, name);
  // A registry reference not pulled yet is pulled (and converted) here, before the VM exists.
  const image = await resolveImage(core, input);
  const volumes = await deps.volumes.resolveAttachments(input.volumes ?? []);
  let classic = null;
  if (classicIn) {
    if (image.format !== 'ext4') {
      throw new KilnError('KILN_ERR_VALIDATION', `a classic VM's disk is cloned from an ext4 image; ${image.name} is ${image.format} (pull or import it with format ext4, or use "${CLASSIC_BASE_ALIAS}")`);
    }
    const sizeBytes = (input.classic!.disk_size_gib ?? Math.max(DEFAULT_DISK_GIB, Math.ceil(image.sizeBytes / GIB))) * GIB;
    await checkDiskSize(sizeBytes, image.sizeBytes, deps.config.stateDir);
    classic = newClassicVm({ ...classicIn, diskPath: classicDiskPath(deps.config.stateDir, id), sizeBytes });
  }
  // Again: the image may have taken a while, and the name must still be free.
  await assertNameFree(core, name);
  const now = Date.now();
  const vm: VmRecord = {
    id, name, state: 'creating', stateReason: null, imageId: image.id, vcpus, memoryMib,
    kernelArgs: input.kernel_args ?? [], cmd: input.cmd ?? null, env: input.env ?? {}, network, ip: null, ports, readiness,
    // Every VM with an agent channel (kiln's network, or Firecracker's vsock) gets a token.
    agentToken: network === 'bridge' || deps.driver.name === 'firecracker' ? randomBytes(16).toString('hex') : null,
    agent: null, health: 'unknown', healthReason: null, backend: deps.driver.name, accelerator: deps.accelerator, pid: null,
    bootCount: 1, consoleOffset: 0, exitCode: null, volumes, process: input.process ?? null, classic,
    egress: network === 'bridge' ? egress : null, labels, createdAt: now, updatedAt: now,
  };
  return { vm, image };
}

/** A clone's record: the snapshot's shape, its own id, name, token and address. */
export async function cloneRecord(core: VmCore, req: CloneRequest): Promise<VmRecord> {
  const labels = validateLabels(req.labels ?? {}, { allowReserved: true });
  if (!req.guestNet) throw new KilnError('KILN_ERR_VALIDATION', 'the snapshot is of a VM without a network: its clones could not get an identity or an agent');
  const id = newId();
  const name = req.name ?? id;
  await assertNameFree(core, name);
  const now = Date.now();
  return {
    id, name, state: 'creating', stateReason: null, imageId: req.imageId, vcpus: req.vcpus, memoryMib: req.memoryMib,
    kernelArgs: [], cmd: req.cmd, env: req.env ?? {}, network: 'bridge', ip: null, ports: [], readiness: req.readiness,
    agentToken: randomBytes(16).toString('hex'), agent: null, health: 'unknown', healthReason: null,
    backend: core.deps.driver.name, accelerator: core.deps.accelerator, pid: null, bootCount: 1, consoleOffset: 0,
    exitCode: null, volumes: [], egress: req.egress, labels, createdAt: now, updatedAt: now,
  };
}

/**
 * `api.accept`: admission (refused before anything exists), the row, the clone's link to its
 * snapshot, and the address lease (in the create response). A lease that fails takes the row.
 */
export async function acceptVm(core: VmCore, vm: VmRecord, opts: { snapshotId?: string; preferIps?: string[] } = {}): Promise<Timeline> {
  const { deps } = core;
  const timeline = core.timeline(vm);
  timeline.begin('api.accept', preciseNow());
  await deps.admission.admit(vm, () => deps.store.insertVm(vm));
  if (opts.snapshotId) await deps.store.linkClone(vm.id, opts.snapshotId);
  if (vm.network === 'bridge') {
    const addr = await deps.network.lease(vm.id, opts.preferIps);
    if (!addr) {
      await deps.store.deleteVm(vm.id);
      throw new KilnError('KILN_ERR_RESOURCE_LIMIT', `no free address left in ${deps.config.network.cidr}`);
    }
    vm.ip = addr.ip;
  }
  await timeline.end('api.accept');
  return timeline;
}

/**
 * Classic VMs need a backend that reports a guest's reboot and power-off (QEMU's). A new one
 * is a request this host cannot take (KILN_ERR_VALIDATION on "classic"); an existing one
 * cannot boot under this kilnd's backend (KILN_ERR_INVALID_STATE).
 */
export function assertClassicBackend(core: VmCore, code: 'KILN_ERR_VALIDATION' | 'KILN_ERR_INVALID_STATE'): void {
  const { driver } = core.deps;
  if (driver.classicUnsupported) throw new KilnError(code, `classic VMs cannot run on the ${driver.name} backend: ${driver.classicUnsupported}`, { backend: driver.name, field: 'classic' });
}

export function checkClassic(core: VmCore, input: CreateVmInput, name: string) {
  assertClassicBackend(core, 'KILN_ERR_VALIDATION');
  if (input.cmd) throw new KilnError('KILN_ERR_VALIDATION', 'a classic VM runs its image\'s init (systemd): "cmd" does not apply (use "user_data" for a first-boot script)');
  if ((input.network ?? 'bridge') !== 'bridge') throw new KilnError('KILN_ERR_VALIDATION', 'a classic VM needs kiln\'s network (SSH, the agent): "network": "none" does not apply');
  return checkClassicInput(input.classic!, name);
}

async function resolveImage(core: VmCore, input: CreateVmInput): Promise<ImageRecord> {
  const { deps } = core;
  if (input.classic && (input.image === undefined || input.image === CLASSIC_BASE_ALIAS)) {
    if (!deps.classicBase) throw new KilnError('KILN_ERR_HOST_SETUP', 'this kilnd has no classic base image builder');
    return deps.classicBase();
  }
  return deps.images.resolveForVm(input.image ?? DEFAULT_IMAGE);
}

export function portMappings(ports: NonNullable<CreateVmInput['ports']>): PortMapping[] {
  const seen = new Set<string>();
  return ports.map((p) => {
    const m: PortMapping = { proto: p.proto ?? 'tcp', hostPort: p.host, guestPort: p.guest };
    const key = `${m.proto}/${m.hostPort}`;
    if (seen.has(key)) throw new KilnError('KILN_ERR_VALIDATION', `host port ${key} is listed twice`);
    seen.add(key);
    return m;
  });
}
