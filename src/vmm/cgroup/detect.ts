// Which cgroup hierarchy kiln can put VMs in, from /proc/self/mounts: cgroup v2 when its
// unified tree has the memory, cpu and pids controllers (real hosts), else cgroup v1 when
// those three have hierarchies of their own (older and hybrid hosts, like this one, whose
// cgroup2 mount carries no controllers). Pure over the mount table so both are unit-tested.
import fs from 'node:fs/promises';
import path from 'node:path';
import { CgroupV1, V1_REQUIRED, type V1Mounts } from './cgroup-v1.ts';
import { CgroupV2, V2_CONTROLLERS } from './cgroup-v2.ts';
import type { CgroupManager } from './cgroup.ts';

export interface CgroupDetection {
  manager: CgroupManager | null;
  /** Why this hierarchy, or why none. */
  reason: string;
}

interface MountEntry {
  target: string;
  type: string;
  options: string[];
}

function parseMounts(text: string): MountEntry[] {
  return text
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f.length >= 4)
    // /proc/mounts escapes spaces in paths as \040.
    .map((f) => ({ target: f[1]!.replace(/\\040/g, ' '), type: f[2]!, options: f[3]!.split(',') }));
}

/** `root` re-bases the mount points (unit tests point it at a temporary fake tree). */
export async function detectCgroups(o: { parent: string; mounts?: string; root?: string }): Promise<CgroupDetection> {
  const mounts = parseMounts(o.mounts ?? (await fs.readFile('/proc/self/mounts', 'utf8').catch(() => '')));
  const at = (p: string) => (o.root ? path.join(o.root, p) : p);

  const v2 = mounts.find((m) => m.type === 'cgroup2');
  let v2Why = 'no cgroup2 mount';
  if (v2) {
    const controllers = (await fs.readFile(path.join(at(v2.target), 'cgroup.controllers'), 'utf8').catch(() => '')).trim().split(/\s+/);
    const lacking = V2_CONTROLLERS.filter((c) => !controllers.includes(c));
    if (!lacking.length) {
      return { manager: new CgroupV2(at(v2.target), o.parent), reason: `cgroup v2 at ${v2.target} (${V2_CONTROLLERS.join(', ')})` };
    }
    v2Why = `cgroup2 at ${v2.target} lacks ${lacking.join(', ')} (bound to cgroup v1)`;
  }

  const v1: V1Mounts = {};
  for (const m of mounts.filter((x) => x.type === 'cgroup')) {
    for (const c of ['memory', 'cpu', 'pids', 'freezer'] as const) if (m.options.includes(c)) v1[c] ??= at(m.target);
  }
  const lacking = V1_REQUIRED.filter((c) => !v1[c]);
  if (lacking.length) return { manager: null, reason: `${v2Why}; no cgroup v1 hierarchy for ${lacking.join(', ')}` };
  const mgr = new CgroupV1(v1, o.parent);
  return { manager: mgr, reason: `cgroup v1 (${mgr.controllers.join(', ')}; ${v2Why})` };
}
