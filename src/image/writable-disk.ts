// Writable full disks for classic VMs: the VM gets its own copy of an ext4 image. A reflink
// where the filesystem has them (btrfs, xfs: O(1), blocks shared until written), else a
// sparse copy (only data extents are copied). The strategy is returned so callers record it:
// on a filesystem without reflinks this is the one per-VM cost proportional to image size.
import fs from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { KilnError } from '../errors.ts';
import type { ImageRecord } from '../store/store.ts';
import { cloneFile, type CloneStrategy } from '../tools/cp.ts';

export interface WritableDisk {
  path: string;
  strategy: CloneStrategy;
  ms: number;
}

export async function cloneWritableDisk(image: Pick<ImageRecord, 'name' | 'format' | 'path'>, dest: string): Promise<WritableDisk> {
  if (image.format !== 'ext4') {
    throw new KilnError('KILN_ERR_VALIDATION', `a writable disk needs an ext4 image; ${image.name} is ${image.format} (pull or import it with format ext4)`);
  }
  await fs.mkdir(path.dirname(dest), { recursive: true });
  const t0 = performance.now();
  const strategy = await cloneFile(image.path, dest);
  return { path: dest, strategy, ms: performance.now() - t0 };
}
