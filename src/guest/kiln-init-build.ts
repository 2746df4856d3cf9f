// Compiles kiln-init (src/guest/kiln-init/kiln-init.c) into a static binary, cached in the
// assets dir by the hash of its source and compiler, so an edit rebuilds it and nothing else.
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ccVersion, compileStatic } from '../tools/cc.ts';
import { buildOnce } from '../util/atomic.ts';

export const KILN_INIT_SOURCE = fileURLToPath(new URL('./kiln-init/kiln-init.c', import.meta.url));

export interface KilnInitBinary {
  path: string;
  /** Short content hash: part of every initramfs and snapshot identity. */
  hash: string;
}

export async function ensureKilnInit(assetsDir: string): Promise<KilnInitBinary> {
  const source = await fs.readFile(KILN_INIT_SOURCE);
  const hash = createHash('sha256').update(source).update(await ccVersion()).digest('hex').slice(0, 16);
  const dir = path.join(assetsDir, 'kiln-init', hash);
  await fs.mkdir(path.dirname(dir), { recursive: true });
  await buildOnce(dir, async (tmp) => {
    await fs.mkdir(tmp, { recursive: true });
    await compileStatic(KILN_INIT_SOURCE, path.join(tmp, 'kiln-init'));
  });
  return { path: path.join(dir, 'kiln-init'), hash };
}
