// The QEMU command line for one microVM. Kept pure (spec in, argv out) so it is unit-tested
// and so the provisioning benchmark can launch the exact same command line directly.
import path from 'node:path';
import type { VmSpec } from '../driver.ts';

export interface QemuPaths {
  qmpSocket: string;
  consoleSocket: string;
  consoleLog: string;
  pidFile: string;
}

export function qemuPaths(runtimeDir: string): QemuPaths {
  return {
    qmpSocket: path.join(runtimeDir, 'qmp.sock'),
    consoleSocket: path.join(runtimeDir, 'console.sock'),
    consoleLog: path.join(runtimeDir, 'console.log'),
    pidFile: path.join(runtimeDir, 'qemu.pid'),
  };
}

/** Why each machine option is there: DESIGN.md §9 (TCG needs the PIT and a fixed TSC rate). */
export const MICROVM_MACHINE = 'microvm,isa-serial=on,rtc=on,pit=on,pic=on';

export function qemuArgs(spec: VmSpec, opts: { daemonize: boolean }): string[] {
  const p = qemuPaths(spec.runtimeDir);
  const args = [
    '-name', `kiln-${spec.id},debug-threads=on`,
    '-M', MICROVM_MACHINE,
    '-accel', spec.accelerator,
    ...(spec.accelerator === 'kvm' ? ['-cpu', 'host'] : []),
    '-m', `${spec.memoryMib}M`,
    '-smp', String(spec.vcpus),
    '-no-user-config', '-nodefaults', '-display', 'none', '-no-reboot',
    '-kernel', spec.kernel.path,
    '-initrd', spec.kernel.initrd,
    '-append', spec.kernel.cmdline,
  ];
  for (const d of spec.drives) {
    args.push(
      '-drive', `id=${d.id},file=${d.path},format=raw,if=none,${d.readOnly ? 'readonly=on' : 'discard=unmap'}`,
      '-device', `virtio-blk-device,drive=${d.id},serial=${d.id}`,
    );
  }
  args.push(
    '-chardev', `socket,id=console,path=${p.consoleSocket},server=on,wait=off,logfile=${p.consoleLog},logappend=on`,
    '-serial', 'chardev:console',
    '-qmp', `unix:${p.qmpSocket},server=on,wait=off`,
    '-pidfile', p.pidFile,
  );
  if (opts.daemonize) args.push('-daemonize');
  return args;
}

/** Guest kernel command line: quiet serial console, no reboot loop, TCG-safe timing. */
export function kernelCmdline(accelerator: VmSpec['accelerator'], extra: readonly string[]): string {
  const base = ['console=ttyS0', 'quiet', 'panic=-1', 'pci=off'];
  // Under TCG the kernel cannot calibrate the TSC reliably against the emulated PIT.
  if (accelerator === 'tcg') base.push('tsc_early_khz=2000000');
  return [...base, ...extra].join(' ');
}
