// Compiles kiln-init (src/guest/kiln-init/*.c) into a static binary, cached in the assets dir
// by the hash of its sources, header and compiler, so an edit rebuilds it and nothing else.
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ccVersion, compileStatic } from '../tools/cc.ts';
import { buildOnce } from '../util/atomic.ts';

export const KILN_INIT_DIR = fileURLToPath(new URL('./kiln-init/', import.meta.url));

export interface KilnInitBinary {
  path: string;
  /** Short content hash: part of every initramfs and snapshot identity. */
  hash: string;
}

/** Every source and header, in a stable order (the hash depends on it). */
export async function kilnInitSources(): Promise<{ sources: string[]; all: string[] }> {
  const names = (await fs.readdir(KILN_INIT_DIR)).filter((n) => /\.[ch]$/.test(n)).sort();
  const all = names.map((n) => path.join(KILN_INIT_DIR, n));
  return { sources: all.filter((f) => f.endsWith('.c')), all };
}

export async function ensureKilnInit(assetsDir: string): Promise<KilnInitBinary> {
  const { sources, all } = await kilnInitSources();
  const h = createHash('sha256');
  for (const f of all) h.update(`${path.basename(f)}\0`).update(await fs.readFile(f)).update('\0');
  const hash = h.update(await ccVersion()).digest('hex').slice(0, 16);
  const dir = path.join(assetsDir, 'kiln-init', hash);
  await fs.mkdir(path.dirname(dir), { recursive: true });
  await buildOnce(dir, async (tmp) => {
    await fs.mkdir(tmp, { recursive: true });
    await compileStatic(sources, path.join(tmp, 'kiln-init'));
  });
  return { path: path.join(dir, 'kiln-init'), hash };
}
