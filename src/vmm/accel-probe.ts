// Decides whether KVM can really boot a guest here. /dev/kvm existing is not enough: under
// nested "PVM" (this development machine) stock kernels hang under KVM. So the probe boots
// the real guest kernel + initramfs under KVM and waits for kiln-init's first marker: with
// QEMU, or with Firecracker itself on a host that has Firecracker and no QEMU.
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import os from 'node:os';
import { ensureVmlinux } from '../guest/extract-vmlinux.ts';
import { QEMU_BINARY } from '../tools/qemu-system.ts';
import { findBinary } from '../util/find-binary.ts';
import { firecrackerKernelCmdline } from './firecracker/spec.ts';
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
 * The probe with Firecracker: no API socket, a config file instead (getting-started.md), the
 * ELF vmlinux it needs extracted into `workDir`. kiln-init finds no config drive, says so and
 * powers off (a reset under Firecracker, which then exits).
 */
export async function probeBootFirecracker(o: { binary: string; kernel: string; initrd: string; workDir: string; timeoutMs?: number }): Promise<string | null> {
  try {
    await fs.mkdir(o.workDir, { recursive: true });
    const vmlinux = await ensureVmlinux(o.kernel, o.workDir);
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-fc-probe-'));
    try {
      const config = path.join(dir, 'probe.json');
      await fs.writeFile(config, JSON.stringify({
        'boot-source': { kernel_image_path: vmlinux, initrd_path: o.initrd, boot_args: firecrackerKernelCmdline([]) },
        drives: [],
        'machine-config': { vcpu_count: 1, mem_size_mib: 256 },
      }));
      const { stdout } = await run(o.binary, ['--no-api', '--config-file', config, '--level', 'Error'], { timeoutMs: o.timeoutMs ?? PROBE_DEADLINE_MS });
      return stdout.includes('@kiln:boot') ? null : 'the Firecracker probe guest exited without reaching kiln-init';
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  } catch (e) {
    return `the Firecracker KVM probe guest did not reach kiln-init (${(e as Error).message.split('\n')[0]})`;
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
  /** Probes with this Firecracker when QEMU is missing (default `firecracker` on PATH). */
  firecrackerBinary?: string;
  /** Injected for tests; default looks at the filesystem and PATH. */
  find?: (name: string) => Promise<string | null>;
  probeFirecracker?: typeof probeBootFirecracker;
  kvmCheck?: () => Promise<string | null>;
}): Promise<AccelDecision> {
  if (opts.requested === 'tcg') return { accelerator: 'tcg', reason: 'TCG requested by configuration' };
  const unusable = await (opts.kvmCheck ?? kvmOpenable)();
  if (unusable) {
    if (opts.requested === 'kvm') throw new Error(unusable);
    return { accelerator: 'tcg', reason: `${unusable}; using TCG (software CPU)` };
  }
  const find = opts.find ?? ((n: string) => findBinary(n));
  const qemu = await find(QEMU_BINARY);
  // A host with Firecracker but no QEMU: Firecracker boots the probe (it boots any kernel kiln has).
  const firecracker = qemu ? null : await find(opts.firecrackerBinary ?? 'firecracker');
  if (!qemu && !firecracker) {
    return { accelerator: 'kvm', reason: `/dev/kvm opens; boot not probed (QEMU missing: no ${QEMU_BINARY}, and no firecracker to probe with)` };
  }
  if (qemu && opts.canProbe === false) {
    return { accelerator: 'kvm', reason: '/dev/kvm opens; boot not probed (QEMU cannot boot this ELF kernel: it has no PVH note)' };
  }
  const prober = firecracker ?? QEMU_BINARY;
  const bootId = (await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
  const key = `${bootId}|${prober}|${path.basename(opts.kernel)}`;
  const cacheFile = path.join(opts.cacheDir, 'accel-probe.json');
  const cached = await fs.readFile(cacheFile, 'utf8').then(JSON.parse).catch(() => null);
  let failure: string | null;
  if (cached?.key === key) {
    failure = cached.failure;
  } else {
    failure = firecracker
      ? await (opts.probeFirecracker ?? probeBootFirecracker)({ binary: firecracker, kernel: opts.kernel, initrd: opts.initrd, workDir: path.join(opts.cacheDir, 'kernels', 'vmlinux') })
      : await probeBoot(opts.kernel, opts.initrd);
    await fs.mkdir(opts.cacheDir, { recursive: true });
    await writeFileAtomic(cacheFile, JSON.stringify({ key, failure }));
  }
  const how = firecracker ? ` (QEMU missing: probed with ${firecracker})` : '';
  if (!failure) return { accelerator: 'kvm', reason: `KVM probe boot reached kiln-init${how}` };
  if (opts.requested === 'kvm') throw new Error(`KVM requested but ${failure}${how}`);
  return { accelerator: 'tcg', reason: `${failure}${how}; using TCG (software CPU)` };
}
