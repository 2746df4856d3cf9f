// The default guest kernel: Debian's linux-image-cloud-amd64, downloaded with apt and
// extracted into kiln's assets dir (never installed on the host).
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../errors.ts';
import { aptDependsMatching, aptDownload, aptUpdate, dpkgExtract } from '../tools/apt.ts';
import { depmod } from '../tools/modprobe.ts';
import { buildOnce } from '../util/atomic.ts';
import { detectKernelImage, type KernelFormat } from './kernel-format.ts';

export interface GuestKernel {
  version: string;
  /**
   * Debian's kernel tree (boot/ and lib/modules/<version>/) whose modules go into the
   * initramfs; null for a user-supplied kernel, which must have them built in.
   */
  root: string | null;
  /** The image each driver boots from (Firecracker extracts an ELF from a bzImage). */
  path: string;
  format: KernelFormat;
  /** ELF only: has the PVH entry note QEMU needs to boot it. */
  pvh?: boolean;
  source: 'debian' | 'user';
}

const META_PACKAGE = 'linux-image-cloud-amd64';

function kernelAt(root: string, version: string): GuestKernel {
  return { version, root, path: path.join(root, 'boot', `vmlinuz-${version}`), format: 'bzImage', source: 'debian' };
}

async function installedKernels(kernelsDir: string): Promise<GuestKernel[]> {
  const out: GuestKernel[] = [];
  for (const v of await fs.readdir(kernelsDir).catch(() => [] as string[])) {
    if (v.includes('.tmp-')) continue;
    const k = kernelAt(path.join(kernelsDir, v), v);
    if (await fs.stat(k.path).then(() => true, () => false)) out.push(k);
  }
  return out.sort((a, b) => b.version.localeCompare(a.version, undefined, { numeric: true }));
}

async function resolvePackage(): Promise<string> {
  const pattern = /^linux-image-\d/;
  let pkg = await aptDependsMatching(META_PACKAGE, pattern).catch(() => null);
  if (!pkg) {
    // A fresh machine may have no package lists yet.
    await aptUpdate();
    pkg = await aptDependsMatching(META_PACKAGE, pattern);
  }
  if (!pkg) throw new KilnError('KILN_ERR_HOST_SETUP', `apt knows no kernel package behind ${META_PACKAGE}`);
  return pkg;
}

/** The Debian kernel already in the assets dir, without downloading anything (for `kiln doctor`). */
export async function cachedGuestKernel(assetsDir: string): Promise<GuestKernel | null> {
  return (await installedKernels(path.join(assetsDir, 'kernels')))[0] ?? null;
}

/**
 * Returns the guest kernel, downloading it on first use. A kernel already in the assets dir
 * is used as is, so start-up needs no network once set up.
 */
export async function ensureGuestKernel(assetsDir: string, log: (msg: string) => void): Promise<GuestKernel> {
  const kernelsDir = path.join(assetsDir, 'kernels');
  const have = await installedKernels(kernelsDir);
  if (have[0]) return have[0];
  await fs.mkdir(kernelsDir, { recursive: true });
  const pkg = await resolvePackage();
  const version = pkg.replace(/^linux-image-/, '');
  log(`downloading guest kernel ${pkg} from the Debian archive`);
  const root = await buildOnce(path.join(kernelsDir, version), async (tmp) => {
    await fs.mkdir(tmp, { recursive: true });
    const deb = await aptDownload(pkg, tmp);
    await dpkgExtract(deb, tmp);
    await fs.rm(deb);
    await depmod(tmp, version);
  });
  return kernelAt(root, version);
}

/**
 * A kernel the user built (KILN_KERNEL), e.g. from Firecracker's recommended microVM config:
 * a bzImage or an ELF vmlinux, told apart by magic. kiln's initramfs then carries no modules,
 * so virtio_mmio, virtio_blk, virtio_net, vsock, squashfs, overlay and ext4 must be built in.
 */
export async function userKernel(file: string): Promise<GuestKernel> {
  const abs = path.resolve(file);
  const info = await detectKernelImage(abs);
  return { version: info.version ?? `user-${path.basename(abs)}`, root: null, path: abs, format: info.format, pvh: info.pvh, source: 'user' };
}
