// `kiln doctor`'s judgement: from facts about the host (gathered by host-facts.ts, or given
// by a test) to checks with a status, what was found and, for each failure, a concrete fix;
// then which backends can run here and why not. Pure, so every verdict is unit-tested.
import type { KernelFormat } from '../guest/kernel-format.ts';
import { atLeast, parseFirecrackerVersion } from '../vmm/firecracker/version.ts';
import { firecrackerSetupChecks, type FirecrackerSetupFacts } from './firecracker-checks.ts';

export type CheckStatus = 'ok' | 'warn' | 'fail';
export type CheckScope = 'host' | 'qemu' | 'firecracker';

export interface Check {
  scope: CheckScope;
  name: string;
  status: CheckStatus;
  detail: string;
  /** What to do about a warn/fail. */
  fix?: string;
}

export interface BinaryFact {
  path: string;
  /** First line of `--version`, or null when it printed nothing usable. */
  version: string | null;
}

export interface HostFacts {
  /** By tool name: null when not found. */
  binaries: Record<ToolName, BinaryFact | null>;
  /** What kiln looks up for Firecracker (KILN_FIRECRACKER_BIN or `firecracker`). */
  firecrackerName: string;
  kvm: { present: boolean; openError: string | null };
  /** The accelerator probe's verdict for this host boot; null when not probed yet. */
  kvmProbe: { failure: string | null } | null;
  /** The cgroup2 mount, if any, and the controllers enabled in it. */
  cgroup: { v2: boolean; mount?: string; controllers: string[] };
  vhostVsock: boolean;
  /** The guest kernel kilnd would boot, or why there is none yet. */
  kernel: { path: string; source: 'debian' | 'user'; format: KernelFormat; pvh?: boolean; version?: string } | { missing: string; user: boolean };
  assetsDir: string;
  /** kiln's own Firecracker prerequisites (firecracker-checks.ts); absent: not gathered. */
  firecrackerSetup?: FirecrackerSetupFacts;
}

export type ToolName = 'qemu' | 'firecracker' | 'jailer' | 'ip' | 'nft' | 'mksquashfs' | 'mkfs.erofs' | 'mkfs.ext4';

export interface BackendVerdict {
  usable: boolean;
  /** How it would run (accelerator) or what stops it. */
  summary: string;
}

export interface DoctorReport {
  checks: Check[];
  backends: { qemu: BackendVerdict; firecracker: BackendVerdict };
}

const FC_RELEASES = 'https://github.com/firecracker-microvm/firecracker/releases';
/** Newest Firecracker whose API definition kiln is tested against. */
const FC_TESTED = { major: 1, minor: 16 };

/** Debian package per host tool (scripts/setup-host.sh installs the same ones). */
const PACKAGES: Record<Exclude<ToolName, 'qemu' | 'firecracker' | 'jailer'>, { pkg: string; why: string; required: boolean }> = {
  ip: { pkg: 'iproute2', why: 'taps and bridges for VM networking', required: true },
  nft: { pkg: 'nftables', why: 'NAT, isolation and published ports', required: true },
  mksquashfs: { pkg: 'squashfs-tools', why: 'image root filesystems (squashfs)', required: true },
  'mkfs.ext4': { pkg: 'e2fsprogs', why: 'the per-VM writable layer', required: true },
  'mkfs.erofs': { pkg: 'erofs-utils', why: 'erofs image root filesystems (optional format)', required: false },
};

function binaryCheck(scope: CheckScope, name: string, b: BinaryFact | null, missingFix: string, required = true): Check {
  if (!b) return { scope, name, status: required ? 'fail' : 'warn', detail: 'not found', fix: missingFix };
  return { scope, name, status: 'ok', detail: `${b.path}${b.version ? ` (${b.version})` : ''}` };
}

function kvmChecks(f: HostFacts): { checks: Check[]; boots: boolean; why: string | null } {
  const checks: Check[] = [];
  if (!f.kvm.present) {
    checks.push({
      scope: 'host',
      name: '/dev/kvm',
      status: 'fail',
      detail: 'absent',
      fix: 'enable virtualization (VT-x/AMD-V) in the firmware, or nested virtualization for this VM, then `modprobe kvm_intel` (or kvm_amd)',
    });
    return { checks, boots: false, why: '/dev/kvm is absent' };
  }
  if (f.kvm.openError) {
    checks.push({
      scope: 'host',
      name: '/dev/kvm',
      status: 'fail',
      detail: `present but not usable (${f.kvm.openError})`,
      fix: 'run kilnd as root, or give its user read-write access: `usermod -aG kvm <user>` (and `chmod 660 /dev/kvm; chgrp kvm /dev/kvm` if needed)',
    });
    return { checks, boots: false, why: `/dev/kvm is not usable (${f.kvm.openError})` };
  }
  checks.push({ scope: 'host', name: '/dev/kvm', status: 'ok', detail: 'present, opens read-write' });
  if (!f.kvmProbe) {
    checks.push({
      scope: 'host',
      name: 'KVM boots a guest',
      status: 'warn',
      detail: 'not probed on this host boot yet',
      fix: `start kilnd once (\`kiln serve\`): it boots a probe guest under KVM and caches the verdict in ${f.assetsDir}/accel-probe.json`,
    });
    return { checks, boots: false, why: 'KVM has not been probed yet' };
  }
  if (f.kvmProbe.failure) {
    checks.push({
      scope: 'host',
      name: 'KVM boots a guest',
      status: 'fail',
      detail: f.kvmProbe.failure,
      fix: 'this KVM cannot run a stock guest kernel (nested/PVM hypervisor?): QEMU falls back to TCG; Firecracker needs bare metal or a cloud instance with real nested KVM (e.g. *.metal)',
    });
    return { checks, boots: false, why: `KVM does not boot a guest here (${f.kvmProbe.failure})` };
  }
  checks.push({ scope: 'host', name: 'KVM boots a guest', status: 'ok', detail: 'probe guest reached kiln-init under KVM' });
  return { checks, boots: true, why: null };
}

function kernelChecks(f: HostFacts): Check[] {
  const k = f.kernel;
  if ('missing' in k) {
    return [
      k.user
        ? { scope: 'host', name: 'guest kernel', status: 'fail', detail: k.missing, fix: 'point KILN_KERNEL at a bzImage or an ELF vmlinux' }
        : {
            scope: 'host',
            name: 'guest kernel',
            status: 'warn',
            detail: k.missing,
            fix: "kilnd downloads Debian's linux-image-cloud-amd64 on first start; or set KILN_KERNEL to your own bzImage/vmlinux",
          },
    ];
  }
  const what = `${k.source === 'user' ? 'KILN_KERNEL ' : ''}${k.path}${k.version ? ` (${k.version})` : ''}`;
  const checks: Check[] = [{ scope: 'host', name: 'guest kernel', status: 'ok', detail: `${what}: ${k.format === 'elf' ? 'ELF vmlinux' : 'bzImage'}` }];
  if (k.format === 'bzImage') {
    checks.push({ scope: 'qemu', name: 'kernel format', status: 'ok', detail: 'bzImage, booted as is' });
    checks.push({ scope: 'firecracker', name: 'kernel format', status: 'ok', detail: 'bzImage: kiln extracts the ELF vmlinux Firecracker v1.13–1.16 boots (cached)' });
  } else {
    checks.push(
      k.pvh
        ? { scope: 'qemu', name: 'kernel format', status: 'ok', detail: 'ELF vmlinux with a PVH entry note' }
        : {
            scope: 'qemu',
            name: 'kernel format',
            status: 'fail',
            detail: 'ELF vmlinux without a PVH entry note: QEMU cannot boot it',
            fix: 'build the kernel with CONFIG_PVH=y, or give QEMU the bzImage (arch/x86/boot/bzImage)',
          },
    );
    checks.push({ scope: 'firecracker', name: 'kernel format', status: 'ok', detail: 'ELF vmlinux, booted as is' });
  }
  return checks;
}

function firecrackerVersionCheck(b: BinaryFact | null, name: string): Check {
  const fix = `install a Firecracker release (v1.13.1 … v1.16.1) from ${FC_RELEASES}: put \`firecracker\` on PATH or set KILN_FIRECRACKER_BIN`;
  if (!b) return { scope: 'firecracker', name: 'firecracker', status: 'fail', detail: `${name} not found${name.includes('/') ? '' : ' on PATH'}`, fix };
  const v = b.version ? parseFirecrackerVersion(b.version) : null;
  if (!v) return { scope: 'firecracker', name: 'firecracker', status: 'fail', detail: `${b.path}: \`--version\` printed no version`, fix };
  if (!atLeast(v, 1, 13)) {
    return { scope: 'firecracker', name: 'firecracker', status: 'fail', detail: `${b.path} (v${v.raw}): kiln needs ≥ 1.13`, fix };
  }
  if (atLeast(v, FC_TESTED.major, FC_TESTED.minor + 1)) {
    return {
      scope: 'firecracker',
      name: 'firecracker',
      status: 'warn',
      detail: `${b.path} (v${v.raw}): newer than the newest API kiln is tested against (v1.16.1)`,
      fix: 'kiln speaks the v1.13 API plus the v1.16 additions it detects; check the release notes for removed endpoints',
    };
  }
  return { scope: 'firecracker', name: 'firecracker', status: 'ok', detail: `${b.path} (v${v.raw})` };
}

/** The jailer's per-VM limits (`--cgroup-version 2 --cgroup cpu.max=… memory.max=…`) need these. */
const CGROUP_CONTROLLERS = ['cpu', 'memory'];

function cgroupCheck(c: HostFacts['cgroup']): Check {
  const fix = 'boot the host with systemd.unified_cgroup_hierarchy=1 (cgroup v2 only), or run the jailer with --cgroup-version 1';
  if (!c.v2) return { scope: 'firecracker', name: 'cgroup v2', status: 'warn', detail: 'no cgroup2 mount: the jailer cannot apply cgroup v2 limits', fix };
  const lacking = CGROUP_CONTROLLERS.filter((x) => !c.controllers.includes(x));
  if (lacking.length) {
    return {
      scope: 'firecracker',
      name: 'cgroup v2',
      status: 'warn',
      detail: `cgroup2 at ${c.mount} lacks the ${lacking.join(', ')} controller(s) (hybrid hierarchy: they are bound to cgroup v1)`,
      fix,
    };
  }
  return { scope: 'firecracker', name: 'cgroup v2', status: 'ok', detail: `cgroup2 at ${c.mount} (${c.controllers.join(' ')})` };
}

const KVM_CHECKS = new Set(['/dev/kvm', 'KVM boots a guest']);

export function evaluate(f: HostFacts): DoctorReport {
  const kvm = kvmChecks(f);
  const checks: Check[] = [...kvm.checks, ...kernelChecks(f)];
  for (const [tool, p] of Object.entries(PACKAGES) as [keyof typeof PACKAGES, (typeof PACKAGES)[keyof typeof PACKAGES]][]) {
    checks.push(binaryCheck('host', tool, f.binaries[tool], `apt-get install ${p.pkg} (${p.why}; scripts/setup-host.sh installs it)`, p.required));
  }

  const qemu = binaryCheck('qemu', 'qemu-system-x86_64', f.binaries.qemu, 'apt-get install qemu-system-x86 (or set KILN_QEMU to the binary)');
  checks.push(qemu);
  checks.push(
    f.vhostVsock
      ? { scope: 'qemu', name: 'vsock', status: 'ok', detail: '/dev/vhost-vsock present: the agent channel uses vhost-vsock' }
      : {
          scope: 'qemu',
          name: 'vsock',
          status: 'warn',
          detail: '/dev/vhost-vsock absent: the agent channel falls back to TCP over the VM network',
          fix: '`modprobe vhost_vsock` (and load it at boot: echo vhost_vsock > /etc/modules-load.d/vhost_vsock.conf)',
        },
  );

  const fc = firecrackerVersionCheck(f.binaries.firecracker, f.firecrackerName);
  checks.push(fc);
  checks.push(
    binaryCheck('firecracker', 'jailer', f.binaries.jailer, `the jailer ships in the same release archive as firecracker (${FC_RELEASES}); needed only to run VMMs jailed`, false),
  );
  checks.push(cgroupCheck(f.cgroup));
  if (f.firecrackerSetup) checks.push(...firecrackerSetupChecks(f.firecrackerSetup, f.binaries.firecracker, f.binaries.jailer));
  checks.push({ scope: 'firecracker', name: 'vsock', status: 'ok', detail: 'hybrid vsock over a Unix socket: needs no host module' });

  const failed = (scope: CheckScope) => checks.filter((c) => c.scope === scope && c.status === 'fail');
  // KVM failures are not blockers for QEMU (it falls back to TCG); for Firecracker they are.
  const hostFails = failed('host').filter((c) => !KVM_CHECKS.has(c.name));
  const qemuBlockers = [...failed('qemu'), ...hostFails].map((c) => `${c.name}: ${c.detail}`);
  const fcBlockers = [...failed('firecracker'), ...hostFails].map((c) => `${c.name}: ${c.detail}`);
  if (!kvm.boots) fcBlockers.push(kvm.why!);
  return {
    checks,
    backends: {
      qemu: qemuBlockers.length
        ? { usable: false, summary: qemuBlockers.join('; ') }
        : { usable: true, summary: kvm.boots ? 'runs with KVM' : `runs with TCG (software CPU): ${kvm.why}` },
      firecracker: fcBlockers.length ? { usable: false, summary: fcBlockers.join('; ') } : { usable: true, summary: 'runs (KVM)' },
    },
  };
}
