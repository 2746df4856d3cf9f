// Daemon configuration: embedded defaults, overridden by environment, then by CLI flags.
import os from 'node:os';
import path from 'node:path';
import { DEFAULT_CLUSTER_CIDR, DEFAULT_NODE_SUBNET_PREFIX } from './cluster/node-subnet.ts';
import type { UnpackLimits } from './image/flatten/root-writer.ts';
import type { CapacityConfig } from './vm/admission.ts';
import type { BackendName } from './vmm/driver.ts';

/** Where recipes' images are built from (KILN_DEBIAN_MIRROR overrides). */
export const DEFAULT_DEBIAN_MIRROR = 'http://deb.debian.org/debian';

export interface KilnConfig {
  /** Where the SQLite file, VM runtime dirs and images live. */
  stateDir: string;
  /**
   * The store (--store, KILN_STORE): null or 'sqlite' for `<stateDir>/kiln.db`, or a
   * postgres:// URL for a cluster's shared PostgreSQL (src/store/open-store.ts).
   */
  store: string | null;
  /** Cluster membership (src/cluster/), in force when the store is PostgreSQL. */
  cluster: ClusterConfig;
  /** Kernel, initramfs and default image cache; shareable between state dirs. */
  assetsDir: string;
  listenHost: string;
  listenPort: number;
  /**
   * KILN_API_TOKEN: the token kilnd accepts, instead of the one it generates at first start
   * into <stateDir>/api-token (either way, that file holds the token in force).
   */
  apiToken?: string;
  /** 'none' (--no-auth): no token asked, loopback only; Host and Origin are still checked. */
  auth: 'token' | 'none';
  /** Names clients may use in Host besides loopback and the listen address (KILN_ALLOWED_HOSTS, comma-separated). */
  allowedHosts: string[];
  /** 'auto' picks firecracker when present and KVM boots a guest, qemu otherwise. */
  backend: BackendName | 'auto';
  /** Firecracker binary (KILN_FIRECRACKER_BIN); default `firecracker` on PATH. */
  firecrackerBinary?: string;
  /** A user-supplied guest kernel (KILN_KERNEL: bzImage or ELF vmlinux) instead of Debian's. */
  kernelPath?: string;
  /** 'auto' probes KVM with a short boot and falls back to TCG. */
  accelerator: 'auto' | 'kvm' | 'tcg';
  /** How long a guest may take from VMM start to ready before it is failed. */
  bootTimeoutMs: number;
  /** Grace period between the guest stop request and a hard kill. */
  stopGraceMs: number;
  /** Host directories that path-based image imports may read from. */
  allowedRoots: string[];
  logLevel: string;
  network: NetworkConfig;
  /** Debian archive that runtime and base images are built from (KILN_DEBIAN_MIRROR). */
  debianMirror: string;
  functions: FunctionsConfig;
  /** Clones of each snapshot restored ahead of demand (src/snapshot/clone-pool.ts); 0: none. */
  clonePoolSize: number;
  /** Cold boots in flight at once (the rest wait their turn in 'creating'); undefined: by accelerator. */
  maxConcurrentBoots: number | undefined;
  guestInput: GuestInputConfig;
  /** Admission control: how much of the host VMs may commit (src/vm/admission.ts). */
  capacity: Omit<CapacityConfig, 'vmmOverheadMib'>;
  /** What a pulled or uploaded image may unpack to (decompression bombs). */
  unpack: UnpackLimits;
  /** How each VMM process is confined (docs/security.md, "VMM confinement"). */
  vmm: VmmConfinementConfig;
}

export interface ClusterConfig {
  /**
   * --role: 'all' (the default) or 'node' run VMs and, on a shared store, register as a node;
   * 'api' (src/cluster/api-role.ts) runs no VMs: it places creates on nodes and forwards to them.
   */
  role: 'all' | 'node' | 'api';
  /** --node-name (KILN_NODE_NAME); default the host name. */
  nodeName: string;
  /** --advertise-url (KILN_ADVERTISE_URL): where other kiln processes reach this one; default the listen URL. */
  advertiseUrl: string | null;
  /** KILN_NODE_HEARTBEAT_MS: how often a node heartbeats (and sweeps for lost nodes). */
  heartbeatMs: number;
  /** KILN_NODE_LOST_AFTER_MS: a node silent this long is lost, and its VMs with it. */
  lostAfterMs: number;
  /**
   * --cluster-cidr (KILN_CLUSTER_CIDR): the range every node leases its VM subnet from
   * (src/cluster/node-subnet.ts); default 10.118.0.0/16. Unused on a single host.
   */
  cidr: string;
  /** KILN_NODE_SUBNET_PREFIX: the size of each node's subnet in that range; default /24. */
  nodeSubnetPrefix: number;
}

export interface VmmConfinementConfig {
  /** QEMU's seccomp sandbox (KILN_VMM_SECCOMP=0 turns it off). */
  seccomp: boolean;
  /** The user QEMU drops to once its files are open (KILN_VMM_USER; empty: QEMU stays root). */
  user: string | null;
  /** chroot QEMU into an empty per-VM directory (KILN_VMM_CHROOT=0 turns it off; needs `user`). */
  chroot: boolean;
  /** A cgroup per VM capping memory, CPU and pids (KILN_VMM_CGROUP=0 turns it off). */
  cgroup: boolean;
  /** kiln's parent cgroup name (KILN_VMM_CGROUP_PARENT); default `kiln-<hash of the state dir>`. */
  cgroupParent?: string;
  /**
   * Memory a VM's cgroup allows beyond its guest RAM: the VMM's own
   * (KILN_VMM_MEMORY_OVERHEAD_MIB); default per accelerator (vmmMemoryOverheadMib).
   */
  memoryOverheadMib?: number;
}

/** QEMU's translated-code cache under TCG (`-accel tcg,tb-size=`); QEMU's default is 1 GiB. */
export const TCG_TB_CACHE_MIB = 256;

/**
 * QEMU's own memory beyond guest RAM, as its cgroup allows it. Measured (docs/security.md):
 * QEMU itself holds ~40–60 MiB resident; under TCG its translation cache grows with the code
 * the guest runs (a classic VM's systemd boot and an SSH login: 266 MiB of it, which the
 * unbounded default let reach 520 MiB resident with a 256 MiB guest), so it is capped and
 * counted; the rest is room for a busy VMM and the page cache of its images.
 */
export function vmmMemoryOverheadMib(accelerator: 'kvm' | 'tcg', configured?: number): number {
  return configured ?? (accelerator === 'tcg' ? TCG_TB_CACHE_MIB + 128 : 128);
}

/** Bounds on what guests can make kilnd store (docs/security.md, "Bounded guest input"). */
export interface GuestInputConfig {
  /** Guest-originated events (console markers, agent hellos) per VM: sustained rate (KILN_GUEST_EVENTS_PER_S)… */
  eventsPerSecond: number;
  /** …and burst (KILN_GUEST_EVENTS_BURST). */
  eventsBurst: number;
  /** A VM's console log on disk: console.log + console.log.1 together stay under this (KILN_CONSOLE_LOG_MAX_BYTES). */
  consoleLogMaxBytes: number;
  /** Events kept per VM (KILN_EVENTS_KEEP_PER_VM), in total (KILN_EVENTS_KEEP_TOTAL), and for how long (KILN_EVENTS_MAX_AGE_DAYS). */
  eventsKeepPerVm: number;
  eventsKeepTotal: number;
  eventsMaxAgeMs: number;
}

export interface FunctionsConfig {
  /** Blank booted instances kept per runtime and size in use (KILN_FN_POOL_SIZE; 0: none). */
  poolSize: number;
  /**
   * Instances are restored from a per-runtime template snapshot once it exists (built in the
   * background on first use); KILN_FN_RESTORE=0 boots every instance instead.
   */
  restore: boolean;
}

export interface NetworkConfig {
  /** Linux bridge every VM tap joins; created by kilnd. Also names kiln's nftables table. */
  bridge: string;
  /** IPv4 range VMs get addresses from; the first host address is the bridge (gateway). */
  cidr: string;
  /**
   * KILN_CIDR was given. On a cluster node it then wins over the subnet leased from the
   * cluster range (which is not leased at all); on a single host it changes nothing.
   */
  cidrGiven?: boolean;
  /** TCP port the guest agent connects back to, on the bridge address (push readiness). */
  agentPort: number;
  /** Taps are made openable by this uid/gid (set by kilnd when Firecracker runs jailed). */
  tapOwner?: { uid: number; gid: number };
}

export function defaultConfig(env: NodeJS.ProcessEnv = process.env): KilnConfig {
  const stateDir = path.resolve(env.KILN_STATE_DIR ?? '/var/lib/kiln');
  return {
    stateDir,
    store: env.KILN_STORE || null,
    cluster: {
      role: 'all',
      nodeName: env.KILN_NODE_NAME || os.hostname(),
      advertiseUrl: env.KILN_ADVERTISE_URL || null,
      heartbeatMs: positive(env, 'KILN_NODE_HEARTBEAT_MS', 2_000),
      lostAfterMs: positive(env, 'KILN_NODE_LOST_AFTER_MS', 15_000),
      cidr: env.KILN_CLUSTER_CIDR || DEFAULT_CLUSTER_CIDR,
      nodeSubnetPrefix: positive(env, 'KILN_NODE_SUBNET_PREFIX', DEFAULT_NODE_SUBNET_PREFIX),
    },
    assetsDir: path.resolve(env.KILN_ASSETS_DIR ?? path.join(stateDir, 'assets')),
    listenHost: '127.0.0.1',
    listenPort: 18080,
    apiToken: env.KILN_API_TOKEN || undefined,
    auth: 'token',
    allowedHosts: (env.KILN_ALLOWED_HOSTS ?? '').split(',').map((h) => h.trim()).filter(Boolean),
    backend: (env.KILN_BACKEND as KilnConfig['backend']) ?? 'auto',
    firecrackerBinary: env.KILN_FIRECRACKER_BIN || undefined,
    kernelPath: env.KILN_KERNEL ? path.resolve(env.KILN_KERNEL) : undefined,
    accelerator: (env.KILN_ACCEL as KilnConfig['accelerator']) ?? 'auto',
    bootTimeoutMs: Number(env.KILN_BOOT_TIMEOUT_MS ?? 180_000),
    stopGraceMs: Number(env.KILN_STOP_GRACE_MS ?? 5_000),
    allowedRoots: (env.KILN_ALLOWED_ROOTS ?? '').split(':').filter(Boolean).map((p) => path.resolve(p)),
    logLevel: env.KILN_LOG_LEVEL ?? 'info',
    network: {
      bridge: env.KILN_BRIDGE ?? 'kilnbr0',
      cidr: env.KILN_CIDR || '10.118.0.0/24',
      cidrGiven: !!env.KILN_CIDR,
      agentPort: Number(env.KILN_AGENT_PORT ?? 18081),
    },
    debianMirror: env.KILN_DEBIAN_MIRROR ?? DEFAULT_DEBIAN_MIRROR,
    functions: { poolSize: Number(env.KILN_FN_POOL_SIZE ?? 1), restore: env.KILN_FN_RESTORE !== '0' },
    clonePoolSize: count(env, 'KILN_CLONE_POOL_SIZE', 0),
    maxConcurrentBoots: env.KILN_MAX_CONCURRENT_BOOTS ? positive(env, 'KILN_MAX_CONCURRENT_BOOTS', 1) : undefined,
    guestInput: {
      eventsPerSecond: positive(env, 'KILN_GUEST_EVENTS_PER_S', 5),
      eventsBurst: positive(env, 'KILN_GUEST_EVENTS_BURST', 50),
      consoleLogMaxBytes: positive(env, 'KILN_CONSOLE_LOG_MAX_BYTES', 16 * 1024 * 1024),
      eventsKeepPerVm: positive(env, 'KILN_EVENTS_KEEP_PER_VM', 10_000),
      eventsKeepTotal: positive(env, 'KILN_EVENTS_KEEP_TOTAL', 500_000),
      eventsMaxAgeMs: positive(env, 'KILN_EVENTS_MAX_AGE_DAYS', 30) * 86_400_000,
    },
    capacity: {
      cpuOvercommit: positive(env, 'KILN_CPU_OVERCOMMIT', 16),
      memoryOvercommit: positive(env, 'KILN_MEMORY_OVERCOMMIT', 1),
      // A tenth of the host, at least 1 GiB: the host, kilnd and the page cache the images live in.
      reservedMemoryMib: positive(env, 'KILN_HOST_RESERVED_MIB', Math.max(1024, Math.round(HOST_MEMORY_MIB / 10))),
    },
    unpack: {
      maxLayerBytes: positive(env, 'KILN_LAYER_MAX_BYTES', 32 * 2 ** 30),
      maxImageBytes: positive(env, 'KILN_IMAGE_MAX_BYTES', 64 * 2 ** 30),
      maxEntries: positive(env, 'KILN_IMAGE_MAX_ENTRIES', 4_000_000),
    },
    vmm: {
      seccomp: env.KILN_VMM_SECCOMP !== '0',
      user: env.KILN_VMM_USER === undefined ? 'kiln-vmm' : env.KILN_VMM_USER || null,
      chroot: env.KILN_VMM_CHROOT !== '0',
      cgroup: env.KILN_VMM_CGROUP !== '0',
      cgroupParent: env.KILN_VMM_CGROUP_PARENT || undefined,
      memoryOverheadMib: env.KILN_VMM_MEMORY_OVERHEAD_MIB ? Number(env.KILN_VMM_MEMORY_OVERHEAD_MIB) : undefined,
    },
  };
}

/**
 * Cold boots at once when not configured: under TCG every booting vCPU is a host thread
 * emulating flat out, so two per host CPU; under KVM a boot is mostly waiting, so many more.
 */
export function defaultConcurrentBoots(accelerator: 'kvm' | 'tcg'): number {
  return accelerator === 'tcg' ? 2 * HOST_CPUS : 16 * HOST_CPUS;
}

/** A whole number ≥ 0 from the environment, or the default; anything else stops kilnd at start. */
function count(env: NodeJS.ProcessEnv, key: string, dflt: number): number {
  const raw = env[key];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${key} must be a whole number ≥ 0, got ${JSON.stringify(raw)}`);
  return n;
}

/** A positive number from the environment, or the default; anything else stops kilnd at start. */
function positive(env: NodeJS.ProcessEnv, key: string, dflt: number): number {
  const raw = env[key];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${key} must be a positive number, got ${JSON.stringify(raw)}`);
  return n;
}

export function parseListen(value: string): { host: string; port: number } {
  const m = /^(?:\[?([^\]]*)\]?:)?(\d{1,5})$/.exec(value);
  if (!m) throw new Error(`--listen must be HOST:PORT, got ${JSON.stringify(value)}`);
  const port = Number(m[2]);
  if (port < 0 || port > 65535) throw new Error(`port out of range: ${port}`);
  return { host: m[1] || '127.0.0.1', port };
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

export const HOST_MEMORY_MIB = Math.floor(os.totalmem() / 1024 / 1024);
export const HOST_CPUS = os.cpus().length;
