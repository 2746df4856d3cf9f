// xz / zstd: newer Debian kernels ship compressed modules; the initramfs gets them inflated
// so kiln-init can load them with a plain finit_module().
import { run } from '../util/process.ts';

export async function decompressFile(file: string): Promise<Buffer> {
  if (file.endsWith('.xz')) return (await run('xz', ['-dc', file], { binary: true })).stdoutBuffer;
  if (file.endsWith('.zst')) return (await run('zstd', ['-dc', file], { binary: true })).stdoutBuffer;
  if (file.endsWith('.gz')) return (await run('gzip', ['-dc', file], { binary: true })).stdoutBuffer;
  throw new Error(`don't know how to decompress ${file}`);
}
