// chroot: runs a command inside a root tree being prepared (a recipe's customisation step).
import { run, type RunResult } from '../util/process.ts';

export function chrootRun(root: string, argv: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return run('chroot', [root, ...argv], {
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', DEBIAN_FRONTEND: 'noninteractive', ...env },
    timeoutMs: 600_000,
  });
}
