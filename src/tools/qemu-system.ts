// qemu-system-x86_64. The VMM is spawned in its own session (it outlives kilnd) in the
// foreground, not with -daemonize: QEMU's seccomp filter (spawn=deny) forbids the fork that
// -daemonize does after the filter is in place. Its stdout/stderr go to a log file whose tail
// is the error when it exits before its QMP socket answers.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import { KilnError } from '../errors.ts';
import { run } from '../util/process.ts';
import { netnsExecArgs } from './nsenter.ts';

export const QEMU_BINARY = process.env.KILN_QEMU ?? 'qemu-system-x86_64';

export interface QemuSpawnOptions {
  /** `ip netns` name: QEMU runs inside that network namespace. */
  netns?: string;
  /** Open file descriptors QEMU inherits as fd 3, 4, … (a restore's migration stream). */
  fds?: readonly number[];
  /** Appended to with QEMU's stdout and stderr. */
  logPath: string;
}

export interface QemuProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Resolves when the process exits (while kilnd is its parent). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** The argv that runs QEMU (inside `netns`: nsenter execs it in place, so the pid is QEMU's). */
export function qemuArgv(args: readonly string[], o: Pick<QemuSpawnOptions, 'netns'>): string[] {
  return o.netns ? ['nsenter', ...netnsExecArgs(o.netns, QEMU_BINARY, args)] : [QEMU_BINARY, ...args];
}

export async function spawnQemu(args: readonly string[], o: QemuSpawnOptions): Promise<QemuProcess> {
  const argv = qemuArgv(args, o);
  const log = await fs.open(o.logPath, 'a', 0o600);
  try {
    const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: ['ignore', log.fd, log.fd, ...(o.fds ?? [])] });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', (e: NodeJS.ErrnoException) =>
        reject(new KilnError('KILN_ERR_HOST_SETUP', `cannot start ${argv[0]}: ${e.code ?? e.message}`, { binary: argv[0] }, { cause: e })),
      );
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
    return { child, pid: child.pid!, exited };
  } finally {
    await log.close();
  }
}

export async function qemuVersion(): Promise<string> {
  const { stdout } = await run(QEMU_BINARY, ['--version']);
  return /version\s+(\S+)/.exec(stdout)?.[1] ?? stdout.trim();
}

/**
 * Starts QEMU with no machine and `extra` (e.g. -sandbox …), and quits it over QMP on stdio:
 * null when QEMU accepted the options, else its complaint (e.g. "seccomp support is disabled").
 */
export async function qemuRejects(extra: readonly string[]): Promise<string | null> {
  try {
    await run(QEMU_BINARY, ['-machine', 'none', '-nodefaults', '-display', 'none', '-S', '-qmp', 'stdio', ...extra], {
      input: '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
      timeoutMs: 10_000,
    });
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}
