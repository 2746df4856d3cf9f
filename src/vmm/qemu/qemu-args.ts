// The QEMU command line for one microVM. Kept pure (spec in, argv out) so it is unit-tested
// and so the provisioning benchmark can launch the exact same command line directly.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { TCG_TB_CACHE_MIB } from '../../config.ts';
import type { VmSpec } from '../driver.ts';

export interface QemuPaths {
  qmpSocket: string;
  consoleSocket: string;
  consoleLog: string;
  /** QEMU's own stdout/stderr (it runs in the foreground of its own session, not -daemonize). */
  vmmLog: string;
  /** The empty directory a confined QEMU is chrooted into; also holds the snapshot socket. */
  jail: string;
}

export function qemuPaths(runtimeDir: string): QemuPaths {
  return {
    qmpSocket: path.join(runtimeDir, 'qmp.sock'),
    consoleSocket: path.join(runtimeDir, 'console.sock'),
    consoleLog: path.join(runtimeDir, 'console.log'),
    vmmLog: path.join(runtimeDir, 'vmm.log'),
    jail: path.join(runtimeDir, 'jail'),
  };
}

/** Why each machine option is there: DESIGN.md §9 (TCG needs the PIT and a fixed TSC rate). */
export const MICROVM_MACHINE = 'microvm,isa-serial=on,rtc=on,pit=on,pic=on';

/** How a QEMU is confined (docs/security.md, "VMM confinement"). */
export interface QemuSandboxArgs {
  /** seccomp: `-sandbox on,…`. */
  seccomp: boolean;
  /** The user QEMU switches to once its files are open (`-runas`), or null (stays root). */
  runAs: string | null;
  /** Directory QEMU chroots into before switching user (`-chroot`), or null. */
  chroot: string | null;
}

/**
 * `-sandbox` (QEMU's seccomp filter): no obsolete syscalls, no fork/exec, no scheduler or
 * resource-limit changes, and, when QEMU stays root, no set*id. With -runas, QEMU installs the
 * filter before it switches user (end of init), so set*id must stay allowed for that one
 * switch: it then runs with uid, gid and saved ids all unprivileged and no capabilities, and
 * seccomp's no_new_privs, so a later set*id call cannot gain anything (and exec is denied).
 */
export function sandboxArgs(c: QemuSandboxArgs): string[] {
  const args: string[] = [];
  if (c.seccomp) args.push('-sandbox', `on,obsolete=deny,${c.runAs ? '' : 'elevateprivileges=deny,'}spawn=deny,resourcecontrol=deny`);
  if (c.runAs) args.push('-runas', c.runAs);
  if (c.runAs && c.chroot) args.push('-chroot', c.chroot);
  return args;
}

export interface QemuArgsOptions {
  /** -daemonize: QEMU forks itself away (only the unconfined bench baseline: spawn=deny forbids the fork). */
  daemonize: boolean;
  /** Start with the vCPUs stopped (-S): the driver `cont`s once the QMP handshake shows init done. */
  paused?: boolean;
  confinement?: QemuSandboxArgs;
  /** The host has /dev/vhost-vsock: spec.vsock becomes a vhost-vsock device (else no vsock). */
  vhostVsock?: boolean;
  /** Wait for an incoming migration (a restore): `-incoming defer`, then QMP migrate-incoming. */
  incoming?: boolean;
  /** Drive id → the inherited fds that hold it open (see driveFdArgs). */
  driveFds?: Readonly<Record<string, DriveFds>>;
}

/**
 * A drive QEMU gets as open file descriptors (`-add-fd`, `/dev/fdset/N`) instead of a path.
 * QEMU reopens a writable image when a snapshot completes (it drops write access, then takes
 * it back on `cont`): a confined QEMU cannot open the path, so it picks a descriptor of the
 * right access mode from the set. A writable drive's set has a read-write and a read-only
 * one (QEMU probes the image read-only first), a read-only drive's just the latter.
 */
export interface DriveFds {
  set: number;
  fds: readonly number[];
}

/** The id of the memory backend object when guest RAM is a file. */
export const RAM_BACKEND_ID = 'ram';

/** `-object memory-backend-file` and the machine option that makes it the guest's RAM. */
export function memoryArgs(spec: Pick<VmSpec, 'memoryMib' | 'memoryFile'>): { machineSuffix: string; args: string[] } {
  const f = spec.memoryFile;
  if (!f) return { machineSuffix: '', args: [] };
  if (/[,=]/.test(f.path)) throw new Error(`memory file path must not contain ',' or '=': ${f.path}`);
  return {
    machineSuffix: `,memory-backend=${RAM_BACKEND_ID}`,
    args: ['-object', `memory-backend-file,id=${RAM_BACKEND_ID},size=${spec.memoryMib}M,mem-path=${f.path},share=${f.shared ? 'on' : 'off'}`],
  };
}

/**
 * NICs (one tap each, made by kilnd: QEMU runs no scripts) and, where the host has
 * vhost-vsock, the guest's vsock. All of the VM's network-facing devices are built here.
 */
export function deviceNetArgs(spec: VmSpec, opts: { vhostVsock?: boolean }): string[] {
  const args: string[] = [];
  for (const [i, nic] of (spec.nics ?? []).entries()) {
    args.push(
      '-netdev', `tap,id=net${i},ifname=${nic.tap},script=no,downscript=no`,
      '-device', `virtio-net-device,netdev=net${i},mac=${nic.mac}`,
    );
  }
  if (spec.vsock && opts.vhostVsock) args.push('-device', `vhost-vsock-device,guest-cid=${spec.vsock.guestCid}`);
  return args;
}

export function qemuArgs(spec: VmSpec, opts: QemuArgsOptions): string[] {
  const p = qemuPaths(spec.runtimeDir);
  const mem = memoryArgs(spec);
  const args = [
    '-name', `kiln-${spec.id},debug-threads=on`,
    '-M', MICROVM_MACHINE + mem.machineSuffix,
    ...mem.args,
    // The translation cache is bounded so the VMM's memory is (its cgroup counts it).
    '-accel', spec.accelerator === 'tcg' ? `tcg,tb-size=${TCG_TB_CACHE_MIB}` : spec.accelerator,
    ...(spec.accelerator === 'kvm' ? ['-cpu', 'host'] : []),
    '-m', `${spec.memoryMib}M`,
    '-smp', String(spec.vcpus),
    '-no-user-config', '-nodefaults', '-display', 'none', '-no-reboot',
    '-kernel', spec.kernel.path,
    '-initrd', spec.kernel.initrd,
    '-append', spec.kernel.cmdline,
  ];
  for (const d of spec.drives) {
    const fdset = opts.driveFds?.[d.id];
    for (const fd of fdset?.fds ?? []) args.push('-add-fd', `fd=${fd},set=${fdset!.set}`);
    // QEMU's image locking is per open file description: its read-only and read-write
    // descriptors of one image would lock each other out on `cont` after a snapshot. kilnd is
    // the one that decides who writes an image (a volume is attached to one VM at a time).
    const file = fdset ? `/dev/fdset/${fdset.set},file.locking=off` : d.path;
    args.push(
      '-drive', `id=${d.id},file=${file},format=raw,if=none,${d.readOnly ? 'readonly=on' : 'discard=unmap'}`,
      '-device', `virtio-blk-device,drive=${d.id},serial=${d.id}`,
    );
  }
  args.push(...deviceNetArgs(spec, opts));
  args.push(
    '-chardev', `socket,id=console,path=${p.consoleSocket},server=on,wait=off,logfile=${p.consoleLog},logappend=on`,
    '-serial', 'chardev:console',
    '-qmp', `unix:${p.qmpSocket},server=on,wait=off`,
  );
  if (opts.confinement) args.push(...sandboxArgs(opts.confinement));
  if (opts.incoming || opts.paused) args.push('-S');
  if (opts.incoming) args.push('-incoming', 'defer');
  if (opts.daemonize) args.push('-daemonize');
  return args;
}

/**
 * Under TCG the guest's TSC ticks at the host's TSC rate, and the kernel cannot calibrate it
 * against the emulated PIT reliably (it hangs when the host is busy). So kiln tells it the
 * rate: the host's own, or the guest clock runs fast (by 22% here with a made-up 2 GHz).
 */
export function hostTscKhz(cpuinfo = readCpuinfo()): number {
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1]);
  return Number.isFinite(mhz) && mhz > 0 ? Math.round(mhz * 1000) : 2_000_000;
}

function readCpuinfo(): string {
  try {
    return readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return '';
  }
}

const TSC_KHZ = hostTscKhz();

/** Guest kernel command line: quiet serial console, no reboot loop, TCG-safe timing. */
export function kernelCmdline(accelerator: VmSpec['accelerator'], extra: readonly string[], tscKhz = TSC_KHZ): string {
  const base = ['console=ttyS0', 'quiet', 'panic=-1'];
  if (accelerator === 'tcg') base.push(`tsc_early_khz=${tscKhz}`);
  return [...base, ...extra].join(' ');
}
