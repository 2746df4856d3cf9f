// mkfs.ext4: formats the sparse writable-layer template that per-VM scratch disks clone.
import fs from 'node:fs/promises';
import { run } from '../util/process.ts';

export async function mkfsExt4(file: string, opts: { sizeMib: number; label: string }): Promise<void> {
  const fh = await fs.open(file, 'w');
  try {
    await fh.truncate(opts.sizeMib * 1024 * 1024);
  } finally {
    await fh.close();
  }
  // lazy init keeps the image sparse: only superblocks and a few bitmaps are written.
  await run('mkfs.ext4', ['-q', '-F', '-L', opts.label, '-E', 'lazy_itable_init=1,lazy_journal_init=1', '-m', '0', file]);
}
