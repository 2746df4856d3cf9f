// qemu-system-x86_64: launched with -daemonize, so the call returns once QEMU has
// initialised (QMP socket listening, guest started) or failed with its reason on stderr.
import { run } from '../util/process.ts';

export const QEMU_BINARY = process.env.KILN_QEMU ?? 'qemu-system-x86_64';

export async function qemuDaemonize(args: readonly string[], signal?: AbortSignal): Promise<void> {
  await run(QEMU_BINARY, args, { timeoutMs: 60_000, signal });
}

export async function qemuVersion(): Promise<string> {
  const { stdout } = await run(QEMU_BINARY, ['--version']);
  return /version\s+(\S+)/.exec(stdout)?.[1] ?? stdout.trim();
}
