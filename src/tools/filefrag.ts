// filefrag (e2fsprogs): a file's data extents via FIEMAP. Node has no SEEK_DATA/FIEMAP; the
// per-VM writable layer is stamped from the template's few written extents (see
// src/image/rootfs-prepare.ts), found once per template with this.
import { run } from '../util/process.ts';

export interface Extent {
  offset: number;
  length: number;
}

/** Written (data-bearing) extents in byte units, in order; unwritten (preallocated) ones read as zeros and are left out. */
export async function dataExtents(file: string): Promise<Extent[]> {
  const { stdout } = await run('filefrag', ['-v', '-b1', file]);
  const out: Extent[] = [];
  for (const line of stdout.split('\n')) {
    const m = /^\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+\d+\.\.\s*\d+:\s+(\d+):.*?$/.exec(line);
    if (!m) continue;
    if (/unwritten/.test(line)) continue;
    out.push({ offset: Number(m[1]), length: Number(m[3]) });
  }
  return out;
}
