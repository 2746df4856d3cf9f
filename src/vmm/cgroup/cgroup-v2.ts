// cgroup v2: `<mount>/<parent>/<vm>`, limits in memory.max, cpu.max and pids.max; killed
// with cgroup.kill (Linux ≥ 5.14) or, before that, frozen and killed pid by pid.
import fs from 'node:fs/promises';
import path from 'node:path';
import {
  addToCgroup, assertCgroupName, cpuQuotaUs, CPU_PERIOD_US, CPU_WEIGHT, killAll, listChildren, readPids, rmdirCgroup, waitFor, writeControl,
  type CgroupLimits, type CgroupManager, type CpuPriority, type VmCgroup,
} from './cgroup.ts';

export const V2_CONTROLLERS = ['memory', 'cpu', 'pids'] as const;

const exists = (p: string) => fs.access(p).then(() => true, () => false);

class V2Cgroup implements VmCgroup {
  readonly dirs: Record<string, string>;
  readonly procsFiles: string[];
  readonly memoryLimitFile: string;

  constructor(
    readonly name: string,
    private readonly dir: string,
  ) {
    this.dirs = { unified: dir };
    this.procsFiles = [path.join(dir, 'cgroup.procs')];
    this.memoryLimitFile = path.join(dir, 'memory.max');
  }

  pids(): Promise<number[]> {
    return readPids(this.procsFiles[0]!);
  }

  addProcess(pid: number): Promise<void> {
    return addToCgroup(this.procsFiles, pid);
  }

  async kill(): Promise<void> {
    try {
      await this.killInner();
    } catch (e) {
      // Removed meanwhile (its VMM exited and kilnd cleaned up): nothing left to kill.
      if (!(await exists(this.dir))) return;
      throw e;
    }
  }

  private async killInner(): Promise<void> {
    if (!(await exists(this.dir))) return;
    const killFile = path.join(this.dir, 'cgroup.kill');
    if (await exists(killFile)) {
      await writeControl(killFile, '1');
    } else {
      // Frozen first, so nothing in it can fork between reading the pids and the kills.
      const freeze = path.join(this.dir, 'cgroup.freeze');
      await writeControl(freeze, '1');
      killAll(await this.pids());
      await writeControl(freeze, '0');
    }
    await waitFor(`${this.dir} still has processes`, async () => (await this.pids()).length === 0);
  }

  remove(): Promise<void> {
    return rmdirCgroup(this.dir);
  }

  setCpuPriority(priority: CpuPriority): Promise<void> {
    return writeControl(path.join(this.dir, 'cpu.weight'), String(CPU_WEIGHT[priority]));
  }
}

export class CgroupV2 implements CgroupManager {
  readonly version = 2 as const;
  readonly controllers = V2_CONTROLLERS;
  readonly parentDirs: string[];
  private parentReady: Promise<void> | null = null;

  constructor(
    private readonly mount: string,
    private readonly parent: string,
  ) {
    assertCgroupName(parent);
    this.parentDirs = [path.join(mount, parent)];
  }

  /** Controllers must be enabled on every level above the VM's cgroup (subtree_control). */
  private async ensureParent(): Promise<void> {
    const want = V2_CONTROLLERS.map((c) => `+${c}`).join(' ');
    for (const dir of [this.mount, this.parentDirs[0]!]) {
      await fs.mkdir(dir, { recursive: true });
      const file = path.join(dir, 'cgroup.subtree_control');
      const enabled = (await fs.readFile(file, 'utf8').catch(() => '')).split(/\s+/);
      if (!V2_CONTROLLERS.every((c) => enabled.includes(c))) await writeControl(file, want);
    }
  }

  async create(name: string, limits: CgroupLimits): Promise<VmCgroup> {
    assertCgroupName(name);
    this.parentReady ??= this.ensureParent().catch((e) => {
      this.parentReady = null;
      throw e;
    });
    await this.parentReady;
    const dir = path.join(this.parentDirs[0]!, name);
    await fs.mkdir(dir);
    const cg = new V2Cgroup(name, dir);
    try {
      await writeControl(path.join(dir, 'memory.max'), String(limits.memoryBytes));
      // No swap: the cap is on what the VM really holds, not on what it pushed out.
      if (await exists(path.join(dir, 'memory.swap.max'))) await writeControl(path.join(dir, 'memory.swap.max'), '0');
      await writeControl(path.join(dir, 'cpu.max'), `${cpuQuotaUs(limits.cpus)} ${CPU_PERIOD_US}`);
      if (limits.priority && limits.priority !== 'normal') await cg.setCpuPriority(limits.priority);
      await writeControl(path.join(dir, 'pids.max'), String(limits.pids));
    } catch (e) {
      await cg.remove().catch(() => {});
      throw e;
    }
    return cg;
  }

  async open(name: string): Promise<VmCgroup | null> {
    assertCgroupName(name);
    const dir = path.join(this.parentDirs[0]!, name);
    return (await exists(dir)) ? new V2Cgroup(name, dir) : null;
  }

  list(): Promise<string[]> {
    return listChildren(this.parentDirs[0]!);
  }
}
