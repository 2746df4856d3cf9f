// What a Firecracker VM can be asked for beyond the common VmSpec, and how kiln's names map
// onto Firecracker's: API resource ids allow only [A-Za-z0-9_], instance ids only
// [A-Za-z0-9-] up to 64 characters, and every path the VMM sees may be jail-relative.
import { createHash } from 'node:crypto';
import path from 'node:path';
import { KilnError } from '../../errors.ts';
import type { VmSpec } from '../driver.ts';
import type * as T from './api-types.ts';
import type { RestoreSpec } from './snapshot.ts';

export interface TokenBucketSpec {
  size: number;
  refillTimeMs: number;
  oneTimeBurst?: number;
}

export interface RateLimiterSpec {
  bandwidth?: TokenBucketSpec;
  ops?: TokenBucketSpec;
}

export interface NetworkInterfaceSpec {
  ifaceId: string;
  /** The tap device on the host (inside the VMM's network namespace). */
  hostDevName: string;
  guestMac?: string;
  rxRateLimiter?: RateLimiterSpec;
  txRateLimiter?: RateLimiterSpec;
  /** Needs Firecracker ≥ 1.16. */
  mtu?: number;
}

export interface FirecrackerVmSpec extends VmSpec {
  machine?: { smt?: boolean; trackDirtyPages?: boolean; hugePages?: 'None' | '2M'; cpuTemplate?: T.CpuTemplate };
  /** Per drive id (DriveSpec.id): rate limiter, cache and I/O engine. */
  driveOptions?: Record<string, { rateLimiter?: RateLimiterSpec; cacheType?: 'Unsafe' | 'Writeback'; ioEngine?: 'Sync' | 'Async' }>;
  /**
   * Firecracker-level interfaces (rate limiters, MTU). When absent, the common `nics` are
   * used, as eth0, eth1, … in order; giving both is refused.
   */
  network?: NetworkInterfaceSpec[];
  /** Hybrid vsock; `udsPath` defaults to `<runtimeDir>/vsock.sock` (in the jail under the jailer). */
  vsock?: { guestCid: number; udsPath?: string };
  entropy?: boolean | { rateLimiter?: RateLimiterSpec };
  balloon?: { amountMib: number; deflateOnOom: boolean; statsPollingIntervalS?: number };
  /** MMDS, served on the listed interfaces (default: the first one). Needs `network`. */
  mmds?: { data?: Record<string, unknown>; version?: 'V1' | 'V2'; ipv4Address?: string; networkInterfaces?: string[]; imdsCompat?: boolean };
  logLevel?: T.LogLevel;
  /** Network namespace (a path such as /var/run/netns/x) the VMM runs in. */
  netns?: string;
  /** Restore from a snapshot instead of booting the kernel. */
  restore?: RestoreSpec;
}

export interface RuntimePaths {
  dir: string;
  apiSocket: string;
  consoleLog: string;
  consoleIn: string;
  pidFile: string;
  stderrLog: string;
  logFile: string;
  metricsFile: string;
  vsock: string;
}

export function runtimePaths(runtimeDir: string): RuntimePaths {
  const p = (n: string) => path.join(runtimeDir, n);
  return {
    dir: runtimeDir,
    apiSocket: p('firecracker.sock'),
    consoleLog: p('console.log'),
    consoleIn: p('console.in'),
    pidFile: p('vmm.pid'),
    stderrLog: p('firecracker.stderr'),
    logFile: p('firecracker.log'),
    metricsFile: p('firecracker.metrics'),
    // In a directory of its own: under the jailer that directory is a link into the jail.
    vsock: path.join(runtimeDir, 'vsock', 'vsock.sock'),
  };
}

const shortHash = (s: string) => createHash('sha256').update(s).digest('hex').slice(0, 8);

/** Firecracker/jailer instance id: [A-Za-z0-9-], 1–64 characters; stable for a given VM id. */
export function instanceIdFor(vmId: string): string {
  if (/^[A-Za-z0-9-]{1,64}$/.test(vmId)) return vmId;
  const clean = vmId.replace(/[^A-Za-z0-9-]/g, '-').slice(0, 55) || 'vm';
  return `${clean}-${shortHash(vmId)}`;
}

/** API resource id (drive, interface): [A-Za-z0-9_]. */
export function apiIdFor(id: string): string {
  return /^[A-Za-z0-9_]+$/.test(id) ? id : id.replace(/[^A-Za-z0-9_]/g, '_') || '_';
}

export function toTokenBucket(b: TokenBucketSpec): T.TokenBucket {
  const out: T.TokenBucket = { size: b.size, refill_time: b.refillTimeMs };
  if (b.oneTimeBurst !== undefined) out.one_time_burst = b.oneTimeBurst;
  return out;
}

export function toRateLimiter(r: RateLimiterSpec): T.RateLimiter {
  const out: T.RateLimiter = {};
  if (r.bandwidth) out.bandwidth = toTokenBucket(r.bandwidth);
  if (r.ops) out.ops = toTokenBucket(r.ops);
  return out;
}

export function toMachineConfig(spec: FirecrackerVmSpec): T.MachineConfiguration {
  const m = spec.machine ?? {};
  const out: T.MachineConfiguration = { vcpu_count: spec.vcpus, mem_size_mib: spec.memoryMib };
  if (m.smt !== undefined) out.smt = m.smt;
  if (m.trackDirtyPages !== undefined) out.track_dirty_pages = m.trackDirtyPages;
  if (m.hugePages !== undefined) out.huge_pages = m.hugePages;
  if (m.cpuTemplate !== undefined) out.cpu_template = m.cpuTemplate;
  return out;
}

/** Every drive is a plain virtio-blk device; kiln boots from its initramfs, never a drive. */
export function toDrives(spec: FirecrackerVmSpec, vmmPath: (host: string) => string): T.Drive[] {
  return spec.drives.map((d) => {
    const extra = spec.driveOptions?.[d.id];
    const out: T.Drive = { drive_id: apiIdFor(d.id), path_on_host: vmmPath(d.path), is_root_device: false, is_read_only: d.readOnly };
    if (extra?.cacheType) out.cache_type = extra.cacheType;
    if (extra?.ioEngine) out.io_engine = extra.ioEngine;
    if (extra?.rateLimiter) out.rate_limiter = toRateLimiter(extra.rateLimiter);
    return out;
  });
}

export function toNetworkInterface(n: NetworkInterfaceSpec, mtuSupported: boolean): T.NetworkInterface {
  const out: T.NetworkInterface = { iface_id: apiIdFor(n.ifaceId), host_dev_name: n.hostDevName };
  if (n.guestMac) out.guest_mac = n.guestMac;
  if (n.rxRateLimiter) out.rx_rate_limiter = toRateLimiter(n.rxRateLimiter);
  if (n.txRateLimiter) out.tx_rate_limiter = toRateLimiter(n.txRateLimiter);
  if (n.mtu !== undefined) {
    if (!mtuSupported) {
      throw new KilnError('KILN_ERR_VMM_FAILED', `interface ${n.ifaceId}: setting the MTU needs Firecracker ≥ 1.16`, { iface_id: n.ifaceId });
    }
    out.mtu = n.mtu;
  }
  return out;
}

/** The VM's interfaces: `network` when given, else the common VmSpec `nics` (eth0, eth1, …). */
export function networkInterfacesOf(spec: FirecrackerVmSpec): NetworkInterfaceSpec[] {
  if (spec.network) return spec.network;
  return (spec.nics ?? []).map((n, i) => ({ ifaceId: `eth${i}`, hostDevName: n.tap, guestMac: n.mac }));
}

/**
 * Firecracker's default boot arguments (docs: kernel-policy.md) with kiln's console, then
 * `extra`. Two of its defaults are left out on purpose: `nomodule` (kiln's initramfs loads
 * virtio_mmio and friends as modules) and `8250.nr_uarts=0` (the serial console is kiln's log
 * and last-resort channel). The i8042 ones skip probes that only cost boot time.
 */
export function firecrackerKernelCmdline(extra: readonly string[]): string {
  return [
    'console=ttyS0', 'reboot=k', 'panic=1', 'pci=off',
    'i8042.noaux', 'i8042.nomux', 'i8042.dumbkbd', 'swiotlb=noforce',
    // Firecracker on x86 exits on a guest reset but not on a power-off: kiln-init resets.
    'kiln.shutdown=reboot',
    'quiet', ...extra,
  ].join(' ');
}

export function toMmdsConfig(spec: FirecrackerVmSpec): T.MmdsConfig | undefined {
  const m = spec.mmds;
  if (!m) return undefined;
  const first = networkInterfacesOf(spec)[0];
  const ifaces = m.networkInterfaces ?? (first ? [first.ifaceId] : []);
  const out: T.MmdsConfig = { network_interfaces: ifaces.map(apiIdFor), version: m.version ?? 'V2' };
  if (m.ipv4Address) out.ipv4_address = m.ipv4Address;
  if (m.imdsCompat !== undefined) out.imds_compat = m.imdsCompat;
  return out;
}

function invalid(message: string, details?: Record<string, unknown>): never {
  throw new KilnError('KILN_ERR_VALIDATION', message, details);
}

/** Checks what Firecracker would refuse mid-boot, before anything is spawned. */
export function validateSpec(spec: FirecrackerVmSpec): void {
  if (spec.accelerator !== 'kvm') {
    throw new KilnError('KILN_ERR_HOST_SETUP', `Firecracker runs guests only under KVM (asked for ${spec.accelerator})`);
  }
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 32) invalid(`vcpus must be 1–32 for Firecracker, got ${spec.vcpus}`);
  if (spec.machine?.smt && spec.vcpus > 1 && spec.vcpus % 2) invalid(`with SMT, Firecracker needs 1 or an even number of vCPUs, got ${spec.vcpus}`);
  if (!Number.isInteger(spec.memoryMib) || spec.memoryMib < 1) invalid(`memoryMib must be a positive integer, got ${spec.memoryMib}`);
  const seen = (ids: string[], what: string) => {
    const mapped = new Map<string, string>();
    for (const id of ids) {
      const api = apiIdFor(id);
      const prev = mapped.get(api);
      if (prev !== undefined) invalid(`${what} ids ${JSON.stringify(prev)} and ${JSON.stringify(id)} collide as Firecracker id ${api}`);
      mapped.set(api, id);
    }
  };
  seen(spec.drives.map((d) => d.id), 'drive');
  if (spec.network && spec.nics?.length) invalid('give either the common nics or Firecracker network interfaces, not both');
  seen(networkInterfacesOf(spec).map((n) => n.ifaceId), 'network interface');
  for (const id of Object.keys(spec.driveOptions ?? {})) {
    if (!spec.drives.some((d) => d.id === id)) invalid(`driveOptions names unknown drive ${id}`);
  }
  if (spec.mmds) {
    const ifaces = toMmdsConfig(spec)!.network_interfaces;
    if (!ifaces.length) invalid('MMDS needs a network interface to be served on');
    for (const i of ifaces) {
      if (!networkInterfacesOf(spec).some((n) => apiIdFor(n.ifaceId) === i)) invalid(`MMDS interface ${i} is not one of the VM's interfaces`);
    }
  }
  if (spec.vsock && (!Number.isInteger(spec.vsock.guestCid) || spec.vsock.guestCid < 3)) {
    invalid(`vsock guestCid must be an integer ≥ 3, got ${spec.vsock.guestCid}`);
  }
}
