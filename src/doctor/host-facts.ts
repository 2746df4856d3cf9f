// What `kiln doctor` looks at on this host, read without starting anything heavy: binaries
// and their versions, /dev/kvm, the accelerator probe's cached verdict (the probe itself
// boots a guest, which is kilnd's job at start-up), cgroup v2, vhost-vsock, the guest kernel.
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { detectKernelImage } from '../guest/kernel-format.ts';
import { cachedGuestKernel } from '../guest/kernel.ts';
import { QEMU_BINARY } from '../tools/qemu-system.ts';
import { toolVersion } from '../tools/tool-version.ts';
import { findBinary } from '../util/find-binary.ts';
import type { BinaryFact, HostFacts, ToolName } from './checks.ts';
import { gatherFirecrackerSetup } from './firecracker-checks.ts';

export interface FactOptions {
  assetsDir: string;
  firecrackerBinary?: string;
  /** KILN_KERNEL */
  kernelPath?: string;
  env?: NodeJS.ProcessEnv;
}

async function binary(name: string, env: NodeJS.ProcessEnv, versionArgs: string[] | null): Promise<BinaryFact | null> {
  const p = await findBinary(name, env);
  if (!p) return null;
  return { path: p, version: versionArgs ? await toolVersion(p, versionArgs) : null };
}

async function kvm(): Promise<HostFacts['kvm']> {
  try {
    const h = await fs.open('/dev/kvm', constants.O_RDWR);
    await h.close();
    return { present: true, openError: null };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    return code === 'ENOENT' ? { present: false, openError: code } : { present: true, openError: code };
  }
}

/** The cached probe verdict, valid for this host boot only (as accel-probe.ts keys it). */
async function kvmProbe(assetsDir: string): Promise<HostFacts['kvmProbe']> {
  const bootId = (await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
  const cached = await fs.readFile(path.join(assetsDir, 'accel-probe.json'), 'utf8').then(JSON.parse, () => null);
  if (typeof cached?.key !== 'string' || !cached.key.startsWith(`${bootId}|`)) return null;
  return { failure: typeof cached.failure === 'string' ? cached.failure : null };
}

async function cgroup(): Promise<HostFacts['cgroup']> {
  const mounts = await fs.readFile('/proc/self/mounts', 'utf8').catch(() => '');
  const mount = mounts.split('\n').map((l) => l.split(' ')).find((f) => f[2] === 'cgroup2')?.[1];
  if (!mount) return { v2: false, controllers: [] };
  const controllers = (await fs.readFile(path.join(mount, 'cgroup.controllers'), 'utf8').catch(() => '')).trim().split(/\s+/).filter(Boolean);
  return { v2: true, mount, controllers };
}

async function kernel(o: FactOptions): Promise<HostFacts['kernel']> {
  if (o.kernelPath) {
    try {
      const info = await detectKernelImage(o.kernelPath);
      return { path: o.kernelPath, source: 'user', ...info };
    } catch (e) {
      return { missing: (e as Error).message, user: true };
    }
  }
  const k = await cachedGuestKernel(o.assetsDir);
  if (!k) return { missing: `no Debian kernel in ${o.assetsDir}/kernels yet`, user: false };
  const info = await detectKernelImage(k.path);
  return { path: k.path, source: 'debian', ...info, version: k.version };
}

export async function gatherHostFacts(o: FactOptions): Promise<HostFacts> {
  const env = o.env ?? process.env;
  const firecrackerName = o.firecrackerBinary ?? 'firecracker';
  const jailerName = firecrackerName.includes('/') ? path.join(path.dirname(firecrackerName), 'jailer') : 'jailer';
  const tools: [ToolName, string, string[] | null][] = [
    ['qemu', QEMU_BINARY, ['--version']],
    ['firecracker', firecrackerName, ['--version']],
    ['jailer', jailerName, ['--version']],
    ['ip', 'ip', ['-V']],
    ['nft', 'nft', ['--version']],
    ['mksquashfs', 'mksquashfs', ['-version']],
    ['mkfs.erofs', 'mkfs.erofs', ['-V']],
    ['mkfs.ext4', 'mkfs.ext4', ['-V']],
  ];
  const [found, kvmFact, probe, cg, vhostVsock, k, fcSetup] = await Promise.all([
    Promise.all(tools.map(async ([n, bin, args]) => [n, await binary(bin, env, args)] as const)),
    kvm(),
    kvmProbe(o.assetsDir),
    cgroup(),
    fs.access('/dev/vhost-vsock').then(() => true, () => false),
    kernel(o),
    gatherFirecrackerSetup(env),
  ]);
  return {
    binaries: Object.fromEntries(found) as Record<ToolName, BinaryFact | null>,
    firecrackerName,
    kvm: kvmFact,
    kvmProbe: probe,
    cgroup: cg,
    vhostVsock,
    kernel: k,
    assetsDir: o.assetsDir,
    firecrackerSetup: fcSetup,
  };
}
