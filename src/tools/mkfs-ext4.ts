// mkfs.ext4: formats the sparse writable-layer template that per-VM scratch disks clone,
// persistent volumes, and ext4 root images populated from a directory (`-d`).
import fs from 'node:fs/promises';
import { run } from '../util/process.ts';

export async function mkfsExt4(file: string, opts: { sizeMib: number; label: string; fromDir?: string; inodes?: number; resizable?: boolean }): Promise<void> {
  const fh = await fs.open(file, 'w');
  try {
    await fh.truncate(opts.sizeMib * 1024 * 1024);
  } finally {
    await fh.close();
  }
  // lazy init keeps the image sparse: only superblocks and a few bitmaps are written.
  const args = ['-q', '-F', '-L', opts.label, '-E', 'lazy_itable_init=1,lazy_journal_init=1', '-m', '0'];
  if (opts.inodes) args.push('-N', String(opts.inodes));
  // Without the resize inode's reserved GDT blocks a 2 GiB filesystem holds ~160 KiB of data
  // instead of ~1.2 MiB: what each per-VM writable layer copies (offline resize2fs still works).
  if (opts.resizable === false) args.push('-O', '^resize_inode');
  // -d copies owners, modes, xattrs, hard links and device nodes from the tree (e2fsprogs ≥ 1.43).
  if (opts.fromDir) args.push('-d', opts.fromDir);
  await run('mkfs.ext4', [...args, file], { timeoutMs: 3_600_000 });
}
