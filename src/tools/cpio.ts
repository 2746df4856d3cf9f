// cpio: packs the initramfs (newc format, uncompressed: the kernel unpacks it faster than it
// would inflate it, and it is a few MiB).
import fs from 'node:fs/promises';
import { run } from '../util/process.ts';

export async function cpioPack(dir: string, entries: string[], out: string): Promise<void> {
  const { stdoutBuffer } = await run('cpio', ['--quiet', '-o', '-H', 'newc', '-R', '0:0'], {
    cwd: dir,
    input: entries.join('\n') + '\n',
    binary: true,
  });
  await fs.writeFile(out, stdoutBuffer);
}
