// The initramfs every guest boots: kiln-init as /init plus the kernel modules it loads
// before it can see its drives. Built once per (kernel, kiln-init) pair.
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../errors.ts';
import { cpioPack } from '../tools/cpio.ts';
import { decompressFile } from '../tools/decompress.ts';
import { moduleDependencies } from '../tools/modprobe.ts';
import { buildOnce } from '../util/atomic.ts';
import type { GuestKernel } from './kernel.ts';
import type { KilnInitBinary } from './kiln-init-build.ts';

/** Needed to find and mount the root and writable layer: boot fails without them. */
const REQUIRED_MODULES = ['virtio_mmio', 'virtio_blk', 'squashfs', 'overlay', 'ext4'];
/** Used when present (networking and vsock channels; erofs images). */
const OPTIONAL_MODULES = ['virtio_net', 'vmw_vsock_virtio_transport', 'erofs', 'button', 'evdev'];

export interface Initramfs {
  path: string;
  hash: string;
  modules: string[];
}

async function resolveModules(kernel: GuestKernel): Promise<string[]> {
  const files: string[] = [];
  const root = kernel.root;
  // A user-supplied kernel has its drivers built in: modules of another build would not load.
  if (root === null) return files;
  const add = (list: string[]) => list.forEach((f) => files.includes(f) || files.push(f));
  for (const m of REQUIRED_MODULES) {
    try {
      add(await moduleDependencies(root, kernel.version, m));
    } catch (e) {
      throw new KilnError('KILN_ERR_HOST_SETUP', `guest kernel ${kernel.version} lacks module ${m}`, undefined, { cause: e });
    }
  }
  for (const m of OPTIONAL_MODULES) add(await moduleDependencies(root, kernel.version, m).catch(() => []));
  return files;
}

export async function ensureInitramfs(assetsDir: string, kernel: GuestKernel, init: KilnInitBinary): Promise<Initramfs> {
  const moduleFiles = await resolveModules(kernel);
  const hash = createHash('sha256')
    .update(`${kernel.root === null ? 'no-modules:' : ''}${kernel.version}\n${init.hash}\n${moduleFiles.join('\n')}`)
    .digest('hex')
    .slice(0, 16);
  const dir = path.join(assetsDir, 'initramfs');
  await fs.mkdir(dir, { recursive: true });
  const out = path.join(dir, `${hash}.cpio`);
  const names = moduleFiles.map((f) => path.basename(f).replace(/\.(xz|zst|gz)$/, ''));
  await buildOnce(out, async (tmp) => {
    const tree = `${tmp}.d`;
    try {
      await fs.mkdir(path.join(tree, 'lib/kiln/modules'), { recursive: true });
      for (const d of ['dev', 'proc', 'sys', 'kiln']) await fs.mkdir(path.join(tree, d));
      await fs.copyFile(init.path, path.join(tree, 'init'));
      await fs.chmod(path.join(tree, 'init'), 0o755);
      for (const [i, f] of moduleFiles.entries()) {
        const dest = path.join(tree, 'lib/kiln/modules', names[i]!);
        if (f.endsWith('.ko')) await fs.copyFile(f, dest);
        else await fs.writeFile(dest, await decompressFile(f));
      }
      await fs.writeFile(path.join(tree, 'lib/kiln/modules.order'), names.join('\n') + '\n');
      const entries = ['.', 'init', 'dev', 'proc', 'sys', 'kiln', 'lib', 'lib/kiln', 'lib/kiln/modules', 'lib/kiln/modules.order',
        ...names.map((n) => `lib/kiln/modules/${n}`)];
      await cpioPack(tree, entries, tmp);
    } finally {
      await fs.rm(tree, { recursive: true, force: true });
    }
  });
  return { path: out, hash, modules: names };
}
