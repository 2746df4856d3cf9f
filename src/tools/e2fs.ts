// e2fsck / resize2fs: growing a stopped classic VM's ext4 disk in place (offline resize:
// resize2fs insists on a freshly checked filesystem, hence the forced check first).
import { run } from '../util/process.ts';

/** Forced check that repairs what is safe to repair (-p); exit codes 1 and 2 mean "fixed". */
export async function e2fsckForce(file: string): Promise<void> {
  await run('e2fsck', ['-f', '-p', file], { timeoutMs: 600_000, okCodes: [0, 1, 2] });
}

/** Grows the filesystem to fill its (already enlarged) file. */
export async function resize2fs(file: string): Promise<void> {
  await run('resize2fs', [file], { timeoutMs: 600_000 });
}
