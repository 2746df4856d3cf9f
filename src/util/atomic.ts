// Build-then-rename helpers: an asset or image is either complete at its final path or not
// there at all, so a crash or a concurrent builder never leaves a half file visible.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';

export function tempSibling(target: string): string {
  return `${target}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
}

/** Flushes a file's data to disk (before it is renamed into place and recorded). */
export async function fsyncFile(file: string): Promise<void> {
  const fh = await fs.open(file, 'r');
  await fh.sync().finally(() => fh.close());
}

export async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Produces `target` (file or directory) once: `build(tmp)` writes to a temporary sibling
 * that is renamed into place. If another builder won the race, its result is kept.
 */
export async function buildOnce(target: string, build: (tmp: string) => Promise<void>): Promise<string> {
  if (await exists(target)) return target;
  const tmp = tempSibling(target);
  try {
    await build(tmp);
    try {
      await fs.rename(tmp, target);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
    }
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
  return target;
}

export async function writeFileAtomic(target: string, data: string | Buffer): Promise<void> {
  const tmp = tempSibling(target);
  try {
    await fs.writeFile(tmp, data);
    await fs.rename(tmp, target);
  } finally {
    await fs.rm(tmp, { force: true });
  }
}
