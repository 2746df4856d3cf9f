// debootstrap: builds a minimal Debian root from Debian's archive (runtime and base images).
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../errors.ts';
import { ProcessError, run } from '../util/process.ts';

export interface DebootstrapOptions {
  suite: string;
  target: string;
  mirror: string;
  /** 'minbase' (apt + essentials only) keeps runtime images small. */
  variant?: 'minbase' | 'buildd' | 'default';
  include?: string[];
  /** Downloaded .debs are kept here, so a rebuild (new shim, new recipe) fetches nothing. */
  cacheDir?: string;
}

export async function debootstrap(o: DebootstrapOptions): Promise<void> {
  const args: string[] = [];
  if (o.variant && o.variant !== 'default') args.push(`--variant=${o.variant}`);
  if (o.include?.length) args.push(`--include=${o.include.join(',')}`);
  if (o.cacheDir) {
    await fs.mkdir(o.cacheDir, { recursive: true });
    args.push(`--cache-dir=${path.resolve(o.cacheDir)}`);
  }
  args.push(o.suite, o.target, o.mirror);
  try {
    await run('debootstrap', args, { timeoutMs: 1_800_000 });
  } catch (e) {
    // debootstrap's stderr says little ("see the log"); the reason is in its log file.
    if (!(e instanceof ProcessError)) throw e;
    const log = await fs.readFile(path.join(o.target, 'debootstrap', 'debootstrap.log'), 'utf8').catch(() => '');
    throw new KilnError('KILN_ERR_TOOL_FAILED', `${e.message}${log ? `\n--- debootstrap.log (tail) ---\n${log.slice(-3000)}` : ''}`, e.details);
  }
}
