// Per-VM cgroups, the same small surface on cgroup v2 (one unified tree) and v1 (one tree per
// controller). A VMM joins its cgroup before it execs (see procsFiles), so every page and
// thread it ever has is charged there; kilnd kills and removes the VM through it. Used by the
// QEMU driver; the Firecracker jailer makes its own cgroups but can reuse kill/remove/sweep.
import fs from 'node:fs/promises';
import { KilnError } from '../../errors.ts';

export interface CgroupLimits {
  /** memory.max / memory.limit_in_bytes. */
  memoryBytes: number;
  /** CPUs worth of time per period (cpu.max / cfs_quota_us). */
  cpus: number;
  /** pids.max: threads and processes together. */
  pids: number;
  /** The CPU share under contention (default normal). */
  priority?: CpuPriority;
}

/**
 * How a VM's cgroup competes for CPU with the others when the host is busy. `background`: work
 * done ahead for a VM nobody uses yet (a pooled clone restoring and warming up) takes what the
 * VMs serving requests leave over, instead of an equal share of it. The quota (cpu.max) is
 * unchanged either way: an idle host gives a background VM all of its vCPUs.
 */
export type CpuPriority = 'normal' | 'background';
/** cgroup v1 cpu.shares (kernel default 1024; minimum 2). */
export const CPU_SHARES: Record<CpuPriority, number> = { normal: 1024, background: 2 };
/** cgroup v2 cpu.weight (kernel default 100; minimum 1). */
export const CPU_WEIGHT: Record<CpuPriority, number> = { normal: 100, background: 1 };

export interface VmCgroup {
  readonly name: string;
  /** Controller (or 'unified') → directory of this VM's cgroup. */
  readonly dirs: Readonly<Record<string, string>>;
  /** The cgroup.procs files a process writes its own pid into to join (one per v1 hierarchy). */
  readonly procsFiles: readonly string[];
  /** The file holding the memory cap (tests and reports read it). */
  readonly memoryLimitFile: string;
  pids(): Promise<number[]>;
  /** Moves a process (all its threads) into the cgroup, in every hierarchy. */
  addProcess(pid: number): Promise<void>;
  /** SIGKILLs everything in the cgroup at once and waits until it is empty. */
  kill(): Promise<void>;
  /** Removes the cgroup's directories (it must be empty: kill() first if in doubt). */
  remove(): Promise<void>;
  /** Its share of the CPU when the host is busy (a pooled clone taken into use goes normal). */
  setCpuPriority(priority: CpuPriority): Promise<void>;
}

export interface CgroupManager {
  readonly version: 1 | 2;
  /** The controllers kiln sets limits with (memory, cpu, pids, and freezer on v1 when present). */
  readonly controllers: readonly string[];
  /** kiln's parent cgroup (per state dir) in each hierarchy. */
  readonly parentDirs: readonly string[];
  create(name: string, limits: CgroupLimits): Promise<VmCgroup>;
  /** A handle on an existing VM cgroup (after a kilnd restart), null when it is gone. */
  open(name: string): Promise<VmCgroup | null>;
  /** The VM cgroups under kiln's parent. */
  list(): Promise<string[]>;
}

/** Removes kiln's parent cgroups when no VM cgroup is left in them (the kernel refuses otherwise). */
export async function removeParentIfEmpty(m: CgroupManager): Promise<boolean> {
  if ((await m.list()).length) return false;
  for (const dir of m.parentDirs) {
    try {
      await fs.rmdir(dir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EBUSY' || code === 'ENOTEMPTY') return false;
      if (code !== 'ENOENT') throw e;
    }
  }
  return true;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function assertCgroupName(name: string): void {
  if (!NAME.test(name)) throw new KilnError('KILN_ERR_INTERNAL', `bad cgroup name ${JSON.stringify(name)}`);
}

/** How long kill() and remove() wait for the kernel before giving up with an error. */
export const CGROUP_WAIT_MS = 5000;
const POLL_MS = 5;

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function readPids(procsFile: string): Promise<number[]> {
  const text = await fs.readFile(procsFile, 'utf8').catch((e: NodeJS.ErrnoException) => {
    // ENODEV: the cgroup was removed while being read (its last process exited meanwhile).
    if (e.code === 'ENOENT' || e.code === 'ENODEV') return '';
    throw e;
  });
  return text.split('\n').filter(Boolean).map(Number);
}

/** Polls `done` until it holds or the deadline passes (then throws naming `what`). */
export async function waitFor(what: string, done: () => Promise<boolean>, timeoutMs = CGROUP_WAIT_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await done())) {
    if (Date.now() > deadline) throw new KilnError('KILN_ERR_VMM_FAILED', `cgroup: ${what} after ${timeoutMs} ms`);
    await sleep(POLL_MS);
  }
}

export async function addToCgroup(procsFiles: readonly string[], pid: number): Promise<void> {
  for (const f of procsFiles) await writeControl(f, String(pid));
}

export function killAll(pids: readonly number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* exited meanwhile */
    }
  }
}

/** rmdir that waits out EBUSY (tasks still exiting) and ignores a directory already gone. */
export async function rmdirCgroup(dir: string): Promise<void> {
  const deadline = Date.now() + CGROUP_WAIT_MS;
  for (;;) {
    try {
      await fs.rmdir(dir);
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      // A fake (unit-test) tree holds the files kiln wrote; a real cgroupfs never lists them.
      if (code === 'ENOTEMPTY') {
        await fs.rm(dir, { recursive: true, force: true });
        return;
      }
      if (code !== 'EBUSY' || Date.now() > deadline) throw new KilnError('KILN_ERR_VMM_FAILED', `cgroup: cannot remove ${dir}: ${code ?? String(e)}`);
      await sleep(POLL_MS);
    }
  }
}

export async function listChildren(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [];
    throw e;
  });
  return entries.filter((e) => e.isDirectory() && NAME.test(e.name)).map((e) => e.name);
}

/** Writes a control file; the kernel's refusal (EINVAL, EACCES, …) names the file. */
export async function writeControl(file: string, value: string): Promise<void> {
  try {
    await fs.writeFile(file, value);
  } catch (e) {
    throw new KilnError('KILN_ERR_HOST_SETUP', `cgroup: cannot write ${JSON.stringify(value)} to ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
}

/** cfs period kiln uses: 100 ms, the kernel default. */
export const CPU_PERIOD_US = 100_000;
export const cpuQuotaUs = (cpus: number) => Math.max(1000, Math.round(cpus * CPU_PERIOD_US));

/**
 * Removes every VM cgroup under kiln's parent whose name is not in `keep` (crash safety: a
 * VM the store does not own any more). Processes still in them are killed first.
 */
export async function sweepCgroups(m: CgroupManager, keep: ReadonlySet<string>): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await m.list()) {
    if (keep.has(name)) continue;
    const cg = await m.open(name);
    if (!cg) continue;
    await cg.kill();
    await cg.remove();
    removed.push(name);
  }
  return removed;
}
