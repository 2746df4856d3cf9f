// Root filesystem builders: a flattened tree becomes the one read-only file every VM of the
// image shares. squashfs (zstd level 3) by default; erofs (lz4) on request; ext4 when neither
// tool is installed (and for writable volumes). The builder used is recorded per image.
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../../errors.ts';
import { mkfsErofs } from '../../tools/mkfs-erofs.ts';
import { mkfsExt4 } from '../../tools/mkfs-ext4.ts';
import { mksquashfs } from '../../tools/mksquashfs.ts';

export const IMAGE_FORMATS = ['squashfs', 'erofs', 'ext4'] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];

const TOOL: Record<ImageFormat, string> = { squashfs: 'mksquashfs', erofs: 'mkfs.erofs', ext4: 'mkfs.ext4' };
/** What each builder is run with: recorded so an image says exactly how it was made. */
const BUILDER: Record<ImageFormat, string> = { squashfs: 'mksquashfs -comp zstd -Xcompression-level 3', erofs: 'mkfs.erofs -zlz4', ext4: 'mkfs.ext4 -d' };

async function onPath(cmd: string): Promise<boolean> {
  for (const dir of (process.env.PATH ?? '').split(':').filter(Boolean)) {
    try {
      await fs.access(path.join(dir, cmd), constants.X_OK);
      return true;
    } catch {
      /* next */
    }
  }
  return false;
}

export async function availableFormats(): Promise<ImageFormat[]> {
  const out: ImageFormat[] = [];
  for (const f of IMAGE_FORMATS) if (await onPath(TOOL[f])) out.push(f);
  return out;
}

/** The requested format if its tool is installed; otherwise the first available in preference order. */
export async function pickFormat(requested?: ImageFormat): Promise<ImageFormat> {
  const have = await availableFormats();
  if (requested) {
    if (!have.includes(requested)) throw new KilnError('KILN_ERR_HOST_SETUP', `image format ${requested} needs ${TOOL[requested]}, which is not installed`);
    return requested;
  }
  const f = have[0];
  if (!f) throw new KilnError('KILN_ERR_HOST_SETUP', 'no image builder installed (mksquashfs, mkfs.erofs or mkfs.ext4)');
  return f;
}

export interface TreeStats {
  entries: number;
  bytes: number;
}

/** Counts a tree (for sizing ext4, which unlike squashfs/erofs needs its size up front). */
export async function treeStats(dir: string): Promise<TreeStats> {
  const s: TreeStats = { entries: 0, bytes: 0 };
  const walk = async (d: string) => {
    for (const ent of await fs.readdir(d, { withFileTypes: true })) {
      s.entries++;
      const p = path.join(d, ent.name);
      if (ent.isDirectory()) await walk(p);
      else if (ent.isFile()) s.bytes += (await fs.lstat(p)).size;
    }
  };
  await walk(dir);
  return s;
}

export interface BuildResult {
  format: ImageFormat;
  builder: string;
  sizeBytes: number;
}

export async function buildRootfs(tree: string, out: string, format: ImageFormat, stats?: TreeStats): Promise<BuildResult> {
  try {
    switch (format) {
      case 'squashfs':
        await mksquashfs(tree, out, { compression: 'zstd', level: 3 });
        break;
      case 'erofs':
        await mkfsErofs(tree, out);
        break;
      case 'ext4': {
        const s = stats ?? (await treeStats(tree));
        // Data rounded up per 4 KiB block, an inode and a directory block's share per entry, journal and slack.
        const bytes = s.bytes * 1.1 + s.entries * 8192 + 64 * 1024 * 1024;
        await mkfsExt4(out, { sizeMib: Math.ceil(bytes / 1048576), label: 'kiln-root', fromDir: tree, inodes: Math.ceil(s.entries * 1.25) + 1024 });
        break;
      }
    }
  } catch (e) {
    await fs.rm(out, { force: true });
    const msg = (e as Error).message;
    if (/No space left|ENOSPC|Disk quota/i.test(msg)) throw new KilnError('KILN_ERR_NO_SPACE', `no space left building the ${format} image: ${msg}`, undefined, { cause: e });
    throw e;
  }
  return { format, builder: BUILDER[format], sizeBytes: (await fs.stat(out)).size };
}
