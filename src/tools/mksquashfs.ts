// mksquashfs: builds the read-only root images every VM shares.
import { run } from '../util/process.ts';

export interface SquashfsOptions {
  /** zstd by default: best ratio per CPU second; level 3 is ~8x faster than 15 here (DESIGN §9). */
  compression?: 'zstd' | 'lz4' | 'gzip' | 'xz';
  level?: number;
}

export async function mksquashfs(srcDir: string, out: string, opts: SquashfsOptions = {}): Promise<void> {
  const comp = opts.compression ?? 'zstd';
  const args = [srcDir, out, '-noappend', '-quiet', '-no-progress', '-comp', comp];
  if (comp === 'zstd') args.push('-Xcompression-level', String(opts.level ?? 3));
  await run('mksquashfs', args, { timeoutMs: 3_600_000 });
}
