// mknod / mkfifo (coreutils): Node cannot create device nodes or FIFOs. Image layers rarely
// hold either (a few under /dev in some base images), so a process per node is fine.
import { run } from '../util/process.ts';

export async function mknod(file: string, kind: 'char' | 'block', major: number, minor: number, mode: number): Promise<void> {
  await run('mknod', ['-m', (mode & 0o7777).toString(8), '--', file, kind === 'char' ? 'c' : 'b', String(major), String(minor)]);
}

export async function mkfifo(file: string, mode: number): Promise<void> {
  await run('mkfifo', ['-m', (mode & 0o7777).toString(8), '--', file]);
}
