// qemu-system-x86_64: launched with -daemonize, so the call returns once QEMU has
// initialised (QMP socket listening, guest started) or failed with its reason on stderr.
import { run } from '../util/process.ts';
import { netnsExecArgs } from './nsenter.ts';

export const QEMU_BINARY = process.env.KILN_QEMU ?? 'qemu-system-x86_64';

/** `netns`: start QEMU inside that network namespace (it stays there after daemonizing). */
export async function qemuDaemonize(args: readonly string[], signal?: AbortSignal, netns?: string): Promise<void> {
  if (netns) await run('nsenter', netnsExecArgs(netns, QEMU_BINARY, args), { timeoutMs: 60_000, signal });
  else await run(QEMU_BINARY, args, { timeoutMs: 60_000, signal });
}

export async function qemuVersion(): Promise<string> {
  const { stdout } = await run(QEMU_BINARY, ['--version']);
  return /version\s+(\S+)/.exec(stdout)?.[1] ?? stdout.trim();
}
