// cgroup v1: one directory per controller hierarchy (`<memory mount>/<parent>/<vm>`, …).
// v1 has no cgroup.kill: the freezer hierarchy (when mounted) stops every task, each is
// SIGKILLed, then it is thawed so the kills land; without a freezer, kill until empty.
import fs from 'node:fs/promises';
import path from 'node:path';
import {
  addToCgroup, assertCgroupName, cpuQuotaUs, CPU_PERIOD_US, CPU_SHARES, killAll, listChildren, readPids, rmdirCgroup, waitFor, writeControl,
  type CgroupLimits, type CgroupManager, type CpuPriority, type VmCgroup,
} from './cgroup.ts';

export const V1_REQUIRED = ['memory', 'cpu', 'pids'] as const;

/** Controller → mount point of its hierarchy (a hierarchy can carry several, e.g. cpu,cpuacct). */
export type V1Mounts = Partial<Record<'memory' | 'cpu' | 'pids' | 'freezer', string>>;

const exists = (p: string) => fs.access(p).then(() => true, () => false);

class V1Cgroup implements VmCgroup {
  readonly procsFiles: string[];
  readonly memoryLimitFile: string;

  constructor(
    readonly name: string,
    readonly dirs: Record<string, string>,
  ) {
    this.procsFiles = Object.values(dirs).map((d) => path.join(d, 'cgroup.procs'));
    this.memoryLimitFile = path.join(dirs.memory!, 'memory.limit_in_bytes');
  }

  /** Every hierarchy holds the same processes; pids is the one kiln always has. */
  pids(): Promise<number[]> {
    return readPids(path.join(this.dirs.pids!, 'cgroup.procs'));
  }

  addProcess(pid: number): Promise<void> {
    return addToCgroup(this.procsFiles, pid);
  }

  async kill(): Promise<void> {
    try {
      await this.killInner();
    } catch (e) {
      // Removed meanwhile (its VMM exited and kilnd cleaned up): nothing left to kill.
      if (!(await exists(this.dirs.pids!))) return;
      throw e;
    }
  }

  private async killInner(): Promise<void> {
    if (!(await exists(this.dirs.pids!))) return;
    const freezer = this.dirs.freezer;
    if (freezer && (await exists(freezer))) {
      const state = path.join(freezer, 'freezer.state');
      await writeControl(state, 'FROZEN');
      await waitFor(`${freezer} did not freeze`, async () => (await fs.readFile(state, 'utf8').catch(() => 'FROZEN')).trim() === 'FROZEN');
      killAll(await readPids(path.join(freezer, 'cgroup.procs')));
      await writeControl(state, 'THAWED');
    }
    // Also the whole of it without a freezer: repeated until nothing is left (a fork between
    // reading and killing is caught by the next round; pids.max bounds the rounds' work).
    await waitFor(`${this.dirs.pids} still has processes`, async () => {
      const left = await this.pids();
      killAll(left);
      return left.length === 0;
    });
  }

  async remove(): Promise<void> {
    for (const dir of Object.values(this.dirs)) await rmdirCgroup(dir);
  }

  setCpuPriority(priority: CpuPriority): Promise<void> {
    return writeControl(path.join(this.dirs.cpu!, 'cpu.shares'), String(CPU_SHARES[priority]));
  }
}

export class CgroupV1 implements CgroupManager {
  readonly version = 1 as const;
  readonly controllers: string[];
  readonly parentDirs: string[];
  private readonly parents: Record<string, string>;

  constructor(mounts: V1Mounts, parent: string) {
    assertCgroupName(parent);
    this.parents = {};
    for (const c of ['memory', 'cpu', 'pids', 'freezer'] as const) {
      if (mounts[c]) this.parents[c] = path.join(mounts[c], parent);
    }
    for (const c of V1_REQUIRED) if (!this.parents[c]) throw new Error(`cgroup v1: no ${c} hierarchy`);
    this.controllers = Object.keys(this.parents);
    this.parentDirs = [...new Set(Object.values(this.parents))];
  }

  private dirsOf(name: string): Record<string, string> {
    return Object.fromEntries(Object.entries(this.parents).map(([c, p]) => [c, path.join(p, name)]));
  }

  async create(name: string, limits: CgroupLimits): Promise<VmCgroup> {
    assertCgroupName(name);
    const dirs = this.dirsOf(name);
    const cg = new V1Cgroup(name, dirs);
    try {
      for (const d of new Set(Object.values(dirs))) await fs.mkdir(d, { recursive: true });
      await writeControl(path.join(dirs.memory!, 'memory.limit_in_bytes'), String(limits.memoryBytes));
      await writeControl(path.join(dirs.cpu!, 'cpu.cfs_period_us'), String(CPU_PERIOD_US));
      await writeControl(path.join(dirs.cpu!, 'cpu.cfs_quota_us'), String(cpuQuotaUs(limits.cpus)));
      if (limits.priority && limits.priority !== 'normal') await cg.setCpuPriority(limits.priority);
      await writeControl(path.join(dirs.pids!, 'pids.max'), String(limits.pids));
    } catch (e) {
      await cg.remove().catch(() => {});
      throw e;
    }
    return cg;
  }

  async open(name: string): Promise<VmCgroup | null> {
    assertCgroupName(name);
    const dirs = this.dirsOf(name);
    const present = await Promise.all(Object.values(dirs).map(exists));
    return present.some(Boolean) ? new V1Cgroup(name, dirs) : null;
  }

  /** Names present in any hierarchy (a crash between two mkdirs leaves a partial set). */
  async list(): Promise<string[]> {
    const all = await Promise.all(this.parentDirs.map((d) => listChildren(d)));
    return [...new Set(all.flat())].sort();
  }
}
