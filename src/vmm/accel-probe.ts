// Decides whether KVM can really boot a guest here. /dev/kvm existing is not enough: under
// nested "PVM" (this development machine) stock kernels hang under KVM. So the probe boots
// the real guest kernel + initramfs under KVM and waits for kiln-init's first marker.
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { QEMU_BINARY } from '../tools/qemu-system.ts';
import { run } from '../util/process.ts';
import { writeFileAtomic } from '../util/atomic.ts';
import type { Accelerator } from './driver.ts';
import { MICROVM_MACHINE, kernelCmdline } from './qemu/qemu-args.ts';

export interface AccelDecision {
  accelerator: Accelerator;
  reason: string;
}

const PROBE_DEADLINE_MS = 10_000;

async function kvmOpenable(): Promise<string | null> {
  try {
    const fh = await fs.open('/dev/kvm', constants.O_RDWR);
    await fh.close();
    return null;
  } catch (e) {
    return `/dev/kvm is not usable (${(e as NodeJS.ErrnoException).code})`;
  }
}

async function probeBoot(kernel: string, initrd: string): Promise<string | null> {
  try {
    const { stdout } = await run(QEMU_BINARY, [
      '-M', MICROVM_MACHINE, '-accel', 'kvm', '-cpu', 'host', '-m', '256M', '-smp', '1',
      '-no-user-config', '-nodefaults', '-display', 'none', '-no-reboot', '-serial', 'stdio',
      '-kernel', kernel, '-initrd', initrd, '-append', kernelCmdline('kvm', []),
    ], { timeoutMs: PROBE_DEADLINE_MS });
    // kiln-init finds no config drive, reports it and powers off: proof that the guest ran.
    return stdout.includes('@kiln:boot') ? null : 'the probe guest exited without reaching kiln-init';
  } catch (e) {
    return `the KVM probe guest did not reach kiln-init (${(e as Error).message.split('\n')[0]})`;
  }
}

/**
 * The probe costs up to 10 s when KVM hangs, so its answer is cached per host boot, QEMU
 * binary and guest kernel.
 */
export async function decideAccelerator(opts: {
  requested: 'auto' | Accelerator;
  kernel: string;
  initrd: string;
  cacheDir: string;
  /** False when QEMU cannot boot `kernel` (an ELF without a PVH note): KVM opening is all we learn. */
  canProbe?: boolean;
}): Promise<AccelDecision> {
  if (opts.requested === 'tcg') return { accelerator: 'tcg', reason: 'TCG requested by configuration' };
  const unusable = await kvmOpenable();
  if (unusable) {
    if (opts.requested === 'kvm') throw new Error(unusable);
    return { accelerator: 'tcg', reason: `${unusable}; using TCG (software CPU)` };
  }
  if (opts.canProbe === false) {
    return { accelerator: 'kvm', reason: '/dev/kvm opens; boot not probed (QEMU cannot boot this ELF kernel: it has no PVH note)' };
  }
  const bootId = (await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
  const key = `${bootId}|${QEMU_BINARY}|${path.basename(opts.kernel)}`;
  const cacheFile = path.join(opts.cacheDir, 'accel-probe.json');
  const cached = await fs.readFile(cacheFile, 'utf8').then(JSON.parse).catch(() => null);
  let failure: string | null;
  if (cached?.key === key) {
    failure = cached.failure;
  } else {
    failure = await probeBoot(opts.kernel, opts.initrd);
    await fs.mkdir(opts.cacheDir, { recursive: true });
    await writeFileAtomic(cacheFile, JSON.stringify({ key, failure }));
  }
  if (!failure) return { accelerator: 'kvm', reason: 'KVM probe boot reached kiln-init' };
  if (opts.requested === 'kvm') throw new Error(`KVM requested but ${failure}`);
  return { accelerator: 'tcg', reason: `${failure}; using TCG (software CPU)` };
}
