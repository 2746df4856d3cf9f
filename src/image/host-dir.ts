// Host directories that clients name by path (image import, read-only volume host_path) must
// lie under an allowed root, symlinks resolved, and must still be that directory when kiln
// reads it. So: resolve and check, open the directory once (O_NOFOLLOW), check again what the
// kernel says the open handle is (/proc/self/fd), and build from the handle
// (/proc/<kilnd>/fd/N/.), never from the path: a rename or symlink swap of the directory or any
// of its parents after the check changes nothing the build sees.
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../errors.ts';

export function underRoot(p: string, root: string): boolean {
  return p === root || p.startsWith(root.endsWith(path.sep) ? root : root + path.sep);
}

/** The roots with their own symlinks resolved (a root that does not exist allows nothing). */
export async function resolveRoots(roots: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const r of roots) {
    const real = await fs.realpath(r).catch(() => null);
    if (real) out.push(real);
  }
  return out;
}

function notAllowed(p: string, roots: readonly string[], why = ''): KilnError {
  return new KilnError('KILN_ERR_PATH_NOT_ALLOWED', `${p}${why} is outside the allowed roots (${roots.join(', ') || 'none configured: set --allowed-root'})`);
}

/**
 * The real path of directory `p` if it (symlinks resolved) lies under an allowed root.
 * A check only: whoever reads the directory later must use openAllowedDir.
 */
export async function checkAllowedDir(p: string, roots: readonly string[]): Promise<string> {
  const resolved = path.resolve(p);
  const realRoots = await resolveRoots(roots);
  const lexicallyInside = roots.some((r) => underRoot(resolved, r)) || realRoots.some((r) => underRoot(resolved, r));
  if (!lexicallyInside) throw notAllowed(resolved, roots);
  const real = await fs.realpath(resolved).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT' || e.code === 'ENOTDIR') throw new KilnError('KILN_ERR_VALIDATION', `${resolved} does not exist`);
    throw e;
  });
  if (!realRoots.some((r) => underRoot(real, r))) throw notAllowed(resolved, roots, ` (resolves to ${real})`);
  if (!(await fs.stat(real)).isDirectory()) throw new KilnError('KILN_ERR_VALIDATION', `${resolved} is not a directory`);
  return real;
}

export interface AllowedDirHandle {
  /** The real path that was checked (for messages and records). */
  readonly path: string;
  /** Read the tree through this (also from child processes): the opened directory itself. */
  readonly readPath: string;
  close(): Promise<void>;
}

/**
 * Checks `p` (see checkAllowedDir) and opens it. `afterCheck` runs between the check and the
 * open: the window a swap would use (tests put their swap there).
 */
export async function openAllowedDir(p: string, roots: readonly string[], opts: { afterCheck?: () => Promise<void> } = {}): Promise<AllowedDirHandle> {
  const real = await checkAllowedDir(p, roots);
  await opts.afterCheck?.();
  const fh = await fs.open(real, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW).catch((e: NodeJS.ErrnoException) => {
    // ELOOP: the last component became a symlink; ENOTDIR: it became something else.
    if (e.code === 'ELOOP' || e.code === 'ENOTDIR' || e.code === 'ENOENT') throw notAllowed(p, roots, ' (changed while being opened)');
    throw e;
  });
  try {
    // O_NOFOLLOW covers only the last component: a parent swapped for a symlink in between is
    // caught here, where the kernel names the directory the handle really is.
    const opened = await fs.readlink(`/proc/self/fd/${fh.fd}`);
    const realRoots = await resolveRoots(roots);
    if (!path.isAbsolute(opened) || !realRoots.some((r) => underRoot(opened, r))) {
      throw notAllowed(p, roots, ` (opened ${opened})`);
    }
    return {
      path: real,
      // /proc/self would be the child's own: name kilnd's. The trailing /. makes every tool
      // (mksquashfs included) take the directory, not the magic link.
      readPath: `/proc/${process.pid}/fd/${fh.fd}/.`,
      close: () => fh.close(),
    };
  } catch (e) {
    await fh.close();
    throw e;
  }
}
