// How kilnd confines each QEMU: seccomp (-sandbox), an unprivileged user (-runas) in an empty
// chroot, and a per-VM cgroup capping memory, CPU and pids. Decided once at start (what the
// settings ask for and what this host can do), reported in /healthz and `kiln doctor`.
import { createHash } from 'node:crypto';
import { qemuRejects } from '../../tools/qemu-system.ts';
import { ensureSystemUser } from '../../tools/useradd.ts';
import type { CgroupLimits, CgroupManager } from '../cgroup/cgroup.ts';
import { detectCgroups } from '../cgroup/detect.ts';
import { vmmMemoryOverheadMib, type VmmConfinementConfig } from '../../config.ts';
import type { ConfinementReport, VmSpec } from '../driver.ts';
import { sandboxArgs } from './qemu-args.ts';

/** The settings (src/config.ts: KILN_VMM_*). */
export type ConfinementSettings = VmmConfinementConfig;

export interface QemuConfinement {
  seccomp: boolean;
  /** User name and ids QEMU runs as, or null. */
  user: { name: string; uid: number; gid: number } | null;
  chroot: boolean;
  cgroups: CgroupManager | null;
  /** Configured overhead (KILN_VMM_MEMORY_OVERHEAD_MIB), else per accelerator. */
  memoryOverheadMib?: number;
  report: ConfinementReport;
}

/** No confinement at all (unit tests of layers above, the bench's direct baseline). */
export const UNCONFINED: QemuConfinement = {
  seccomp: false,
  user: null,
  chroot: false,
  cgroups: null,
  report: {
    seccomp: { active: false, detail: 'not configured' },
    user: { active: false, detail: 'not configured' },
    chroot: { active: false, detail: 'not configured' },
    cgroup: { active: false, detail: 'not configured', version: null, controllers: [] },
  },
};

/**
 * Threads QEMU may have: main loop, RCU, one per vCPU, its block I/O thread pool (up to 64)
 * and a few more. QEMU aborts when it cannot create a thread, so this is not tight: it
 * bounds a fork/thread bomb (exec and fork are already denied by seccomp).
 */
export const PIDS_BASE = 96;

export function cgroupLimits(spec: Pick<VmSpec, 'memoryMib' | 'vcpus' | 'accelerator' | 'cpuPriority'>, overheadMib?: number): CgroupLimits {
  const overhead = vmmMemoryOverheadMib(spec.accelerator, overheadMib);
  return { memoryBytes: (spec.memoryMib + overhead) * 1024 * 1024, cpus: spec.vcpus, pids: PIDS_BASE + spec.vcpus, priority: spec.cpuPriority ?? 'normal' };
}

export const defaultCgroupParent = (stateDir: string) => `kiln-${createHash('sha256').update(stateDir).digest('hex').slice(0, 10)}`;

/**
 * Resolves the settings against this host: creates the VMM user if missing (kilnd runs as
 * root; the user is a system account without login or home), checks that QEMU accepts the
 * sandbox options, finds a usable cgroup hierarchy. A piece that is asked for and that this
 * host cannot give is left off with the reason, which /healthz and `kiln doctor` show and
 * `warn` logs: kilnd still runs VMs (a container without cgroup access, a QEMU built
 * without seccomp), and the operator sees what is missing.
 */
export async function resolveQemuConfinement(s: ConfinementSettings, o: { stateDir: string; warn?: (msg: string) => void }): Promise<QemuConfinement> {
  const warn = o.warn ?? (() => {});
  const report = structuredClone(UNCONFINED.report);
  let user: QemuConfinement['user'] = null;
  if (s.user) {
    try {
      const ids = await ensureSystemUser(s.user);
      user = { name: s.user, ...ids };
      report.user = { active: true, detail: `QEMU switches to ${s.user} (uid ${ids.uid}, gid ${ids.gid}) once its files, taps and sockets are open (-runas)` };
    } catch (e) {
      report.user = { active: false, detail: `cannot get user ${s.user}: ${(e as Error).message}` };
      warn(`VMM confinement: QEMU runs as root: ${report.user.detail}`);
    }
  } else report.user = { active: false, detail: 'KILN_VMM_USER is empty: QEMU runs as root' };

  const chroot = s.chroot && user !== null;
  report.chroot = chroot
    ? { active: true, detail: 'QEMU is chrooted into an empty per-VM directory (<vm>/jail) before it switches user' }
    : { active: false, detail: s.chroot ? 'needs the unprivileged user (QEMU chroots only with -runas)' : 'KILN_VMM_CHROOT=0' };

  let seccomp = false;
  if (s.seccomp) {
    const args = sandboxArgs({ seccomp: true, runAs: user?.name ?? null, chroot: null });
    const refused = await qemuRejects(args);
    if (refused) {
      report.seccomp = { active: false, detail: `QEMU refuses ${args.join(' ')}: ${refused}` };
      warn(`VMM confinement: no seccomp: ${report.seccomp.detail}`);
    } else {
      seccomp = true;
      report.seccomp = { active: true, detail: `-sandbox ${args[1]}` };
    }
  } else report.seccomp = { active: false, detail: 'KILN_VMM_SECCOMP=0' };

  let cgroups: CgroupManager | null = null;
  if (s.cgroup) {
    const parent = s.cgroupParent || defaultCgroupParent(o.stateDir);
    const d = await detectCgroups({ parent });
    if (d.manager) {
      // Found is not writable (a container's read-only cgroupfs): try one for real.
      try {
        const probe = await d.manager.create(`probe-${process.pid}`, { memoryBytes: 64 * 1024 * 1024, cpus: 1, pids: 8 });
        await probe.remove();
      } catch (e) {
        d.reason = `${d.reason}, but kilnd cannot create cgroups there: ${(e as Error).message}`;
        d.manager = null;
      }
    }
    if (d.manager) {
      cgroups = d.manager;
      report.cgroup = {
        active: true,
        version: d.manager.version,
        controllers: [...d.manager.controllers],
        detail: `${d.reason}; per VM: memory = guest RAM + ${s.memoryOverheadMib ?? `${vmmMemoryOverheadMib('tcg')} (TCG) or ${vmmMemoryOverheadMib('kvm')} (KVM)`} MiB, CPU = its vCPUs, pids ≤ ${PIDS_BASE} + vCPUs; under ${d.manager.parentDirs.join(', ')}`,
      };
    } else {
      report.cgroup = { active: false, detail: d.reason, version: null, controllers: [] };
      warn(`VMM confinement: no per-VM cgroups: ${d.reason}`);
    }
  } else report.cgroup = { active: false, detail: 'KILN_VMM_CGROUP=0', version: null, controllers: [] };

  return { seccomp, user, chroot, cgroups, memoryOverheadMib: s.memoryOverheadMib, report };
}
