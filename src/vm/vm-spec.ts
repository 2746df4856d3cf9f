// Turns a stored VM into what the VMM driver boots, and lays out its runtime dir.
import path from 'node:path';
import type { GuestConfig } from '../guest/config-drive.ts';
import { mergeProcess } from '../containers/oci-process.ts';
import type { ExtraDrive } from '../image/volume-service.ts';
import type { ImageRecord, VmRecord } from '../store/store.ts';
import type { NicSpec, VmmDriver, VmSpec } from '../vmm/driver.ts';
import type { GuestAssets } from './guest-assets.ts';
import { guestClassicConfig } from './classic.ts';
import { isPooled } from './vm-record.ts';

/** Kernel arguments of a classic VM: eth0 keeps the name kiln-init configured it under. */
export const CLASSIC_KERNEL_ARGS = ['net.ifnames=0'];

export function runtimeFiles(runtimeDir: string) {
  return {
    scratch: path.join(runtimeDir, 'scratch.ext4'),
    config: path.join(runtimeDir, 'config.img'),
  };
}

/** The VM's NIC on kiln's bridge and the kernel arguments that tell kiln-init its address. */
export interface VmNetAttachment {
  nic: NicSpec;
  kernelArgs: string[];
}

/** `driver`: the backend that boots it, which owns the kernel command line. */
export function vmSpec(
  vm: VmRecord,
  image: ImageRecord,
  assets: GuestAssets,
  runtimeDir: string,
  driver: Pick<VmmDriver, 'kernelCmdline'>,
  net?: VmNetAttachment,
  extra: ExtraDrive[] = [],
): VmSpec {
  const files = runtimeFiles(runtimeDir);
  return {
    id: vm.id,
    runtimeDir,
    vcpus: vm.vcpus,
    memoryMib: vm.memoryMib,
    accelerator: vm.accelerator,
    kernel: {
      path: assets.kernel.path,
      initrd: assets.initramfs.path,
      cmdline: driver.kernelCmdline(vm.accelerator, [...(net?.kernelArgs ?? []), ...(vm.classic ? CLASSIC_KERNEL_ARGS : []), ...vm.kernelArgs]),
    },
    // Order matters: Firecracker has no drive serials, so kiln-init falls back to this index.
    // A classic VM boots its own writable disk: no shared image, no overlay layer.
    drives: [
      ...(vm.classic
        ? [{ id: 'root', path: vm.classic.disk.path, readOnly: false }]
        : [{ id: 'root', path: image.path, readOnly: true }, { id: 'scratch', path: files.scratch, readOnly: false }]),
      { id: 'config', path: files.config, readOnly: true },
      ...extra.map((d) => ({ id: d.id, path: d.path, readOnly: d.readOnly })),
    ],
    nics: net ? [net.nic] : [],
    // A clone made ahead for the pool yields the CPU to VMs in use until it is taken (adopt).
    cpuPriority: isPooled(vm) ? 'background' : 'normal',
  };
}

export function guestConfig(vm: VmRecord, image: ImageRecord, stopGraceMs: number, extra: ExtraDrive[] = []): GuestConfig {
  if (vm.classic) {
    return {
      // What kiln-init execs once the identity is written; the env is what agent sessions get.
      argv: ['/sbin/init'],
      env: { HOME: '/root', ...vm.env },
      hostname: vm.classic.hostname,
      stopGraceMs,
      drives: [{ role: 'root', serial: 'root', index: 0 }],
      // Extra drives follow root and config (index 1).
      mounts: extra.map((d, i) => ({ serial: d.id, index: 2 + i, target: d.target, readOnly: d.readOnly })),
      classic: guestClassicConfig(vm.id, vm.classic),
    };
  }
  const p = mergeProcess(image.config, {
    cmd: vm.cmd,
    env: vm.env,
    entrypoint: vm.process?.entrypoint ?? null,
    workdir: vm.process?.workdir ?? null,
    user: vm.process?.user ?? null,
  });
  return {
    argv: p.argv,
    env: p.env,
    cwd: p.cwd,
    hostname: vm.name,
    ...('spec' in p.user ? { user: p.user.spec } : { uid: p.user.uid, gid: p.user.gid }),
    ...(vm.process?.stdio ? { stdio: vm.process.stdio } : {}),
    stopGraceMs,
    drives: [
      { role: 'root', serial: 'root', index: 0 },
      { role: 'scratch', serial: 'scratch', index: 1 },
    ],
    // Extra drives follow root, scratch and config (index 2) in vmSpec's drive order.
    mounts: extra.map((d, i) => ({ serial: d.id, index: 3 + i, target: d.target, readOnly: d.readOnly })),
  };
}
