// mkfs.erofs (erofs-utils): the optional read-only image format. lz4 is the only fast
// compressor Debian bookworm's erofs-utils 1.5 has; the guest kernel decompresses it natively.
import { run } from '../util/process.ts';

export async function mkfsErofs(srcDir: string, out: string): Promise<void> {
  await run('mkfs.erofs', ['--quiet', '-zlz4', out, srcDir], { timeoutMs: 3_600_000 });
}
