// Writes tar entries into a staging root the way an overlay of OCI layers would look:
// whiteouts and opaque directories per the OCI image-layer spec, ownership, modes (setuid,
// setgid, sticky), xattrs, symlinks, hard links, device nodes and mtimes preserved.
//
// The layer content is hostile. Entry paths with ".." are refused; every parent directory is
// resolved inside the root the way the guest will see it (symlinks followed, absolute targets
// and ".." clamped at the root, as under chroot), so a symlink planted by one layer cannot
// carry a later entry out of the staging dir. The final component is never followed.
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../../errors.ts';
import { mkfifo, mknod } from '../../tools/mknod.ts';
import { setXattr } from '../../tools/setfattr.ts';
import type { TarBody, TarEntry } from './tar-reader.ts';

const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';
const MAX_SYMLINK_HOPS = 40;

function invalid(message: string): KilnError {
  return new KilnError('KILN_ERR_IMAGE_INVALID', message);
}

/** "./a//b/" → ["a", "b"]; refuses ".." anywhere (a layer has no business going up). */
export function entryComponents(p: string): string[] {
  const parts = p.split('/').filter((c) => c !== '' && c !== '.');
  if (parts.includes('..')) throw invalid(`layer entry ${JSON.stringify(p)} contains ".."`);
  for (const c of parts) if (c.includes('\0')) throw invalid('layer entry path contains NUL');
  return parts;
}

async function lstatOrNull(p: string) {
  try {
    return await fs.lstat(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

export interface RootWriterStats {
  entries: number;
  bytes: number;
}

/**
 * What an image may unpack to. A layer is a compressed stream from a registry kiln does not
 * trust: a few KB of gzip can expand to terabytes of zeros or millions of empty files. Each
 * file's size is in its tar header, so a file that would pass a limit is refused before any of
 * it is written.
 */
export interface UnpackLimits {
  /** File bytes one layer may write. */
  maxLayerBytes: number;
  /** File bytes all layers together may write. */
  maxImageBytes: number;
  /** Tar entries all layers together may hold. */
  maxEntries: number;
}

export const DEFAULT_UNPACK_LIMITS: UnpackLimits = { maxLayerBytes: 32 * 2 ** 30, maxImageBytes: 64 * 2 ** 30, maxEntries: 4_000_000 };

export class RootWriter {
  /** Relative dir path → real host path inside the root (dropped whenever anything is removed). */
  private dirCache = new Map<string, string>();
  /** Directory mtimes, applied last: creating children changes them. */
  private readonly dirTimes = new Map<string, number>();
  /** Host paths this layer wrote: an opaque marker or whiteout hides only lower layers. */
  private layerPaths = new Set<string>();
  readonly stats: RootWriterStats = { entries: 0, bytes: 0 };
  private layerStartBytes = 0;

  constructor(
    readonly root: string,
    private readonly limits: UnpackLimits = DEFAULT_UNPACK_LIMITS,
  ) {}

  beginLayer(): void {
    this.layerPaths = new Set();
    this.layerStartBytes = this.stats.bytes;
  }

  private checkLimits(e: TarEntry): void {
    const l = this.limits;
    if (this.stats.entries > l.maxEntries) throw invalid(`the image has more than ${l.maxEntries} entries (KILN_IMAGE_MAX_ENTRIES)`);
    if (e.type !== 'file') return;
    if (this.stats.bytes - this.layerStartBytes + e.size > l.maxLayerBytes) {
      throw invalid(`a layer unpacks to more than ${l.maxLayerBytes} bytes (at ${JSON.stringify(e.path)}; KILN_LAYER_MAX_BYTES)`);
    }
    if (this.stats.bytes + e.size > l.maxImageBytes) {
      throw invalid(`the image unpacks to more than ${l.maxImageBytes} bytes (at ${JSON.stringify(e.path)}; KILN_IMAGE_MAX_BYTES)`);
    }
  }

  /**
   * The host path of directory `parts` (relative to the root), following symlinks within the
   * root. Missing directories are created (root-owned 0755, as Docker does) when `create`.
   */
  async resolveDir(parts: string[], create: boolean): Promise<string | null> {
    const key = parts.join('/');
    const hit = this.dirCache.get(key);
    if (hit) return hit;
    const stack: string[] = [];
    const queue = [...parts];
    let hops = 0;
    while (queue.length) {
      const c = queue.shift()!;
      if (c === '' || c === '.') continue;
      if (c === '..') {
        stack.pop();
        continue;
      }
      const cand = path.join(this.root, ...stack, c);
      const st = await lstatOrNull(cand);
      if (!st) {
        if (!create) return null;
        await fs.mkdir(cand, { mode: 0o755 });
        stack.push(c);
        continue;
      }
      if (st.isSymbolicLink()) {
        if (++hops > MAX_SYMLINK_HOPS) throw invalid(`too many levels of symbolic links resolving /${key}`);
        const target = await fs.readlink(cand);
        if (target.startsWith('/')) stack.length = 0;
        queue.unshift(...target.split('/'));
        continue;
      }
      if (!st.isDirectory()) throw invalid(`/${key}: ${path.join(...stack, c)} is not a directory`);
      stack.push(c);
    }
    const real = path.join(this.root, ...stack);
    this.dirCache.set(key, real);
    return real;
  }

  private async remove(p: string): Promise<void> {
    await fs.rm(p, { recursive: true, force: true });
    this.dirCache.clear();
    for (const d of this.dirTimes.keys()) if (d === p || d.startsWith(p + path.sep)) this.dirTimes.delete(d);
  }

  async apply(e: TarEntry, body: TarBody): Promise<void> {
    this.stats.entries++;
    this.checkLimits(e);
    const parts = entryComponents(e.path);
    if (parts.length === 0) {
      // The root itself ("./"): only its metadata.
      if (e.type === 'dir') await this.setMeta(this.root, e);
      return;
    }
    const name = parts[parts.length - 1]!;
    const parent = await this.resolveDir(parts.slice(0, -1), !name.startsWith(WHITEOUT));
    if (name === OPAQUE) {
      if (parent) await this.makeOpaque(parent);
      return;
    }
    if (name.startsWith(WHITEOUT)) {
      const hidden = name.slice(WHITEOUT.length);
      // ".wh..wh.*" other than the opaque marker is aufs bookkeeping, not content.
      if (!parent || hidden.startsWith('.wh.') || hidden === '' || hidden === '.' || hidden === '..') return;
      const victim = path.join(parent, hidden);
      if (!this.layerPaths.has(victim)) await this.remove(victim);
      return;
    }
    const target = path.join(parent!, name);
    const existing = await lstatOrNull(target);
    if (existing && !(existing.isDirectory() && e.type === 'dir')) await this.remove(target);
    this.layerPaths.add(target);
    switch (e.type) {
      case 'dir':
        if (!existing?.isDirectory()) await fs.mkdir(target, { mode: 0o700 });
        break;
      case 'file':
        await this.writeFile(target, e, body);
        break;
      case 'symlink':
        await fs.symlink(e.linkpath, target);
        break;
      case 'hardlink': {
        const src = await this.resolveLinkSource(e.linkpath);
        await fs.link(src, target);
        // The link shares the source's inode, hence its metadata: nothing more to set.
        return;
      }
      case 'char':
      case 'block':
        await mknod(target, e.type, e.devmajor, e.devminor, e.mode);
        break;
      case 'fifo':
        await mkfifo(target, e.mode);
        break;
    }
    await this.setMeta(target, e);
  }

  private async makeOpaque(dir: string): Promise<void> {
    for (const child of await fs.readdir(dir)) {
      const p = path.join(dir, child);
      if (!this.layerPaths.has(p)) await this.remove(p);
    }
  }

  private async resolveLinkSource(linkpath: string): Promise<string> {
    const parts = entryComponents(linkpath);
    if (parts.length === 0) throw invalid(`hard link to the root directory`);
    const dir = await this.resolveDir(parts.slice(0, -1), false);
    const src = dir && path.join(dir, parts[parts.length - 1]!);
    const st = src ? await lstatOrNull(src) : null;
    if (!src || !st) throw invalid(`hard link target ${JSON.stringify(linkpath)} does not exist`);
    if (st.isDirectory()) throw invalid(`hard link target ${JSON.stringify(linkpath)} is a directory`);
    return src;
  }

  private async writeFile(target: string, e: TarEntry, body: TarBody): Promise<void> {
    const fh = await fs.open(target, 'wx', 0o600);
    try {
      for await (const chunk of body.chunks()) {
        let off = 0;
        while (off < chunk.length) off += (await fh.write(chunk, off, chunk.length - off)).bytesWritten;
        this.stats.bytes += chunk.length;
      }
    } finally {
      await fh.close();
    }
  }

  private async setMeta(target: string, e: TarEntry): Promise<void> {
    await fs.lchown(target, e.uid, e.gid);
    for (const [k, v] of e.xattrs) await setXattr(target, k, v);
    // After chown: chown clears setuid/setgid.
    if (e.type !== 'symlink') await fs.chmod(target, e.mode);
    if (e.type === 'dir') this.dirTimes.set(target, e.mtime);
    else await fs.lutimes(target, e.mtime, e.mtime);
  }

  /** Directory mtimes, deepest first (setting a child's time does not touch its parent's). */
  async finish(): Promise<void> {
    const dirs = [...this.dirTimes].filter(([p]) => p === this.root || p.startsWith(this.root + path.sep));
    dirs.sort((a, b) => b[0].split('/').length - a[0].split('/').length);
    for (const [p, t] of dirs) await fs.lutimes(p, t, t).catch((err) => {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    });
  }
}
