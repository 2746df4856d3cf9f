// Finds VMM processes by what they are about, not by what the store remembers: every VMM kilnd
// starts names its VM's runtime dir (`<state>/vms/<vm id>/`) on its command line (QMP or API
// socket, drives). A kilnd killed between spawning a VMM and recording its pid leaves a
// process the store does not know; at start kilnd kills every such process under its own
// state dir that it did not re-attach. Other kilnds' VMMs name other state dirs and are left
// alone.
import fs from 'node:fs/promises';

export interface VmmProcess {
  pid: number;
  vmId: string;
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * Live (non-zombie) processes whose command line names a runtime dir under `vmsDir`, or whose
 * root directory is a jail under `jailsDir` (a jailed Firecracker sees only its chroot, so its
 * command line names no host path: `<jailsDir>/<exec name>/<vm id>/root`).
 */
export async function processesUnder(vmsDir: string, jailsDir?: string, procDir = '/proc'): Promise<VmmProcess[]> {
  const re = new RegExp(`${escape(vmsDir.replace(/\/+$/, ''))}/(vm-[0-9a-f]+)(?:/|\\0|$)`);
  const jailRe = jailsDir ? new RegExp(`^${escape(jailsDir.replace(/\/+$/, ''))}/[^/]+/(vm-[0-9a-f]+)/root$`) : null;
  const out: VmmProcess[] = [];
  for (const entry of await fs.readdir(procDir)) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    const cmdline = await fs.readFile(`${procDir}/${entry}/cmdline`, 'utf8').catch(() => '');
    const root = jailRe ? await fs.readlink(`${procDir}/${entry}/root`).catch(() => '') : '';
    const m = re.exec(cmdline) ?? (jailRe ? jailRe.exec(root) : null);
    if (!m || (await isZombie(pid, procDir))) continue;
    out.push({ pid, vmId: m[1]! });
  }
  return out;
}

async function isZombie(pid: number, procDir = '/proc'): Promise<boolean> {
  const stat = await fs.readFile(`${procDir}/${pid}/stat`, 'utf8').catch(() => null);
  if (stat === null) return true;
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
}

/** SIGKILLs a process that is not our child and waits (bounded) until it is gone or a zombie. */
export function killAndWait(pid: number, timeoutMs = 5000): Promise<boolean> {
  return signalAndWait(pid, 'SIGKILL', timeoutMs);
}

/** Sends `signal` to a process that is not our child and waits (bounded) until it is gone or a zombie. */
export async function signalAndWait(pid: number, signal: NodeJS.Signals, timeoutMs: number): Promise<boolean> {
  try {
    process.kill(pid, signal);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return true;
    throw e;
  }
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await isZombie(pid)) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}
