// Everything a guest boots from that is shared by all VMs: kernel, initramfs (kiln-init +
// modules) and the empty writable-layer template. Prepared once at daemon start.
import fs from 'node:fs/promises';
import path from 'node:path';
import { ensureGuestKernel, userKernel, type GuestKernel } from '../guest/kernel.ts';
import { ensureInitramfs, type Initramfs } from '../guest/initramfs.ts';
import { ensureKilnInit, type KilnInitBinary } from '../guest/kiln-init-build.ts';
import { mkfsExt4 } from '../tools/mkfs-ext4.ts';
import { buildOnce } from '../util/atomic.ts';

export const SCRATCH_LABEL = 'kiln-scratch';
/** Sparse: the size caps what a VM can write, it costs nothing until written. */
export const SCRATCH_SIZE_MIB = 2048;

export interface GuestAssets {
  kernel: GuestKernel;
  kilnInit: KilnInitBinary;
  initramfs: Initramfs;
  scratchTemplate: string;
}

/** `kernelPath`: a user-supplied kernel (KILN_KERNEL) instead of Debian's. */
export async function prepareGuestAssets(assetsDir: string, log: (msg: string) => void, opts: { kernelPath?: string } = {}): Promise<GuestAssets> {
  await fs.mkdir(assetsDir, { recursive: true });
  const kernelP = opts.kernelPath ? userKernel(opts.kernelPath) : ensureGuestKernel(assetsDir, log);
  const [kernel, kilnInit] = await Promise.all([kernelP, ensureKilnInit(assetsDir)]);
  const initramfs = await ensureInitramfs(assetsDir, kernel, kilnInit);
  const scratchTemplate = path.join(assetsDir, `scratch-${SCRATCH_SIZE_MIB}m-noresize.ext4`);
  await buildOnce(scratchTemplate, (tmp) => mkfsExt4(tmp, { sizeMib: SCRATCH_SIZE_MIB, label: SCRATCH_LABEL, resizable: false }));
  return { kernel, kilnInit, initramfs, scratchTemplate };
}
